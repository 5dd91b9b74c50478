//! Clones on a file system with reflinks: their own copies of writable
//! drives are `FICLONE`s, shared with the template until written, and say
//! so (`CopyMethod::Reflink`). The other suites run wherever the test's
//! temporary directory is (ext4 or tmpfs here, which copy data extents).
//!
//! The test makes an XFS file system in an image file, mounts it through
//! a loop device in a mount namespace of its own (the mount goes with the
//! namespace), and runs a manager whose state and images live there.
//! Needs root, `mkfs.xfs` (xfsprogs) and loop devices; elsewhere it says
//! why it skipped.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestHost;
use firehost::manager::{Manager, RestoreOptions, SnapshotOptions, StopOptions};
use firehost::record::CopyMethod;
use firehost::{VmId, VmSpec};

const T: &str = "clones_on_xfs_get_reflinked_copies_of_their_writable_drives";

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

/// Makes an XFS file system in `image` and mounts it on `dir`, in the
/// calling thread's mount namespace; says why not when it cannot.
fn mount_xfs(image: &Path, dir: &Path) -> Result<(), String> {
    std::fs::File::create(image)
        .and_then(|f| f.set_len(512 << 20))
        .map_err(|e| format!("make the image: {e}"))?;
    let made = Command::new("mkfs.xfs")
        .arg("-q")
        .arg(image)
        .output()
        .map_err(|e| format!("mkfs.xfs (xfsprogs) is not usable: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "mkfs.xfs failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mounted = Command::new("mount")
        .args(["-t", "xfs", "-o", "loop"])
        .arg(image)
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !mounted.status.success() {
        return Err(format!(
            "cannot loop-mount the image: {}",
            String::from_utf8_lossy(&mounted.stderr)
        ));
    }
    Ok(())
}

#[test]
fn clones_on_xfs_get_reflinked_copies_of_their_writable_drives() {
    if !rustix::process::geteuid().is_root() {
        return common::skip(T, "needs root to mount a file system");
    }
    let scratch = tempfile::tempdir().unwrap();
    let outcome = std::thread::spawn({
        let (image, dir) = (scratch.path().join("xfs.img"), scratch.path().join("xfs"));
        move || -> Result<(), String> {
            // A mount namespace of its own: every thread and process this
            // thread starts sees the mount; the host does not, and the
            // mount ends with the namespace.
            firehost_testkit::enter_private_netns()?;
            mount_xfs(&image, &dir)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(body(&dir));
            let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
            Ok(())
        }
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(why)) => common::skip(T, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn body(xfs: &Path) {
    let host = TestHost::new_in(xfs);
    // A template whose writable rootfs holds data.
    let rootfs = host.dir.path().join("template.ext4");
    std::fs::write(&rootfs, vec![0x5a; 8 << 20]).unwrap();
    let mut config = host.config();
    config.defaults.rootfs = Some(rootfs.clone());
    config.defaults.rootfs_read_only = false;
    let manager = Manager::open(config).await.unwrap();
    manager.run(&id("tpl"), VmSpec::default()).await.unwrap();
    let snap = "tpl-snap".parse().unwrap();
    let kept = SnapshotOptions {
        disks: true,
        ..SnapshotOptions::default()
    };
    manager.snapshot(&id("tpl"), &snap, kept).await.unwrap();

    let clone = manager
        .restore(&id("clone"), &snap, RestoreOptions::default())
        .await
        .unwrap();
    let own: Vec<_> = clone
        .own_drives
        .iter()
        .map(|d| (d.drive.as_str(), d.copy))
        .collect();
    assert_eq!(own, [("rootfs", CopyMethod::Reflink)], "a reflink on XFS");
    let copy = &clone.own_drives[0].path;
    assert_eq!(
        std::fs::read(copy).unwrap(),
        std::fs::read(&rootfs).unwrap()
    );
    // Written, the copy and the template part ways.
    std::fs::write(copy, b"the clone's own").unwrap();
    assert_eq!(std::fs::read(&rootfs).unwrap(), vec![0x5a; 8 << 20]);

    for vm in [id("clone"), id("tpl")] {
        manager.stop(&vm, StopOptions::default()).await.unwrap();
        manager.destroy(&vm).await.unwrap();
    }
}
