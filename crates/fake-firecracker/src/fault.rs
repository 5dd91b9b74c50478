//! Fault injection, configured through environment variables so that the command
//! line stays byte-identical to Firecracker's.
//!
//! | variable | effect |
//! | --- | --- |
//! | `FAKE_FC_NO_SOCKET=1` | run, but never create the API socket |
//! | `FAKE_FC_CRASH_AFTER_REQUESTS=N` | abort the process when request N+1 arrives, before answering it |
//! | `FAKE_FC_FAIL="PUT /drives/rootfs,PUT /actions"` | these method + path pairs answer 400 `{"fault_message":"injected failure"}` |
//! | `FAKE_FC_DELAY_MS="PUT /machine-config=200,*=5"` | delay the answer of matching requests (`*` matches any request; the first match wins) |
//! | `FAKE_FC_EXIT_ON_START=CODE` | exit with `CODE` right after answering `InstanceStart` (a guest crash) |
//! | `FAKE_FC_IGNORE_CTRL_ALT_DEL=1` | the guest ignores `SendCtrlAltDel` (the VM keeps running) |
//! | `FAKE_FC_BALLOON_DRIVER=1` | the guest has a virtio-balloon driver: while the guest runs, the balloon takes the top pages of memory (discarded as Firecracker discards them, so they read as zero and a snapshot holds zeros there), statistics report it and half the rest as free, and runtime balloon changes are accepted (without it, as a guest with no driver: nothing inflates and they are refused, "Device not activated yet.") |
//! | `FAKE_FC_CONSOLE_FLOOD=BYTES` | once booted, the guest prints BYTES of console lines as fast as it can, then `firehost-fake-guest: flood done` |
//! | `FAKE_FC_GUEST_TOUCH=all\|none\|first:N` | which pages a restored guest reads on its first resume (default `all`; see [`crate::guest`]) |
//! | `FAKE_FC_REQUEST_LOG=PATH` | append `METHOD PATH` to this file as each request arrives, before any delay (how a test knows what a client waits on) |
//!
//! Paths match exactly (query strings are not part of the path). A variable that is
//! set but cannot be parsed is an error at start-up, so a typo never silently
//! disables a fault.

use std::collections::HashMap;
use std::time::Duration;

use crate::guest::GuestTouch;

/// One `METHOD /path` pair, or `*` for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestMatcher {
    /// Matches every request.
    Any,
    /// Matches one method and exact path.
    Exact {
        /// Upper-case HTTP method.
        method: String,
        /// The request path, e.g. `/drives/rootfs`.
        path: String,
    },
}

impl RequestMatcher {
    fn parse(text: &str) -> Result<Self, FaultConfigError> {
        let text = text.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let (method, path) = text
            .split_once(' ')
            .ok_or_else(|| FaultConfigError::BadMatcher(text.to_owned()))?;
        let path = path.trim();
        if method.is_empty() || !path.starts_with('/') {
            return Err(FaultConfigError::BadMatcher(text.to_owned()));
        }
        Ok(Self::Exact {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
        })
    }

    /// Whether this matcher covers `method path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact { method: m, path: p } => m.eq_ignore_ascii_case(method) && p == path,
        }
    }
}

/// The faults to inject, parsed from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `FAKE_FC_NO_SOCKET`.
    pub no_socket: bool,
    /// `FAKE_FC_CRASH_AFTER_REQUESTS`.
    pub crash_after_requests: Option<u64>,
    /// `FAKE_FC_FAIL`.
    pub fail: Vec<RequestMatcher>,
    /// `FAKE_FC_DELAY_MS`, in order.
    pub delays: Vec<(RequestMatcher, Duration)>,
    /// `FAKE_FC_EXIT_ON_START`.
    pub exit_on_start: Option<u8>,
    /// `FAKE_FC_IGNORE_CTRL_ALT_DEL`.
    pub ignore_ctrl_alt_del: bool,
    /// `FAKE_FC_GUEST_TOUCH`.
    pub guest_touch: GuestTouch,
    /// `FAKE_FC_CONSOLE_FLOOD`.
    pub console_flood: Option<u64>,
    /// `FAKE_FC_BALLOON_DRIVER`.
    pub balloon_driver: bool,
    /// `FAKE_FC_REQUEST_LOG`.
    pub request_log: Option<std::path::PathBuf>,
}

/// A fault variable that is set but malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultConfigError {
    /// A request matcher is not `*` or `METHOD /path`.
    #[error("bad request matcher {0:?}: expected `*` or `METHOD /path`")]
    BadMatcher(String),
    /// A variable holds something other than the number it needs.
    #[error("{var}: {value:?} is not a valid number")]
    BadNumber {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A `FAKE_FC_DELAY_MS` entry without `=MILLISECONDS`.
    #[error("FAKE_FC_DELAY_MS: entry {0:?} is not `MATCHER=MILLISECONDS`")]
    BadDelay(String),
    /// A `FAKE_FC_GUEST_TOUCH` other than `all`, `none` or `first:N`.
    #[error("FAKE_FC_GUEST_TOUCH: {0:?} is not `all`, `none` or `first:N`")]
    BadGuestTouch(String),
}

