//! PID 1 never exits: when the agent stops, fails or panics, log it, sync, back off and
//! run it again; after too many failures in a row, reboot.
//!
//! Ordinary failures (the agent future returns) are retried in-process, on a fresh tokio
//! runtime so nothing of the failed attempt lingers. A panic cannot be retried in-process
//! (the boot image is built with `panic = "abort"`), so as PID 1 the panic hook backs off
//! and then re-executes the agent binary in place: still PID 1, mounts and modules kept,
//! the failure count carried in [`FAILURES_ENV`].
use std::ffi::{CString, OsString};
use std::fmt;
use std::future::Future;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::is_pid1;

/// Environment variable carrying the count of consecutive failures across a re-exec.
pub const FAILURES_ENV: &str = "SIDERITE_INIT_FAILURES";

/// When to retry and when to give up and reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the n-th retry; the last value repeats.
    pub backoff: Vec<Duration>,
    /// Consecutive failures after which the machine reboots (as PID 1) or the process
    /// exits with status 1 (otherwise).
    pub reboot_after: u32,
    /// A run this long counts as healthy: its failure starts the count afresh.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff: [5, 10, 30, 60].map(Duration::from_secs).to_vec(),
            reboot_after: 8,
            healthy_after: Duration::from_secs(600),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Retry(Duration),
    Reboot,
}

impl RestartPolicy {
    /// `failures`: consecutive failures so far, counting the one just seen (1 = first).
    pub fn next(&self, failures: u32) -> Next {
        if failures >= self.reboot_after {
            return Next::Reboot;
        }
        let i = failures.saturating_sub(1) as usize;
        let wait = self
            .backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or_default();
        Next::Retry(wait)
    }
}

/// A panic, as the hook saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PanicReport {
    pub message: String,
    /// `file:line:column`
    pub location: Option<String>,
    pub thread: Option<String>,
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panic")?;
        if let Some(thread) = &self.thread {
            write!(f, " in thread {thread}")?;
        }
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl PanicReport {
    fn new(info: &std::panic::PanicHookInfo<'_>) -> Self {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string payload)".into());
        PanicReport {
            message,
            location: info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
            thread: std::thread::current().name().map(String::from),
        }
    }
}

/// Receives panic reports (e.g. to queue them for the server). It runs inside the panic
/// hook: it must not panic or block for long.
pub type PanicSink = Arc<dyn Fn(&PanicReport) + Send + Sync>;

/// Runs the agent forever; see the module docs.
pub struct Supervisor {
    policy: RestartPolicy,
    /// Consecutive failures, shared with the panic hook.
    failures: Arc<AtomicU32>,
    /// When the current attempt started, shared with the panic hook.
    attempt_started: Arc<Mutex<Instant>>,
}

impl Supervisor {
    /// Picks up the failure count a panicked predecessor left in [`FAILURES_ENV`].
    pub fn new(policy: RestartPolicy) -> Self {
        let inherited = std::env::var(FAILURES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Supervisor {
            policy,
            failures: Arc::new(AtomicU32::new(inherited)),
            attempt_started: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Consecutive failures so far (including those before a re-exec).
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Installs the panic hook: the panic goes to the console and to `sink`. As PID 1 the
    /// hook then syncs, backs off (letting other threads ship the report) and re-executes
    /// the agent, or reboots after too many failures; it never returns. Otherwise the
    /// previous hook runs and the panic proceeds as usual.
    pub fn install_panic_hook(&self, sink: Option<PanicSink>) {
        let policy = self.policy.clone();
        let failures = Arc::clone(&self.failures);
        let started = Arc::clone(&self.attempt_started);
        let handling = AtomicBool::new(false);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let report = PanicReport::new(info);
            if !is_pid1() {
                previous(info);
                if let Some(sink) = &sink {
                    sink(&report);
                }
                return;
            }
            // Not through tracing: the panic may come from inside the subscriber.
            console(&format!("siderite-agent: {report}"));
            if let Some(sink) = &sink {
                sink(&report);
            }
            if handling.swap(true, Ordering::SeqCst) {
                // Another thread is already restarting us.
                park_forever();
            }
            let healthy = lock(&started).elapsed() >= policy.healthy_after;
            let n = count_failure(&failures, healthy);
            nix::unistd::sync();
            match policy.next(n) {
                Next::Retry(wait) => {
                    console(&format!(
                        "siderite-agent: failure {n} of {}, restarting in {}s",
                        policy.reboot_after,
                        wait.as_secs()
                    ));
                    std::thread::sleep(wait);
                    let e = reexec(n);
                    console(&format!("siderite-agent: cannot restart myself: {e}"));
                    reboot("restart failed");
                }
                Next::Reboot => reboot(&format!("{n} failures in a row")),
            }
        }));
    }

