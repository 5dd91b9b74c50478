//! Text output, rendered from the same values as `--json` so the two never
//! disagree. Nothing here is a contract: scripts should use `--json`.

use std::fmt::Write;

use crate::json::{
    BucketJson, BundleJson, CheckJson, ConsoleJson, DoctorJson, EgressJson, EgressPolicyJson,
    ExitJson, GcJson, ImageJson, InitramfsJson, LimitJson, ListJson, NetListJson, QuickstartJson,
    RemovedJson, SnapshotDetailsJson, SnapshotJson, SnapshotListJson, SnapshotRemovedJson,
    StopJson, VerifyJson, VmJson,
};

/// `inspect` and `run`: one `key: value` line per field.
pub fn vm_record(vm: &VmJson) -> String {
    let none = || "-".to_owned();
    let mut rows: Vec<(&str, String)> = vec![
        ("name", vm.name.clone()),
        ("state", vm.state.to_owned()),
        ("pid", vm.pid.map_or_else(none, |p| p.to_string())),
        ("vcpus", vm.vcpus.to_string()),
        ("memory", format!("{} MiB", vm.mem_mib)),
        ("kernel", vm.kernel.clone()),
        ("initrd", vm.initrd.clone().unwrap_or_else(none)),
        (
            "rootfs",
            match &vm.rootfs {
                Some(r) if vm.rootfs_read_only => format!("{r} (read-only)"),
                Some(r) if vm.rootfs_shared => format!("{r} (shared)"),
                Some(r) => r.clone(),
                None => none(),
            },
        ),
        ("boot args", vm.boot_args.clone()),
    ];
    device_rows(vm, &mut rows);
    for own in &vm.own_drives {
        let how = match own.copy {
            firehost::record::CopyMethod::Reflink => "reflink",
            firehost::record::CopyMethod::Extents => "data copied: no reflinks here",
        };
        rows.push(("own copy", format!("{} at {} ({how})", own.drive, own.path)));
    }
    if vm.busy {
        rows.push((
            "busy",
            "the VMM is alive but did not answer in time; try again later".to_owned(),
        ));
    }
    if let Some(name) = &vm.interrupted_snapshot {
        rows.push((
            "interrupted",
            format!("snapshot {name}: settled once the VMM answers"),
        ));
    }
    if let Some(jail) = &vm.jail {
        rows.push((
            "jail",
            format!("{} (uid {}, gid {})", jail.chroot, jail.uid, jail.gid),
        ));
        if !jail.cgroups.is_empty() {
            rows.push(("cgroups", jail.cgroups.join(", ")));
        }
    }
    if let Some(vsock) = &vm.vsock {
        rows.push((
            "vsock",
            format!("{} (guest CID {})", vsock.uds_path, vsock.guest_cid),
        ));
    }
    if let Some(net) = &vm.net {
        rows.extend([
            ("ip", format!("{}/{}", net.ip, net.prefix_len)),
            ("gateway", net.gateway.clone()),
            ("mac", net.mac.clone()),
            (
                "tap",
                match &net.netns {
                    Some(ns) => format!("{} (in the VM's namespace {ns})", net.tap),
                    None => net.tap.clone(),
                },
            ),
            ("published", list_or_dash(&net.published)),
        ]);
        if let Some(guest) = &net.guest {
            rows.push((
                "guest",
                format!("{} {} (translated to the ip above)", guest.ip, guest.mac),
            ));
        }
        if !net.peer_groups.is_empty() {
            rows.push(("peer groups", net.peer_groups.join(", ")));
        }
        rows.push(("egress", policy_summary(&net.egress)));
        if let Some(t) = &net.traffic {
            rows.push((
                "traffic",
                format!(
                    "sent {} B, received {} B, {} dropped, {} names refused",
                    t.tx_bytes, t.rx_bytes, t.egress_dropped, t.names_refused
                ),
            ));
        }
    }
    rows.extend([
        ("api socket", vm.api_socket.clone()),
        ("dir", vm.dir.clone()),
        ("console", vm.console_file.clone().unwrap_or_else(none)),
        ("vmm log", vm.log_file.clone().unwrap_or_else(none)),
        ("created", utc(vm.created_at_ms)),
    ]);
    if let Some(exit) = &vm.exit {
        rows.push(("exit", exit_text(exit)));
    }
    let mut out = record(&rows);
    if let Some(tail) = &vm.console_tail {
        let _ = writeln!(out, "console tail:");
        for line in tail {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// `key: value` lines, the values aligned.
fn record(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    out
}

/// `pause`, `resume`, `stop`: the VM's new state on one line.
pub fn vm_state_line(vm: &VmJson) -> String {
    match &vm.exit {
        Some(exit) => format!("{}: {} ({})\n", vm.name, vm.state, exit_text(exit)),
        None => format!("{}: {}\n", vm.name, vm.state),
    }
}

/// `pool create`, `pool fill`: one line for the pool.
pub fn pool_line(pool: &crate::json::PoolJson) -> String {
    let mut line = format!(
        "{}: {} of {} ready",
        pool.name,
        pool.members.len(),
        pool.size
    );
    if let Some(failure) = &pool.failure {
        line.push_str(&format!(
            " (failing: {}; {} attempts)",
            failure.error, failure.attempts
        ));
    }
    line.push('\n');
    line
}

/// `pool ls`: a table of the pools.
pub fn pool_table(list: &crate::json::PoolListJson) -> String {
    let rows: Vec<Vec<String>> = list
        .pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.snapshot.clone().unwrap_or_else(|| "(spec)".into()),
                format!("{}/{}", p.members.len(), p.size),
                p.failure
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |f| f.error.clone()),
            ]
        })
        .collect();
    columns(&["NAME", "SNAPSHOT", "READY", "FAILURE"], &rows)
}

