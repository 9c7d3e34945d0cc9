//! Full DHCP mode: one address pool and its lease table, keyed by client MAC.
//!
//! The table lives in memory only. After a restart it is empty: a client that renews
//! (or reboots and asks for its old address) gets that address back when nobody else
//! holds it, so a restart costs nothing on a quiet lab network; addresses offered
//! before the restart may be handed out twice until the clients renew. Full mode is
//! for labs and isolated networks, not for the site's production DHCP.
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{DhcpError, MacAddr};

/// How long an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a client declined (someone else answers ARP for it) is skipped.
pub const DECLINE_QUARANTINE: Duration = Duration::from_secs(600);
/// Largest pool accepted: the free-address search walks the range.
pub const MAX_POOL_SIZE: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// First address handed out.
    pub start: Ipv4Addr,
    /// Last address handed out (inclusive).
    pub end: Ipv4Addr,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, waiting for the client's REQUEST.
    Offered,
    /// Acknowledged.
    Bound,
}

/// A lease as seen from outside, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    pub expires: Instant,
}

/// What the pool says to a client's REQUEST for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestOutcome {
    Ack(Ipv4Addr),
    Nak,
    /// Not ours to answer (RFC 2131 4.3.2: no record of the client and the address is not
    /// one we manage).
    Silent,
}

/// An address pool with its in-memory lease table.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    table: Mutex<LeaseTable>,
}

