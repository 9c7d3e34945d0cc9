//! Progress of one disk's wipe: bytes, rate and ETA, reported at most every interval.
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a disk is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writing, discarding or erasing.
    Wiping,
    /// Reading back.
    Verifying,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Wiping => "wiping",
            Phase::Verifying => "verifying",
        })
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub disk: String,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Average since the phase started, bytes per second.
    pub rate: u64,
    /// `None` until there is a rate to go by.
    pub eta: Option<Duration>,
}

/// Where progress goes: the session forwards it to the server. Called from the wipe threads.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A sink that drops everything.
pub fn no_progress() -> ProgressSink {
    Arc::new(|_| {})
}

/// Counts one phase's bytes and reports through the sink at most every `interval`, plus
/// once when the phase ends.
pub(crate) struct Meter {
    disk: String,
    phase: Phase,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    interval: Duration,
    sink: ProgressSink,
}

impl Meter {
    pub fn new(
        disk: &str,
        phase: Phase,
        total: u64,
        interval: Duration,
        sink: &ProgressSink,
    ) -> Self {
        let now = Instant::now();
        Meter {
            disk: disk.to_string(),
            phase,
            total,
            done: 0,
            start: now,
            last: now,
            interval,
            sink: sink.clone(),
        }
    }

    pub fn add(&mut self, bytes: u64) {
        self.done = (self.done + bytes).min(self.total);
        if self.last.elapsed() >= self.interval {
            self.emit();
        }
    }

    pub fn finish(&mut self) {
        self.done = self.total;
        self.emit();
    }

    fn emit(&mut self) {
        self.last = Instant::now();
        (self.sink)(&snapshot(
            &self.disk,
            self.phase,
            self.done,
            self.total,
            self.start.elapsed(),
        ));
    }
}

/// The report for `done` of `total` bytes after `elapsed`.
pub(crate) fn snapshot(
    disk: &str,
    phase: Phase,
    done: u64,
    total: u64,
    elapsed: Duration,
) -> Progress {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (done as f64 / secs) as u64
    } else {
        0
    };
    let eta = (rate > 0).then(|| Duration::from_secs_f64((total - done) as f64 / rate as f64));
    Progress {
        disk: disk.to_string(),
        phase,
        bytes_done: done,
        bytes_total: total,
        rate,
        eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn rate_and_eta() {
        let p = snapshot("sda", Phase::Wiping, 100, 400, Duration::from_secs(2));
        assert_eq!(p.rate, 50);
        assert_eq!(p.eta, Some(Duration::from_secs(6)));
        let p = snapshot("sda", Phase::Wiping, 0, 400, Duration::ZERO);
        assert_eq!((p.rate, p.eta), (0, None));
    }

    #[test]
    fn throttled_to_the_interval_plus_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: ProgressSink = Arc::new(move |p: &Progress| s.lock().unwrap().push(p.clone()));
        let mut m = Meter::new("sda", Phase::Wiping, 1000, Duration::from_secs(3600), &sink);
        for _ in 0..100 {
            m.add(10);
        }
        m.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].bytes_done, 1000);
    }
}
