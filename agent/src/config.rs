//! The kernel command line, parsed into the agent's typed configuration.
//!
//! The agent reads its settings from `/proc/cmdline`; every key is namespaced `siderite.*`:
//!
//! | key | value |
//! |-----|-------|
//! | `siderite.server=HOST:PORT[,HOST:PORT...]` | a server replica; repeat the key or separate with commas. IPv6 as `[addr]:port`. |
//! | `siderite.token=TOKEN` | the join token. |
//! | `siderite.ca=PIN` | SHA-256 of the server CA certificate: base64 (standard or URL-safe, padding optional) or 64 hex digits. |
//! | `siderite.insecure` | do not verify the server (`=0`/`=false` turns it off). Excludes `siderite.ca`. |
//! | `siderite.mac=MAC` | the boot NIC, `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`. `BOOTIF=01-aa-bb-cc-dd-ee-ff` (PXELINUX/iPXE) is read too; `siderite.mac` wins. |
//! | `siderite.debug` | verbose logs (`=0`/`=false` turns it off). |
//! | `siderite.ip=ADDR/PREFIX[,gw=IP][,dns=IP]...[,mac=MAC]` | static address instead of DHCP; repeatable (one per NIC or family). Without `mac=` it applies to the boot NIC. |
//!
//! Parsing never fails as a whole: a garbled command line still yields a configuration (with
//! the garbled keys left out) and a list of [`ConfigError`]s for the console, so the agent
//! keeps running and says why. Unknown `siderite.*` keys are reported as warnings; keys of
//! other owners (`console=`, `quiet`, `BOOT_IMAGE=`...) are ignored. Single-valued keys given
//! twice keep the last value, as the kernel does for its own parameters.
//!
//! Neither `siderite.ca` nor `siderite.insecure` gives [`Trust::Unspecified`]: the caller
//! decides; insecure is never assumed here.
use std::fmt;

pub use crate::net::{MacAddr, StaticIp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;

const PREFIX: &str = "siderite.";

/// Everything the agent takes from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// Server replicas in the order given, without duplicates. Empty when none was given:
    /// the caller logs that and keeps retrying.
    pub servers: Vec<ServerAddr>,
    pub token: Option<Token>,
    pub trust: Trust,
    /// The NIC the machine booted from (`siderite.mac`, else `BOOTIF`).
    pub boot_mac: Option<MacAddr>,
    pub debug: bool,
    /// Static addresses; an empty list means DHCP/SLAAC.
    pub static_ips: Vec<StaticIp>,
}

/// How the agent checks the server's certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trust {
    /// Neither `siderite.ca` nor `siderite.insecure` (or both, which is an error).
    #[default]
    Unspecified,
    /// SHA-256 of the server CA certificate (DER).
    Pinned(CaPin),
    Insecure,
}

/// SHA-256 digest of the CA certificate the server must chain to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin(pub [u8; 32]);

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({self})")
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

/// The join token. `Debug` does not print it, so configs can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A server address: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Name(String),
}

