//! Guest images end to end: real `mkfs.ext4`, `debugfs` and `tune2fs`
//! (e2fsprogs) build the image, and `debugfs` reads it back to check
//! contents, modes, links and the injected agent. Tests skip, saying so,
//! where e2fsprogs is missing; CI installs it.

use firehost_testkit::skip;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use firehost::image::{
    AgentPlacement, ImageError, InitramfsOptions, Progress, Replaced, RootfsOptions, SourceKind,
    UnsafeReason, build_initramfs, build_rootfs,
};

/// The fake agent every test injects: a script, which is all `debugfs`
/// and the checks need.
const AGENT: &[u8] = b"#!/bin/sh\necho firehost-agent\n";

/// An e2fsprogs tool, looked up where the library looks.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the e2fsprogs tools are installed; prints the skip line if not.
fn e2fsprogs(test: &str) -> bool {
    let missing: Vec<_> = ["mkfs.ext4", "debugfs", "tune2fs", "dumpe2fs", "e2fsck"]
        .into_iter()
        .filter(|t| tool(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(
        test,
        &format!("{missing:?} not installed (apt-get install e2fsprogs)"),
    );
    false
}

/// Runs an e2fsprogs tool and returns its stdout.
fn run(name: &str, args: &[&str], image: &Path) -> String {
    let out = Command::new(tool(name).unwrap())
        .args(args)
        .arg(image)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debugfs -R REQUEST IMAGE`'s stdout.
fn debugfs(image: &Path, request: &str) -> String {
    run("debugfs", &["-R", request], image)
}

/// A file's contents in the image.
fn cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new(tool("debugfs").unwrap())
        .args(["-R", &format!("cat \"{path}\"")])
        .arg(image)
        .output()
        .unwrap();
    out.stdout
}

/// What `debugfs stat` says about a path: type, permission bits, uid,
/// link count, inode number (`None` if it does not exist).
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    kind: String,
    mode: u32,
    uid: u32,
    links: u32,
    inode: u64,
    text: String,
}

fn stat(image: &Path, path: &str) -> Option<Stat> {
    let text = debugfs(image, &format!("stat \"{path}\""));
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1).copied()
    };
    // "Type: character special": the type may be two words.
    let kind = match after("Type:")? {
        "character" | "block" => format!("{} special", after("Type:")?),
        kind => kind.to_owned(),
    };
    Some(Stat {
        kind,
        mode: u32::from_str_radix(after("Mode:")?, 8).ok()?,
        uid: after("User:")?.parse().ok()?,
        links: after("Links:")?.parse().ok()?,
        inode: after("Inode:")?.parse().ok()?,
        text,
    })
}

/// One test's directory, with the agent script in it.
struct Fixture {
    dir: tempfile::TempDir,
    agent: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("firehost-agent");
        std::fs::write(&agent, AGENT).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o700)).unwrap();
        Fixture { dir, agent }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self, from: &Path, out: &str) -> RootfsOptions {
        RootfsOptions::new(from, self.path(out), &self.agent)
    }

    /// The names in the fixture directory, sorted (to see leftovers).
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A source tree: files, a symlink, an executable, a nested directory and
/// a systemd-style `/sbin/init` link.
fn source_tree(root: &Path) {
    let mkdir = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let write = |p: &str, data: &[u8], mode: u32| {
        std::fs::write(root.join(p), data).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mkdir("etc");
    mkdir("usr/bin");
    mkdir("a/b/c");
    mkdir("sbin");
    write("etc/hostname", b"guest\n", 0o644);
    write("etc/secret", b"s3cret\n", 0o600);
    write("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    write("a/b/c/deep.txt", b"deep\n", 0o640);
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
}

/// Every path under `root` with its mode and, for files, contents.
fn snapshot(root: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut all = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let data = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                pending.push(path.clone());
                Vec::new()
            };
            all.push((path, meta.mode(), data));
        }
    }
    all.sort();
    all
}

#[test]
fn a_directory_becomes_an_image_with_its_files_and_the_agent_as_init() {
    if !e2fsprogs("a_directory_becomes_an_image_with_its_files_and_the_agent_as_init") {
        return;
    }
    let fx = Fixture::new();
    let src = fx.path("src");
    source_tree(&src);
    let before = snapshot(&src);
    let events = std::cell::RefCell::new(Vec::new());
    let report = build_rootfs(&fx.options(&src, "rootfs.ext4"), &|p| {
        events.borrow_mut().push(p)
    })
    .unwrap();
    let image = fx.path("rootfs.ext4");

    assert_eq!(report.source, SourceKind::Directory);
    assert_eq!(report.agent, "/sbin/init");
    assert_eq!(
        report.replaced,
        Some(Replaced::Symlink {
            target: "/lib/systemd/systemd".into()
        })
    );
    assert!(report.size_computed && report.size_mib >= 64, "{report:?}");
    // etc, hostname, secret, tool-link, usr, bin, tool, a, b, c, deep.txt,
    // sbin, init (replaced, so not new).
    assert_eq!(report.files, 13);
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        report.size_mib << 20
    );
    assert_eq!(std::fs::metadata(&image).unwrap().mode() & 0o777, 0o600);
    assert!(events.borrow().contains(&Progress::Agent));
    assert!(
        events
            .borrow()
            .iter()
            .any(|p| matches!(p, Progress::Mkfs { .. }))
    );

    assert_eq!(cat(&image, "/etc/hostname"), b"guest\n");
    assert_eq!(cat(&image, "/a/b/c/deep.txt"), b"deep\n");
    for (path, kind, mode) in [
        ("/etc/hostname", "regular", 0o644),
        ("/etc/secret", "regular", 0o600),
        ("/usr/bin/tool", "regular", 0o755),
        ("/a/b/c/deep.txt", "regular", 0o640),
        ("/a/b/c", "directory", 0o755),
        ("/etc/tool-link", "symlink", 0o777),
        ("/sbin/init", "regular", 0o755),
    ] {
        let found = stat(&image, path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!((found.kind.as_str(), found.mode), (kind, mode), "{path}");
    }
    let link = stat(&image, "/etc/tool-link").unwrap();
    assert!(link.text.contains("\"../usr/bin/tool\""), "{}", link.text);
    assert_eq!(cat(&image, "/sbin/init"), AGENT);
    assert_eq!(stat(&image, "/sbin/init").unwrap().uid, 0);
    assert_eq!(stat(&image, "/").unwrap().uid, 0);
    run("e2fsck", &["-fn"], &image);

    assert_eq!(snapshot(&src), before, "the source directory is untouched");
    assert_eq!(fx.listing(), ["firehost-agent", "rootfs.ext4", "src"]);
}

#[test]
fn the_agent_follows_a_merged_usr_sbin_link_and_a_missing_sbin_is_made() {
    if !e2fsprogs("the_agent_follows_a_merged_usr_sbin_link_and_a_missing_sbin_is_made") {
        return;
    }
    let fx = Fixture::new();
    let merged = fx.path("merged");
    std::fs::create_dir_all(merged.join("usr/sbin")).unwrap();
    std::os::unix::fs::symlink("usr/sbin", merged.join("sbin")).unwrap();
    let report = build_rootfs(&fx.options(&merged, "merged.ext4"), &|_| {}).unwrap();
    assert_eq!(report.replaced, None);
    let image = fx.path("merged.ext4");
    assert_eq!(cat(&image, "/usr/sbin/init"), AGENT);
    assert_eq!(stat(&image, "/sbin").unwrap().kind, "symlink");

    let bare = fx.path("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    build_rootfs(&fx.options(&bare, "bare.ext4"), &|_| {}).unwrap();
    let image = fx.path("bare.ext4");
    let sbin = stat(&image, "/sbin").unwrap();
    assert_eq!(
        (sbin.kind.as_str(), sbin.mode, sbin.uid),
        ("directory", 0o755, 0)
    );
    assert_eq!(cat(&image, "/sbin/init"), AGENT);
    run("e2fsck", &["-fn"], &image);
}

#[test]
fn beside_init_leaves_the_images_own_init_alone() {
    if !e2fsprogs("beside_init_leaves_the_images_own_init_alone") {
        return;
    }
    let fx = Fixture::new();
    let src = fx.path("src");
    std::fs::create_dir_all(src.join("sbin")).unwrap();
    std::fs::write(src.join("sbin/init"), b"the real init\n").unwrap();
    let options = RootfsOptions {
        placement: AgentPlacement::BesideInit,
        ..fx.options(&src, "beside.ext4")
    };
    let report = build_rootfs(&options, &|_| {}).unwrap();
    assert_eq!(
        (report.agent, report.replaced),
        ("/sbin/firehost-agent", None)
    );
    let image = fx.path("beside.ext4");
    assert_eq!(cat(&image, "/sbin/init"), b"the real init\n");
    assert_eq!(cat(&image, "/sbin/firehost-agent"), AGENT);
    assert_eq!(stat(&image, "/sbin/firehost-agent").unwrap().mode, 0o755);
}

/// A tar header for `path` of `kind`, mode `mode`, owned by 1234:2345.
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1234);
    h.set_gid(2345);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

/// An archive like `docker export` writes: directories (one read-only),
/// files, an executable, symlinks, a hard link and, if `device`, a device
/// node.
fn docker_like_tar(device: bool) -> Vec<u8> {
    use tar::EntryType::{Char, Directory, Link, Regular, Symlink};
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["./", "etc/", "usr/", "usr/bin/", "dev/", "sbin/", "ro/"] {
        let mode = if dir == "ro/" { 0o555 } else { 0o755 };
        b.append(&header(dir, Directory, mode, 0), &[][..]).unwrap();
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let h = header(path, Regular, mode, data.len() as u64);
        b.append(&h, data).unwrap();
    };
    file(&mut b, "etc/os-release", 0o644, b"ID=test\n");
    file(&mut b, "usr/bin/perl5.36", 0o755, b"#!/bin/sh\necho perl\n");
    file(&mut b, "ro/inside", 0o444, b"read-only dir\n");
    let mut link = header("usr/bin/perl", Link, 0o755, 0);
    b.append_link(&mut link, "usr/bin/perl", "usr/bin/perl5.36")
        .unwrap();
    let mut sym = header("usr/bin/perl-link", Symlink, 0o777, 0);
    b.append_link(&mut sym, "usr/bin/perl-link", "perl5.36")
        .unwrap();
    let mut init = header("sbin/init", Symlink, 0o777, 0);
    b.append_link(&mut init, "sbin/init", "/lib/systemd/systemd")
        .unwrap();
    if device {
        let mut null = header("dev/null", Char, 0o666, 0);
        null.set_device_major(1).unwrap();
        null.set_device_minor(3).unwrap();
        null.set_cksum();
        b.append(&null, &[][..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_tar_becomes_an_image_with_hard_links_and_modes_kept() {
    if !e2fsprogs("a_tar_becomes_an_image_with_hard_links_and_modes_kept") {
        return;
    }
    // Only root can make device nodes and keep owners; the rest is
    // checked either way (a non-root build must also clean up the
    // read-only directory it unpacked).
    let root = rustix::process::geteuid().is_root();
    let fx = Fixture::new();
    let tar = docker_like_tar(root);
    for (name, bytes, kind) in [
        ("plain.tar", tar.clone(), SourceKind::Tar),
        ("export.tar.gz", gzip(&tar), SourceKind::GzipTar),
    ] {
        let archive = fx.path(name);
        std::fs::write(&archive, bytes).unwrap();
        let out = format!("{name}.ext4");
        let events = std::cell::RefCell::new(Vec::new());
        let report = build_rootfs(&fx.options(&archive, &out), &|p| {
            events.borrow_mut().push(p)
        })
        .unwrap();
        let image = fx.path(&out);
        assert_eq!(report.source, kind);
        assert_eq!(report.owners_kept, root);
        assert!(
            events
                .borrow()
                .iter()
                .any(|p| matches!(p, Progress::Unpack { done_bytes, total_bytes } if done_bytes == total_bytes)),
            "{:?}",
            events.borrow()
        );

        assert_eq!(cat(&image, "/etc/os-release"), b"ID=test\n");
        let perl = stat(&image, "/usr/bin/perl5.36").unwrap();
        let linked = stat(&image, "/usr/bin/perl").unwrap();
        assert_eq!(
            (perl.inode, perl.links, perl.mode),
            (linked.inode, 2, 0o755),
            "one inode, two names"
        );
        if root {
            assert_eq!(perl.uid, 1234, "owners kept as root");
            let null = stat(&image, "/dev/null").unwrap();
            assert_eq!(
                (null.kind.as_str(), null.mode),
                ("character special", 0o666)
            );
        }
        assert_eq!(stat(&image, "/usr/bin/perl-link").unwrap().kind, "symlink");
        assert_eq!(stat(&image, "/ro").unwrap().mode, 0o555);
        assert_eq!(stat(&image, "/ro/inside").unwrap().mode, 0o444);
        assert_eq!(cat(&image, "/sbin/init"), AGENT);
        assert_eq!(
            report.replaced,
            Some(Replaced::Symlink {
                target: "/lib/systemd/systemd".into()
            })
        );
        run("e2fsck", &["-fn"], &image);
    }
    // The staging directories went with the builds.
    assert_eq!(
        fx.listing(),
        [
            "export.tar.gz",
            "export.tar.gz.ext4",
            "firehost-agent",
            "plain.tar",
            "plain.tar.ext4"
        ]
    );
}

#[test]
fn a_device_node_needs_root_and_says_so() {
    if !e2fsprogs("a_device_node_needs_root_and_says_so") {
        return;
    }
    if rustix::process::geteuid().is_root() {
        skip(
            "a_device_node_needs_root_and_says_so",
            "runs as root, which can make device nodes",
        );
        return;
    }
    let fx = Fixture::new();
    let archive = fx.path("dev.tar");
    std::fs::write(&archive, docker_like_tar(true)).unwrap();
    let err = build_rootfs(&fx.options(&archive, "dev.ext4"), &|_| {}).unwrap_err();
    assert!(
        matches!(&err, ImageError::DeviceNeedsRoot { entry } if entry == Path::new("dev/null")),
        "{err:?}"
    );
    assert_eq!(fx.listing(), ["dev.tar", "firehost-agent"]);
}

#[test]
fn read_only_sets_the_ext4_read_only_feature() {
    if !e2fsprogs("read_only_sets_the_ext4_read_only_feature") {
        return;
    }
    let fx = Fixture::new();
    let src = fx.path("src");
    source_tree(&src);
    let options = RootfsOptions {
        read_only: true,
        size_mib: Some(80),
        ..fx.options(&src, "ro.ext4")
    };
    let report = build_rootfs(&options, &|_| {}).unwrap();
    assert!(report.read_only && !report.size_computed);
    assert_eq!(report.size_mib, 80);
    let image = fx.path("ro.ext4");
    let header = run("dumpe2fs", &["-h"], &image);
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap();
    assert!(
        features.split_whitespace().any(|f| f == "read-only"),
        "{features}"
    );
    assert_eq!(cat(&image, "/sbin/init"), AGENT);

    let writable = fx.path("rw.ext4");
    build_rootfs(&fx.options(&src, "rw.ext4"), &|_| {}).unwrap();
    assert!(!run("dumpe2fs", &["-h"], &writable).contains("read-only"));
}

/// A tar whose one entry has `name` written straight into the header (the
/// tar crate refuses to make such names).
fn tar_with_raw_name(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(0);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

/// An archive with a symlink to `/tmp/<dir>` and a file written through it.
fn tar_through_symlink(outside: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut link = header("escape", tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut link, "escape", outside).unwrap();
    let h = header("escape/pwned", tar::EntryType::Regular, 0o644, 3);
    b.append(&h, &b"bad"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn refused_builds_leave_no_output_and_no_leftovers() {
    if !e2fsprogs("refused_builds_leave_no_output_and_no_leftovers") {
        return;
    }
    let fx = Fixture::new();
    let src = fx.path("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    // Random bytes: 6 MiB that compress to nothing would not fill the image.
    let mut noise = Vec::with_capacity(6 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 6 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(src.join("data/blob"), &noise).unwrap();
    let outside = fx.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let archives = [
        (
            "dotdot.tar",
            tar_with_raw_name("../evil", tar::EntryType::Regular, None),
        ),
        (
            "absolute.tar",
            tar_with_raw_name("/etc/evil", tar::EntryType::Regular, None),
        ),
        (
            "hardlink.tar",
            tar_with_raw_name("x", tar::EntryType::Link, Some("../../etc/passwd")),
        ),
        ("symlink.tar", tar_through_symlink(&outside)),
        ("not-a-tar", b"#!/bin/sh\necho not a tar\n".to_vec()),
    ];
    for (name, bytes) in &archives {
        std::fs::write(fx.path(name), bytes).unwrap();
    }
    let before = fx.listing();

    type Check = fn(&ImageError) -> bool;
    let cases: Vec<(&str, RootfsOptions, Check)> = vec![
        (
            "size below the content",
            RootfsOptions {
                size_mib: Some(2),
                ..fx.options(&src, "out.ext4")
            },
            |e| matches!(e, ImageError::TooSmall { size_mib: 2, needed_mib } if *needed_mib > 64),
        ),
        (
            "size below content and file system overhead",
            RootfsOptions {
                size_mib: Some(8),
                ..fx.options(&src, "out.ext4")
            },
            |e| matches!(e, ImageError::TooSmall { size_mib: 8, .. }),
        ),
        (
            "tar with ..",
            fx.options(&fx.path("dotdot.tar"), "out.ext4"),
            |e| matches!(e, ImageError::UnsafeEntry { reason: UnsafeReason::ParentDir, entry } if entry == Path::new("../evil")),
        ),
        (
            "tar with an absolute path",
            fx.options(&fx.path("absolute.tar"), "out.ext4"),
            |e| {
                matches!(
                    e,
                    ImageError::UnsafeEntry {
                        reason: UnsafeReason::Absolute,
                        ..
                    }
                )
            },
        ),
        (
            "tar with a hard link out",
            fx.options(&fx.path("hardlink.tar"), "out.ext4"),
            |e| {
                matches!(
                    e,
                    ImageError::UnsafeEntry {
                        reason: UnsafeReason::BadLinkTarget { .. },
                        ..
                    }
                )
            },
        ),
        (
            "tar writing through a symlink",
            fx.options(&fx.path("symlink.tar"), "out.ext4"),
            |e| {
                matches!(
                    e,
                    ImageError::UnsafeEntry {
                        reason: UnsafeReason::ThroughSymlink { .. },
                        ..
                    }
                )
            },
        ),
        (
            "a file that is not a tar",
            fx.options(&fx.path("not-a-tar"), "out.ext4"),
            |e| matches!(e, ImageError::UnknownSource { .. }),
        ),
        (
            "missing source",
            fx.options(&fx.path("no-such-dir"), "out.ext4"),
            |e| matches!(e, ImageError::Source { .. }),
        ),
        (
            "missing agent",
            RootfsOptions {
                agent: fx.path("no-such-agent"),
                ..fx.options(&src, "out.ext4")
            },
            |e| {
                matches!(
                    e,
                    ImageError::BadInput {
                        what: "agent binary",
                        ..
                    }
                )
            },
        ),
        (
            "output inside the source",
            RootfsOptions {
                out: src.join("inside.ext4"),
                ..fx.options(&src, "unused")
            },
            |e| matches!(e, ImageError::OutputInSource { .. }),
        ),
    ];
    for (what, options, check) in cases {
        let err = build_rootfs(&options, &|_| {}).expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(fx.listing(), before, "{what}: leftovers");
        assert!(!src.join("inside.ext4").exists());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{what}: nothing written outside"
        );
    }
}

#[test]
fn an_existing_output_is_refused_unless_forced() {
    if !e2fsprogs("an_existing_output_is_refused_unless_forced") {
        return;
    }
    let fx = Fixture::new();
    let src = fx.path("src");
    source_tree(&src);
    let out = fx.path("rootfs.ext4");
    std::fs::write(&out, b"precious").unwrap();
    let err = build_rootfs(&fx.options(&src, "rootfs.ext4"), &|_| {}).unwrap_err();
    assert!(matches!(err, ImageError::OutputExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    let forced = RootfsOptions {
        force: true,
        ..fx.options(&src, "rootfs.ext4")
    };
    build_rootfs(&forced, &|_| {}).unwrap();
    assert_eq!(cat(&out, "/sbin/init"), AGENT);
    assert_eq!(fx.listing(), ["firehost-agent", "rootfs.ext4", "src"]);
}

/// One entry of a newc archive: name, mode, rdev, data.
type CpioEntry = (String, u32, (u32, u32), Vec<u8>);

/// A minimal reader of what `build_initramfs` wrote, gzip included.
fn read_initramfs(path: &Path) -> Vec<CpioEntry> {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        assert_eq!(&bytes[at..at + 6], b"070701");
        let field = |i: usize| {
            let hex = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        };
        let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
        let rdev = (field(9), field(10));
        let name = String::from_utf8(bytes[at + 110..at + 110 + name_size - 1].to_vec()).unwrap();
        let data_at = (at + 110 + name_size).next_multiple_of(4);
        let data = bytes[data_at..data_at + size].to_vec();
        at = (data_at + size).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push((name, mode, rdev, data));
    }
}

#[test]
fn the_initramfs_holds_the_agent_as_init_busybox_and_device_nodes() {
    let fx = Fixture::new();
    let busybox = fx.path("busybox");
    std::fs::write(&busybox, b"#!/bin/sh\necho pretend busybox\n").unwrap();
    let out = fx.path("initramfs.cpio.gz");
    let options = InitramfsOptions {
        agent: fx.agent.clone(),
        busybox: busybox.clone(),
        out: out.clone(),
        force: false,
    };
    let report = build_initramfs(&options).unwrap();
    assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());
    let entries = read_initramfs(&out);
    assert_eq!(report.entries, entries.len() as u64);
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("{name} missing: {entries:?}"))
    };
    assert_eq!(find("init").1, 0o100_755);
    assert_eq!(find("init").3, AGENT);
    assert_eq!(find("bin/busybox").1, 0o100_755);
    assert_eq!(find("dev/console").1 & 0o170_000, 0o020_000);
    assert_eq!(find("dev/console").2, (5, 1));
    assert_eq!(find("dev/null").2, (1, 3));
    for dir in ["proc", "sys", "dev", "tmp", "run", "etc", "root", "bin"] {
        assert_eq!(find(dir).1 & 0o170_000, 0o040_000, "{dir}");
    }
    assert_eq!(find("tmp").1 & 0o7777, 0o1777);
    for applet in firehost::image::BUSYBOX_APPLETS {
        let link = find(&format!("bin/{applet}"));
        assert_eq!((link.1, link.3.as_slice()), (0o120_777, &b"busybox"[..]));
    }
    // Parents first, as the kernel needs.
    let position = |name: &str| entries.iter().position(|e| e.0 == name).unwrap();
    assert!(position("dev") < position("dev/console"));
    assert!(position("bin") < position("bin/busybox"));

    // Same inputs, same bytes.
    let again = InitramfsOptions {
        out: fx.path("again.cpio.gz"),
        ..options.clone()
    };
    build_initramfs(&again).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&again.out).unwrap()
    );

    // GNU cpio, where installed, reads it the same way.
    if let Some(cpio) = tool("cpio") {
        use std::io::Read;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut child = Command::new(cpio)
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let listed = child.wait_with_output().unwrap();
        assert!(listed.status.success());
        let names: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let ours: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        assert_eq!(names, ours);
    } else {
        skip(
            "the_initramfs_holds_the_agent_as_init_busybox_and_device_nodes",
            "cpio not installed: checked with the built-in reader only",
        );
    }
}

#[test]
fn the_initramfs_refuses_a_dynamic_busybox_and_an_existing_output() {
    let fx = Fixture::new();
    let out = fx.path("initramfs.cpio.gz");
    // The host's own shell is dynamically linked on glibc systems.
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let bytes = std::fs::read(&sh).unwrap();
    let options = InitramfsOptions {
        agent: fx.agent.clone(),
        busybox: sh,
        out: out.clone(),
        force: false,
    };
    match build_initramfs(&options) {
        Err(err @ ImageError::NotStatic { what, .. }) => {
            assert_eq!(what, "busybox binary");
            assert!(err.to_string().contains("busybox-static"), "{err}");
            assert!(!out.exists());
        }
        Ok(_) => {
            skip(
                "the_initramfs_refuses_a_dynamic_busybox_and_an_existing_output",
                "/bin/sh is static here: no dynamic binary to refuse",
            );
            std::fs::remove_file(&out).unwrap();
        }
        Err(e) => panic!("{e:?}"),
    }
    assert!(bytes.len() > 4, "read the shell");

    let busybox = fx.path("busybox");
    std::fs::write(&busybox, b"#!/bin/sh\n").unwrap();
    std::fs::write(&out, b"precious").unwrap();
    let options = InitramfsOptions { busybox, ..options };
    let err = build_initramfs(&options).unwrap_err();
    assert!(matches!(err, ImageError::OutputExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    build_initramfs(&InitramfsOptions {
        force: true,
        ..options
    })
    .unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(
        fx.listing(),
        ["busybox", "firehost-agent", "initramfs.cpio.gz"]
    );
}

/// A dynamically linked ELF agent (its program interpreter named), built
/// by hand: 64-bit little-endian, one `PT_INTERP` program header.
fn dynamic_elf(interpreter: &str) -> Vec<u8> {
    let mut elf = vec![0u8; 0x40 + 0x38];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes());
    let offset = elf.len() as u64;
    let segment = format!("{interpreter}\0");
    elf[0x48..0x50].copy_from_slice(&offset.to_le_bytes());
    elf[0x60..0x68].copy_from_slice(&(segment.len() as u64).to_le_bytes());
    elf.extend_from_slice(segment.as_bytes());
    elf
}

#[test]
fn a_dynamic_agent_without_its_loader_in_the_tree_is_refused() {
    if !e2fsprogs("a_dynamic_agent_without_its_loader_in_the_tree_is_refused") {
        return;
    }
    let fx = Fixture::new();
    let loader = "/lib64/ld-linux-x86-64.so.2";
    std::fs::write(&fx.agent, dynamic_elf(loader)).unwrap();
    let src = fx.path("src");
    source_tree(&src);
    let before = fx.listing();
    let err = build_rootfs(&fx.options(&src, "rootfs.ext4"), &|_| {}).unwrap_err();
    match &err {
        ImageError::AgentNeedsLoader { interpreter, .. } => assert_eq!(interpreter, loader),
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("cargo build --release -p firehost-agent"),
        "the fix is in the message: {message}"
    );
    assert_eq!(fx.listing(), before, "nothing written");

    // A tree that has the loader (behind a merged-/usr style absolute
    // link, as Debian's) can start it.
    std::fs::create_dir_all(src.join("usr/lib64")).unwrap();
    std::fs::write(src.join("usr/lib64/ld-linux-x86-64.so.2"), b"loader").unwrap();
    std::os::unix::fs::symlink("/usr/lib64", src.join("lib64")).unwrap();
    build_rootfs(&fx.options(&src, "rootfs.ext4"), &|_| {}).unwrap();
}