/// `stop`: the state line, or that there was nothing to stop.
pub fn stopped(s: &StopJson) -> String {
    if s.stopped {
        vm_state_line(&s.vm)
    } else {
        format!("{}: already {}\n", s.vm.name, s.vm.state)
    }
}

/// `ls`: a table.
pub fn vm_table(list: &ListJson) -> String {
    let rows: Vec<Vec<String>> = list
        .vms
        .iter()
        .map(|vm| {
            let mut state = vm.state.to_owned();
            if vm.busy {
                state.push_str(" (busy)");
            }
            if vm.interrupted_snapshot.is_some() {
                state.push_str(" (snapshot interrupted)");
            }
            vec![
                vm.name.clone(),
                state,
                vm.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                vm.vcpus.to_string(),
                format!("{}M", vm.mem_mib),
            ]
        })
        .collect();
    let mut out = columns(&["NAME", "STATE", "PID", "VCPUS", "MEM"], &rows);
    for vm in &list.unreadable {
        out.push_str(&format!(
            "{} is unreadable (pid {}): {}; `firehost rm -f {}` removes it\n",
            vm.name,
            vm.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            vm.reason,
            vm.name
        ));
    }
    out
}

/// `inspect` of a quarantined VM.
pub fn unreadable_vm(vm: &crate::json::UnreadableVmJson) -> String {
    format!(
        "name:    {}\nstate:   unreadable\nreason:  {}\npid:     {}\ndir:     {}\nIts VMM and files are left alone; `firehost rm -f {}` stops and removes it.\n",
        vm.name,
        vm.reason,
        vm.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        vm.dir,
        vm.name
    )
}

/// `settings`.
pub fn settings(settings: &crate::json::SettingsJson) -> String {
    let mut out = format!("state directory {}\n", settings.state_dir);
    let mut field = |group: &str, value: &serde_json::Value| {
        if let Some(object) = value.as_object() {
            for (key, value) in object {
                out.push_str(&format!("{group}.{key}: {value}\n"));
            }
        }
    };
    field("network", &settings.network);
    field("jail", &settings.jail);
    out
}

/// `net ls`: the network on one line, then a table of its VMs.
pub fn net_table(list: &NetListJson) -> String {
    let rows: Vec<Vec<String>> = list
        .vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.clone(),
                vm.ip.clone(),
                vm.mac.clone(),
                vm.tap.clone(),
                list_or_dash(&vm.published),
                policy_summary(&vm.egress),
                vm.traffic.map_or("-".into(), |t| t.tx_bytes.to_string()),
                vm.traffic.map_or("-".into(), |t| t.rx_bytes.to_string()),
                vm.traffic
                    .map_or("-".into(), |t| t.egress_dropped.to_string()),
            ]
        })
        .collect();
    let mut out = format!("bridge {}, subnet {}\n", list.bridge, list.subnet);
    out.push_str(&columns(
        &[
            "NAME",
            "IP",
            "MAC",
            "TAP",
            "PUBLISHED",
            "EGRESS",
            "TX_BYTES",
            "RX_BYTES",
            "DROPPED",
        ],
        &rows,
    ));
    out
}