impl fmt::Display for ServerAddr {
    /// `host:port`, `1.2.3.4:port` or `[v6]:port`: what a connector takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, rest) = rest
                .split_once(']')
                .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| "missing :PORT after ']'".to_string())?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| "missing :PORT".to_string())?;
            if host.contains(':') {
                return Err("an IPv6 address needs brackets: [addr]:port".into());
            }
            let host = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) if is_dns_name(host) => Host::Name(host.to_ascii_lowercase()),
                Err(_) => return Err(format!("{host:?} is not a host name or IP address")),
            };
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{port:?} is not a port")),
        };
        Ok(ServerAddr { host, port })
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All-numeric dotted names are mistyped IPv4 addresses, not names.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `siderite.ip=ADDR/PREFIX[,gw=IP][,dns=IP]...[,mac=MAC]`: networking's own type, parsed here.
impl FromStr for StaticIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut fields = s.split(',');
        let cidr = fields.next().unwrap_or_default();
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not ADDR/PREFIX"))?;
        let address: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(format!("{address} cannot be a host address"));
        }
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("{prefix:?} is not a prefix length (0-{max})")),
        };
        let mut ip = StaticIp {
            address,
            prefix_len,
            gateway: None,
            dns: Vec::new(),
            mac: None,
        };
        for field in fields {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("{field:?} is not gw=, dns= or mac="))?;
            let parse_ip = || {
                v.parse::<IpAddr>()
                    .map_err(|_| format!("{k}={v:?} is not an IP address"))
            };
            match k {
                "gw" => {
                    let gw = parse_ip()?;
                    if gw.is_ipv4() != address.is_ipv4() {
                        return Err(format!("gateway {gw} is not in the family of {address}"));
                    }
                    if ip.gateway.replace(gw).is_some() {
                        return Err("gw= given twice".into());
                    }
                }
                "dns" => ip.dns.push(parse_ip()?),
                "mac" => ip.mac = Some(v.parse().map_err(|e: crate::net::BadMac| e.to_string())?),
                _ => return Err(format!("unknown field {k:?} (expected gw, dns or mac)")),
            }
        }
        Ok(ip)
    }
}

/// How bad a [`ConfigError`] is. Both kinds go to the console; neither stops the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The setting was ignored or overridden; the agent works as the operator likely meant.
    Warning,
    /// The setting is wrong and was left out; the agent may not reach the server.
    Error,
}

/// One problem found on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown kernel parameter {key}, ignored")]
    UnknownKey { key: String },
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key} needs a value")]
    MissingValue { key: String },
    #[error("{key} given {count} times, using the last one")]
    Duplicate { key: String, count: usize },
    #[error("siderite.ca and siderite.insecure exclude each other; trusting neither")]
    ConflictingTrust,
    #[error("siderite.mac ({mac}) and BOOTIF ({bootif}) differ, using siderite.mac")]
    BootMacMismatch { mac: MacAddr, bootif: MacAddr },
    #[error("cannot read the kernel command line: {0}")]
    Unreadable(String),
}

impl ConfigError {
    pub fn severity(&self) -> Severity {
        match self {
            ConfigError::UnknownKey { .. }
            | ConfigError::Duplicate { .. }
            | ConfigError::BootMacMismatch { .. } => Severity::Warning,
            ConfigError::Invalid { .. }
            | ConfigError::MissingValue { .. }
            | ConfigError::ConflictingTrust
            | ConfigError::Unreadable(_) => Severity::Error,
        }
    }
}

/// Reads `<root>/proc/cmdline` and parses it; an unreadable file is one more problem.
pub fn from_kernel(root: &Path) -> (AgentConfig, Vec<ConfigError>) {
    let path = root.join("proc/cmdline");
    match std::fs::read(&path) {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes)),
        Err(e) => (
            AgentConfig::default(),
            vec![ConfigError::Unreadable(format!("{}: {e}", path.display()))],
        ),
    }
}

