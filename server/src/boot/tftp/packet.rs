//! TFTP packets (RFC 1350, options per RFC 2347): a pure parser and encoder.
//!
//! `parse` never panics on any input; every rule it enforces is a `ParseError`
//! variant, so the server can log why a datagram was refused.
use std::borrow::Cow;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// RFC 2347: a request carrying options must fit in 512 octets.
pub const MAX_REQUEST_LEN: usize = 512;
/// More than every option we know; the request length bounds it anyway.
pub const MAX_OPTIONS: usize = 16;
/// RFC 2348's largest block size.
pub const MAX_BLKSIZE: u16 = 65464;

/// RFC 1350 error codes (plus RFC 2347's code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionNegotiation = 8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpOption<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a str,
    pub mode: &'a str,
    pub options: Vec<TftpOption<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data {
        block: u16,
        data: &'a [u8],
    },
    Ack {
        block: u16,
    },
    /// The message is decoded lossily: a peer's ERROR must end the transfer even when
    /// its text is not UTF-8.
    Error {
        code: u16,
        message: Cow<'a, str>,
    },
    Oack {
        options: Vec<TftpOption<'a>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}-byte packet is too short")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0}-byte request is over the {MAX_REQUEST_LEN}-byte limit")]
    RequestTooLong(usize),
    #[error("{0} is not NUL-terminated")]
    MissingNul(&'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("option {0:?} is given twice")]
    DuplicateOption(String),
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("{0}-byte data block is larger than any block size")]
    DataTooLong(usize),
}

impl Packet<'_> {
    pub fn opcode(&self) -> u16 {
        match self {
            Packet::Rrq(_) => OP_RRQ,
            Packet::Wrq(_) => OP_WRQ,
            Packet::Data { .. } => OP_DATA,
            Packet::Ack { .. } => OP_ACK,
            Packet::Error { .. } => OP_ERROR,
            Packet::Oack { .. } => OP_OACK,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Rrq(_) => "RRQ",
            Packet::Wrq(_) => "WRQ",
            Packet::Data { .. } => "DATA",
            Packet::Ack { .. } => "ACK",
            Packet::Error { .. } => "ERROR",
            Packet::Oack { .. } => "OACK",
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.opcode().to_be_bytes());
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                put_str(out, r.filename);
                put_str(out, r.mode);
                put_options(out, &r.options);
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => out.extend_from_slice(&block.to_be_bytes()),
            Packet::Error { code, message } => {
                out.extend_from_slice(&code.to_be_bytes());
                put_str(out, message);
            }
            Packet::Oack { options } => put_options(out, options),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// An ERROR packet, ready to send.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code: code as u16,
        message: Cow::Borrowed(message),
    }
    .to_bytes()
}

/// Writes a DATA packet into `out` (cleared first) without building a `Packet`.
pub fn data_packet(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

pub fn ack_packet(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn put_options(out: &mut Vec<u8>, options: &[TftpOption<'_>]) {
    for o in options {
        put_str(out, o.name);
        put_str(out, o.value);
    }
}

pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (op, body) = match buf {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => return Err(ParseError::TooShort(buf.len())),
    };
    match op {
        OP_RRQ | OP_WRQ => {
            if buf.len() > MAX_REQUEST_LEN {
                return Err(ParseError::RequestTooLong(buf.len()));
            }
            let req = parse_request(body)?;
            Ok(if op == OP_RRQ {
                Packet::Rrq(req)
            } else {
                Packet::Wrq(req)
            })
        }
        OP_DATA => {
            let (block, data) = split_u16(body).ok_or(ParseError::TooShort(buf.len()))?;
            if data.len() > usize::from(MAX_BLKSIZE) {
                return Err(ParseError::DataTooLong(data.len()));
            }
            Ok(Packet::Data { block, data })
        }
        // Bytes after the block number are ignored: some stacks pad short datagrams.
        OP_ACK => {
            let (block, _) = split_u16(body).ok_or(ParseError::TooShort(buf.len()))?;
            Ok(Packet::Ack { block })
        }
        // Lenient on purpose: a peer's ERROR ends the transfer whatever its text.
        OP_ERROR => {
            let (code, rest) = split_u16(body).ok_or(ParseError::TooShort(buf.len()))?;
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(&rest[..end]),
            })
        }
        OP_OACK => {
            let options = parse_options(body)?;
            if options.is_empty() {
                return Err(ParseError::Empty("option acknowledgment"));
            }
            Ok(Packet::Oack { options })
        }
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

fn split_u16(b: &[u8]) -> Option<(u16, &[u8])> {
    match b {
        [x, y, rest @ ..] => Some((u16::from_be_bytes([*x, *y]), rest)),
        _ => None,
    }
}

fn next_str<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a str, ParseError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::MissingNul(what))?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| ParseError::NotUtf8(what))?;
    *rest = &rest[end + 1..];
    Ok(s)
}

