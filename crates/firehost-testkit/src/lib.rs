//! What the integration tests of every crate in the workspace share: how a
//! test says it skipped, how it waits for something with a deadline, where
//! the binaries under test are, and whether a process still lives.
//!
//! Each crate's `tests/common` keeps only what is its own (a test host, a
//! CLI environment, an HTTP client for the VMM) and uses these.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Says that a test skipped and why, straight to stderr: libtest captures
/// `eprintln!`, and a skip must be visible in a passing run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// The real Firecracker the tests run against, if `FIREHOST_FIRECRACKER`
/// names one; `None`: they run against fake-firecracker.
pub fn real_firecracker() -> Option<PathBuf> {
    std::env::var_os("FIREHOST_FIRECRACKER")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `name` in the target directory the running test binary was built into
/// (`target/<profile>/name`, beside `target/<profile>/deps/`), where
/// `cargo test --workspace` puts every binary of the workspace. Panics,
/// saying how to build it, when it is not there.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p {name}` first)",
        path.display()
    );
    path
}

/// Whether `pid` is a live process. A zombie (an exited VMM whose reaper
/// has not collected it yet) is not.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// Polls `check` with a short, growing back-off (1 ms to 50 ms) until it
/// gives a value; panics naming `what` after `timeout`. For state another
/// process changes without telling (a file it fills, a process it ends).
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let mut backoff = Backoff::new(what, timeout);
    loop {
        if let Some(value) = check() {
            return value;
        }
        std::thread::sleep(backoff.next_delay());
    }
}

/// [`wait_until`] for async tests: the back-off sleeps on the runtime.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let mut backoff = Backoff::new(what, timeout);
    loop {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// [`poll_until`] with an async check.
pub async fn poll_until_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut backoff = Backoff::new(what, timeout);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The delays between checks, and the deadline they run out at.
struct Backoff<'a> {
    what: &'a str,
    timeout: Duration,
    deadline: Instant,
    delay: Duration,
}

impl<'a> Backoff<'a> {
    fn new(what: &'a str, timeout: Duration) -> Self {
        Backoff {
            what,
            timeout,
            deadline: Instant::now() + timeout,
            delay: Duration::from_millis(1),
        }
    }

    /// The next delay, doubling up to 50 ms; panics once the deadline
    /// has passed.
    fn next_delay(&mut self) -> Duration {
        assert!(
            Instant::now() < self.deadline,
            "timed out after {:?} waiting for {}",
            self.timeout,
            self.what
        );
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Duration::from_millis(50));
        delay
    }
}

/// Runs `future` with a deadline; panics naming `what` when it passes.
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

/// The name of the test function a macro was expanded in, from the type
/// name of a function item defined there (`…::the_test::here`).
#[doc(hidden)]
pub fn test_name(here: &str) -> &str {
    let name = here
        .trim_end_matches("::here")
        .trim_end_matches("::{{closure}}");
    name.rsplit("::").next().unwrap_or(name)
}

/// Skips the calling test (returns early, saying why) when the suite runs
/// against a real Firecracker ([`real_firecracker`]).
#[macro_export]
macro_rules! fake_only {
    ($why:expr) => {
        if $crate::real_firecracker().is_some() {
            fn here() {}
            let name = $crate::test_name(::std::any::type_name_of_val(&here));
            $crate::skip(name, &format!("needs fake-firecracker ({})", $why));
            return;
        }
    };
}

/// Unshares the calling thread's network and mount namespaces and mounts a
/// sysfs for the new network namespace on `/sys` (privately: the host's
/// mounts are untouched).
pub fn enter_private_netns() -> Result<(), String> {
    // SAFETY: unshare only changes this thread's namespaces (CLONE_NEWNS
    // implies CLONE_FS, which a thread may unshare on its own); no memory is
    // passed.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
    if rc != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the path is a NUL-terminated literal; the other pointers are
    // null, which mount(2) accepts for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "make / private: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: NUL-terminated literals, and no filesystem data.
    let rc = unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!("mount sysfs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(process_alive(i32::try_from(std::process::id()).unwrap()));
        assert!(!process_alive(i32::MAX));
    }

    #[test]
    fn a_test_name_is_the_function_of_the_expansion() {
        assert_eq!(test_name("api::a_test::here"), "a_test");
        assert_eq!(test_name("api::a_test::{{closure}}::here"), "a_test");
    }

    #[test]
    fn waiting_returns_the_value_once_it_is_there() {
        let mut n = 0;
        let got = wait_until("three calls", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }
}
