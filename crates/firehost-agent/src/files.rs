//! `WriteFile`, `ReadFile`, `Stat` and `List`.
//!
//! # Writing atomically
//!
//! A file is never seen half written: the data goes into a temporary file
//! beside the target (same directory, so the rename stays on one
//! filesystem), created with `O_EXCL`, mode 0600 and a random name
//! ([`temp_name`]), streamed frame by frame and never held in memory. On
//! `Eof` the agent sets the owner (when asked; first, because `chown`
//! clears set-user-ID bits), then the mode, syncs the file, renames it over
//! the target and syncs the directory so that the rename survives a crash.
//! If anything fails, or the connection ends before `Eof`, the temporary
//! file is removed and the target is untouched.
//!
//! # Paths
//!
//! Every path must be absolute: the agent has no notion of a current
//! directory for the host. Names that are not UTF-8 are listed lossily
//! (U+FFFD), because the protocol's paths are strings.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use firehost_proto::{
    AgentMessage, CHUNK, FileKind, FileStat, FrameKind, WriteFileRequest, read_frame,
};
use rustix::rand::GetRandomFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::RequestError;
use crate::session::{Reader, Writer, send, send_frame};

/// How many random names are tried before giving up on a temporary file
/// (a collision needs a 64-bit random match; more than one is an attack or
/// a broken random source).
const TEMP_ATTEMPTS: usize = 8;

/// How much of the target's name the temporary name repeats (it only has to
/// be recognisable, and must stay under `NAME_MAX` with the suffix).
const TEMP_NAME_PREFIX_MAX: usize = 64;

/// The mode of directories made by `create_dirs`.
const DIR_MODE: u32 = 0o755;

