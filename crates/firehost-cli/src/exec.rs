//! `exec` and `cp`: commands and files through a VM's guest agent.
//!
//! Both wait (up to `--ready-timeout-s`) for the agent to answer, then use
//! [`firehost::agent::AgentClient`]. `exec` streams the process's output
//! to this command's stdout and stderr as it arrives, feeds it this
//! command's stdin with `-i`, and exits with the process's code
//! ([`Exit::Process`]). `cp` streams files in chunks either way; a file
//! written into the VM is replaced atomically by the agent.

use std::collections::BTreeMap;
use std::time::Duration;

use firehost::Manager;
use firehost::agent::{AgentClient, ExecEvent, ExecRequest, Secret, WriteFileRequest};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{CpArgs, ExecArgs};
use crate::commands::{Out, vm_id};
use crate::exit::{CliError, Exit};

/// Connects to the VM's agent and waits until it answers.
async fn ready_agent(
    manager: &Manager,
    name: &str,
    timeout_s: u64,
) -> Result<AgentClient, CliError> {
    let agent = manager.agent(&vm_id(name)?).await?;
    agent.wait_ready(Duration::from_secs(timeout_s)).await?;
    Ok(agent)
}

/// `KEY=VALUE` pairs into the request's environment.
fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, Secret>, CliError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), Secret(value.to_owned()))),
            _ => Err(CliError::Unsupported {
                what: format!(
                    "--env {:?} is not KEY=VALUE",
                    pair.split('=').next().unwrap_or("")
                ),
            }),
        })
        .collect()
}

/// `UID` or `UID:GID`.
fn parse_user(user: &str) -> Result<(u32, Option<u32>), CliError> {
    let bad = || CliError::Unsupported {
        what: format!("--user {user:?} is not UID or UID:GID (numbers)"),
    };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(str::parse).transpose().map_err(|_| bad())?;
    Ok((uid, gid))
}

/// `exec`: runs the command and returns its exit code.
pub async fn exec(manager: &Manager, args: ExecArgs, out: Out) -> Result<Exit, CliError> {
    if out.json() {
        return Err(CliError::Unsupported {
            what: "exec streams the process's own output; --json is not supported".into(),
        });
    }
    let mut request = ExecRequest::new(args.command.clone());
    request.env = parse_env(&args.env)?;
    request.cwd = args.workdir.clone();
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        request.uid = Some(uid);
        request.gid = gid;
    }
    request.stdin = args.interactive;
    request.tty = args.tty;
    request.timeout_ms = args.timeout_s.map(|s| s.saturating_mul(1000));

    let agent = ready_agent(manager, &args.name, args.ready_timeout_s).await?;
    let raw = if args.tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    let session = agent.exec(request).await?;
    let (mut input, mut output, _pid) = session.split();
    if args.tty
        && let Some((rows, cols)) = terminal::size()
    {
        input.resize(rows, cols).await?;
    }

    let feed = async move {
        if args.interactive {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = stdin.read(&mut buf).await.map_err(CliError::Output)?;
                if n == 0 {
                    break;
                }
                input.write_stdin(&buf[..n]).await?;
            }
            input.close_stdin().await?;
        }
        // The session ends when its input half is dropped: keep it until
        // the process has exited.
        std::future::pending::<()>().await;
        Ok::<(), CliError>(())
    };
    let drain = async {
        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        loop {
            match output.next().await? {
                Some(ExecEvent::Stdout(bytes)) => {
                    stdout.write_all(&bytes).await.map_err(CliError::Output)?;
                    stdout.flush().await.map_err(CliError::Output)?;
                }
                Some(ExecEvent::Stderr(bytes)) => {
                    let _ = stderr.write_all(&bytes).await;
                }
                Some(ExecEvent::Exited(status)) => return Ok::<_, CliError>(status),
                None => {
                    return Err(CliError::Agent(firehost::agent::AgentError::Closed(
                        "the process exited",
                    )));
                }
            }
        }
    };
    let status = tokio::select! {
        status = drain => status,
        fed = feed => match fed {
            Err(e) => Err(e),
            Ok(()) => unreachable!("the feeder never finishes on its own"),
        },
    };
    drop(raw);
    let status = status?;
    let code = if status.timed_out {
        124
    } else if let Some(signal) = status.signal {
        u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(255)
    } else {
        status
            .code
            .map_or(255, |c| u8::try_from(c & 0xff).unwrap_or(255))
    };
    Ok(Exit::Process(code))
}

/// One side of a `cp`.
enum Place {
    Local(String),
    Vm { name: String, path: String },
}

