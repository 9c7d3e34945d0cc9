//! Untrusted bytes to a DHCP request, or the reason they are not one.
//!
//! dhcproto decodes leniently: it stops reading options at the first one it cannot
//! decode and still returns `Ok`, and a few of its option decoders assert on lengths
//! (which panics in debug builds). So the option area is walked here first, the lengths
//! that dhcproto or [`respond`](super::respond) rely on are checked, and after decoding
//! every option seen on the wire must have survived; otherwise the packet is dropped.
use std::collections::BTreeSet;

use dhcproto::v4::{Message, OptionCode};
use dhcproto::{Decodable, Decoder};
use thiserror::Error;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const MIN_PACKET: usize = 240;
/// Largest request accepted: an Ethernet MTU's worth of UDP payload. PXE clients send
/// a few hundred bytes; anything bigger is not a boot client.
pub const MAX_PACKET: usize = 1472;
/// Largest total length of one option (after RFC 3396 concatenation) accepted.
pub const MAX_OPTION_LEN: usize = 255 * 2;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const OFFSET_OPTIONS: usize = 240;
const OPCODE_BOOTREQUEST: u8 = 1;

const PAD: u8 = 0;
const END: u8 = 255;

/// Why a datagram was dropped before reaching [`respond`](super::respond).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Malformed {
    #[error("{0} bytes is shorter than a DHCP header")]
    Truncated(usize),
    #[error("{0} bytes is larger than any boot client sends")]
    Oversized(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware address length {0} is over 16")]
    HardwareAddressLength(u8),
    #[error("magic cookie missing")]
    BadMagic,
    #[error("option {0} runs past the end of the packet")]
    OptionTruncated(u8),
    #[error("option {code} has invalid length {len}")]
    OptionLength { code: u8, len: usize },
    #[error("option {0} could not be decoded")]
    OptionUndecodable(u8),
    #[error("undecodable DHCP message")]
    Undecodable,
}

/// Checks and decodes one datagram received on a DHCP or PXE port.
pub fn parse_request(bytes: &[u8]) -> Result<Message, Malformed> {
    if bytes.len() < MIN_PACKET {
        return Err(Malformed::Truncated(bytes.len()));
    }
    if bytes.len() > MAX_PACKET {
        return Err(Malformed::Oversized(bytes.len()));
    }
    if bytes[0] != OPCODE_BOOTREQUEST {
        return Err(Malformed::NotRequest(bytes[0]));
    }
    // dhcproto slices chaddr by hlen: over 16 would panic later.
    if bytes[2] > 16 {
        return Err(Malformed::HardwareAddressLength(bytes[2]));
    }
    if bytes[236..240] != MAGIC {
        return Err(Malformed::BadMagic);
    }
    let codes = check_options(&bytes[OFFSET_OPTIONS..])?;
    let msg = Message::decode(&mut Decoder::new(bytes)).map_err(|_| Malformed::Undecodable)?;
    for code in codes {
        // dhcproto decodes option 37 into option 23's variant; nothing is lost.
        if code != 37 && !msg.opts().contains(OptionCode::from(code)) {
            return Err(Malformed::OptionUndecodable(code));
        }
    }
    Ok(msg)
}