    /// Runs `make_agent()` on a fresh multi-threaded runtime, again and again: see the
    /// module docs. Also reaps zombies while the agent runs. Never returns.
    pub fn run<F, Fut, E>(self, mut make_agent: F) -> !
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        loop {
            let started = Instant::now();
            *lock(&self.attempt_started) = started;
            match run_once(&mut make_agent) {
                Ok(()) => tracing::error!("the agent stopped; PID 1 must not exit"),
                Err(e) => tracing::error!("the agent failed: {e}"),
            }
            let healthy = started.elapsed() >= self.policy.healthy_after;
            let n = count_failure(&self.failures, healthy);
            nix::unistd::sync();
            match self.policy.next(n) {
                Next::Retry(wait) => {
                    tracing::warn!(
                        "failure {n} of {}, restarting the agent in {}s",
                        self.policy.reboot_after,
                        wait.as_secs()
                    );
                    std::thread::sleep(wait);
                }
                Next::Reboot => reboot(&format!("{n} failures in a row")),
            }
        }
    }
}

/// [`Supervisor::run`] with the default policy and a panic hook that only logs.
pub fn supervise<F, Fut, E>(make_agent: F) -> !
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let supervisor = Supervisor::new(RestartPolicy::default());
    supervisor.install_panic_hook(None);
    supervisor.run(make_agent)
}

fn run_once<F, Fut, E>(make_agent: &mut F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let result = rt.block_on(async {
        let reaper = is_pid1().then(|| tokio::spawn(super::reap::reap_forever()));
        let result = make_agent().await;
        if let Some(reaper) = reaper {
            reaper.abort();
        }
        // `{:#}` shows an error's whole chain (anyhow), plain Display otherwise.
        result.map_err(|e| format!("{e:#}"))
    });
    // Whatever the attempt left running must not outlive it.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

fn count_failure(failures: &AtomicU32, after_healthy_run: bool) -> u32 {
    if after_healthy_run {
        failures.store(0, Ordering::SeqCst);
    }
    failures.fetch_add(1, Ordering::SeqCst).saturating_add(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Straight to stderr (the console, for PID 1), for when tracing cannot be trusted.
fn console(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Replaces this process with a fresh copy of the agent (same PID, same arguments), with
/// the failure count in the environment. Returns only on error.
fn reexec(failures: u32) -> nix::Error {
    let Ok(exe) = CString::new("/proc/self/exe") else {
        return nix::Error::EINVAL;
    };
    let to_c = |s: OsString| CString::new(s.into_vec()).ok();
    let args: Vec<CString> = std::env::args_os().filter_map(to_c).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != FAILURES_ENV)
        .filter_map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            to_c(k)
        })
        .collect();
    env.extend(to_c(format!("{FAILURES_ENV}={failures}").into()));
    match nix::unistd::execve(&exe, &args, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Reboots the machine as PID 1; exits with status 1 as an ordinary process, so a
/// developer's box is never rebooted. Never returns.
pub(crate) fn reboot(why: &str) -> ! {
    if !is_pid1() {
        tracing::error!("giving up: {why}");
        std::process::exit(1);
    }
    console(&format!("siderite-agent: rebooting: {why}"));
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    console(&format!("siderite-agent: reboot failed: {e}; halting here"));
    park_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_then_reboot() {
        let p = RestartPolicy::default();
        let secs = |n| match p.next(n) {
            Next::Retry(d) => Some(d.as_secs()),
            Next::Reboot => None,
        };
        assert_eq!(
            (1..=9).map(secs).collect::<Vec<_>>(),
            [
                Some(5),
                Some(10),
                Some(30),
                Some(60),
                Some(60),
                Some(60),
                Some(60),
                None,
                None
            ]
        );
        let empty = RestartPolicy {
            backoff: vec![],
            reboot_after: 2,
            healthy_after: Duration::ZERO,
        };
        assert_eq!(empty.next(1), Next::Retry(Duration::ZERO));
        assert_eq!(empty.next(2), Next::Reboot);
    }

    #[test]
    fn failures_count_up_and_reset_after_a_healthy_run() {
        let f = AtomicU32::new(3);
        assert_eq!(count_failure(&f, false), 4);
        assert_eq!(count_failure(&f, false), 5);
        assert_eq!(count_failure(&f, true), 1);
    }

    #[test]
    fn one_attempt_runs_on_a_fresh_runtime_and_reports_errors() {
        let mut calls = 0;
        let mut agent = || {
            calls += 1;
            async move {
                tokio::task::yield_now().await;
                // Left running on purpose: the runtime shutdown must not wait for it.
                tokio::spawn(std::future::pending::<()>());
                Err::<(), _>(format!("attempt {calls} failed"))
            }
        };
        assert_eq!(run_once(&mut agent), Err("attempt 1 failed".into()));
        assert_eq!(run_once(&mut agent), Err("attempt 2 failed".into()));
        let mut ok = || async { Ok::<(), String>(()) };
        assert_eq!(run_once(&mut ok), Ok(()));
    }

    #[test]
    fn panic_reports_read_well() {
        let r = PanicReport {
            message: "index out of bounds".into(),
            location: Some("agent/src/x.rs:1:2".into()),
            thread: Some("tokio-runtime-worker".into()),
        };
        assert_eq!(
            r.to_string(),
            "panic in thread tokio-runtime-worker at agent/src/x.rs:1:2: index out of bounds"
        );
    }

    #[test]
    fn not_pid1_in_tests() {
        // The hook and the loop act on the machine only as PID 1.
        assert!(!is_pid1());
    }
}
