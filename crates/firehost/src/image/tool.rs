//! The e2fsprogs tools the rootfs builder runs: finding them, and running
//! them with an argument vector (never a shell) while the caller watches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::ImageError;

/// An external program and the Debian package that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tool {
    /// The program's name.
    pub name: &'static str,
    /// Its package.
    pub package: &'static str,
}

/// Makes the file system from a directory tree (`-d`).
pub(crate) const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
};
/// Writes the agent into the finished file system.
pub(crate) const DEBUGFS: Tool = Tool {
    name: "debugfs",
    package: "e2fsprogs",
};
/// Sets the `read-only` feature (`mkfs.ext4` refuses to set it itself).
pub(crate) const TUNE2FS: Tool = Tool {
    name: "tune2fs",
    package: "e2fsprogs",
};

/// Where Debian keeps administration tools; not in a normal user's `PATH`,
/// and e2fsprogs lives there.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// How often a running tool's progress is sampled.
const TICK: Duration = Duration::from_millis(100);

impl Tool {
    /// The tool's path: from `PATH`, else from the sbin directories.
    ///
    /// # Errors
    ///
    /// [`ImageError::ToolMissing`] naming the package to install.
    pub fn find(self) -> Result<PathBuf, ImageError> {
        if let Some(found) = crate::fsutil::find_binary(Path::new(self.name)) {
            return Ok(found);
        }
        SBIN_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(self.name))
            .find(|p| crate::fsutil::find_binary(p).is_some())
            .ok_or(ImageError::ToolMissing {
                tool: self.name,
                package: self.package,
            })
    }
}

/// What a finished tool run left.
#[derive(Debug)]
pub(crate) struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Finished {
    /// The [`ImageError::ToolFailed`] for this run.
    pub fn failure(self, tool: Tool) -> ImageError {
        ImageError::ToolFailed {
            tool: tool.name,
            status: self.status,
            stderr: one_line(&self.stderr),
        }
    }
}

/// Runs `path args…` in `cwd` to completion, calling `tick` every
/// [`TICK`] while it runs. Output is collected by reader threads so a
/// chatty tool never blocks on a full pipe. The C locale keeps the
/// messages that are matched (out of space) in English.
pub(crate) fn run(
    tool: Tool,
    path: &Path,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    tick: &mut dyn FnMut(),
) -> Result<Finished, ImageError> {
    let mut command = Command::new(path);
    command
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ImageError::ToolMissing {
            tool: tool.name,
            package: tool.package,
        },
        _ => ImageError::Io {
            op: "run",
            path: path.to_owned(),
            source,
        },
    })?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                tick();
                std::thread::sleep(TICK);
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ImageError::Io {
                    op: "wait for",
                    path: path.to_owned(),
                    source,
                });
            }
        }
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A tool's multi-line message as one line: lines joined with "; ",
/// blanks and debugfs's version banner dropped.
pub(crate) fn one_line(text: &str) -> String {
    meaningful_lines(text).collect::<Vec<_>>().join("; ")
}

/// The lines of a tool's stderr that say something: not blank, not the
/// `debugfs 1.47.0 (5-Feb-2023)` banner every e2fsprogs tool starts with.
fn meaningful_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| {
        !l.is_empty()
            && !["debugfs ", "tune2fs ", "mke2fs ", "mkfs.ext4 "]
                .iter()
                .any(|banner| l.starts_with(banner) && l.ends_with(')'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners_and_blank_lines_are_not_messages() {
        let stderr = "debugfs 1.47.0 (5-Feb-2023)\n\nwrite: Could not allocate block\n  rm: File not found \n";
        assert_eq!(
            one_line(stderr),
            "write: Could not allocate block; rm: File not found"
        );
        assert_eq!(one_line("debugfs 1.47.0 (5-Feb-2023)\n"), "");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let tool = Tool {
            name: "no-such-tool-firehost",
            package: "firehost-test-package",
        };
        let err = tool.find().unwrap_err();
        assert!(
            err.to_string()
                .contains("install the firehost-test-package package"),
            "{err}"
        );
    }
}
