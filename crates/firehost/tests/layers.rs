//! The library's modules import only downward. This reads each module's
//! `crate::…` paths (outside comments) and checks them against the layer
//! map below, which `lib.rs`'s module map describes. The lower layers are
//! enforced up to the record; above it, `manager`, `provider`, `doctor`
//! and the manager's undo helper may use everything below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it may use. A module may always use itself.
const LAYERS: &[(&str, &[&str])] = &[
    // Leaves: nothing of the crate.
    ("id", &[]),
    ("fsutil", &[]),
    ("socket_path", &[]),
    ("elf", &[]),
    ("bounded_log", &[]),
    ("error_kind", &[]),
    ("console", &[]),
    ("metrics", &[]),
    ("cpu", &[]),
    ("state", &["id"]),
    // The words a spec is written in.
    ("vocab", &["id"]),
    // The API client and the host↔guest channel.
    ("api", &["id", "socket_path"]),
    ("vsock", &["id", "socket_path"]),
    ("agent", &["id", "vsock", "socket_path"]),
    // Jails and VMM processes.
    ("jail", &["id", "fsutil", "error_kind", "state"]),
    (
        "vmm",
        &[
            "id",
            "fsutil",
            "socket_path",
            "bounded_log",
            "console",
            "state",
            "api",
            "jail",
        ],
    ),
    // The default network, the metadata service, guest images.
    // What a VM should be.
    ("spec", &["id", "vocab", "jail", "vsock", "cpu"]),
    // The default network, the metadata service, guest images.
    ("net", &["id", "fsutil", "error_kind", "vocab"]),
    ("mmds", &["id", "vocab", "net"]),
    ("image", &["fsutil", "elf", "error_kind"]),
    // Snapshots, then the durable per-VM record.
    (
        "snapshot",
        &[
            "id",
            "fsutil",
            "socket_path",
            "error_kind",
            "state",
            "net",
            "spec",
            "vmm",
            "cpu",
        ],
    ),
    (
        "record",
        &[
            "id", "fsutil", "state", "vocab", "vsock", "jail", "vmm", "spec", "net", "mmds",
            "snapshot",
        ],
    ),
];

/// The crate root's re-exports, by the module they come from.
const ROOT_TYPES: &[(&str, &str)] = &[
    ("VmId", "id"),
    ("VmIdError", "id"),
    ("SnapshotName", "id"),
    ("ErrorKind", "error_kind"),
    ("ExitReason", "state"),
    ("Operation", "state"),
    ("TransitionError", "state"),
    ("VmState", "state"),
    ("DriveSpec", "spec"),
    ("HostDefaults", "spec"),
    ("ResolvedSpec", "spec"),
    ("SpecError", "spec"),
    ("VmSpec", "spec"),
    ("Manager", "manager"),
    ("ManagerConfig", "manager"),
    ("ManagerError", "manager"),
    ("VmError", "manager"),
    ("VmInfo", "manager"),
    ("VmProvider", "provider"),
    ("InMemoryProvider", "provider"),
    ("RestoreMemory", "manager"),
    ("RestoreOptions", "manager"),
    ("SnapshotOptions", "manager"),
    ("StopOptions", "manager"),
    ("StopOutcome", "manager"),
    ("AgentClient", "agent"),
    ("AgentError", "agent"),
    ("ExecRequest", "agent"),
    ("Output", "agent"),
    ("NetSpec", "vocab"),
    ("PortMapping", "vocab"),
    ("NetworkConfig", "net"),
    ("VmNet", "net"),
    ("SnapshotInfo", "snapshot"),
];

fn sources(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The crate modules `text` refers to through `crate::` paths, comments
/// left out.
fn uses(text: &str) -> BTreeSet<String> {
    let roots: BTreeMap<&str, &str> = ROOT_TYPES.iter().copied().collect();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or("").trim())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                vec![&rest[..end]]
            };
            for name in names.into_iter().filter(|n| !n.is_empty()) {
                let module = roots.get(name).copied().unwrap_or(name);
                found.insert(module.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_lower_layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (module, allowed) in LAYERS {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            sources(&dir, &mut files);
        }
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        assert!(!files.is_empty(), "module {module} not found");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text) {
                if used != *module && !allowed.contains(&used.as_str()) {
                    broken.push(format!("{}: uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports that go up or sideways:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_reader_sees_grouped_and_root_imports() {
    let text = "use crate::{VmId, net::host::NetSpec};\nlet x = crate::fsutil::write_atomic; // crate::manager\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, ["fsutil", "id", "net"]);
}