/// `net egress`: the policy, one rule a line in the order they are
/// checked, and the traffic.
pub fn egress(e: &EgressJson) -> String {
    let mut out = format!("{}: egress {}\n", e.name, policy_summary(&e.egress));
    for (i, rule) in e.egress.rules.iter().enumerate() {
        let target = match (&rule.net, &rule.domain) {
            (Some(net), _) => net.clone(),
            (None, Some(domain)) => format!("domain {domain}"),
            (None, None) => "-".to_owned(),
        };
        out.push_str(&format!("  {i}: {} {target}\n", rule.action));
    }
    out.push_str(&format!("  then: {}\n", e.egress.default));
    if let Some(t) = &e.traffic {
        out.push_str(&format!(
            "traffic: sent {} B in {} packets, received {} B in {} packets, {} dropped by the policy, {} names refused\n",
            t.tx_bytes, t.tx_packets, t.rx_bytes, t.rx_packets, t.egress_dropped, t.names_refused
        ));
    }
    out
}

/// `open`, or `deny (+3 rules)`.
fn policy_summary(policy: &EgressPolicyJson) -> String {
    match (policy.default.as_str(), policy.rules.len()) {
        ("allow", 0) => "open".to_owned(),
        (default, 0) => default.to_owned(),
        (default, 1) => format!("{default} (+1 rule)"),
        (default, n) => format!("{default} (+{n} rules)"),
    }
}

/// `net publish` and `net unpublish`: what the VM publishes now.
pub fn published_line(vm: &VmJson) -> String {
    match &vm.net {
        Some(net) if net.published.is_empty() => {
            format!("{} ({}): no published ports\n", vm.name, net.ip)
        }
        Some(net) => format!(
            "{} ({}): published {}\n",
            vm.name,
            net.ip,
            net.published.join(", ")
        ),
        None => format!("{}: no network\n", vm.name),
    }
}

/// `a, b, c`, or `-` for none.
fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// Left-aligned columns two spaces apart, no trailing blanks.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// `rm`.
pub fn removed(r: &RemovedJson) -> String {
    if !r.removed {
        format!("{}: not there\n", r.name)
    } else if r.stopped {
        format!("{}: stopped and removed\n", r.name)
    } else {
        format!("{}: removed\n", r.name)
    }
}

/// `snapshot`.
pub fn snapshot(s: &SnapshotJson) -> String {
    let mut out = format!(
        "snapshot {} of {} in {} ({} MiB memory, {} on disk, Firecracker {}); {} is {}\n",
        s.name,
        s.vm,
        s.dir,
        s.memory_bytes >> 20,
        size(s.memory_data_bytes),
        s.firecracker_version,
        s.vm,
        s.vm_state
    );
    if let Some(r) = &s.reclaimed {
        let _ = writeln!(
            out,
            "the balloon held {} MiB of its {} MiB target at the pause, and is let out again",
            r.balloon_mib, r.target_mib
        );
    }
    out
}

/// `snapshots ls`: a table of the complete bundles (SIZE is the bytes
/// their files hold, so a diff shows only its pages), then a line per
/// incomplete or unreadable one.
pub fn snapshot_table(list: &SnapshotListJson) -> String {
    let dash = |s: Option<&String>| s.cloned().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = list
        .snapshots
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.kind.to_owned(),
                dash(b.parent.as_ref()),
                b.vm.clone(),
                size(b.data_bytes),
                utc_compact(b.created_at_ms),
                b.leases.len().to_string(),
            ]
        })
        .collect();
    let mut out = columns(
        &["NAME", "KIND", "PARENT", "VM", "SIZE", "CREATED", "LEASES"],
        &rows,
    );
    for name in &list.incomplete {
        let _ = writeln!(
            out,
            "incomplete: {name} (no manifest: being written, or left by a crash for `firehost snapshots gc`)"
        );
    }
    for u in &list.unreadable {
        let _ = writeln!(out, "unreadable: {}: {}", u.name, u.error);
    }
    out
}

/// `snapshots merge`: the new bundle on one line.
pub fn merged(b: &BundleJson) -> String {
    format!(
        "merged into full snapshot {} in {} ({} memory, {} on disk)\n",
        b.name,
        b.dir,
        size(b.memory_bytes),
        size(b.data_bytes)
    )
}

