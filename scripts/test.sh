#!/usr/bin/env bash
# Runs the whole test suite: unit, property and doc tests, the hermetic
# integration suite against fake-firecracker, and the CLI tests.
#
# With FIREHOST_FIRECRACKER=/path/to/firecracker the same integration suite
# runs against a real Firecracker (DESIGN.md tier 3; needs root and
# /dev/kvm). Tests that cannot run on this host print "skipped: <why>".
set -euo pipefail
cd "$(dirname "$0")/.."

# --workspace builds fake-firecracker's binary before any test runs; the
# library's integration suite spawns it.
exec cargo test --workspace --locked "$@"
