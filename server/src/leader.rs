//! One leader among the replicas sharing a store, for the work that must run once (install
//! timeouts now; any future site-wide sweep). Everything else — agent sessions, boot,
//! metadata — is served by every replica.
//!
//! The lease is a key in the store itself, so it works on every backend:
//! - the holder rewrites `leader` (its name and a counter) with a compare-and-swap every
//!   `ttl / 3`; a failed CAS means someone else holds it now;
//! - a replica that sees the key's revision unchanged for `ttl` **by its own monotonic
//!   clock** takes it over with a CAS on that revision. No clocks are compared between
//!   machines, only durations, so skewed wall clocks do not matter;
//! - the holder stops acting `ttl / 2` after its last successful renewal (before anyone
//!   can take over, since they wait a whole `ttl` from when they last saw a change).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Precondition, Revision, Store, Txn, TxnOutcome};

pub const LEADER_KEY: &str = "leader";

/// Who leads, as this replica knows it.
#[derive(Clone)]
pub struct Leadership {
    leading: Arc<AtomicBool>,
}

impl Leadership {
    /// Always the leader: one replica (tests, the embedded store).
    pub fn always() -> Self {
        Leadership {
            leading: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }
}

pub struct Lease {
    pub store: Arc<dyn Store>,
    /// This replica's name (host and listen address).
    pub name: String,
    pub ttl: Duration,
}

impl Lease {
    /// Starts campaigning; the returned [`Leadership`] follows the lease until `stop`.
    pub fn spawn(self, mut stop: tokio::sync::watch::Receiver<bool>) -> Leadership {
        let leading = Arc::new(AtomicBool::new(false));
        let out = Leadership {
            leading: leading.clone(),
        };
        tokio::spawn(async move {
            let mut seen: Option<(Revision, Instant)> = None;
            let mut renewed: Option<Instant> = None;
            let mut counter: u64 = 0;
            let mut tick = tokio::time::interval(self.ttl / 3);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            leading.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
                counter += 1;
                let value = format!("{}\n{counter}", self.name).into_bytes();
                let current = match self.store.get(LEADER_KEY).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader lease: reading");
                        if renewed.is_some_and(|r| r.elapsed() > self.ttl / 2) {
                            leading.store(false, Ordering::Release);
                        }
                        continue;
                    }
                };
                let holder = current.as_ref().map(|v| {
                    String::from_utf8_lossy(&v.value)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                });
                let mine = holder.as_deref() == Some(self.name.as_str());
                let attempt = match &current {
                    None => Some(Precondition::Absent(LEADER_KEY.into())),
                    Some(v) if mine => Some(Precondition::At(LEADER_KEY.into(), v.revision)),
                    Some(v) => {
                        // Someone else's: take over only after it stood still a whole ttl.
                        match seen {
                            Some((rev, since)) if rev == v.revision => (since.elapsed()
                                >= self.ttl)
                                .then(|| Precondition::At(LEADER_KEY.into(), v.revision)),
                            _ => {
                                seen = Some((v.revision, Instant::now()));
                                None
                            }
                        }
                    }
                };
                let Some(pre) = attempt else {
                    leading.store(false, Ordering::Release);
                    renewed = None;
                    continue;
                };
                match self
                    .store
                    .txn(Txn::new().require(pre).put(LEADER_KEY, value))
                    .await
                {
                    Ok(TxnOutcome::Committed(_)) => {
                        if !leading.swap(true, Ordering::AcqRel) {
                            tracing::info!(replica = %self.name, previous = ?holder, "leader lease acquired");
                        }
                        renewed = Some(Instant::now());
                        seen = None;
                    }
                    Ok(TxnOutcome::Conflict(_)) => {
                        if leading.swap(false, Ordering::AcqRel) {
                            tracing::warn!(replica = %self.name, "leader lease lost");
                        }
                        renewed = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader lease: writing");
                        if renewed.is_some_and(|r| r.elapsed() > self.ttl / 2) {
                            leading.store(false, Ordering::Release);
                        }
                    }
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    async fn wait(l: &Leadership, want: bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if l.is_leader() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn one_leader_and_a_takeover_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let ttl = Duration::from_millis(300);
        let (stop_a, rx_a) = tokio::sync::watch::channel(false);
        let (_stop_b, rx_b) = tokio::sync::watch::channel(false);
        let a = Lease {
            store: store.clone(),
            name: "a".into(),
            ttl,
        }
        .spawn(rx_a);
        assert!(wait(&a, true, Duration::from_secs(2)).await, "a leads");
        let b = Lease {
            store: store.clone(),
            name: "b".into(),
            ttl,
        }
        .spawn(rx_b);
        // b never leads while a renews.
        tokio::time::sleep(ttl * 3).await;
        assert!(a.is_leader() && !b.is_leader());
        // a stops (a replica killed): b takes over after the lease stood still a ttl.
        stop_a.send(true).unwrap();
        assert!(wait(&a, false, Duration::from_secs(1)).await);
        assert!(wait(&b, true, Duration::from_secs(3)).await, "b takes over");
        let v = store.get(LEADER_KEY).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&v.value).starts_with("b\n"));
    }
}