/// `snapshots inspect`: one `key: value` line per field, then the files.
pub fn bundle_record(d: &SnapshotDetailsJson) -> String {
    let b = &d.bundle;
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    let spec = &d.spec;
    let mut machine = format!("{} vCPU(s), {} MiB", spec.vcpus, spec.mem_mib);
    if spec.smt {
        machine.push_str(", SMT");
    }
    let mut rows: Vec<(&str, String)> = vec![
        ("name", b.name.clone()),
        (
            "kind",
            match &b.parent {
                Some(parent) => format!("{} (on top of {parent})", b.kind),
                None => b.kind.to_owned(),
            },
        ),
        ("vm", b.vm.clone()),
        ("dir", b.dir.clone()),
        ("firecracker", b.firecracker_version.clone()),
        ("created", utc(b.created_at_ms)),
        ("manifest", format!("format {}", b.format)),
        ("machine", machine),
        ("kernel", spec.kernel.clone()),
        ("initrd", spec.initrd.clone().unwrap_or_else(|| "-".into())),
        (
            "rootfs",
            match &spec.rootfs {
                Some(r) if spec.rootfs_read_only => format!("{r} (read-only)"),
                Some(r) => r.clone(),
                None => "-".into(),
            },
        ),
        ("boot args", spec.boot_args.clone()),
    ];
    for drive in &spec.drives {
        let ro = if drive.read_only { " (read-only)" } else { "" };
        rows.push(("drive", format!("{}: {}{ro}", drive.id, drive.path)));
    }
    rows.push(("leases", list(&b.leases)));
    if !d.stale_leases.is_empty() {
        rows.push(("stale leases", list(&d.stale_leases)));
    }
    rows.push(("children", list(&d.children)));
    rows.push((
        "working set",
        d.working_set.as_ref().map_or_else(
            || "-".to_owned(),
            |ws| {
                format!(
                    "{} page(s) of {}, {}{}",
                    ws.pages,
                    size(ws.page_size_bytes),
                    size(ws.size_bytes),
                    if ws.truncated { " (truncated)" } else { "" }
                )
            },
        ),
    ));
    let mut out = record(&rows);
    let _ = writeln!(out, "files:");
    let width = d.files.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &d.files {
        let data = f
            .data_bytes
            .filter(|&data| data != f.size_bytes)
            .map(|data| format!(" ({} data)", size(data)))
            .unwrap_or_default();
        let blake3 = f.blake3.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "  {:<width$}  {} ({} bytes){data}  blake3 {blake3}",
            f.name,
            size(f.size_bytes),
            f.size_bytes
        );
    }
    out
}

/// `snapshots verify`: the verdict on one line.
pub fn verified(v: &VerifyJson) -> String {
    let what = if v.memory_checked {
        "all checksums match"
    } else {
        "checksums match; memory checked by size only"
    };
    match (&v.chain, &v.error) {
        (Some(chain), _) => format!(
            "{}: ok ({} layer(s): {}; {what})\n",
            v.name,
            chain.len(),
            chain.join(" <- ")
        ),
        (None, Some(e)) => format!("{}: BAD: {}\n", v.name, e.message),
        (None, None) => format!("{}: BAD\n", v.name),
    }
}

/// `snapshots rm`.
pub fn snapshot_removed(r: &SnapshotRemovedJson) -> String {
    format!("snapshot {}: removed\n", r.name)
}

/// `snapshots gc`: a line per removed thing.
pub fn gc(g: &GcJson) -> String {
    let mut out = String::new();
    for name in &g.incomplete {
        let _ = writeln!(out, "removed incomplete snapshot {name}");
    }
    for path in &g.leftovers {
        let _ = writeln!(out, "removed leftover {path}");
    }
    for lease in &g.stale_leases {
        let _ = writeln!(
            out,
            "removed stale lease of VM {} on snapshot {}",
            lease.vm, lease.snapshot
        );
    }
    for name in &g.unused {
        let _ = writeln!(out, "removed unused snapshot {name}");
    }
    if out.is_empty() {
        out.push_str("nothing to remove\n");
    }
    out
}

/// Bytes in binary units: `512B`, `4.0K`, `128M`, `1.5G`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut unit = 0;
    let mut scaled = bytes;
    while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    // scaled is in [1024, 1024²) of the unit below UNITS[unit]: tenths.
    let tenths = (scaled * 10 + 512) / 1024;
    if tenths < 100 {
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
    } else {
        format!("{}{}", (tenths + 5) / 10, UNITS[unit])
    }
}

/// `console`: the lines as they are.
pub fn console(c: &ConsoleJson) -> String {
    c.lines.iter().map(|l| format!("{l}\n")).collect()
}