#[derive(Debug, Default)]
struct LeaseTable {
    by_mac: HashMap<MacAddr, LeaseInfo>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, Instant>,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Result<Self, DhcpError> {
        let mask = u32::from(config.subnet_mask);
        if mask.leading_ones() + mask.trailing_zeros() != 32 || mask.leading_ones() > 30 {
            return Err(DhcpError::Config(format!(
                "subnet mask {} is not a usable netmask",
                config.subnet_mask
            )));
        }
        let (start, end) = (u32::from(config.start), u32::from(config.end));
        if start > end {
            return Err(DhcpError::Config(format!(
                "pool start {} is after its end {}",
                config.start, config.end
            )));
        }
        if start & mask != end & mask {
            return Err(DhcpError::Config(format!(
                "pool {}-{} is not inside one /{} subnet",
                config.start,
                config.end,
                mask.leading_ones()
            )));
        }
        if end - start >= MAX_POOL_SIZE {
            return Err(DhcpError::Config(format!(
                "pool {}-{} is larger than {MAX_POOL_SIZE} addresses",
                config.start, config.end
            )));
        }
        if config.lease_time < Duration::from_secs(60)
            || config.lease_time.as_secs() > u32::MAX.into()
        {
            return Err(DhcpError::Config(format!(
                "lease time {:?} is outside 60 s to {} s",
                config.lease_time,
                u32::MAX
            )));
        }
        if let Some(r) = config.router {
            if !same_subnet(r, config.start, config.subnet_mask) {
                return Err(DhcpError::Config(format!(
                    "router {r} is outside the pool's subnet"
                )));
            }
        }
        Ok(Self {
            config,
            table: Mutex::new(LeaseTable::default()),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Whether `ip` is on this pool's subnet.
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        same_subnet(ip, self.config.start, self.config.subnet_mask)
    }

    /// The lease currently recorded for `mac`, expired or not.
    pub fn lease(&self, mac: MacAddr) -> Option<LeaseInfo> {
        self.table().by_mac.get(&mac).copied()
    }

    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing the service: keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.config.start)..=u32::from(self.config.end)).contains(&u32::from(ip))
    }

    fn assignable(&self, ip: Ipv4Addr, server_ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.config.subnet_mask);
        let host = u32::from(ip) & !mask;
        self.in_range(ip)
            && ip != server_ip
            && Some(ip) != self.config.router
            && host != 0
            && host != !mask
    }

    /// Picks an address for a DISCOVER and holds it for [`OFFER_HOLD`]. Prefers the
    /// client's current address, then the one it asks for, then the lowest free one.
    /// `None` when the pool is exhausted.
    pub(crate) fn offer(
        &self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        server_ip: Ipv4Addr,
        now: Instant,
    ) -> Option<Ipv4Addr> {
        let mut t = self.table();
        t.declined.retain(|_, until| *until > now);
        if let Some(lease) = t.by_mac.get(&mac).copied() {
            if self.assignable(lease.ip, server_ip) && !t.declined.contains_key(&lease.ip) {
                let expires = match lease.state {
                    // Keep a bound lease bound: a rebooting client DISCOVERs again.
                    LeaseState::Bound if lease.expires > now => lease.expires,
                    _ => now + OFFER_HOLD,
                };
                let state = if lease.expires > now {
                    lease.state
                } else {
                    LeaseState::Offered
                };
                t.by_mac.insert(
                    mac,
                    LeaseInfo {
                        ip: lease.ip,
                        state,
                        expires,
                    },
                );
                return Some(lease.ip);
            }
            t.remove(mac);
        }
        let candidate = requested
            .filter(|ip| self.assignable(*ip, server_ip) && t.is_free(*ip, now))
            .or_else(|| {
                (u32::from(self.config.start)..=u32::from(self.config.end))
                    .map(Ipv4Addr::from)
                    .find(|ip| self.assignable(*ip, server_ip) && t.is_free(*ip, now))
            })?;
        t.assign(
            mac,
            LeaseInfo {
                ip: candidate,
                state: LeaseState::Offered,
                expires: now + OFFER_HOLD,
            },
        );
        Some(candidate)
    }

    /// A REQUEST for `ip` (option 50, or ciaddr when renewing).
    pub(crate) fn request(
        &self,
        mac: MacAddr,
        ip: Ipv4Addr,
        server_ip: Ipv4Addr,
        now: Instant,
    ) -> RequestOutcome {
        if !self.on_subnet(ip) {
            return RequestOutcome::Nak;
        }
        let mut t = self.table();
        t.declined.retain(|_, until| *until > now);
        let bound = LeaseInfo {
            ip,
            state: LeaseState::Bound,
            expires: now + self.config.lease_time,
        };
        match t.by_mac.get(&mac).copied() {
            Some(lease) if lease.ip == ip => {
                // Still ours unless another client took it after the lease expired.
                if t.by_ip.get(&ip) == Some(&mac) {
                    t.by_mac.insert(mac, bound);
                    RequestOutcome::Ack(ip)
                } else {
                    t.by_mac.remove(&mac);
                    RequestOutcome::Nak
                }
            }
            Some(_) => RequestOutcome::Nak,
            None if !self.in_range(ip) => RequestOutcome::Silent,
            None if self.assignable(ip, server_ip) && t.is_free(ip, now) => {
                // No record (the table is in memory; we may have restarted): adopt it.
                t.assign(mac, bound);
                RequestOutcome::Ack(ip)
            }
            None => RequestOutcome::Nak,
        }
    }

    /// The client took another server's offer: free what we offered it.
    pub(crate) fn forget_offer(&self, mac: MacAddr) {
        let mut t = self.table();
        if t.by_mac
            .get(&mac)
            .is_some_and(|l| l.state == LeaseState::Offered)
        {
            t.remove(mac);
        }
    }

    /// DHCPRELEASE: the client gives `ip` back.
    pub(crate) fn release(&self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        let mut t = self.table();
        if t.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            t.remove(mac);
            true
        } else {
            false
        }
    }

    /// DHCPDECLINE: `ip` is in use by someone else; skip it for a while.
    pub(crate) fn decline(&self, mac: MacAddr, ip: Ipv4Addr, now: Instant) -> bool {
        let mut t = self.table();
        if t.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            t.remove(mac);
            t.declined.insert(ip, now + DECLINE_QUARANTINE);
            true
        } else {
            false
        }
    }
}