fn flag(value: Option<&String>) -> bool {
    matches!(value.map(|v| v.trim()), Some(v) if !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn number<T: std::str::FromStr>(
    vars: &HashMap<String, String>,
    var: &'static str,
) -> Result<Option<T>, FaultConfigError> {
    vars.get(var)
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|_| FaultConfigError::BadNumber {
                    var,
                    value: value.clone(),
                })
        })
        .transpose()
}

impl Faults {
    /// Reads the faults from the process environment.
    pub fn from_env() -> Result<Self, FaultConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the faults from a variable map (the environment, or a test's table).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use fake_firecracker::fault::Faults;
    ///
    /// let vars = HashMap::from([("FAKE_FC_FAIL".to_string(), "PUT /actions".to_string())]);
    /// let faults = Faults::from_vars(&vars).unwrap();
    /// assert!(faults.should_fail("PUT", "/actions"));
    /// assert!(!faults.should_fail("GET", "/"));
    /// ```
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, FaultConfigError> {
        let fail = match vars.get("FAKE_FC_FAIL") {
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(RequestMatcher::parse)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let delays = match vars.get("FAKE_FC_DELAY_MS") {
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|entry| {
                    let (matcher, ms) = entry
                        .rsplit_once('=')
                        .ok_or_else(|| FaultConfigError::BadDelay(entry.to_owned()))?;
                    let ms: u64 = ms
                        .trim()
                        .parse()
                        .map_err(|_| FaultConfigError::BadDelay(entry.to_owned()))?;
                    Ok((RequestMatcher::parse(matcher)?, Duration::from_millis(ms)))
                })
                .collect::<Result<_, FaultConfigError>>()?,
            None => Vec::new(),
        };
        let guest_touch = match vars.get("FAKE_FC_GUEST_TOUCH") {
            Some(v) => {
                GuestTouch::parse(v).ok_or_else(|| FaultConfigError::BadGuestTouch(v.clone()))?
            }
            None => GuestTouch::All,
        };
        Ok(Self {
            no_socket: flag(vars.get("FAKE_FC_NO_SOCKET")),
            crash_after_requests: number(vars, "FAKE_FC_CRASH_AFTER_REQUESTS")?,
            fail,
            delays,
            exit_on_start: number(vars, "FAKE_FC_EXIT_ON_START")?,
            ignore_ctrl_alt_del: flag(vars.get("FAKE_FC_IGNORE_CTRL_ALT_DEL")),
            guest_touch,
            console_flood: number(vars, "FAKE_FC_CONSOLE_FLOOD")?,
            balloon_driver: flag(vars.get("FAKE_FC_BALLOON_DRIVER")),
            request_log: vars
                .get("FAKE_FC_REQUEST_LOG")
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
        })
    }

    /// Whether `method path` must answer the injected failure.
    pub fn should_fail(&self, method: &str, path: &str) -> bool {
        self.fail.iter().any(|m| m.matches(method, path))
    }

    /// How long to hold the answer to `method path` (the first matching entry wins).
    pub fn delay_for(&self, method: &str, path: &str) -> Option<Duration> {
        self.delays
            .iter()
            .find(|(m, _)| m.matches(method, path))
            .map(|(_, d)| *d)
    }

    /// Appends `METHOD PATH` to the `FAKE_FC_REQUEST_LOG` file, if set, as the
    /// request arrives (before any delay): how a test knows that a client is
    /// waiting on a given request. One `write(2)` per line, in append mode, so
    /// that the VMMs of several VMs can share one log.
    pub fn note_arrival(&self, method: &str, path: &str) {
        use std::io::Write;
        let Some(log) = &self.request_log else {
            return;
        };
        let line = format!("{method} {path}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("fake-firecracker: cannot append to {}: {e}", log.display());
        }
    }

    /// Whether request number `n` (1-based) must crash the process.
    pub fn crashes_at(&self, n: u64) -> bool {
        self.crash_after_requests.is_some_and(|limit| n > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn delays_use_the_first_matching_entry() {
        let f = Faults::from_vars(&vars(&[(
            "FAKE_FC_DELAY_MS",
            "PUT /machine-config=200,*=5",
        )]))
        .unwrap();
        assert_eq!(
            f.delay_for("PUT", "/machine-config"),
            Some(Duration::from_millis(200))
        );
        assert_eq!(f.delay_for("GET", "/"), Some(Duration::from_millis(5)));
    }

    #[test]
    fn malformed_variables_are_refused() {
        let cases = [
            ("FAKE_FC_FAIL", "PUT"),
            ("FAKE_FC_FAIL", "PUT drives"),
            ("FAKE_FC_DELAY_MS", "PUT /x"),
            ("FAKE_FC_DELAY_MS", "*=soon"),
            ("FAKE_FC_CRASH_AFTER_REQUESTS", "three"),
            ("FAKE_FC_EXIT_ON_START", "300"),
            ("FAKE_FC_GUEST_TOUCH", "some"),
        ];
        for (k, v) in cases {
            assert!(Faults::from_vars(&vars(&[(k, v)])).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn crash_counts_requests_after_the_limit() {
        let f = Faults::from_vars(&vars(&[("FAKE_FC_CRASH_AFTER_REQUESTS", "2")])).unwrap();
        assert!(!f.crashes_at(2));
        assert!(f.crashes_at(3));
        assert!(!Faults::default().crashes_at(1_000));
    }
}