fn parse_request(mut rest: &[u8]) -> Result<Request<'_>, ParseError> {
    let filename = next_str(&mut rest, "filename")?;
    if filename.is_empty() {
        return Err(ParseError::Empty("filename"));
    }
    let mode = next_str(&mut rest, "mode")?;
    if mode.is_empty() {
        return Err(ParseError::Empty("mode"));
    }
    let options = parse_options(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

fn parse_options(mut rest: &[u8]) -> Result<Vec<TftpOption<'_>>, ParseError> {
    let mut options: Vec<TftpOption<'_>> = Vec::new();
    // Trailing NUL padding (sent by some PXE ROMs) ends the list.
    while rest.iter().any(|&b| b != 0) {
        let name = next_str(&mut rest, "option name")?;
        if name.is_empty() {
            return Err(ParseError::Empty("option name"));
        }
        if rest.is_empty() {
            return Err(ParseError::OptionWithoutValue(name.to_string()));
        }
        let value = next_str(&mut rest, "option value")?;
        if options.iter().any(|o| o.name.eq_ignore_ascii_case(name)) {
            return Err(ParseError::DuplicateOption(name.to_string()));
        }
        if options.len() == MAX_OPTIONS {
            return Err(ParseError::TooManyOptions);
        }
        options.push(TftpOption { name, value });
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut v = OP_RRQ.to_be_bytes().to_vec();
        for p in parts {
            v.extend_from_slice(p.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_a_plain_rrq() {
        let b = rrq(&["pxelinux.0", "octet"]);
        let Ok(Packet::Rrq(r)) = parse(&b) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "pxelinux.0");
        assert_eq!(r.mode, "octet");
        assert!(r.options.is_empty());
    }

    #[test]
    fn parses_options_and_nul_padding() {
        let mut b = rrq(&["f", "octet", "blksize", "1468", "tsize", "0"]);
        b.extend_from_slice(&[0, 0, 0]);
        let Ok(Packet::Rrq(r)) = parse(&b) else {
            panic!("not an RRQ")
        };
        assert_eq!(
            r.options,
            vec![
                TftpOption {
                    name: "blksize",
                    value: "1468"
                },
                TftpOption {
                    name: "tsize",
                    value: "0"
                }
            ]
        );
    }

    #[test]
    fn refuses_malformed_requests() {
        assert_eq!(parse(&[]), Err(ParseError::TooShort(0)));
        assert_eq!(parse(&[0]), Err(ParseError::TooShort(1)));
        assert_eq!(parse(&[0, 9, 1]), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(
            parse(b"\x00\x01file"),
            Err(ParseError::MissingNul("filename"))
        );
        assert_eq!(
            parse(b"\x00\x01file\x00octet"),
            Err(ParseError::MissingNul("mode"))
        );
        assert_eq!(
            parse(&rrq(&["", "octet"])),
            Err(ParseError::Empty("filename"))
        );
        assert_eq!(parse(&rrq(&["f", ""])), Err(ParseError::Empty("mode")));
        assert_eq!(
            parse(&rrq(&["f", "octet", "blksize"])),
            Err(ParseError::OptionWithoutValue("blksize".into()))
        );
        let mut b = rrq(&["f", "octet", "blksize"]);
        b.extend_from_slice(b"512");
        assert_eq!(parse(&b), Err(ParseError::MissingNul("option value")));
        assert_eq!(
            parse(&rrq(&["f", "octet", "blksize", "512", "BLKSIZE", "1024"])),
            Err(ParseError::DuplicateOption("BLKSIZE".into()))
        );
        assert_eq!(
            parse(b"\x00\x01f\xff\x00octet\x00"),
            Err(ParseError::NotUtf8("filename"))
        );
        let long = "a".repeat(600);
        assert_eq!(
            parse(&rrq(&[&long, "octet"])),
            Err(ParseError::RequestTooLong(609))
        );
        let mut many = vec!["f", "octet"];
        let names: Vec<String> = (0..=MAX_OPTIONS).map(|i| format!("o{i}")).collect();
        for n in &names {
            many.push(n);
            many.push("1");
        }
        assert_eq!(parse(&rrq(&many)), Err(ParseError::TooManyOptions));
        assert_eq!(parse(&[0, 3, 1]), Err(ParseError::TooShort(3)));
        assert_eq!(parse(&[0, 4]), Err(ParseError::TooShort(2)));
        assert_eq!(
            parse(&[0, 6]),
            Err(ParseError::Empty("option acknowledgment"))
        );
    }

    #[test]
    fn lenient_error_and_ack() {
        assert_eq!(
            parse(b"\x00\x05\x00\x01no nul"),
            Ok(Packet::Error {
                code: 1,
                message: "no nul".into()
            })
        );
        assert_eq!(parse(&[0, 4, 0, 7, 0, 0]), Ok(Packet::Ack { block: 7 }));
    }

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,24}"
    }

    fn word() -> impl Strategy<Value = String> {
        "[^\u{0}]{1,24}"
    }

    fn unique_options() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((word(), text()), 0..6).prop_map(|v| {
            let mut out: Vec<(String, String)> = Vec::new();
            for (n, val) in v {
                if !out.iter().any(|(o, _)| o.eq_ignore_ascii_case(&n)) {
                    out.push((n, val));
                }
            }
            out
        })
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Req(bool, String, String, Vec<(String, String)>),
        Data(u16, Vec<u8>),
        Ack(u16),
        Error(u16, String),
        Oack(Vec<(String, String)>),
    }

    impl Owned {
        fn packet(&self) -> Packet<'_> {
            fn opts(v: &[(String, String)]) -> Vec<TftpOption<'_>> {
                v.iter()
                    .map(|(n, val)| TftpOption {
                        name: n,
                        value: val,
                    })
                    .collect()
            }
            match self {
                Owned::Req(read, f, m, o) => {
                    let r = Request {
                        filename: f,
                        mode: m,
                        options: opts(o),
                    };
                    if *read {
                        Packet::Rrq(r)
                    } else {
                        Packet::Wrq(r)
                    }
                }
                Owned::Data(b, d) => Packet::Data { block: *b, data: d },
                Owned::Ack(b) => Packet::Ack { block: *b },
                Owned::Error(c, m) => Packet::Error {
                    code: *c,
                    message: Cow::Borrowed(m),
                },
                Owned::Oack(o) => Packet::Oack { options: opts(o) },
            }
        }
    }

    fn any_packet() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (any::<bool>(), word(), word(), unique_options())
                .prop_map(|(r, f, m, o)| Owned::Req(r, f, m, o)),
            (
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..1500)
            )
                .prop_map(|(b, d)| Owned::Data(b, d)),
            any::<u16>().prop_map(Owned::Ack),
            (any::<u16>(), text()).prop_map(|(c, m)| Owned::Error(c, m)),
            unique_options()
                .prop_filter("OACK needs an option", |o| !o.is_empty())
                .prop_map(Owned::Oack),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn request_shaped_bytes_never_panic(
            op in 0u16..8,
            parts in proptest::collection::vec("[a-z0-9]{0,8}", 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut b = op.to_be_bytes().to_vec();
            for p in &parts {
                b.extend_from_slice(p.as_bytes());
                b.push(0);
            }
            b.extend_from_slice(&tail);
            let _ = parse(&b);
        }

        #[test]
        fn encode_then_parse_round_trips(owned in any_packet()) {
            let packet = owned.packet();
            let bytes = packet.to_bytes();
            let is_request = matches!(packet, Packet::Rrq(_) | Packet::Wrq(_));
            if is_request && bytes.len() > MAX_REQUEST_LEN {
                prop_assert_eq!(parse(&bytes), Err(ParseError::RequestTooLong(bytes.len())));
            } else {
                prop_assert_eq!(parse(&bytes), Ok(packet));
            }
        }
    }
}