/// `doctor`: one line per check, a fix line under each warning or failure.
pub fn doctor(d: &DoctorJson) -> String {
    let mut out = checks(&d.checks);
    let failed = d.checks.iter().filter(|c| c.status == "fail").count();
    let warned = d.checks.iter().filter(|c| c.status == "warn").count();
    let _ = writeln!(
        out,
        "{}: {failed} failed, {warned} warning(s)",
        if d.ok { "ready" } else { "not ready" }
    );
    out
}

fn checks(checks: &[CheckJson]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            "ok" => "ok",
            "warn" => "warn",
            _ => "FAIL",
        };
        let _ = writeln!(out, "{status:<4}  {:<width$}  {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    out
}

/// `quickstart`: the missing list, or the run's timings and console.
pub fn quickstart(q: &QuickstartJson) -> String {
    let mut out = String::new();
    if !q.ready {
        let _ = writeln!(out, "firehost quickstart cannot run on this host yet.");
        let _ = writeln!(out, "Missing:");
        for m in &q.missing {
            let _ = writeln!(out, "  - {}", m.what);
            let _ = writeln!(out, "    fix: {}", m.fix);
        }
        let _ = writeln!(out, "Run `firehost doctor` for every host check.");
        return out;
    }
    let failed_or_warn: Vec<&CheckJson> = q.checks.iter().filter(|c| c.status != "ok").collect();
    let _ = writeln!(
        out,
        "host checks: {} passed, {} warning(s)",
        q.checks.len() - failed_or_warn.len(),
        failed_or_warn.len()
    );
    out.push_str(&checks(
        &failed_or_warn.into_iter().cloned().collect::<Vec<_>>(),
    ));
    if let (Some(vm), Some(t)) = (&q.vm, &q.timings_ms) {
        let _ = writeln!(out, "vm {vm}:");
        let _ = writeln!(out, "  create   {:>9.2} ms", t.create_ms);
        let _ = writeln!(out, "  start    {:>9.2} ms", t.start_ms);
        match t.first_output_ms {
            Some(ms) => {
                let _ = writeln!(out, "  console  {ms:>9.2} ms to the first line");
            }
            None => {
                let _ = writeln!(out, "  console  no output within 10 s");
            }
        }
        if !q.console_tail.is_empty() {
            let _ = writeln!(out, "  --- console ---");
            for line in &q.console_tail {
                let _ = writeln!(out, "  | {line}");
            }
            let _ = writeln!(out, "  ---------------");
        }
        let _ = writeln!(out, "  stop     {:>9.2} ms", t.stop_ms);
        let _ = writeln!(out, "  destroy  {:>9.2} ms", t.destroy_ms);
        let _ = writeln!(out, "  total    {:>9.2} ms", t.total_ms);
    }
    let _ = writeln!(out, "cleaned up: {} removed", q.state_dir);
    let _ = writeln!(
        out,
        "(to run commands in a VM: an image with the agent (firehost image build), run --vsock, then firehost exec)"
    );
    out
}

/// `image build`: what was written, where the agent went and what it
/// replaced.
pub fn image_built(i: &ImageJson) -> String {
    let mut out = format!(
        "wrote {} ({} MiB ext4{}, {} files) in {:.1} s\n",
        i.out,
        i.size_mib,
        if i.read_only { ", read-only" } else { "" },
        i.files,
        i.elapsed_ms / 1000.0
    );
    match &i.replaced {
        Some(what) => {
            let _ = writeln!(out, "agent at {}, replacing {what}", i.agent);
        }
        None => {
            let _ = writeln!(out, "agent at {}", i.agent);
        }
    }
    if !i.owners_kept {
        let _ = writeln!(
            out,
            "note: unpacked without root, so every file belongs to your user in the image; run as root to keep the archive's owners"
        );
    }
    out
}

/// `image initramfs`: what was written.
pub fn initramfs_built(i: &InitramfsJson) -> String {
    format!(
        "wrote {} ({} entries, {})\n",
        i.out,
        i.entries,
        size(i.bytes)
    )
}

fn exit_text(exit: &ExitJson) -> String {
    match (exit.code, exit.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "exit status unknown".to_owned(),
    }
}

