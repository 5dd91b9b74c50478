#!/usr/bin/env bash
# firehost quick start: build the CLI, make sure Firecracker and a guest image
# are at hand, then boot a throwaway VM with `firehost quickstart` (create,
# start, console output, stop, destroy, with timings).
#
# Inputs (all optional):
#   FIREHOST_FIRECRACKER  Firecracker binary; else `firecracker` on PATH; else
#                         the official v1.16.1 release is downloaded into the
#                         cache and its SHA-256 checked against the release's
#                         published checksum file.
#   FIREHOST_KERNEL       guest kernel (vmlinux); FIREHOST_ROOTFS: ext4 rootfs.
#                         Else Firecracker's public "hello" images are
#                         downloaded into the cache.
#   FIREHOST_OFFLINE=1    download nothing; report what is missing instead.
#
# Nothing is installed system-wide except the Debian/Ubuntu build packages.
set -euo pipefail
cd "$(dirname "$0")/.."

FC_VERSION=v1.16.1
ARCH=$(uname -m)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/firehost"
RELEASES=https://github.com/firecracker-microvm/firecracker/releases/download
IMAGES=https://s3.amazonaws.com/spec.ccfc.min/img/hello

say() { printf 'quickstart: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
online() { [ "${FIREHOST_OFFLINE:-0}" != 1 ]; }

# 1. Build tools.
if ! command -v cc >/dev/null || ! command -v curl >/dev/null; then
    say "installing build packages (build-essential, curl, ca-certificates)"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates
fi
if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    elif online; then
        say "installing the Rust toolchain with rustup (https://rustup.rs)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        say "cargo is missing and FIREHOST_OFFLINE=1: install Rust (https://rustup.rs) first"
        exit 2
    fi
fi

# 2. The CLI.
say "building firehost (release)"
cargo build --release --locked -q -p firehost-cli
FIREHOST=target/release/firehost

# 3. Firecracker.
mkdir -p "$CACHE"
if [ -z "${FIREHOST_FIRECRACKER:-}" ] && ! command -v firecracker >/dev/null; then
    fc="$CACHE/firecracker-$FC_VERSION-$ARCH"
    if [ ! -x "$fc" ] && online; then
        tgz="firecracker-$FC_VERSION-$ARCH.tgz"
        say "downloading Firecracker $FC_VERSION ($ARCH)"
        tmp=$(mktemp -d)
        if curl -fsSL --connect-timeout 10 -o "$tmp/$tgz" "$RELEASES/$FC_VERSION/$tgz" \
            && curl -fsSL --connect-timeout 10 -o "$tmp/$tgz.sha256.txt" "$RELEASES/$FC_VERSION/$tgz.sha256.txt"; then
            if (cd "$tmp" && sha256sum -c --quiet "$tgz.sha256.txt"); then
                tar -xzf "$tmp/$tgz" -C "$tmp"
                install -m 0755 "$tmp/release-$FC_VERSION-$ARCH/firecracker-$FC_VERSION-$ARCH" "$fc"
                jailer="$tmp/release-$FC_VERSION-$ARCH/jailer-$FC_VERSION-$ARCH"
                [ -f "$jailer" ] && install -m 0755 "$jailer" "$CACHE/jailer-$FC_VERSION-$ARCH"
            else
                say "checksum mismatch for $tgz: not using it"
            fi
        else
            say "could not download Firecracker (offline?)"
        fi
        rm -rf "$tmp"
    fi
    [ -x "$fc" ] && export FIREHOST_FIRECRACKER="$fc"
fi

# 4. Guest images.
fetch_image() { # name url var
    local path="$CACHE/$1"
    if [ ! -s "$path" ] && online; then
        say "downloading $1"
        curl -fsSL --connect-timeout 10 -o "$path.part" "$2" && mv "$path.part" "$path" || { rm -f "$path.part"; say "could not download $1"; }
    fi
    [ -s "$path" ] && export "$3=$path"
    return 0
}
[ -n "${FIREHOST_KERNEL:-}" ] || fetch_image hello-vmlinux.bin "$IMAGES/kernel/hello-vmlinux.bin" FIREHOST_KERNEL
[ -n "${FIREHOST_ROOTFS:-}" ] || fetch_image hello-rootfs.ext4 "$IMAGES/fsfiles/hello-rootfs.ext4" FIREHOST_ROOTFS

# 5. Boot. Without KVM, Firecracker or images, this says exactly what is
# missing and how to supply it (see also `firehost doctor`).
exec "$FIREHOST" quickstart "$@"
