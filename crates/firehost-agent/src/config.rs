//! What the agent needs to start: where to listen, which token to demand,
//! whether `Shutdown` is allowed.
//!
//! The binary turns its flags into a [`Config`] (stage two of parsing:
//! addresses are checked by [`ListenAddr::from_str`], the token is found by
//! [`load_token`]) before anything listens.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use firehost_proto::Token;

/// The longest unix socket path: `sun_path` holds 108 bytes with the NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// The file the kernel command line is read from when no token file is
/// given.
pub const CMDLINE_PATH: &str = "/proc/cmdline";

/// Everything [`crate::serve`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (at least one).
    pub listen: Vec<ListenAddr>,
    /// Which tokens open a session.
    pub token: TokenPolicy,
    /// Whether `Shutdown` may power the guest off: when the agent is PID 1
    /// (the server is then PID 1's child) or with `--allow-shutdown`.
    pub allow_shutdown: bool,
}

/// One address to listen on, as given to `--listen`.
///
/// ```
/// use firehost_agent::ListenAddr;
///
/// assert_eq!("vsock:10000".parse::<ListenAddr>().unwrap(), ListenAddr::Vsock { port: 10_000 });
/// assert!("tcp:127.0.0.1:7000".parse::<ListenAddr>().is_ok());
/// assert!("tcp:0.0.0.0:7000".parse::<ListenAddr>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `vsock:PORT`: any CID (`VMADDR_CID_ANY`), this port.
    Vsock {
        /// The vsock port.
        port: u32,
    },
    /// `unix:PATH`: a unix socket (a stale socket file is replaced).
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
    /// `tcp:IP:PORT` with a loopback IP literal, for tests; the agent never
    /// listens on a routable address, where the token would be its only
    /// protection against the network.
    Tcp {
        /// The loopback address and port.
        addr: SocketAddr,
    },
}

/// Why a `--listen` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    /// The value has no `scheme:` prefix.
    #[error("`{0}` has no scheme: use vsock:PORT, unix:PATH or tcp:127.0.0.1:PORT")]
    NoScheme(String),
    /// The scheme is not `vsock`, `unix` or `tcp`.
    #[error("unknown scheme `{0}`: use vsock, unix or tcp")]
    UnknownScheme(String),
    /// The vsock port is not a number below 2^32 - 1 (`VMADDR_PORT_ANY`).
    #[error("bad vsock port `{0}`")]
    BadVsockPort(String),
    /// `unix:` with nothing after it.
    #[error("the unix socket path is empty")]
    EmptyPath,
    /// The unix socket path does not fit in `sun_path`.
    #[error("the unix socket path is {len} bytes, over the {UNIX_PATH_MAX}-byte limit")]
    PathTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not `IP:PORT` with a literal IP (no host names, so nothing resolves
    /// to a surprise).
    #[error("bad TCP address `{0}`: use tcp:IP:PORT with a literal loopback IP")]
    BadTcp(String),
    /// The IP is not a loopback address.
    #[error("{0} is not a loopback address: the agent listens on TCP only for local tests")]
    NotLoopback(IpAddr),
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| ListenAddrError::NoScheme(s.to_owned()))?;
        match scheme {
            "vsock" => match rest.parse::<u32>() {
                Ok(port) if port != u32::MAX => Ok(ListenAddr::Vsock { port }),
                _ => Err(ListenAddrError::BadVsockPort(rest.to_owned())),
            },
            "unix" => {
                if rest.is_empty() {
                    Err(ListenAddrError::EmptyPath)
                } else if rest.len() > UNIX_PATH_MAX {
                    Err(ListenAddrError::PathTooLong { len: rest.len() })
                } else {
                    Ok(ListenAddr::Unix { path: rest.into() })
                }
            }
            "tcp" => {
                let addr: SocketAddr = rest
                    .parse()
                    .map_err(|_| ListenAddrError::BadTcp(rest.to_owned()))?;
                if addr.ip().is_loopback() {
                    Ok(ListenAddr::Tcp { addr })
                } else {
                    Err(ListenAddrError::NotLoopback(addr.ip()))
                }
            }
            other => Err(ListenAddrError::UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
            ListenAddr::Unix { path } => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp { addr } => write!(f, "tcp:{addr}"),
        }
    }
}

/// Which tokens open a session.
#[derive(Debug, Clone)]
pub enum TokenPolicy {
    /// Only this one (compared with [`Token::matches`]).
    Required(Token),
    /// Any token: `--insecure-no-token` with no token to be found.
    AnyToken,
}

impl TokenPolicy {
    /// Whether `offered` opens a session.
    pub fn accepts(&self, offered: &Token) -> bool {
        match self {
            TokenPolicy::Required(token) => token.matches(offered),
            TokenPolicy::AnyToken => true,
        }
    }
}

/// Why no token policy could be settled.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `--token-file` could not be read.
    #[error("cannot read the token file {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--token-file` holds only whitespace.
    #[error("the token file {} is empty", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// Neither a token file nor `firehost.token=` on the kernel command line.
    #[error(
        "no token: give --token-file, or boot with firehost.token=<hex> on the kernel command \
         line (--insecure-no-token accepts any token instead)"
    )]
    Missing,
}