/// Parses a kernel command line. Never fails: see the module docs.
pub fn parse(cmdline: &str) -> (AgentConfig, Vec<ConfigError>) {
    let mut cfg = AgentConfig::default();
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut ca: Option<CaPin> = None;
    let mut insecure = false;
    let mut siderite_mac: Option<MacAddr> = None;
    let mut bootif: Option<MacAddr> = None;

    for (key, value) in split_cmdline(cmdline) {
        let invalid = |reason: String| ConfigError::Invalid {
            key: key.to_string(),
            value: value.unwrap_or_default().to_string(),
            reason,
        };
        if key == "BOOTIF" {
            match value.map(parse_bootif) {
                Some(Ok(mac)) => bootif = Some(mac),
                Some(Err(reason)) => problems.push(invalid(reason)),
                None => problems.push(ConfigError::MissingValue { key: key.into() }),
            }
            continue;
        }
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        match name {
            "server" | "token" | "ca" | "insecure" | "mac" | "debug" | "ip" => {}
            _ => {
                problems.push(ConfigError::UnknownKey { key: key.into() });
                continue;
            }
        }
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => seen.push((key, 1)),
        }
        // Flags: present means on; `=0`/`=1` and friends are accepted too.
        if matches!(name, "insecure" | "debug") {
            let on = match value.map(parse_bool) {
                None => true,
                Some(Ok(b)) => b,
                Some(Err(reason)) => {
                    problems.push(invalid(reason));
                    continue;
                }
            };
            if name == "debug" {
                cfg.debug = on;
            } else {
                insecure = on;
            }
            continue;
        }
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            problems.push(ConfigError::MissingValue { key: key.into() });
            continue;
        };
        match name {
            "server" => {
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    match part.parse::<ServerAddr>() {
                        Ok(addr) if !cfg.servers.contains(&addr) => cfg.servers.push(addr),
                        Ok(_) => {}
                        Err(reason) => problems.push(ConfigError::Invalid {
                            key: key.into(),
                            value: part.into(),
                            reason,
                        }),
                    }
                }
            }
            "token" => cfg.token = Some(Token(value.to_string())),
            "ca" => match parse_pin(value) {
                Ok(pin) => ca = Some(pin),
                Err(reason) => problems.push(invalid(reason)),
            },
            "mac" => match value.parse::<MacAddr>() {
                Ok(mac) => siderite_mac = Some(mac),
                Err(reason) => problems.push(invalid(reason.to_string())),
            },
            "ip" => match value.parse() {
                Ok(ip) => cfg.static_ips.push(ip),
                Err(reason) => problems.push(invalid(reason)),
            },
            _ => unreachable!("checked above"),
        }
    }

    for (key, count) in seen {
        // Servers and static addresses accumulate; the rest keep the last value.
        if count > 1 && !matches!(key, "siderite.server" | "siderite.ip") {
            problems.push(ConfigError::Duplicate {
                key: key.into(),
                count,
            });
        }
    }
    cfg.trust = match (ca, insecure) {
        (Some(_), true) => {
            problems.push(ConfigError::ConflictingTrust);
            Trust::Unspecified
        }
        (Some(pin), false) => Trust::Pinned(pin),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::Unspecified,
    };
    cfg.boot_mac = match (siderite_mac, bootif) {
        (Some(mac), Some(bootif)) if mac != bootif => {
            problems.push(ConfigError::BootMacMismatch { mac, bootif });
            Some(mac)
        }
        (mac, bootif) => mac.or(bootif),
    };
    (cfg, problems)
}

/// Splits a command line into `(key, value)` pairs the way the kernel's `next_arg()` does:
/// whitespace separates parameters except inside double quotes; a value (or the whole
/// parameter) wrapped in quotes loses them. `--` (the start of init's own arguments) is
/// skipped, and what follows is parsed too: it is still on `/proc/cmdline` and meant for us.
pub(crate) fn split_cmdline(cmdline: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut rest = cmdline.trim_start();
    while !rest.is_empty() {
        let mut param = rest;
        let mut in_quote = false;
        let quoted = param.starts_with('"');
        if quoted {
            param = &param[1..];
            in_quote = true;
        }
        let mut end = param.len();
        for (i, c) in param.char_indices() {
            if c.is_whitespace() && !in_quote {
                end = i;
                break;
            }
            if c == '"' {
                in_quote = !in_quote;
            }
        }
        rest = param[end..].trim_start();
        let mut param = &param[..end];
        if quoted {
            param = param.strip_suffix('"').unwrap_or(param);
        }
        if param == "--" || param.is_empty() {
            continue;
        }
        match param.split_once('=') {
            Some((key, value)) => {
                let value = match value.strip_prefix('"') {
                    Some(v) => v.strip_suffix('"').unwrap_or(v),
                    None => value,
                };
                out.push((key, Some(value)));
            }
            None => out.push((param, None)),
        }
    }
    out
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "y" | "Y" | "yes" | "true" | "on" => Ok(true),
        "0" | "n" | "N" | "no" | "false" | "off" => Ok(false),
        _ => Err("expected nothing, 1/0, yes/no, true/false or on/off".into()),
    }
}