/// `ms` since the epoch as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `ms` since the epoch as `YYYY-MM-DDThh:mm:ssZ`, one word for tables.
fn utc_compact(ms: u64) -> String {
    utc(ms).replacen(' ', "T", 1).replace(" UTC", "Z")
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm
/// restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Rows for the drives, NICs and devices with settings worth a line: a
/// root drive with more than its defaults, every other drive, a NIC with
/// limits or on an operator's TAP, the entropy device and the balloon.
fn device_rows(vm: &VmJson, rows: &mut Vec<(&'static str, String)>) {
    for drive in &vm.drives {
        let mut notes: Vec<String> = Vec::new();
        if drive.read_only && !drive.root {
            notes.push("read-only".into());
        }
        if drive.cache != "unsafe" {
            notes.push(drive.cache.into());
        }
        if drive.engine != "sync" {
            notes.push(drive.engine.into());
        }
        if let Some(p) = &drive.partuuid {
            notes.push(format!("partuuid {p}"));
        }
        if let Some(limit) = &drive.limit {
            notes.push(limit_text(limit));
        }
        if drive.root && notes.is_empty() {
            continue;
        }
        let text = if drive.root {
            format!("{} ({})", drive.id, notes.join(", "))
        } else if notes.is_empty() {
            format!("{} {}", drive.id, drive.path)
        } else {
            format!("{} {} ({})", drive.id, drive.path, notes.join(", "))
        };
        rows.push(("drive", text));
    }
    for (i, nic) in vm.nics.iter().enumerate() {
        let default_net = i == 0 && vm.net.is_some();
        if default_net && nic.rx_limit.is_none() && nic.tx_limit.is_none() {
            continue;
        }
        let limit = |l: &Option<LimitJson>| l.as_ref().map_or("unlimited".to_owned(), limit_text);
        rows.push((
            "nic",
            format!(
                "{} on {}: rx {}, tx {}",
                nic.id,
                nic.tap,
                limit(&nic.rx_limit),
                limit(&nic.tx_limit)
            ),
        ));
    }
    for p in &vm.pmem {
        let limit = p
            .limit
            .as_ref()
            .map(|l| format!(", {}", limit_text(l)))
            .unwrap_or_default();
        let root = if p.root { ", root" } else { "" };
        rows.push((
            "pmem",
            format!("{} {} (read-only{root}{limit})", p.id, p.path),
        ));
    }
    if let Some(b) = &vm.serial_limit {
        let limit = LimitJson {
            bandwidth: Some(*b),
            ops: None,
        };
        rows.push((
            "serial",
            format!("output over {} dropped", limit_text(&limit)),
        ));
    }
    if let Some(h) = &vm.memory_hotplug {
        rows.push((
            "hotplug",
            format!("{} of {} MiB requested", h.requested_mib, h.total_mib),
        ));
    }
    if let Some(template) = &vm.cpu_template {
        rows.push(("cpu template", template.clone()));
    }
    if let Some(entropy) = &vm.entropy {
        let text = entropy.limit.as_ref().map_or("on".to_owned(), limit_text);
        rows.push(("entropy", text));
    }
    if let Some(b) = &vm.balloon {
        let mut notes = Vec::new();
        if b.deflate_on_oom {
            notes.push("deflates on OOM".to_owned());
        }
        if b.stats_interval_s > 0 {
            notes.push(format!("statistics every {} s", b.stats_interval_s));
        }
        if b.free_page_hinting {
            notes.push("free page hinting".to_owned());
        }
        if b.free_page_reporting {
            notes.push("free page reporting".to_owned());
        }
        let text = if notes.is_empty() {
            format!("{} MiB", b.amount_mib)
        } else {
            format!("{} MiB ({})", b.amount_mib, notes.join(", "))
        };
        rows.push(("balloon", text));
    }
}

/// `10MiB/s + 1MiB burst, 500 ops/s`.
fn limit_text(limit: &LimitJson) -> String {
    let bucket = |b: &BucketJson, unit: &str| {
        let rate = if b.refill_time_ms == 1000 && unit.is_empty() {
            firehost::vocab::Bandwidth::from_bytes_per_second(b.size).to_string()
        } else if b.refill_time_ms == 1000 {
            format!("{}{unit}/s", b.size)
        } else {
            format!("{}{unit} per {} ms", b.size, b.refill_time_ms)
        };
        match b.one_time_burst {
            Some(burst) if unit.is_empty() => {
                let bytes = firehost::vocab::Bandwidth::from_bytes_per_second(burst).to_string();
                format!("{rate} + {} burst", bytes.trim_end_matches("/s"))
            }
            Some(burst) => format!("{rate} + {burst}{unit} burst"),
            None => rate,
        }
    };
    let mut parts = Vec::new();
    if let Some(b) = &limit.bandwidth {
        parts.push(bucket(b, ""));
    }
    if let Some(b) = &limit.ops {
        parts.push(bucket(b, " ops"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_right_around_leap_years() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_use_binary_units() {
        for (bytes, text) in [
            (0, "0B"),
            (1023, "1023B"),
            (4096, "4.0K"),
            (1536, "1.5K"),
            (64 << 10, "64K"),
            (128 << 20, "128M"),
            (3 << 29, "1.5G"),
            ((1 << 20) - 1, "1024K"),
        ] {
            assert_eq!(size(bytes), text, "{bytes}");
        }
        assert_eq!(utc_compact(0), "1970-01-01T00:00:00Z");
    }

    fn networked_vm() -> VmJson {
        VmJson {
            name: "web".into(),
            state: "running",
            pid: Some(7),
            api_socket: "/s/vms/web/api.sock".into(),
            dir: "/s/vms/web".into(),
            console_file: None,
            log_file: None,
            vcpus: 1,
            mem_mib: 128,
            smt: false,
            kernel: "/k".into(),
            initrd: None,
            rootfs: None,
            rootfs_read_only: false,
            rootfs_shared: false,
            own_drives: Vec::new(),
            boot_args: "console=ttyS0".into(),
            drives: Vec::new(),
            nics: Vec::new(),
            entropy: None,
            balloon: None,
            cpu_template: None,
            pmem: Vec::new(),
            serial_limit: None,
            memory_hotplug: None,
            created_at_ms: 0,
            exit: None,
            console_tail: None,
            vsock: None,
            jail: None,
            busy: false,
            interrupted_snapshot: None,
            net: Some(crate::json::NetJson {
                ip: "172.30.0.2".into(),
                prefix_len: 16,
                gateway: "172.30.0.1".into(),
                mac: "06:00:ac:1e:00:02".into(),
                tap: "fh-web-0".into(),
                dns: vec!["1.1.1.1".into()],
                published: vec!["8080:80/tcp".into(), "5353:53/udp".into()],
                peer_groups: Vec::new(),
                netns: None,
                guest: None,
                egress: open_policy(),
                traffic: None,
            }),
        }
    }

    fn open_policy() -> EgressPolicyJson {
        EgressPolicyJson {
            default: "allow".into(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn vm_record_shows_drives_limits_and_devices() {
        use crate::json::{BalloonJson, EntropyJson, NicJson, VmDriveJson};
        let burst = BucketJson {
            size: 10 << 20,
            refill_time_ms: 1000,
            one_time_burst: Some(1 << 20),
        };
        let ops = BucketJson {
            size: 50,
            refill_time_ms: 100,
            one_time_burst: None,
        };
        let mut vm = networked_vm();
        vm.drives = vec![
            VmDriveJson {
                id: "rootfs".into(),
                path: "/r".into(),
                root: true,
                read_only: false,
                cache: "unsafe",
                engine: "sync",
                partuuid: None,
                limit: None,
            },
            VmDriveJson {
                id: "data".into(),
                path: "/d.img".into(),
                root: false,
                read_only: true,
                cache: "writeback",
                engine: "async",
                partuuid: None,
                limit: Some(LimitJson {
                    bandwidth: Some(burst),
                    ops: Some(ops),
                }),
            },
        ];
        vm.nics = vec![NicJson {
            id: "eth0".into(),
            tap: "fh-web-0".into(),
            rx_limit: Some(LimitJson {
                bandwidth: Some(BucketJson {
                    size: 1_250_000,
                    refill_time_ms: 1000,
                    one_time_burst: None,
                }),
                ops: None,
            }),
            tx_limit: None,
        }];
        vm.entropy = Some(EntropyJson { limit: None });
        vm.balloon = Some(BalloonJson {
            amount_mib: 16,
            deflate_on_oom: true,
            stats_interval_s: 5,
            free_page_hinting: false,
            free_page_reporting: false,
        });
        let text = vm_record(&vm);
        for row in [
            "drive:      data /d.img (read-only, writeback, async, 10MiB/s + 1MiB burst, 50 ops per 100 ms)\n",
            "nic:        eth0 on fh-web-0: rx 1250KB/s, tx unlimited\n",
            "entropy:    on\n",
            "balloon:    16 MiB (deflates on OOM, statistics every 5 s)\n",
        ] {
            assert!(text.contains(row), "{row:?} in\n{text}");
        }
        // A root drive with its defaults gets no row of its own.
        assert!(!text.contains("drive:      rootfs"), "{text}");
    }

    #[test]
    fn vm_record_shows_the_network_rows() {
        let text = vm_record(&networked_vm());
        for row in [
            "ip:         172.30.0.2/16\n",
            "gateway:    172.30.0.1\n",
            "mac:        06:00:ac:1e:00:02\n",
            "tap:        fh-web-0\n",
            "published:  8080:80/tcp, 5353:53/udp\n",
        ] {
            assert!(text.contains(row), "{row:?} in\n{text}");
        }
        assert!(!text.contains("peer groups"), "{text}");
        assert!(!text.contains("guest"), "{text}");
        let mut clone = networked_vm();
        if let Some(net) = &mut clone.net {
            net.guest = Some(crate::json::GuestJson {
                ip: "172.30.0.9".into(),
                mac: "06:00:ac:1e:00:09".into(),
            });
        }
        let text = vm_record(&clone);
        assert!(
            text.contains(
                "guest:      172.30.0.9 06:00:ac:1e:00:09 (translated to the ip above)\n"
            ),
            "{text}"
        );
        let mut plain = networked_vm();
        plain.net = None;
        assert!(!vm_record(&plain).contains("gateway"));
    }

    #[test]
    fn net_table_lists_the_vms_under_the_network() {
        let list = NetListJson {
            bridge: "fhbr0".into(),
            subnet: "172.30.0.0/16".into(),
            vms: vec![crate::json::NetVmJson {
                name: "web".into(),
                ip: "172.30.0.2".into(),
                mac: "06:00:ac:1e:00:02".into(),
                tap: "fh-web-0".into(),
                published: Vec::new(),
                egress: EgressPolicyJson {
                    default: "deny".into(),
                    rules: vec![crate::json::EgressRuleJson {
                        action: "allow".into(),
                        net: None,
                        domain: Some("pypi.org".into()),
                    }],
                },
                traffic: Some(crate::json::TrafficJson {
                    tx_bytes: 1200,
                    tx_packets: 10,
                    rx_bytes: 34000,
                    rx_packets: 30,
                    egress_dropped: 2,
                    names_refused: 1,
                }),
            }],
        };
        assert_eq!(
            net_table(&list),
            "bridge fhbr0, subnet 172.30.0.0/16\n\
             NAME  IP          MAC                TAP       PUBLISHED  EGRESS          TX_BYTES  RX_BYTES  DROPPED\n\
             web   172.30.0.2  06:00:ac:1e:00:02  fh-web-0  -          deny (+1 rule)  1200      34000     2\n"
        );
        let policy = EgressJson {
            name: "web".into(),
            egress: list.vms[0].egress.clone(),
            traffic: list.vms[0].traffic,
        };
        assert_eq!(
            egress(&policy),
            "web: egress deny (+1 rule)\n\
             \x20 0: allow domain pypi.org\n\
             \x20 then: deny\n\
             traffic: sent 1200 B in 10 packets, received 34000 B in 30 packets, 2 dropped by the policy, 1 names refused\n"
        );
        assert_eq!(
            published_line(&networked_vm()),
            "web (172.30.0.2): published 8080:80/tcp, 5353:53/udp\n"
        );
    }

    #[test]
    fn table_columns_align() {
        let vm = |name: &str, pid| VmJson {
            name: name.into(),
            state: "running",
            pid,
            api_socket: String::new(),
            dir: String::new(),
            console_file: None,
            log_file: None,
            vcpus: 2,
            mem_mib: 128,
            smt: false,
            kernel: String::new(),
            initrd: None,
            rootfs: None,
            rootfs_read_only: false,
            rootfs_shared: false,
            own_drives: Vec::new(),
            boot_args: String::new(),
            drives: Vec::new(),
            nics: Vec::new(),
            entropy: None,
            balloon: None,
            cpu_template: None,
            pmem: Vec::new(),
            serial_limit: None,
            memory_hotplug: None,
            created_at_ms: 0,
            exit: None,
            console_tail: None,
            net: None,
            vsock: None,
            jail: None,
            busy: false,
            interrupted_snapshot: None,
        };
        let table = vm_table(&ListJson {
            vms: vec![vm("a", Some(12345)), vm("longer-name", None)],
            unreadable: vec![],
        });
        assert_eq!(
            table,
            "NAME         STATE    PID    VCPUS  MEM\n\
             a            running  12345  2      128M\n\
             longer-name  running  -      2      128M\n"
        );
    }
}