/// Describes `md` under the name `path`.
pub fn file_stat(path: String, md: &Metadata) -> FileStat {
    let file_type = md.file_type();
    let kind = if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let mtime_ms = md
        .mtime()
        .saturating_mul(1000)
        .saturating_add(md.mtime_nsec() / 1_000_000);
    FileStat {
        path,
        kind,
        size: md.len(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ms,
    }
}

/// `path` as a [`Path`], if it is absolute.
fn absolute(path: &str) -> Result<&Path, RequestError> {
    let p = Path::new(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(RequestError::bad_request(format!(
            "path {path:?} is not absolute"
        )))
    }
}

/// 64 random bits for a temporary name. `GRND_INSECURE` never blocks, even
/// in a guest whose entropy pool is not ready yet; where the kernel lacks
/// it, the clock and a counter stand in: `O_EXCL` keeps the creation safe
/// whatever the name, the randomness only makes it hard to guess.
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    for flags in [GetRandomFlags::INSECURE, GetRandomFlags::NONBLOCK] {
        if let Ok(8) = rustix::rand::getrandom(&mut buf[..], flags) {
            return u64::from_ne_bytes(buf);
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 30)
        ^ u64::from(now.subsec_nanos())
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The temporary name for a file called `name`: hidden, recognisable,
/// random, `.NAME.RANDOM.firehost-tmp`.
pub fn temp_name(name: &str, random: u64) -> String {
    let mut end = name.len().min(TEMP_NAME_PREFIX_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.{random:016x}.firehost-tmp", &name[..end])
}

/// A temporary file that is removed when dropped, unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // One unlink, in drop so that it also runs when the session
            // task is dropped; too short to matter to the runtime.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the temporary file in `dir` for `name`.
async fn create_temp(
    dir: &Path,
    name: &str,
    target: &str,
) -> Result<(tokio::fs::File, TempFile), RequestError> {
    for _ in 0..TEMP_ATTEMPTS {
        let path = dir.join(temp_name(name, random_u64()));
        let opened = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await;
        match opened {
            Ok(file) => return Ok((file, TempFile { path, keep: false })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RequestError::fs("create a temporary file for", target, e)),
        }
    }
    Err(RequestError::Io {
        op: "create a temporary file for",
        path: target.to_owned(),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// Serves `WriteFile`: reads `Data` frames up to `Eof` from `r`, puts the
/// file in place, answers `Written`.
///
/// # Cancel safety
///
/// Dropping the future removes the temporary file (unless the final steps
/// already run on a blocking thread, which then completes them).
pub async fn write(
    req: WriteFileRequest,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<(), RequestError> {
    let target = absolute(&req.path)?.to_owned();
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| RequestError::bad_request(format!("{:?} names no file", req.path)))?
        .to_owned();
    let dir = target
        .parent()
        .ok_or_else(|| RequestError::bad_request(format!("{:?} names no file", req.path)))?
        .to_owned();
    if req.create_dirs {
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .await
            .map_err(|e| RequestError::fs("create the directories of", &req.path, e))?;
    }
    let (file, temp) = create_temp(&dir, &name, &req.path).await?;
    // Frames are 64 KiB and each tokio file write is a hop to the blocking
    // pool: gather them into large writes.
    let mut file = tokio::io::BufWriter::with_capacity(READ_BUFFER, file);
    let mut bytes = 0u64;
    loop {
        let frame = read_frame(r).await?.ok_or(RequestError::Closed {
            during: "the end of the file",
        })?;
        match frame.kind {
            FrameKind::Data => {
                file.write_all(&frame.payload)
                    .await
                    .map_err(|e| RequestError::fs("write", &req.path, e))?;
                bytes += frame.payload.len() as u64;
            }
            FrameKind::Eof => break,
            other => {
                return Err(RequestError::bad_request(format!(
                    "expected file data, got a {other:?} frame"
                )));
            }
        }
    }
    // tokio's File writes in the background: flush collects the last
    // write's error, which into_std would drop.
    file.flush()
        .await
        .map_err(|e| RequestError::fs("write", &req.path, e))?;
    let mut file = file.into_inner();
    file.flush()
        .await
        .map_err(|e| RequestError::fs("write", &req.path, e))?;
    let file = file.into_std().await;
    let path = req.path.clone();
    tokio::task::spawn_blocking(move || {
        finish(
            file,
            temp,
            &target,
            &dir,
            &path,
            req.mode & 0o7777,
            req.uid,
            req.gid,
        )
    })
    .await
    .map_err(|e| RequestError::Io {
        op: "finish",
        path: req.path.clone(),
        source: io::Error::other(e),
    })??;
    send(w, &AgentMessage::Written { bytes }).await
}

/// The blocking end of a write: owner, mode, fsync, rename, directory
/// fsync.
#[allow(clippy::too_many_arguments)]
fn finish(
    file: File,
    mut temp: TempFile,
    target: &Path,
    dir: &Path,
    path: &str,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), RequestError> {
    let fail = |op| move |e| RequestError::fs(op, path, e);
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&file, uid, gid).map_err(fail("chown"))?;
    }
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(fail("chmod"))?;
    file.sync_all().map_err(fail("sync"))?;
    drop(file);
    std::fs::rename(&temp.path, target).map_err(fail("rename onto"))?;
    temp.keep = true;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("sync the directory of"))
}

/// How much of a file `read` asks for, and `write` gathers, at once.
const READ_BUFFER: usize = 1 << 20;

/// Serves `ReadFile`: `FileInfo`, then `Data` frames, then `Eof`.
pub async fn read(path: &str, w: &mut Writer) -> Result<(), RequestError> {
    let p = absolute(path)?;
    let mut file = tokio::fs::File::open(p)
        .await
        .map_err(|e| RequestError::fs("open", path, e))?;
    let md = file
        .metadata()
        .await
        .map_err(|e| RequestError::fs("stat", path, e))?;
    if md.is_dir() {
        return Err(RequestError::Io {
            op: "read",
            path: path.to_owned(),
            source: io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    send(w, &AgentMessage::FileInfo(file_stat(path.to_owned(), &md))).await?;
    // Each read of a tokio file is a hop to the blocking pool: read in
    // large pieces and cut them into frames, or the hops, not the disk or
    // the connection, set the pace.
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| RequestError::fs("read", path, e))?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(CHUNK) {
            send_frame(w, FrameKind::Data, chunk).await?;
        }
    }
    send_frame(w, FrameKind::Eof, &[]).await
}

/// Serves `Stat`: describes `path` without following a final symlink.
pub async fn stat(path: &str) -> Result<FileStat, RequestError> {
    let p = absolute(path)?;
    let md = tokio::fs::symlink_metadata(p)
        .await
        .map_err(|e| RequestError::fs("stat", path, e))?;
    Ok(file_stat(path.to_owned(), &md))
}

/// Serves `List`: the entries of directory `path`, sorted by name, each
/// described without following symlinks. An entry removed while the
/// directory is read is left out.
pub async fn list(path: &str) -> Result<Vec<FileStat>, RequestError> {
    let p = absolute(path)?.to_owned();
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || list_blocking(&p, &owned))
        .await
        .map_err(|e| RequestError::Io {
            op: "list",
            path: path.to_owned(),
            source: io::Error::other(e),
        })?
}

fn list_blocking(dir: &Path, path: &str) -> Result<Vec<FileStat>, RequestError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| RequestError::fs("list", path, e))? {
        let entry = entry.map_err(|e| RequestError::fs("list", path, e))?;
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RequestError::fs("stat", &entry.path().to_string_lossy(), e));
            }
        };
        entries.push(file_stat(
            entry.file_name().to_string_lossy().into_owned(),
            &md,
        ));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_bounded_and_differ() {
        let name = temp_name("config.json", 0xabc);
        assert_eq!(name, ".config.json.0000000000000abc.firehost-tmp");
        let long = "é".repeat(200);
        let name = temp_name(&long, 1);
        assert!(name.len() < 100, "{}", name.len());
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn stats_describe_kind_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("l")).unwrap();
        let st = file_stat("f".into(), &std::fs::symlink_metadata(&file).unwrap());
        assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 5, 0o640));
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!(st.mtime_ms / 1000, md.mtime());
        let link = std::fs::symlink_metadata(dir.path().join("l")).unwrap();
        assert_eq!(file_stat("l".into(), &link).kind, FileKind::Symlink);
        let d = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(file_stat("d".into(), &d).kind, FileKind::Dir);
    }

    #[tokio::test]
    async fn relative_paths_are_refused() {
        for path in ["etc/passwd", "", "./x"] {
            let err = stat(path).await.unwrap_err();
            assert_eq!(err.code(), firehost_proto::ErrorCode::BadRequest, "{path}");
        }
    }
}
