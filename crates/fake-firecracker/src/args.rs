//! Firecracker's command line, parsed the way Firecracker v1.16.1 parses it.
//!
//! Firecracker does not use clap: it has its own small parser
//! (`src/utils/src/arg_parser.rs`) with these rules, all mirrored here:
//!
//! - every flag is `--name`, values are the next word (`--name value`, never
//!   `--name=value`), and a value may not start with `--`;
//! - `--help`/`-h` anywhere (before a `--` separator) wins over everything,
//!   then `--version`; the rest of the line is not checked in those cases;
//! - an unknown word is "Found argument 'x' which wasn't expected, or isn't
//!   valid in this context." (the name is shown without its dashes);
//! - a repeated flag is "The argument 'x' was provided more than once.";
//! - `--no-api` requires `--config-file`; `--seccomp-filter` and
//!   `--no-seccomp` forbid each other;
//! - everything after a bare `--` is ignored.
//!
//! A parse error makes Firecracker exit with status 153 (`FcExitCode::ArgParsing`).

use std::path::PathBuf;

/// Default API socket path, as in Firecracker's `main.rs`.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Default instance id (`vmm::logger::DEFAULT_INSTANCE_ID`).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// Default `--http-api-max-payload-size` (`vmm::HTTP_MAX_PAYLOAD_SIZE`), in bytes.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 51_200;

/// One flag Firecracker knows: name, whether it takes a value, its help text.
struct Flag {
    name: &'static str,
    takes_value: bool,
    default: Option<&'static str>,
    help: &'static str,
}

/// Firecracker v1.16.1's flags, with its own help texts (`src/firecracker/src/main.rs`).
const FLAGS: &[Flag] = &[
    Flag {
        name: "api-sock",
        takes_value: true,
        default: Some(DEFAULT_API_SOCK),
        help: "Path to unix domain socket used by the API.",
    },
    Flag {
        name: "boot-timer",
        takes_value: false,
        default: None,
        help: "Whether or not to load boot timer device for logging elapsed time since InstanceStart command.",
    },
    Flag {
        name: "config-file",
        takes_value: true,
        default: None,
        help: "Path to a file that contains the microVM configuration in JSON format.",
    },
    Flag {
        name: "describe-snapshot",
        takes_value: true,
        default: None,
        help: "Print the data format version of the provided snapshot state file.",
    },
    Flag {
        name: "enable-pci",
        takes_value: false,
        default: None,
        help: "Enables PCIe support.",
    },
    Flag {
        name: "help",
        takes_value: false,
        default: None,
        help: "Show the help message.",
    },
    Flag {
        name: "http-api-max-payload-size",
        takes_value: true,
        default: Some("51200"),
        help: "Http API request payload max size, in bytes.",
    },
    Flag {
        name: "id",
        takes_value: true,
        default: Some(DEFAULT_INSTANCE_ID),
        help: "MicroVM unique identifier.",
    },
    Flag {
        name: "level",
        takes_value: true,
        default: None,
        help: "Set the logger level.",
    },
    Flag {
        name: "log-path",
        takes_value: true,
        default: None,
        help: "Path to a fifo or a file used for configuring the logger on startup.",
    },
    Flag {
        name: "metadata",
        takes_value: true,
        default: None,
        help: "Path to a file that contains metadata in JSON format to add to the mmds.",
    },
    Flag {
        name: "metrics-path",
        takes_value: true,
        default: None,
        help: "Path to a fifo or a file used for configuring the metrics on startup.",
    },
    Flag {
        name: "mmds-size-limit",
        takes_value: true,
        default: None,
        help: "Mmds data store limit, in bytes.",
    },
    Flag {
        name: "module",
        takes_value: true,
        default: None,
        help: "Set the logger module filter.",
    },
    Flag {
        name: "no-api",
        takes_value: false,
        default: None,
        help: "Optional parameter which allows starting and using a microVM without an active API socket.",
    },
    Flag {
        name: "no-seccomp",
        takes_value: false,
        default: None,
        help: "Optional parameter which allows starting and using a microVM without seccomp filtering. Not recommended.",
    },
    Flag {
        name: "parent-cpu-time-us",
        takes_value: true,
        default: None,
        help: "Parent process CPU time (wall clock, microseconds). This parameter is optional.",
    },
    Flag {
        name: "seccomp-filter",
        takes_value: true,
        default: None,
        help: "Optional parameter which allows specifying the path to a custom seccomp filter. For advanced users.",
    },
    Flag {
        name: "show-level",
        takes_value: false,
        default: None,
        help: "Whether or not to output the level in the logs.",
    },
    Flag {
        name: "show-log-origin",
        takes_value: false,
        default: None,
        help: "Whether or not to include the file path and line number of the log's origin.",
    },
    Flag {
        name: "snapshot-version",
        takes_value: false,
        default: None,
        help: "Print the supported data format version.",
    },
    Flag {
        name: "start-time-cpu-us",
        takes_value: true,
        default: None,
        help: "Process start CPU time (wall clock, microseconds). This parameter is optional.",
    },
    Flag {
        name: "start-time-us",
        takes_value: true,
        default: None,
        help: "Process start time (wall clock, microseconds). This parameter is optional.",
    },
    Flag {
        name: "version",
        takes_value: false,
        default: None,
        help: "Print the binary version number.",
    },
];