/// Walks the options area; returns the option codes present.
fn check_options(mut rest: &[u8]) -> Result<BTreeSet<u8>, Malformed> {
    let mut codes = BTreeSet::new();
    // Consecutive options with one code form one option (RFC 3396); lengths are checked
    // on the whole run, as dhcproto decodes it.
    let mut run: Option<(u8, usize)> = None;
    // Running out without an END is tolerated: the datagram's end ends the options.
    while let Some((&code, tail)) = rest.split_first() {
        if code == END || code == PAD {
            if let Some((c, len)) = run.take() {
                check_length(c, len)?;
            }
            if code == END {
                break;
            }
            rest = tail;
            continue;
        }
        let Some((&len, tail)) = tail.split_first() else {
            return Err(Malformed::OptionTruncated(code));
        };
        let len = usize::from(len);
        if tail.len() < len {
            return Err(Malformed::OptionTruncated(code));
        }
        rest = &tail[len..];
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some((c, total)) => {
                check_length(c, total)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        codes.insert(code);
    }
    if let Some((c, len)) = run {
        check_length(c, len)?;
    }
    Ok(codes)
}

fn check_length(code: u8, len: usize) -> Result<(), Malformed> {
    let ok = match code {
        // Message type.
        53 => len == 1,
        // Requested address, server identifier.
        50 | 54 => len == 4,
        // Maximum message size.
        57 => len == 2,
        // Client architectures: a list of 16-bit types (RFC 4578 2.1).
        93 => len >= 2 && len.is_multiple_of(2),
        // Client network interface identifier: type, major, minor (RFC 4578 2.2).
        94 => len == 3,
        // Rapid commit carries nothing.
        80 => len == 0,
        // Client FQDN: flags, rcode1, rcode2, name.
        81 => len >= 3,
        // Bulk leasequery status code, then 32-bit times.
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    if ok && len <= MAX_OPTION_LEN {
        Ok(())
    } else {
        Err(Malformed::OptionLength { code, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType};
    use dhcproto::Encodable;

    fn discover_bytes() -> Vec<u8> {
        let mut m = Message::new_with_id(
            7,
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            [0, 0, 0, 0].into(),
            &[0x52, 0x54, 0, 1, 2, 3],
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        m.to_vec().unwrap()
    }

    #[test]
    fn accepts_a_well_formed_discover() {
        let msg = parse_request(&discover_bytes()).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn rejects_short_long_replies_and_bad_magic() {
        let b = discover_bytes();
        assert_eq!(parse_request(&b[..239]), Err(Malformed::Truncated(239)));
        let mut big = b.clone();
        big.resize(MAX_PACKET + 1, 0);
        assert_eq!(
            parse_request(&big),
            Err(Malformed::Oversized(MAX_PACKET + 1))
        );
        let mut reply = b.clone();
        reply[0] = 2;
        assert_eq!(parse_request(&reply), Err(Malformed::NotRequest(2)));
        let mut magic = b.clone();
        magic[239] = 0;
        assert_eq!(parse_request(&magic), Err(Malformed::BadMagic));
        let mut hlen = b;
        hlen[2] = 200;
        assert_eq!(
            parse_request(&hlen),
            Err(Malformed::HardwareAddressLength(200))
        );
    }

    #[test]
    fn rejects_truncated_and_mis_sized_options() {
        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        b.extend_from_slice(&[60, 9, b'P', b'X']);
        assert_eq!(parse_request(&b), Err(Malformed::OptionTruncated(60)));

        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        b.extend_from_slice(&[53, 2, 1, 1, 255]);
        assert_eq!(
            parse_request(&b),
            Err(Malformed::OptionLength { code: 53, len: 2 })
        );

        // dhcproto asserts option 94 is 3 bytes long.
        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        b.extend_from_slice(&[53, 1, 1, 94, 2, 1, 2, 255]);
        assert_eq!(
            parse_request(&b),
            Err(Malformed::OptionLength { code: 94, len: 2 })
        );

        // A router list that is not a multiple of 4 stops dhcproto's option decoding.
        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        b.extend_from_slice(&[53, 1, 1, 3, 5, 1, 2, 3, 4, 5, 255]);
        assert_eq!(parse_request(&b), Err(Malformed::OptionUndecodable(3)));
    }

    #[test]
    fn concatenated_options_are_checked_as_one() {
        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        // Option 93 split 1 + 1 bytes: one 2-byte architecture once joined.
        b.extend_from_slice(&[53, 1, 1, 93, 1, 0, 93, 1, 7, 255]);
        let msg = parse_request(&b).unwrap();
        assert!(msg
            .opts()
            .get(OptionCode::ClientSystemArchitecture)
            .is_some());
    }

    #[test]
    fn pads_and_missing_end_are_tolerated() {
        let mut b = discover_bytes();
        b.truncate(MIN_PACKET);
        b.extend_from_slice(&[0, 0, 53, 1, 1, 0]);
        assert!(parse_request(&b).is_ok());
    }
}
