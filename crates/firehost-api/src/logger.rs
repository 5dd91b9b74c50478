//! Firecracker's own log: `PUT /logger`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// Logger settings: body of `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Most verbose level written; Firecracker's default is
    /// [`LogLevel::Info`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Host path of the named pipe or file that receives the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Whether each line carries its level (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line carries the source file and line (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only messages from this module path are written, e.g.
    /// `api_server::request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A log level.
///
/// Serialises with the spec's spelling (`"Warning"`); deserialises any
/// casing (`"warning"`, `"WARNING"`), as Firecracker does.
///
/// # Examples
///
/// ```
/// use firehost_api::LogLevel;
///
/// assert_eq!(serde_json::to_string(&LogLevel::Warning).unwrap(), r#""Warning""#);
/// let level: LogLevel = serde_json::from_str(r#""debug""#).unwrap();
/// assert_eq!(level, LogLevel::Debug);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warning,
    /// Informational messages and above (Firecracker's default).
    #[default]
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

impl LogLevel {
    /// Every level, in the spec's order.
    pub const ALL: [LogLevel; 6] = [
        LogLevel::Error,
        LogLevel::Warning,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
        LogLevel::Off,
    ];

    /// The spec's spelling of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
            LogLevel::Off => "Off",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        LogLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(&text))
            .ok_or_else(|| {
                serde::de::Error::unknown_variant(
                    &text,
                    &["Error", "Warning", "Info", "Debug", "Trace", "Off"],
                )
            })
    }
}