/// Why the command line was refused; each message is Firecracker's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Two flags that exclude each other were both given.
    #[error("Argument '{1}' cannot be used together with argument '{0}'.")]
    ForbiddenArgument(String, String),
    /// A flag that another flag needs is missing.
    #[error("Argument '{0}' required, but not found.")]
    MissingArgument(String),
    /// A flag that takes a value was last, or followed by another flag.
    #[error("The argument '{0}' requires a value, but none was supplied.")]
    MissingValue(String),
    /// A word that is not one of Firecracker's flags.
    #[error("Found argument '{0}' which wasn't expected, or isn't valid in this context.")]
    UnexpectedArgument(String),
    /// A flag given twice.
    #[error("The argument '{0}' was provided more than once.")]
    DuplicateArgument(String),
}

impl ArgsError {
    /// The variant name and argument as Firecracker's `{:?}` prints them on stderr
    /// (`Error: ParseArguments(UnexpectedArgument("foo"))`).
    pub fn debug_line(&self) -> String {
        let inner = match self {
            Self::ForbiddenArgument(a, b) => format!("ForbiddenArgument({a:?}, {b:?})"),
            Self::MissingArgument(a) => format!("MissingArgument({a:?})"),
            Self::MissingValue(a) => format!("MissingValue({a:?})"),
            Self::UnexpectedArgument(a) => format!("UnexpectedArgument({a:?})"),
            Self::DuplicateArgument(a) => format!("DuplicateArgument({a:?})"),
        };
        format!("Error: ParseArguments({inner})")
    }
}

/// The validated options of a normal run (every flag except the "print and exit" ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// `--api-sock`: where the HTTP API listens.
    pub api_sock: PathBuf,
    /// `--id`: the instance id reported by `GET /` and in log lines.
    pub id: String,
    /// `--log-path`: the logger's file or fifo.
    pub log_path: Option<PathBuf>,
    /// `--level`: the logger level (Error, Warning, Info, Debug, Trace, Off).
    pub level: Option<String>,
    /// `--module`: the logger module filter (accepted, unused).
    pub module: Option<String>,
    /// `--show-level`.
    pub show_level: bool,
    /// `--show-log-origin`.
    pub show_log_origin: bool,
    /// `--metrics-path`: the metrics file or fifo.
    pub metrics_path: Option<PathBuf>,
    /// `--seccomp-filter` (accepted, unused: the fake installs no filter).
    pub seccomp_filter: Option<PathBuf>,
    /// `--no-seccomp`.
    pub no_seccomp: bool,
    /// `--boot-timer` (accepted, unused).
    pub boot_timer: bool,
    /// `--config-file`: configure and boot from one JSON document.
    pub config_file: Option<PathBuf>,
    /// `--no-api`: run without an API socket (requires `--config-file`).
    pub no_api: bool,
    /// `--metadata`: initial MMDS contents.
    pub metadata: Option<PathBuf>,
    /// `--mmds-size-limit` in bytes (defaults to the payload limit).
    pub mmds_size_limit: Option<String>,
    /// `--http-api-max-payload-size` in bytes, unparsed (Firecracker parses it late, and panics).
    pub http_api_max_payload_size: String,
    /// `--start-time-us` (accepted, unused).
    pub start_time_us: Option<String>,
    /// `--start-time-cpu-us` (accepted, unused).
    pub start_time_cpu_us: Option<String>,
    /// `--parent-cpu-time-us` (accepted, unused).
    pub parent_cpu_time_us: Option<String>,
    /// `--enable-pci`.
    pub enable_pci: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `--help` or `-h`: print the help and exit 0.
    Help,
    /// `--version`: print `Firecracker v1.16.1` and exit 0.
    Version,
    /// `--snapshot-version`: print the snapshot data format version and exit 0.
    SnapshotVersion,
    /// `--describe-snapshot PATH`: print the data format version of a snapshot file.
    DescribeSnapshot(PathBuf),
    /// Run the VMM.
    Run(Box<RunArgs>),
}