/// Finds the token: the contents of `token_file` (surrounding whitespace
/// trimmed) when given, else `firehost.token=` in the file at `cmdline`
/// (normally [`CMDLINE_PATH`]; an unreadable one counts as no token). With
/// neither, `insecure` decides between [`TokenPolicy::AnyToken`] and
/// [`TokenError::Missing`]. A token that is found always applies, even
/// with `insecure`.
pub fn load_token(
    token_file: Option<&Path>,
    cmdline: &Path,
    insecure: bool,
) -> Result<TokenPolicy, TokenError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::EmptyFile {
                path: path.to_owned(),
            });
        }
        return Ok(TokenPolicy::Required(Token(token.to_owned())));
    }
    let from_cmdline = std::fs::read_to_string(cmdline)
        .ok()
        .and_then(|line| Token::from_cmdline(&line));
    match from_cmdline {
        Some(token) => Ok(TokenPolicy::Required(token)),
        None if insecure => Ok(TokenPolicy::AnyToken),
        None => Err(TokenError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_or_are_refused() {
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        let cases: &[(&str, Result<ListenAddr, ListenAddrError>)] = &[
            ("vsock:10000", Ok(ListenAddr::Vsock { port: 10_000 })),
            ("vsock:0", Ok(ListenAddr::Vsock { port: 0 })),
            (
                "vsock:4294967295",
                Err(ListenAddrError::BadVsockPort("4294967295".into())),
            ),
            ("vsock:x", Err(ListenAddrError::BadVsockPort("x".into()))),
            (
                "unix:/run/agent.sock",
                Ok(ListenAddr::Unix {
                    path: "/run/agent.sock".into(),
                }),
            ),
            ("unix:", Err(ListenAddrError::EmptyPath)),
            (
                &long,
                Err(ListenAddrError::PathTooLong {
                    len: UNIX_PATH_MAX + 1,
                }),
            ),
            (
                "tcp:127.0.0.1:7000",
                Ok(ListenAddr::Tcp {
                    addr: "127.0.0.1:7000".parse().unwrap(),
                }),
            ),
            (
                "tcp:127.3.4.5:7000",
                Ok(ListenAddr::Tcp {
                    addr: "127.3.4.5:7000".parse().unwrap(),
                }),
            ),
            (
                "tcp:[::1]:7000",
                Ok(ListenAddr::Tcp {
                    addr: "[::1]:7000".parse().unwrap(),
                }),
            ),
            (
                "tcp:0.0.0.0:7000",
                Err(ListenAddrError::NotLoopback("0.0.0.0".parse().unwrap())),
            ),
            (
                "tcp:10.0.0.2:7000",
                Err(ListenAddrError::NotLoopback("10.0.0.2".parse().unwrap())),
            ),
            (
                "tcp:localhost:7000",
                Err(ListenAddrError::BadTcp("localhost:7000".into())),
            ),
            (
                "tcp:127.0.0.1",
                Err(ListenAddrError::BadTcp("127.0.0.1".into())),
            ),
            ("10000", Err(ListenAddrError::NoScheme("10000".into()))),
            ("udp:1", Err(ListenAddrError::UnknownScheme("udp".into()))),
        ];
        for (input, expected) in cases {
            assert_eq!(&input.parse::<ListenAddr>(), expected, "{input}");
        }
    }

    #[test]
    fn listen_addresses_display_as_they_parse() {
        for input in ["vsock:10000", "unix:/run/a.sock", "tcp:127.0.0.1:7000"] {
            assert_eq!(input.parse::<ListenAddr>().unwrap().to_string(), input);
        }
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn required(policy: TokenPolicy) -> Token {
        match policy {
            TokenPolicy::Required(token) => token,
            TokenPolicy::AnyToken => panic!("expected a required token"),
        }
    }

    #[test]
    fn the_token_file_wins_over_the_command_line_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "token", "  from-file\n");
        let cmdline = write(dir.path(), "cmdline", "quiet firehost.token=from-cmdline\n");
        let token = required(load_token(Some(&file), &cmdline, false).unwrap());
        assert_eq!(token.0, "from-file");
        let token = required(load_token(None, &cmdline, false).unwrap());
        assert_eq!(token.0, "from-cmdline");
        // A token that exists applies even when insecure mode was asked for.
        let token = required(load_token(None, &cmdline, true).unwrap());
        assert_eq!(token.0, "from-cmdline");
    }

    #[test]
    fn without_a_token_the_agent_refuses_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = write(dir.path(), "cmdline", "console=ttyS0 quiet\n");
        let missing = dir.path().join("no-such-cmdline");
        for path in [&cmdline, &missing] {
            assert!(matches!(
                load_token(None, path, false),
                Err(TokenError::Missing)
            ));
            assert!(matches!(
                load_token(None, path, true),
                Ok(TokenPolicy::AnyToken)
            ));
        }
        let empty = write(dir.path(), "empty", " \n");
        assert!(matches!(
            load_token(Some(&empty), &cmdline, true),
            Err(TokenError::EmptyFile { .. })
        ));
        assert!(matches!(
            load_token(Some(&missing), &cmdline, true),
            Err(TokenError::File { .. })
        ));
    }

    #[test]
    fn any_token_policy_accepts_everything_and_required_only_its_own() {
        let required = TokenPolicy::Required(Token("abc".into()));
        assert!(required.accepts(&Token("abc".into())));
        assert!(!required.accepts(&Token("abd".into())));
        assert!(TokenPolicy::AnyToken.accepts(&Token("whatever".into())));
    }
}
