//! Text output, rendered from the same values as `--json` so the two never
//! disagree. Nothing here is a contract: scripts should use `--json`.

use std::fmt::Write;

use crate::json::{
    CheckJson, ConsoleJson, DoctorJson, ExitJson, ListJson, QuickstartJson, RemovedJson,
    SnapshotJson, VmJson,
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
                Some(r) => r.clone(),
                None => none(),
            },
        ),
        ("boot args", vm.boot_args.clone()),
        ("api socket", vm.api_socket.clone()),
        ("dir", vm.dir.clone()),
        ("console", vm.console_file.clone().unwrap_or_else(none)),
        ("vmm log", vm.log_file.clone().unwrap_or_else(none)),
        ("created", utc(vm.created_at_ms)),
    ];
    if let Some(exit) = &vm.exit {
        rows.push(("exit", exit_text(exit)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    if let Some(tail) = &vm.console_tail {
        let _ = writeln!(out, "console tail:");
        for line in tail {
            let _ = writeln!(out, "  {line}");
        }
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

/// `ls`: a table.
pub fn vm_table(list: &ListJson) -> String {
    let header = ["NAME", "STATE", "PID", "VCPUS", "MEM"];
    let rows: Vec<[String; 5]> = list
        .vms
        .iter()
        .map(|vm| {
            [
                vm.name.clone(),
                vm.state.to_owned(),
                vm.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                vm.vcpus.to_string(),
                format!("{}M", vm.mem_mib),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
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
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

/// `rm`.
pub fn removed(r: &RemovedJson) -> String {
    if r.stopped {
        format!("{}: stopped and removed\n", r.name)
    } else {
        format!("{}: removed\n", r.name)
    }
}

/// `snapshot`.
pub fn snapshot(s: &SnapshotJson) -> String {
    format!(
        "snapshot {} of {} in {} ({} MiB memory, Firecracker {}); {} is {}\n",
        s.name,
        s.vm,
        s.dir,
        s.memory_bytes >> 20,
        s.firecracker_version,
        s.vm,
        s.vm_state
    )
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
        "(running a command inside the VM needs the guest agent, coming in a later release)"
    );
    out
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
            boot_args: String::new(),
            created_at_ms: 0,
            exit: None,
            console_tail: None,
        };
        let table = vm_table(&ListJson {
            vms: vec![vm("a", Some(12345)), vm("longer-name", None)],
        });
        assert_eq!(
            table,
            "NAME         STATE    PID    VCPUS  MEM\n\
             a            running  12345  2      128M\n\
             longer-name  running  -      2      128M\n"
        );
    }
}