/// `BOOTIF=01-aa-bb-cc-dd-ee-ff`: ARP hardware type 1 (Ethernet), then the MAC.
fn parse_bootif(v: &str) -> Result<MacAddr, String> {
    match v.split_once('-') {
        Some(("01", mac)) => mac.parse().map_err(|e: crate::net::BadMac| e.to_string()),
        Some((htype, _)) if htype.len() == 2 => Err(format!(
            "hardware type {htype} is not Ethernet (01); expected 01-aa-bb-cc-dd-ee-ff"
        )),
        _ => Err("expected 01-aa-bb-cc-dd-ee-ff".into()),
    }
}

fn parse_pin(v: &str) -> Result<CaPin, String> {
    // `sha256:<hex>` is what the server prints and its iPXE script passes.
    let v = v.strip_prefix("sha256:").unwrap_or(v);
    let bytes = if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| e.to_string())?
    } else {
        use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurposeConfig};
        let cfg =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let alphabet = if v.contains(['-', '_']) {
            &base64::alphabet::URL_SAFE
        } else {
            &base64::alphabet::STANDARD
        };
        general_purpose::GeneralPurpose::new(alphabet, cfg)
            .decode(v)
            .map_err(|e| format!("not base64 or hex: {e}"))?
    };
    let pin: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("a SHA-256 digest has 32 bytes, this has {}", b.len()))?;
    Ok(CaPin(pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const PIN_B64: &str = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=";

    fn pin() -> CaPin {
        parse_pin(PIN_HEX).unwrap()
    }

    fn addr(s: &str) -> ServerAddr {
        s.parse().unwrap()
    }

    #[test]
    fn typical_pxe_command_line() {
        let (cfg, problems) = parse(
            "BOOT_IMAGE=/vmlinuz console=tty0 console=ttyS0,115200n8 quiet \
             siderite.server=10.0.0.1:50051 siderite.token=abc.def \
             siderite.ca=n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg= \
             initrd=initramfs.cpio.zst BOOTIF=01-52-54-00-12-34-56\n",
        );
        assert_eq!(problems, vec![]);
        assert_eq!(cfg.servers, vec![addr("10.0.0.1:50051")]);
        assert_eq!(cfg.token.as_ref().map(Token::expose), Some("abc.def"));
        assert_eq!(cfg.trust, Trust::Pinned(pin()));
        assert_eq!(cfg.boot_mac, Some("52:54:00:12:34:56".parse().unwrap()));
        assert!(!cfg.debug);
        assert!(cfg.static_ips.is_empty());
    }

    #[test]
    fn empty_command_line_is_an_empty_config() {
        assert_eq!(parse(""), (AgentConfig::default(), vec![]));
        assert_eq!(parse("  \n"), (AgentConfig::default(), vec![]));
        assert_eq!(AgentConfig::default().trust, Trust::Unspecified);
    }

    #[test]
    fn servers_repeat_and_split_on_commas() {
        let (cfg, problems) = parse(
            "siderite.server=a.example:1,[fd00::1]:50051 siderite.server=10.0.0.2:2,,a.example:1 \
             siderite.server=[::1]:3",
        );
        assert_eq!(problems, vec![]);
        let shown: Vec<String> = cfg.servers.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["a.example:1", "[fd00::1]:50051", "10.0.0.2:2", "[::1]:3"]
        );
        assert_eq!(
            cfg.servers[1].host,
            Host::Ip("fd00::1".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn server_names_are_lower_cased() {
        assert_eq!(
            addr("Siderite.LAB:443").host,
            Host::Name("siderite.lab".into())
        );
    }

    #[test]
    fn bad_servers_are_errors_naming_the_key_and_the_good_ones_stay() {
        let (cfg, problems) = parse(
            "siderite.server=fd00::1:50051,ok.example:7,host-only,[fd00::1:50051,\
             10.0.0.1:0,10.0.0.1:70000,[::1]:x,bad_host!:1,999.1.1.1:5,[fe80::1]",
        );
        assert_eq!(cfg.servers, vec![addr("ok.example:7")]);
        assert_eq!(problems.len(), 9, "{problems:#?}");
        for p in &problems {
            assert_eq!(p.severity(), Severity::Error);
            assert!(
                matches!(p, ConfigError::Invalid { key, .. } if key == "siderite.server"),
                "{p:?}"
            );
        }
        assert!(
            problems[0].to_string().contains("brackets"),
            "{}",
            problems[0]
        );
        assert_eq!(
            problems[0].to_string(),
            "siderite.server: invalid value \"fd00::1:50051\": \
             an IPv6 address needs brackets: [addr]:port"
        );
    }

    #[test]
    fn missing_values() {
        let (cfg, problems) =
            parse("siderite.server siderite.server= siderite.token= siderite.ca siderite.mac=");
        assert_eq!(cfg, AgentConfig::default());
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| match p {
                ConfigError::MissingValue { key } => key.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "siderite.server",
                "siderite.server",
                "siderite.token",
                "siderite.ca",
                "siderite.mac"
            ]
        );
    }

    #[test]
    fn unknown_siderite_keys_are_warnings_and_foreign_keys_are_ignored() {
        let (cfg, problems) = parse(
            "siderite.sever=10.0.0.1:1 siderite siderite. siderite.debug \
             sidero.server=x ip=dhcp console=ttyS0 nomodeset panic=-1 siderite.Token=x",
        );
        assert!(cfg.debug);
        assert!(cfg.servers.is_empty());
        assert_eq!(
            problems,
            vec![
                ConfigError::UnknownKey {
                    key: "siderite.sever".into()
                },
                ConfigError::UnknownKey {
                    key: "siderite.".into()
                },
                ConfigError::UnknownKey {
                    key: "siderite.Token".into()
                },
            ]
        );
        assert!(problems.iter().all(|p| p.severity() == Severity::Warning));
        assert_eq!(
            problems[0].to_string(),
            "unknown kernel parameter siderite.sever, ignored"
        );
    }

    #[test]
    fn duplicate_single_keys_keep_the_last_value_and_warn() {
        let (cfg, problems) = parse(
            "siderite.token=one siderite.token=two siderite.mac=52:54:00:00:00:01 \
             siderite.mac=52:54:00:00:00:02 siderite.debug siderite.debug=0",
        );
        assert_eq!(cfg.token.unwrap().expose(), "two");
        assert_eq!(cfg.boot_mac.unwrap().to_string(), "52:54:00:00:00:02");
        assert!(!cfg.debug);
        assert_eq!(
            problems,
            vec![
                ConfigError::Duplicate {
                    key: "siderite.token".into(),
                    count: 2
                },
                ConfigError::Duplicate {
                    key: "siderite.mac".into(),
                    count: 2
                },
                ConfigError::Duplicate {
                    key: "siderite.debug".into(),
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn trust() {
        fn t(s: &str) -> Trust {
            parse(s).0.trust
        }
        assert_eq!(t("siderite.insecure"), Trust::Insecure);
        assert_eq!(t("siderite.insecure=1"), Trust::Insecure);
        assert_eq!(t("siderite.insecure=false"), Trust::Unspecified);
        assert_eq!(t(&format!("siderite.ca={PIN_HEX}")), Trust::Pinned(pin()));
        assert_eq!(
            t(&format!("siderite.ca=sha256:{PIN_HEX}")),
            Trust::Pinned(pin())
        );
        assert_eq!(
            t(&format!("siderite.ca={}", PIN_HEX.to_uppercase())),
            Trust::Pinned(pin())
        );
        assert_eq!(
            t(&format!("siderite.ca={}", PIN_B64.trim_end_matches('='))),
            Trust::Pinned(pin())
        );
        let url_safe = PIN_B64.replace('+', "-").replace('/', "_");
        assert_eq!(t(&format!("siderite.ca={url_safe}")), Trust::Pinned(pin()));
        assert_eq!(
            t(&format!("siderite.ca={PIN_B64} siderite.insecure=no")),
            Trust::Pinned(pin())
        );
        assert_eq!(pin().to_string(), PIN_B64);
    }

    #[test]
    fn ca_and_insecure_together_trust_neither() {
        let (cfg, problems) = parse(&format!("siderite.insecure siderite.ca={PIN_B64}"));
        assert_eq!(cfg.trust, Trust::Unspecified);
        assert_eq!(problems, vec![ConfigError::ConflictingTrust]);
        assert_eq!(problems[0].severity(), Severity::Error);
    }

    #[test]
    fn bad_pins() {
        for bad in [
            "abc",
            "n4bQgYhM",
            "!!!!",
            &PIN_HEX[..62],
            &format!("{PIN_B64}AAAA"),
        ] {
            let (cfg, problems) = parse(&format!("siderite.ca={bad}"));
            assert_eq!(cfg.trust, Trust::Unspecified, "{bad}");
            assert!(
                matches!(&problems[..], [ConfigError::Invalid { key, .. }] if key == "siderite.ca"),
                "{bad}: {problems:?}"
            );
        }
        let (_, problems) = parse("siderite.ca=n4bQgYhM");
        assert!(problems[0].to_string().contains("32 bytes, this has 6"));
        let (_, problems) = parse("siderite.insecure=maybe");
        assert!(
            matches!(&problems[..], [ConfigError::Invalid { key, .. }] if key == "siderite.insecure")
        );
    }

    #[test]
    fn bootif_and_mac() {
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let (cfg, p) = parse("BOOTIF=01-AA-bb-cc-dd-ee-ff");
        assert_eq!((cfg.boot_mac, p), (Some(mac("aa:bb:cc:dd:ee:ff")), vec![]));
        let (cfg, p) = parse("siderite.mac=AA-BB-CC-DD-EE-FF BOOTIF=01-aa-bb-cc-dd-ee-ff");
        assert_eq!((cfg.boot_mac, p), (Some(mac("aa:bb:cc:dd:ee:ff")), vec![]));
        let (cfg, p) = parse("BOOTIF=01-aa-bb-cc-dd-ee-ff siderite.mac=52:54:00:00:00:01");
        assert_eq!(cfg.boot_mac, Some(mac("52:54:00:00:00:01")));
        assert_eq!(
            p,
            vec![ConfigError::BootMacMismatch {
                mac: mac("52:54:00:00:00:01"),
                bootif: mac("aa:bb:cc:dd:ee:ff")
            }]
        );
        assert_eq!(p[0].severity(), Severity::Warning);

        for bad in [
            "BOOTIF=aa-bb-cc-dd-ee-ff",
            "BOOTIF=20-aa-bb-cc-dd-ee-ff",
            "BOOTIF=01-aa-bb-cc-dd-ee",
            "BOOTIF",
        ] {
            let (cfg, p) = parse(bad);
            assert_eq!(cfg.boot_mac, None, "{bad}");
            assert_eq!(p.len(), 1, "{bad}");
            assert_eq!(p[0].severity(), Severity::Error, "{bad}");
            assert!(p[0].to_string().starts_with("BOOTIF"), "{bad}: {}", p[0]);
        }
        for bad in [
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "a:b:c:d:e:f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", mac("AA:BB:CC:DD:EE:FF")),
            "aa:bb:cc:dd:ee:ff"
        );
    }

    #[test]
    fn static_ips() {
        let (cfg, p) = parse(
            "siderite.ip=192.0.2.10/24,gw=192.0.2.1,dns=192.0.2.53,dns=2001:db8::53 \
             siderite.ip=2001:db8::10/64,gw=fe80::1,mac=52:54:00:00:00:02",
        );
        assert_eq!(p, vec![]);
        assert_eq!(
            cfg.static_ips,
            vec![
                StaticIp {
                    address: "192.0.2.10".parse().unwrap(),
                    prefix_len: 24,
                    gateway: Some("192.0.2.1".parse().unwrap()),
                    dns: vec![
                        "192.0.2.53".parse().unwrap(),
                        "2001:db8::53".parse().unwrap()
                    ],
                    mac: None,
                },
                StaticIp {
                    address: "2001:db8::10".parse().unwrap(),
                    prefix_len: 64,
                    gateway: Some("fe80::1".parse().unwrap()),
                    dns: vec![],
                    mac: Some("52:54:00:00:00:02".parse().unwrap()),
                },
            ]
        );
        for bad in [
            "192.0.2.10",
            "192.0.2.10/33",
            "2001:db8::1/129",
            "192.0.2.10/24,gw=2001:db8::1",
            "192.0.2.10/24,gw=192.0.2.1,gw=192.0.2.2",
            "192.0.2.10/24,router=192.0.2.1",
            "192.0.2.10/24,gw",
            "192.0.2.10/24,dns=x",
            "192.0.2.10/24,mac=zz",
            "0.0.0.0/0",
            "224.0.0.1/4",
            "dhcp",
        ] {
            let (cfg, p) = parse(&format!("siderite.ip={bad}"));
            assert!(cfg.static_ips.is_empty(), "{bad}");
            assert!(
                matches!(&p[..], [ConfigError::Invalid { key, value, .. }]
                    if key == "siderite.ip" && value == bad),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn garbled_command_line_keeps_what_it_can() {
        let (cfg, problems) = parse(
            "\u{0}\u{7f}=== siderite.server=10.0.0.1:1,,[fd00::2 siderite.mac=\u{fffd}\u{fffd} \
             siderite.=x siderite.ip=/ siderite.debug=2 siderite.server=[fd00::2]:9 \
             siderite.token=\"abc siderite.insecure",
        );
        assert_eq!(cfg.servers, vec![addr("10.0.0.1:1"), addr("[fd00::2]:9")]);
        assert!(!cfg.debug);
        // An unterminated quote swallows the rest of the line, as in the kernel.
        assert_eq!(cfg.token.unwrap().expose(), "abc siderite.insecure");
        assert_eq!(cfg.trust, Trust::Unspecified);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "siderite.server: invalid value \"[fd00::2\": missing ']' after the IPv6 address",
                "siderite.mac: invalid value \"\u{fffd}\u{fffd}\": not a MAC address \
                 (want six hex pairs separated by ':' or '-'): \"\u{fffd}\u{fffd}\"",
                "unknown kernel parameter siderite., ignored",
                "siderite.ip: invalid value \"/\": \"\" is not an IP address",
                "siderite.debug: invalid value \"2\": \
                 expected nothing, 1/0, yes/no, true/false or on/off",
            ]
        );
    }

    #[test]
    fn quoting_follows_the_kernel() {
        assert_eq!(
            split_cmdline(r#"a="b c" "d=e f" g h="" "i" j=k"l m"n --  o=p"#),
            vec![
                ("a", Some("b c")),
                ("d", Some("e f")),
                ("g", None),
                ("h", Some("")),
                ("i", None),
                ("j", Some(r#"k"l m"n"#)),
                ("o", Some("p")),
            ]
        );
        let (cfg, p) = parse(r#"siderite.token="with space" "siderite.server=h:1""#);
        assert_eq!(p, vec![]);
        assert_eq!(cfg.token.unwrap().expose(), "with space");
        assert_eq!(cfg.servers, vec![addr("h:1")]);
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let (cfg, _) = parse("siderite.token=s3cr3t");
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn from_kernel_reads_proc_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, p) = from_kernel(dir.path());
        assert_eq!(cfg, AgentConfig::default());
        assert!(matches!(&p[..], [ConfigError::Unreadable(_)]));
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/cmdline"), "siderite.server=h:1\n").unwrap();
        let (cfg, p) = from_kernel(dir.path());
        assert_eq!((cfg.servers, p), (vec![addr("h:1")], vec![]));
    }
}