/// Parses `argv` (including the program name in `argv[0]`) like Firecracker.
///
/// # Examples
///
/// ```
/// use fake_firecracker::args::{parse, ArgsError, Command};
///
/// let argv = ["firecracker", "--api-sock", "/tmp/a.sock", "--id", "vm1"].map(String::from);
/// let Command::Run(run) = parse(&argv).unwrap() else { panic!() };
/// assert_eq!(run.api_sock.to_str(), Some("/tmp/a.sock"));
///
/// let argv = ["firecracker", "--bogus"].map(String::from);
/// assert_eq!(parse(&argv), Err(ArgsError::UnexpectedArgument("bogus".into())));
/// ```
pub fn parse(argv: &[String]) -> Result<Command, ArgsError> {
    let rest = argv.get(1..).unwrap_or(&[]);
    let args = match rest.iter().position(|a| a == "--") {
        Some(i) => &rest[..i],
        None => rest,
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    if args.iter().any(|a| a == "--version") {
        return Ok(Command::Version);
    }

    let mut values: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(name) = arg.strip_prefix("--") else {
            return Err(ArgsError::UnexpectedArgument(arg.clone()));
        };
        let flag = FLAGS
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ArgsError::UnexpectedArgument(name.to_owned()))?;
        if values.iter().any(|(n, _)| *n == flag.name) {
            return Err(ArgsError::DuplicateArgument(name.to_owned()));
        }
        let value = if flag.takes_value {
            let v = iter
                .next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| ArgsError::MissingValue(flag.name.to_owned()))?;
            Some(v.clone())
        } else {
            None
        };
        values.push((flag.name, value));
    }

    let given = |name: &str| values.iter().any(|(n, _)| *n == name);
    // Firecracker checks the rules in the order of its (sorted) argument map.
    if given("no-api") && !args.iter().any(|a| a == "--config-file") {
        return Err(ArgsError::MissingArgument("config-file".into()));
    }
    if given("no-seccomp") && given("seccomp-filter") {
        return Err(ArgsError::ForbiddenArgument(
            "no-seccomp".into(),
            "seccomp-filter".into(),
        ));
    }

    let value = |name: &str| -> Option<String> {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    };
    let default = |name: &str| -> String {
        value(name).unwrap_or_else(|| {
            FLAGS
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| f.default)
                .unwrap_or_default()
                .to_owned()
        })
    };

    if given("snapshot-version") {
        return Ok(Command::SnapshotVersion);
    }
    if let Some(path) = value("describe-snapshot") {
        return Ok(Command::DescribeSnapshot(path.into()));
    }

    Ok(Command::Run(Box::new(RunArgs {
        api_sock: default("api-sock").into(),
        id: default("id"),
        log_path: value("log-path").map(PathBuf::from),
        level: value("level"),
        module: value("module"),
        show_level: given("show-level"),
        show_log_origin: given("show-log-origin"),
        metrics_path: value("metrics-path").map(PathBuf::from),
        seccomp_filter: value("seccomp-filter").map(PathBuf::from),
        no_seccomp: given("no-seccomp"),
        boot_timer: given("boot-timer"),
        config_file: value("config-file").map(PathBuf::from),
        no_api: given("no-api"),
        metadata: value("metadata").map(PathBuf::from),
        mmds_size_limit: value("mmds-size-limit"),
        http_api_max_payload_size: default("http-api-max-payload-size"),
        start_time_us: value("start-time-us"),
        start_time_cpu_us: value("start-time-cpu-us"),
        parent_cpu_time_us: value("parent-cpu-time-us"),
        enable_pci: given("enable-pci"),
    })))
}

