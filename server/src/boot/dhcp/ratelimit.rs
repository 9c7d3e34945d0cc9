//! Bounded work per client MAC: a fixed one-second window with a counter per MAC.
//!
//! A boot client sends a handful of packets per second at most (DISCOVER retries,
//! REQUEST, the 4011 REQUEST). A client over its budget is dropped for the rest of the
//! window; so is a new MAC when the table is full, which bounds memory and the work a
//! flood of invented MACs can cause, while clients already seen this window keep going.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::MacAddr;

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Packets handled per MAC per second; the rest are dropped.
    pub per_mac_per_second: u32,
    /// Distinct MACs tracked per second; packets from further MACs are dropped.
    pub max_macs: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_mac_per_second: 10,
            max_macs: 4096,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Limiter {
    limit: RateLimit,
    window_start: Instant,
    counts: HashMap<MacAddr, u32>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            window_start: now,
            counts: HashMap::new(),
        }
    }

    /// Whether a packet from `mac` may be handled now.
    pub(crate) fn allow(&mut self, mac: MacAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.counts.clear();
        }
        let tracked = self.counts.len();
        match self.counts.get_mut(&mac) {
            Some(n) if *n >= self.limit.per_mac_per_second => false,
            Some(n) => {
                *n += 1;
                true
            }
            None if tracked >= self.limit.max_macs => false,
            None => {
                self.counts.insert(mac, 1);
                self.limit.per_mac_per_second > 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_noisy_mac_does_not_starve_another() {
        let now = Instant::now();
        let mut l = Limiter::new(
            RateLimit {
                per_mac_per_second: 3,
                max_macs: 10,
            },
            now,
        );
        let noisy = MacAddr([1; 6]);
        let quiet = MacAddr([2; 6]);
        let allowed = (0..100).filter(|_| l.allow(noisy, now)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow(quiet, now));
        assert!(l.allow(noisy, now + WINDOW), "a new window refills");
    }

    #[test]
    fn table_size_is_bounded() {
        let now = Instant::now();
        let mut l = Limiter::new(
            RateLimit {
                per_mac_per_second: 3,
                max_macs: 2,
            },
            now,
        );
        assert!(l.allow(MacAddr([1; 6]), now));
        assert!(l.allow(MacAddr([2; 6]), now));
        assert!(!l.allow(MacAddr([3; 6]), now));
        assert!(
            l.allow(MacAddr([1; 6]), now),
            "known MACs keep their budget"
        );
        assert_eq!(l.counts.len(), 2);
    }
}
