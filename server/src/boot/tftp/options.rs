//! Option negotiation: RFC 2347 (OACK), 2348 (blksize), 2349 (timeout, tsize),
//! 7440 (windowsize). Pure: the session turns the result into an OACK.
use std::time::Duration;

use super::packet::{TftpOption, MAX_BLKSIZE};

/// The server's side of the negotiation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Caps windowsize x blksize: the unacknowledged window is kept in memory.
    pub max_window_bytes: usize,
}

/// What both sides agreed on. Defaults (no OACK) are RFC 1350's lockstep 512.
/// An OACK is due when `oack` has anything to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Set when the client asked for a retransmission timeout.
    pub timeout: Option<u8>,
    /// Set when the client asked for the transfer size.
    pub tsize: bool,
    blksize_asked: bool,
    windowsize_asked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("option {name}: {value:?} is not a number")]
    NotANumber { name: &'static str, value: String },
    #[error("option {name}: {value} is outside {min}..={max}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

impl Negotiated {
    pub fn defaults() -> Self {
        Self {
            blksize: 512,
            windowsize: 1,
            timeout: None,
            tsize: false,
            blksize_asked: false,
            windowsize_asked: false,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(|s| Duration::from_secs(u64::from(s)))
    }

    /// The OACK's options; `tsize` is the file's size, or none to leave it out.
    pub fn oack(&self, tsize: Option<u64>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.blksize_asked {
            out.push(("blksize", self.blksize.to_string()));
        }
        if let Some(t) = self.timeout {
            out.push(("timeout", t.to_string()));
        }
        if let (true, Some(size)) = (self.tsize, tsize) {
            out.push(("tsize", size.to_string()));
        }
        if self.windowsize_asked {
            out.push(("windowsize", self.windowsize.to_string()));
        }
        out
    }
}

/// Reads the client's options. Unknown options are ignored (RFC 2347); a known option
/// with a bad value is an error the caller answers with ERROR 8.
pub fn negotiate(options: &[TftpOption<'_>], limits: &Limits) -> Result<Negotiated, OptionError> {
    let mut n = Negotiated::defaults();
    for o in options {
        let name = o.name;
        if name.eq_ignore_ascii_case("blksize") {
            let v = number("blksize", o.value)?;
            if v < 8 {
                return Err(range("blksize", v, 8, u64::from(MAX_BLKSIZE)));
            }
            // RFC 2348: the server may answer with a smaller size than asked.
            let cap = limits.max_blksize.clamp(8, MAX_BLKSIZE);
            n.blksize = u16::try_from(v).unwrap_or(u16::MAX).min(cap);
            n.blksize_asked = true;
        } else if name.eq_ignore_ascii_case("timeout") {
            let v = number("timeout", o.value)?;
            n.timeout = Some(
                u8::try_from(v)
                    .ok()
                    .filter(|&t| t >= 1)
                    .ok_or_else(|| range("timeout", v, 1, 255))?,
            );
        } else if name.eq_ignore_ascii_case("tsize") {
            // Any number is fine: in a read request the client sends 0.
            number("tsize", o.value)?;
            n.tsize = true;
        } else if name.eq_ignore_ascii_case("windowsize") {
            let v = number("windowsize", o.value)?;
            let w = u16::try_from(v)
                .ok()
                .filter(|&w| w >= 1)
                .ok_or_else(|| range("windowsize", v, 1, 65535))?;
            n.windowsize = w.min(limits.max_windowsize.max(1));
            n.windowsize_asked = true;
        }
    }
    // Keep the in-memory window bounded whatever the two sizes are.
    let by_bytes = (limits.max_window_bytes / usize::from(n.blksize)).max(1);
    n.windowsize = n
        .windowsize
        .min(u16::try_from(by_bytes).unwrap_or(u16::MAX));
    Ok(n)
}

fn range(name: &'static str, value: u64, min: u64, max: u64) -> OptionError {
    OptionError::OutOfRange {
        name,
        value,
        min,
        max,
    }
}

/// Decimal digits only: no sign, no spaces, at most 20 digits.
fn number(name: &'static str, value: &str) -> Result<u64, OptionError> {
    let bad = || OptionError::NotANumber {
        name,
        value: value.chars().take(24).collect(),
    };
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: MAX_BLKSIZE,
        max_windowsize: 64,
        max_window_bytes: 1 << 20,
    };

    fn opts<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<TftpOption<'a>> {
        pairs
            .iter()
            .map(|&(name, value)| TftpOption { name, value })
            .collect()
    }

    #[test]
    fn no_options_means_rfc1350_defaults() {
        let n = negotiate(&[], &LIMITS).unwrap();
        assert_eq!(n, Negotiated::defaults());
        assert!(n.oack(Some(10)).is_empty());
    }

    #[test]
    fn acknowledges_known_options() {
        let n = negotiate(
            &opts(&[
                ("BlkSize", "1468"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "8"),
                ("multicast", ""),
            ]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!((n.blksize, n.windowsize, n.timeout), (1468, 8, Some(3)));
        assert_eq!(
            n.oack(Some(42)),
            vec![
                ("blksize", "1468".to_string()),
                ("timeout", "3".to_string()),
                ("tsize", "42".to_string()),
                ("windowsize", "8".to_string()),
            ]
        );
        // Without a known size, tsize is left out of the OACK.
        assert_eq!(n.oack(None).len(), 3);
    }

    #[test]
    fn unknown_options_alone_need_no_oack() {
        let n = negotiate(&opts(&[("multicast", ""), ("x", "y")]), &LIMITS).unwrap();
        assert!(n.oack(Some(1)).is_empty());
    }

    #[test]
    fn clamps_large_requests() {
        let n = negotiate(&opts(&[("blksize", "70000")]), &LIMITS).unwrap();
        assert_eq!(n.blksize, MAX_BLKSIZE);
        let small = Limits {
            max_blksize: 1468,
            max_windowsize: 4,
            max_window_bytes: 1 << 20,
        };
        let n = negotiate(&opts(&[("blksize", "9000"), ("windowsize", "100")]), &small).unwrap();
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
        // 64 x 65464 bytes would exceed the window byte cap.
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "64")]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(n.windowsize, 16);
    }

    #[test]
    fn refuses_bad_values() {
        for (name, value) in [
            ("blksize", "abc"),
            ("blksize", ""),
            ("blksize", "-1"),
            ("blksize", "+512"),
            ("blksize", " 512"),
            ("blksize", "7"),
            ("blksize", "99999999999999999999999"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("tsize", "x"),
            ("windowsize", "0"),
            ("windowsize", "65536"),
        ] {
            assert!(
                negotiate(&opts(&[(name, value)]), &LIMITS).is_err(),
                "{name}={value} accepted"
            );
        }
    }
}