/// Firecracker's `--help` text: `optional arguments:` then one aligned line per flag,
/// sorted by name, with `[default: "..."]` where a default exists.
pub fn help_text() -> String {
    let name = |f: &Flag| {
        if f.takes_value {
            format!("  --{0} <{0}>", f.name)
        } else {
            format!("  --{}", f.name)
        }
    };
    let width = FLAGS.iter().map(|f| name(f).len()).max().unwrap_or(0);
    let lines: Vec<String> = FLAGS
        .iter()
        .map(|f| {
            let mut line = format!("{:<width$}   {}", name(f), f.help);
            if let Some(d) = f.default {
                line.push_str(&format!(" [default: \"{d}\"]"));
            }
            line
        })
        .collect();
    format!("optional arguments:\n{}", lines.join("\n"))
}

/// Why an instance id is refused (`utils::validators::validate_instance_id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    /// Length outside 1..=64.
    #[error("Invalid len ({0});  the length must be between 1 and 64")]
    InvalidLen(usize),
    /// A character other than alphanumerics and `-` (note: `_` is refused).
    #[error("Invalid char ({0}) at position {1}")]
    InvalidChar(char, usize),
}

/// Checks an instance id as Firecracker does: 1 to 64 characters, alphanumeric or `-`.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() || id.len() > 64 {
        return Err(InstanceIdError::InvalidLen(id.len()));
    }
    match id
        .chars()
        .enumerate()
        .find(|(_, c)| !(*c == '-' || c.is_alphanumeric()))
    {
        Some((i, c)) => Err(InstanceIdError::InvalidChar(c, i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        std::iter::once("firecracker")
            .chain(words.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn defaults_match_firecracker() {
        let Command::Run(run) = parse(&argv(&[])).unwrap() else {
            panic!("expected a run")
        };
        assert_eq!(run.api_sock, PathBuf::from("/run/firecracker.socket"));
        assert_eq!(run.id, "anonymous-instance");
        assert_eq!(run.http_api_max_payload_size, "51200");
    }

    #[test]
    fn command_line_errors_match_firecracker() {
        let cases: &[(&[&str], ArgsError)] = &[
            (&["--bogus"], ArgsError::UnexpectedArgument("bogus".into())),
            (&["bare"], ArgsError::UnexpectedArgument("bare".into())),
            (
                &["--id", "a", "--id", "b"],
                ArgsError::DuplicateArgument("id".into()),
            ),
            (&["--api-sock"], ArgsError::MissingValue("api-sock".into())),
            (
                &["--api-sock", "--id", "x"],
                ArgsError::MissingValue("api-sock".into()),
            ),
            (
                &["--no-api"],
                ArgsError::MissingArgument("config-file".into()),
            ),
            (
                &["--no-seccomp", "--seccomp-filter", "f"],
                ArgsError::ForbiddenArgument("no-seccomp".into(), "seccomp-filter".into()),
            ),
        ];
        for (words, expected) in cases {
            assert_eq!(parse(&argv(words)).as_ref(), Err(expected), "{words:?}");
        }
    }

    #[test]
    fn help_and_version_win_over_bad_flags() {
        assert_eq!(parse(&argv(&["--bogus", "--help"])), Ok(Command::Help));
        assert_eq!(parse(&argv(&["-h"])), Ok(Command::Help));
        assert_eq!(
            parse(&argv(&["--bogus", "--version"])),
            Ok(Command::Version)
        );
        assert!(parse(&argv(&["--", "--bogus"])).is_ok());
    }

    #[test]
    fn instance_ids_are_checked_like_firecracker() {
        let cases = [
            ("vm-1", Ok(())),
            ("", Err(InstanceIdError::InvalidLen(0))),
            ("a_b", Err(InstanceIdError::InvalidChar('_', 1))),
        ];
        for (id, expected) in cases {
            assert_eq!(validate_instance_id(id), expected, "{id}");
        }
        assert_eq!(
            InstanceIdError::InvalidLen(0).to_string(),
            "Invalid len (0);  the length must be between 1 and 64"
        );
    }
}