impl LeaseTable {
    fn is_free(&self, ip: Ipv4Addr, now: Instant) -> bool {
        if self.declined.contains_key(&ip) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(holder) => self.by_mac.get(holder).is_none_or(|l| l.expires <= now),
        }
    }

    fn assign(&mut self, mac: MacAddr, lease: LeaseInfo) {
        self.remove(mac);
        if let Some(old) = self.by_ip.insert(lease.ip, mac) {
            // The previous holder's lease had expired (checked by `is_free`).
            self.by_mac.remove(&old);
        }
        self.by_mac.insert(mac, lease);
    }

    fn remove(&mut self, mac: MacAddr) {
        if let Some(lease) = self.by_mac.remove(&mac) {
            if self.by_ip.get(&lease.ip) == Some(&mac) {
                self.by_ip.remove(&lease.ip);
            }
        }
    }
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, mask: Ipv4Addr) -> bool {
    let m = u32::from(mask);
    u32::from(a) & m == u32::from(b) & m
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn pool(start: u8, end: u8) -> Pool {
        Pool::new(PoolConfig {
            start: Ipv4Addr::new(10, 0, 0, start),
            end: Ipv4Addr::new(10, 0, 0, end),
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(SERVER),
            dns: vec![],
            lease_time: Duration::from_secs(3600),
        })
        .unwrap()
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn config_is_validated() {
        let ok = pool(10, 20).config().clone();
        let bad = |f: &dyn Fn(&mut PoolConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            Pool::new(c).is_err()
        };
        assert!(bad(&|c| c.subnet_mask = Ipv4Addr::new(255, 0, 255, 0)));
        assert!(bad(&|c| c.start = Ipv4Addr::new(10, 0, 0, 30)));
        assert!(bad(&|c| c.end = Ipv4Addr::new(10, 0, 1, 5)));
        assert!(bad(&|c| c.lease_time = Duration::from_secs(5)));
        assert!(bad(&|c| c.router = Some(Ipv4Addr::new(192, 168, 0, 1))));
    }

    #[test]
    fn never_hands_out_server_router_network_or_broadcast() {
        let p = pool(0, 255);
        let now = Instant::now();
        let mut seen = Vec::new();
        for n in 0..=255 {
            if let Some(ip) = p.offer(mac(n), None, Ipv4Addr::new(10, 0, 0, 2), now) {
                seen.push(ip);
            }
        }
        // .0, .1 (router), .2 (server) and .255 are skipped.
        assert_eq!(seen.len(), 252);
        assert_eq!(seen[0], Ipv4Addr::new(10, 0, 0, 3));
        assert!(!seen.contains(&Ipv4Addr::new(10, 0, 0, 255)));
    }

    #[test]
    fn expired_offers_are_reused_by_others() {
        let p = pool(10, 10);
        let now = Instant::now();
        assert!(p.offer(mac(1), None, SERVER, now).is_some());
        assert_eq!(p.offer(mac(2), None, SERVER, now), None);
        let later = now + OFFER_HOLD + Duration::from_secs(1);
        assert_eq!(
            p.offer(mac(2), None, SERVER, later),
            Some(Ipv4Addr::new(10, 0, 0, 10))
        );
        assert_eq!(p.lease(mac(1)), None);
    }

    #[test]
    fn decline_quarantines_the_address() {
        let p = pool(10, 11);
        let now = Instant::now();
        let ip = p.offer(mac(1), None, SERVER, now).unwrap();
        assert!(p.decline(mac(1), ip, now));
        assert_ne!(p.offer(mac(1), None, SERVER, now), Some(ip));
        let later = now + DECLINE_QUARANTINE + Duration::from_secs(1);
        assert_eq!(p.offer(mac(3), None, SERVER, later), Some(ip));
    }

    #[test]
    fn requests_after_a_restart_adopt_free_addresses() {
        let p = pool(10, 20);
        let now = Instant::now();
        let ip = Ipv4Addr::new(10, 0, 0, 15);
        assert_eq!(p.request(mac(1), ip, SERVER, now), RequestOutcome::Ack(ip));
        assert_eq!(p.request(mac(2), ip, SERVER, now), RequestOutcome::Nak);
        // In the subnet but not in the range: someone else's business.
        assert_eq!(
            p.request(mac(3), Ipv4Addr::new(10, 0, 0, 100), SERVER, now),
            RequestOutcome::Silent
        );
        assert_eq!(
            p.request(mac(3), Ipv4Addr::new(192, 168, 1, 5), SERVER, now),
            RequestOutcome::Nak
        );
    }
}