impl Place {
    fn parse(text: &str) -> Place {
        // A local path with a ':' is written ./a:b; a VM name never holds
        // '/' or '.', so NAME:PATH is unambiguous.
        match text.split_once(':') {
            Some((name, path))
                if !name.is_empty()
                    && !name.contains('/')
                    && !name.starts_with('.')
                    && path.starts_with('/') =>
            {
                Place::Vm {
                    name: name.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Place::Local(text.to_owned()),
        }
    }
}

/// What `cp --json` prints.
#[derive(Debug, Serialize)]
pub struct CopiedJson {
    /// The VM.
    pub name: String,
    /// `"to_vm"` or `"from_vm"`.
    pub direction: &'static str,
    /// The path in the VM.
    pub vm_path: String,
    /// The local path (`-` for stdin or stdout).
    pub local_path: String,
    /// Bytes copied.
    pub bytes: u64,
}

/// `cp`.
pub async fn cp(manager: &Manager, args: CpArgs, out: Out) -> Result<(), CliError> {
    let (name, vm_path, local, to_vm) = match (Place::parse(&args.src), Place::parse(&args.dst)) {
        (Place::Local(local), Place::Vm { name, path }) => (name, path, local, true),
        (Place::Vm { name, path }, Place::Local(local)) => (name, path, local, false),
        _ => {
            return Err(CliError::Unsupported {
                what: "cp needs exactly one side written NAME:/absolute/path".into(),
            });
        }
    };
    let mode = args
        .mode
        .as_deref()
        .map(|m| u32::from_str_radix(m, 8))
        .transpose()
        .map_err(|_| CliError::Unsupported {
            what: format!(
                "--mode {:?} is not octal permission bits",
                args.mode.as_deref().unwrap_or("")
            ),
        })?;
    if local == "-" && out.json() && !to_vm {
        return Err(CliError::Unsupported {
            what: "cp to stdout and --json would mix on stdout".into(),
        });
    }
    let agent = ready_agent(manager, &name, args.ready_timeout_s).await?;
    let bytes = if to_vm {
        let request = |mode| WriteFileRequest {
            path: vm_path.clone(),
            mode,
            uid: None,
            gid: None,
            create_dirs: args.parents,
        };
        if local == "-" {
            agent
                .write_file(request(mode.unwrap_or(0o644)), tokio::io::stdin())
                .await?
        } else {
            let file = tokio::fs::File::open(&local)
                .await
                .map_err(|e| local_error(&local, "open", e))?;
            let meta = file
                .metadata()
                .await
                .map_err(|e| local_error(&local, "stat", e))?;
            use std::os::unix::fs::PermissionsExt;
            let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
            agent.write_file(request(mode), file).await?
        }
    } else if local == "-" {
        agent.read_file(&vm_path, tokio::io::stdout()).await?.1
    } else {
        // Into a temporary file beside the target, renamed when complete,
        // so a failed copy never leaves half a file under the final name.
        let target = std::path::PathBuf::from(&local);
        let tmp = {
            let mut name = target.file_name().unwrap_or_default().to_owned();
            name.push(format!(".firehost-cp-{}", std::process::id()));
            target.with_file_name(name)
        };
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| local_error(&local, "create", e))?;
        let copied = agent.read_file(&vm_path, file).await;
        let (stat, bytes) = match copied {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(mode.unwrap_or(stat.mode & 0o7777));
        let finish =
            std::fs::set_permissions(&tmp, perms).and_then(|()| std::fs::rename(&tmp, &target));
        if let Err(e) = finish {
            let _ = std::fs::remove_file(&tmp);
            return Err(local_error(&local, "write", e));
        }
        bytes
    };
    if local == "-" && !to_vm {
        return Ok(());
    }
    let copied = CopiedJson {
        name,
        direction: if to_vm { "to_vm" } else { "from_vm" },
        vm_path,
        local_path: local,
        bytes,
    };
    out.emit(&copied, |c| {
        format!(
            "{} {} bytes {} {}:{}\n",
            if c.direction == "to_vm" {
                "copied"
            } else {
                "fetched"
            },
            c.bytes,
            if c.direction == "to_vm" { "to" } else { "from" },
            c.name,
            c.vm_path
        )
    })
}

fn local_error(path: &str, op: &'static str, source: std::io::Error) -> CliError {
    CliError::LocalFile {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The local terminal, for `exec -t`.
mod terminal {
    use rustix::termios::{self, OptionalActions, Termios};

    /// The terminal's size (rows, columns), when stdin is one.
    pub fn size() -> Option<(u16, u16)> {
        let ws = termios::tcgetwinsize(std::io::stdin()).ok()?;
        Some((ws.ws_row, ws.ws_col))
    }

    /// Stdin in raw mode until dropped (the keys go to the guest's tty,
    /// which does its own line editing and signals).
    #[derive(Debug)]
    pub struct RawMode {
        saved: Termios,
    }

    impl RawMode {
        /// Raw mode, or `None` when stdin is not a terminal.
        pub fn enter() -> Option<RawMode> {
            let stdin = std::io::stdin();
            let saved = termios::tcgetattr(&stdin).ok()?;
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
            Some(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_places_are_vm_paths_only_when_unambiguous() {
        assert!(
            matches!(Place::parse("web:/etc/hosts"), Place::Vm { ref name, ref path } if name == "web" && path == "/etc/hosts")
        );
        for local in [
            "./web:/x",
            "file.txt",
            "-",
            "dir/a:/b",
            "web:relative",
            ":/x",
        ] {
            assert!(matches!(Place::parse(local), Place::Local(_)), "{local}");
        }
    }

    #[test]
    fn env_and_user_parse_strictly() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(env["B"].0, "x=y");
        assert_eq!(env["C"].0, "");
        assert!(parse_env(&["=1".into()]).is_err());
        assert!(parse_env(&["NOEQ".into()]).is_err());
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, Some(50)));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
