//! iPXE over HTTP: the first script every machine gets (`/boot.ipxe`), the per-machine
//! script (`/ipxe?uuid=..&mac=..&arch=..&platform=..`) and the router that serves both
//! next to the Environment assets.
//!
//! Rendering is pure: every script variant comes from a function of its inputs and has
//! a snapshot test below. The scripts carry no secrets: PXE runs in the clear, so
//! anything in them is public on the boot network.
//!
//! Which address the scripts point machines at: the `Host` header of the request. It is
//! the address the machine itself just used to reach this server, so it works on every
//! interface and through port forwards, where the socket's local address would not (and
//! axum exposes only the peer address without a custom `Connected` impl). The header is
//! validated as `host[:port]` before it goes into a script, since it is client input;
//! a request without a usable one gets the configured [`BootHttpConfig::advertise`].
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use siderite::SmbiosUuid;
use tracing::Instrument;

use super::assets::{self, asset_path};
use crate::environment::{
    validate_arg, Arch, AssetKind, Environments, AGENT_ENVIRONMENT, AGENT_INITRD_FILE,
};

/// How long a machine waits before asking again when the server cannot be reached.
const RETRY_UNREACHABLE_SECS: u32 = 5;
/// ... when its boot failed.
const RETRY_FAILED_SECS: u32 = 10;
/// ... when there is nothing it can boot yet (environment not ready).
const RETRY_WAIT_SECS: u32 = 30;
const MAX_QUERY_LEN: usize = 1024;
/// The boot NIC's MAC as iPXE knows it: `netX` is the most recently opened network
/// device, the one this boot came through (not necessarily `net0`).
const IPXE_BOOT_MAC: &str = "${netX/mac:hexhyp}";

/// `host[:port]` that machines use to reach this server over HTTP: an IPv4 address,
/// a bracketed IPv6 address or a DNS name. Lowercase; nothing else can be in it, so it
/// is safe to put into a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not host[:port] (an IPv4 address, [IPv6] or a DNS name, port 1-65535)")]
pub struct BadAuthority {
    pub value: String,
}

impl Authority {
    /// The host part, IPv6 in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The same host with another port (e.g. the agent API's).
    pub fn with_port(&self, port: u16) -> Authority {
        Authority {
            host: self.host.clone(),
            port: Some(port),
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl FromStr for Authority {
    type Err = BadAuthority;
    fn from_str(s: &str) -> Result<Self, BadAuthority> {
        let bad = || BadAuthority {
            value: s.to_string(),
        };
        if s.is_empty() || s.len() > 261 {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            let addr: Ipv6Addr = v6.parse().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{addr}]"), port)
        } else {
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let host = host.to_ascii_lowercase();
            if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(&host) {
                return Err(bad());
            }
            (host, port)
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?)
            }
            Some(_) => return Err(bad()),
        };
        Ok(Authority { host, port })
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// iPXE's `${platform}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Pcbios,
    Efi,
}

impl FromStr for Platform {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pcbios" => Ok(Platform::Pcbios),
            "efi" => Ok(Platform::Efi),
            _ => Err(()),
        }
    }
}

/// A 48-bit MAC address. Displays as the store indexes MACs: lowercase, colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ();
    /// `aa-bb-cc-dd-ee-ff` (iPXE's `hexhyp`) or `aa:bb:cc:dd:ee:ff`, one separator kind.
    fn from_str(s: &str) -> Result<Self, ()> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().ok_or(())?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(MacAddr(out))
    }
}

/// What a machine asked with: the query of `/ipxe`. Empty values are absent (iPXE expands
/// a setting it lacks to nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineQuery {
    pub uuid: Option<SmbiosUuid>,
    pub mac: Option<MacAddr>,
    pub arch: Option<Arch>,
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is {0} bytes; the limit is {MAX_QUERY_LEN}")]
    TooLong(usize),
    #[error("query parameter {0:?} is not known; expected uuid, mac, arch and platform")]
    Unknown(String),
    #[error("query parameter {0} is given twice")]
    Duplicate(&'static str),
    #[error("query parameter {0:?} has bad percent-encoding")]
    Encoding(String),
    #[error("uuid {0:?}: not a UUID")]
    Uuid(String),
    #[error("mac {0:?}: want six hex pairs separated by '-' or ':'")]
    Mac(String),
    #[error("arch {0:?}: want iPXE's buildarch: x86_64, i386 or arm64")]
    Arch(String),
    #[error("platform {0:?}: want pcbios or efi")]
    Platform(String),
}

/// Parses the query of `/ipxe`. Strict: unknown or repeated parameters are errors, so
/// a typo shows up instead of silently booting a machine as unknown.
pub fn parse_query(raw: Option<&str>) -> Result<MachineQuery, QueryError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong(raw.len()));
    }
    let mut q = MachineQuery::default();
    let mut seen = [false; 4];
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| QueryError::Encoding(key.to_string()))?;
        let (slot, name) = match key {
            "uuid" => (0, "uuid"),
            "mac" => (1, "mac"),
            "arch" => (2, "arch"),
            "platform" => (3, "platform"),
            _ => return Err(QueryError::Unknown(key.chars().take(64).collect())),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(QueryError::Duplicate(name));
        }
        if value.is_empty() {
            continue;
        }
        match slot {
            0 => q.uuid = Some(value.parse().map_err(|_| QueryError::Uuid(value.clone()))?),
            1 => q.mac = Some(value.parse().map_err(|_| QueryError::Mac(value.clone()))?),
            2 => {
                q.arch = Some(
                    Arch::from_ipxe_buildarch(&value)
                        .ok_or_else(|| QueryError::Arch(value.clone()))?,
                )
            }
            _ => {
                q.platform = Some(
                    value
                        .parse()
                        .map_err(|_| QueryError::Platform(value.clone()))?,
                )
            }
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What one machine boots now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// The agent Environment `env`, with `args` after the Environment's own.
    Agent { env: String, args: Vec<String> },
    /// An install Environment; `args` are the caller's (`talos.platform=metal`,
    /// `talos.config=<url>`, ...).
    Install { env: String, args: Vec<String> },
    /// Whatever is installed on the machine's disk.
    LocalDisk,
    /// A machine nobody knows yet: it boots the agent to register.
    Unknown,
}

/// Decides what a machine boots, from what iPXE tells about it. Async because the
/// answer comes from the store.
#[async_trait::async_trait]
pub trait BootDecider: Send + Sync {
    async fn decide(
        &self,
        uuid: Option<SmbiosUuid>,
        mac: Option<MacAddr>,
        arch: Option<Arch>,
    ) -> BootDecision;
}

/// What [`BootDecider::decide`] was called with.
pub type DecideArgs = (Option<SmbiosUuid>, Option<MacAddr>, Option<Arch>);

/// Always the same decision, and a record of who asked. For tests.
#[derive(Debug)]
pub struct FixedDecider {
    decision: Mutex<BootDecision>,
    asked: Mutex<Vec<DecideArgs>>,
}

impl FixedDecider {
    pub fn new(decision: BootDecision) -> Self {
        FixedDecider {
            decision: Mutex::new(decision),
            asked: Mutex::new(Vec::new()),
        }
    }

    pub fn set(&self, decision: BootDecision) {
        *self.decision.lock().unwrap_or_else(PoisonError::into_inner) = decision;
    }

    pub fn asked(&self) -> Vec<DecideArgs> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait::async_trait]
impl BootDecider for FixedDecider {
    async fn decide(
        &self,
        uuid: Option<SmbiosUuid>,
        mac: Option<MacAddr>,
        arch: Option<Arch>,
    ) -> BootDecision {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((uuid, mac, arch));
        self.decision
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, Clone)]
pub struct BootHttpConfig {
    /// Where machines reach this HTTP server when a request carries no usable `Host`.
    pub advertise: Authority,
    /// The Environment that [`BootDecision::Unknown`] machines boot.
    pub agent_environment: String,
    /// The agent API's port. When set, the agent's command line gets
    /// `siderite.server=<host the machine used>:<port>`, so an agent reaches the server
    /// on the network it booted from.
    pub agent_api_port: Option<u16>,
}

impl BootHttpConfig {
    pub fn new(advertise: Authority) -> Self {
        BootHttpConfig {
            advertise,
            agent_environment: AGENT_ENVIRONMENT.into(),
            agent_api_port: None,
        }
    }
}

#[derive(Clone)]
pub struct BootHttpState {
    pub config: Arc<BootHttpConfig>,
    pub decider: Arc<dyn BootDecider>,
    pub environments: Arc<Environments>,
    /// What agents must trust and present (the CA pin, a join token); none: nothing added.
    pub agent_trust: Option<Arc<AgentTrust>>,
}

/// The CA pin and where the current boot join token comes from. The join token is an
/// admission ticket only: it lets a machine register (as a discovered, unaccepted server
/// unless an auto-accept rule says otherwise), nothing more. The script carrying it is plain
/// HTTP, like everything iPXE fetches; machine credentials and configs never are.
pub struct AgentTrust {
    pub ca: siderite::tls::CaPin,
    pub auth: crate::auth::Auth,
}

impl AgentTrust {
    /// `siderite.ca=` and `siderite.token=`, or why there is no token to hand out.
    async fn args(&self) -> Result<Vec<String>, String> {
        match self.auth.boot_join_token().await {
            Ok(Some(t)) => Ok(vec![
                format!("siderite.ca={}", self.ca),
                format!("siderite.token={}", t.text()),
            ]),
            Ok(None) => {
                Err("no usable boot join token: create one with `siderite token create`".into())
            }
            Err(e) => Err(format!("reading join tokens: {e}")),
        }
    }
}

/// `/boot.ipxe`, `/ipxe` and `/assets/{env}/{kernel,initrd}`.
pub fn router(state: BootHttpState) -> Router {
    let environments = state.environments.clone();
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(machine_ipxe))
        .with_state(state)
        .merge(assets::router(environments))
}

/// The authority to render: the validated `Host` header, else the configured one.
pub fn server_authority(headers: &HeaderMap, config: &BootHttpConfig) -> Authority {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match host.map(str::parse::<Authority>) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "unusable Host header; using the configured address");
            config.advertise.clone()
        }
        None => config.advertise.clone(),
    }
}

fn script(status: StatusCode, body: String) -> Response {
    // Decisions change from one boot to the next: nothing may cache a script.
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn boot_ipxe(State(state): State<BootHttpState>, headers: HeaderMap) -> Response {
    script(
        StatusCode::OK,
        boot_script(&server_authority(&headers, &state.config)),
    )
}

async fn machine_ipxe(
    State(state): State<BootHttpState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            tracing::info!(error = %e, "bad /ipxe request");
            return script(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let uuid = query.uuid.map(|u| u.to_string()).unwrap_or_default();
    let mac = query.mac.map(|m| m.to_string()).unwrap_or_default();
    let span = tracing::info_span!("ipxe", %uuid, %mac);
    let server = server_authority(&headers, &state.config);
    let mut decision = state
        .decider
        .decide(query.uuid, query.mac, query.arch)
        .instrument(span.clone())
        .await;
    if let Some(trust) = &state.agent_trust {
        let agent_args = match &mut decision {
            BootDecision::Unknown => {
                decision = BootDecision::Agent {
                    env: state.config.agent_environment.clone(),
                    args: Vec::new(),
                };
                match &mut decision {
                    BootDecision::Agent { args, .. } => Some(args),
                    _ => None,
                }
            }
            BootDecision::Agent { args, .. } => Some(args),
            _ => None,
        };
        if let Some(args) = agent_args {
            match trust.args().instrument(span.clone()).await {
                Ok(more) => args.extend(more),
                Err(why) => {
                    tracing::warn!(%why, "agent boot held back");
                    return script(StatusCode::OK, wait_script(&server, &why));
                }
            }
        }
    }
    let _enter = span.enter();
    match machine_script(
        &decision,
        &state.environments,
        &state.config,
        &server,
        &query,
    ) {
        Ok(s) => {
            tracing::info!(?decision, "boot script");
            script(StatusCode::OK, s)
        }
        Err(e) => {
            tracing::error!(error = %e, ?decision, "cannot render a boot script");
            script(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

/// A decision the server cannot turn into a script: a bug on this side, not the machine's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decision arg {arg:?}: {why}")]
pub struct ScriptError {
    pub arg: String,
    pub why: &'static str,
}

/// The per-machine script for a decision. Environments that are unknown, not ready or
/// for another arch give a script that says why and asks again later, which is what
/// an operator at the console needs to see.
pub fn machine_script(
    decision: &BootDecision,
    environments: &Environments,
    config: &BootHttpConfig,
    server: &Authority,
    query: &MachineQuery,
) -> Result<String, ScriptError> {
    let (purpose, env_name, extra): (Purpose, &str, &[String]) = match decision {
        BootDecision::LocalDisk => return Ok(local_disk_script(query.platform)),
        BootDecision::Unknown => (Purpose::Agent, &config.agent_environment, &[]),
        BootDecision::Agent { env, args } => (Purpose::Agent, env, args),
        BootDecision::Install { env, args } => (Purpose::Install, env, args),
    };
    for arg in extra {
        validate_arg(arg).map_err(|why| ScriptError {
            arg: arg.clone(),
            why,
        })?;
    }
    let Some(entry) = environments.get(env_name) else {
        return Ok(wait_script(
            server,
            &format!("environment {env_name} does not exist"),
        ));
    };
    if !entry.is_ready() {
        let reason = &entry.environment.status.reason;
        return Ok(wait_script(
            server,
            &format!("environment {env_name} is not ready: {reason}"),
        ));
    }
    let env_arch = entry.environment.spec.arch;
    if let Some(arch) = query.arch.filter(|&a| a != env_arch) {
        return Ok(wait_script(
            server,
            &format!("environment {env_name} is for {env_arch}, this machine is {arch}"),
        ));
    }
    let mut args = entry.environment.spec.args.clone();
    if purpose == Purpose::Agent {
        if let Some(port) = config.agent_api_port {
            args.push(format!("siderite.server={}", server.with_port(port)));
        }
    }
    args.extend(extra.iter().cloned());
    if purpose == Purpose::Agent {
        args.push(format!("siderite.mac={IPXE_BOOT_MAC}"));
    }
    Ok(kernel_script(&KernelBoot {
        server,
        env: env_name,
        purpose,
        args: &args,
        platform: query.platform,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Agent,
    Install,
}

/// One kernel + initrd boot.
#[derive(Debug, Clone, Copy)]
pub struct KernelBoot<'a> {
    pub server: &'a Authority,
    /// The Environment's name; its assets are `/assets/<env>/{kernel,initrd}`.
    pub env: &'a str,
    pub purpose: Purpose,
    /// The whole command line after any `initrd=`.
    pub args: &'a [String],
    pub platform: Option<Platform>,
}

/// The first script: asks the server for this machine's script, by SMBIOS UUID and the
/// boot NIC's MAC, and keeps asking while the server cannot be reached. `--replace`
/// keeps retries from nesting scripts.
pub fn boot_script(server: &Authority) -> String {
    boot_script_at(&server.to_string())
}

/// [`boot_script`] for a script handed out where no HTTP request tells the address
/// (TFTP): the HTTP server is on the `next-server` that DHCP named, at `port`.
pub fn boot_script_via_next_server(port: u16) -> String {
    boot_script_at(&format!("${{next-server}}:{port}"))
}

fn boot_script_at(server: &str) -> String {
    format!(
        "#!ipxe\n\
         # siderite: ask the server what this machine boots\n\
         :retry\n\
         chain --replace --autofree http://{server}/ipxe?uuid=${{uuid}}&mac={IPXE_BOOT_MAC}&arch=${{buildarch}}&platform=${{platform}} || goto failed\n\
         :failed\n\
         echo siderite: http://{server} did not answer, retrying in {RETRY_UNREACHABLE_SECS} s\n\
         sleep {RETRY_UNREACHABLE_SECS}\n\
         goto retry\n"
    )
}

/// Loads a kernel and initrd and boots them; on any failure, asks the server again.
///
/// `imgfree` first, so images of an earlier failed attempt are not booted along. Under
/// UEFI the kernel's EFI stub finds the initrd by the name on its command line
/// (`initrd=`), so the initrd gets that name; BIOS iPXE hands every loaded initrd over
/// by itself. Without a known platform the argument is added too: a BIOS kernel ignores
/// an `initrd=` that is not an address.
pub fn kernel_script(k: &KernelBoot<'_>) -> String {
    let server = k.server;
    let env = k.env;
    let what = match k.purpose {
        Purpose::Agent => "agent",
        Purpose::Install => "install",
    };
    let kernel_url = format!("http://{server}{}", asset_path(env, AssetKind::Kernel));
    let initrd_url = format!("http://{server}{}", asset_path(env, AssetKind::Initrd));
    let mut cmdline = String::new();
    if k.platform != Some(Platform::Pcbios) {
        cmdline.push_str(&format!(" initrd={AGENT_INITRD_FILE}"));
    }
    for a in k.args {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    format!(
        "#!ipxe\n\
         # siderite: boot the {what} environment {env}\n\
         imgfree\n\
         kernel {kernel_url}{cmdline} || goto failed\n\
         initrd --name {AGENT_INITRD_FILE} {initrd_url} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo siderite: booting environment {env} failed, asking the server again in {RETRY_FAILED_SECS} s\n\
         sleep {RETRY_FAILED_SECS}\n\
         chain --replace --autofree http://{server}/boot.ipxe || goto failed\n"
    )
}

/// Boots what is on the local disk.
///
/// BIOS: `sanboot --no-describe --drive 0x80` boots the first hard disk's MBR through
/// INT 13 (iPXE's documented way to boot a local drive); many BIOSes stop instead of
/// trying the next device when iPXE merely exits, so exiting is only the fallback.
///
/// UEFI: `exit 1`. iPXE's UEFI sanboot can only start `\EFI\BOOT\BOOTX64.EFI` of the
/// first disk it maps, while installed systems boot from their own NVRAM boot entry;
/// returning an error to the firmware makes it go on to the next boot entry, which is
/// the installed disk when network boot comes first in the boot order. (`exit 0` makes
/// some firmware retry the network boot instead.)
///
/// Unknown platform (an iPXE without `${platform}`): decide at boot time.
pub fn local_disk_script(platform: Option<Platform>) -> String {
    match platform {
        Some(Platform::Pcbios) => "#!ipxe\n\
             # siderite: boot from the local disk (BIOS)\n\
             sanboot --no-describe --drive 0x80 || goto failed\n\
             :failed\n\
             echo siderite: the first local disk did not boot, handing back to the firmware\n\
             exit 1\n"
            .into(),
        Some(Platform::Efi) => "#!ipxe\n\
             # siderite: boot from the local disk (UEFI): hand back to the firmware's next boot entry\n\
             exit 1\n"
            .into(),
        None => "#!ipxe\n\
             # siderite: boot from the local disk\n\
             iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\n\
             echo siderite: handing back to the firmware\n\
             exit 1\n"
            .into(),
    }
}

/// Nothing to boot yet: print why on the console, wait, ask again.
pub fn wait_script(server: &Authority, reason: &str) -> String {
    format!(
        "#!ipxe\n\
         # siderite: nothing to boot yet\n\
         echo siderite: {}\n\
         :retry\n\
         echo siderite: asking the server again in {RETRY_WAIT_SECS} s\n\
         sleep {RETRY_WAIT_SECS}\n\
         chain --replace --autofree http://{server}/boot.ipxe || goto retry\n",
        echo_safe(reason)
    )
}

/// Text for `echo`: only characters that iPXE passes through as they are (no `$`
/// expansion, no `#` comments, no separators), at most 200 of them.
fn echo_safe(s: &str) -> String {
    let mut out = String::new();
    for c in s.replace('…', "...").chars().take(200) {
        let keep = c.is_ascii_alphanumeric() || " .,:=/_-()+@".contains(c);
        out.push(if keep { c } else { '?' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::tests::{env_on_disk, sha512_hex};
    use crate::environment::{Environment, LocalFileFetcher};

    fn authority(s: &str) -> Authority {
        s.parse().unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // ---- snapshots ----

    #[test]
    fn snapshot_boot_script() {
        assert_eq!(
            boot_script(&authority("10.0.0.1:8081")),
            "#!ipxe
# siderite: ask the server what this machine boots
:retry
chain --replace --autofree http://10.0.0.1:8081/ipxe?uuid=${uuid}&mac=${netX/mac:hexhyp}&arch=${buildarch}&platform=${platform} || goto failed
:failed
echo siderite: http://10.0.0.1:8081 did not answer, retrying in 5 s
sleep 5
goto retry
"
        );
    }

    #[test]
    fn snapshot_boot_script_via_next_server() {
        assert_eq!(
            boot_script_via_next_server(8081),
            "#!ipxe
# siderite: ask the server what this machine boots
:retry
chain --replace --autofree http://${next-server}:8081/ipxe?uuid=${uuid}&mac=${netX/mac:hexhyp}&arch=${buildarch}&platform=${platform} || goto failed
:failed
echo siderite: http://${next-server}:8081 did not answer, retrying in 5 s
sleep 5
goto retry
"
        );
    }

    const AGENT_ARGS: &[&str] = &[
        "console=tty0",
        "console=ttyS0",
        "siderite.server=10.0.0.1:50051",
        "siderite.mac=${netX/mac:hexhyp}",
    ];

    #[test]
    fn snapshot_agent_bios() {
        let server = authority("10.0.0.1:8081");
        let args = strings(AGENT_ARGS);
        let k = KernelBoot {
            server: &server,
            env: "agent",
            purpose: Purpose::Agent,
            args: &args,
            platform: Some(Platform::Pcbios),
        };
        assert_eq!(
            kernel_script(&k),
            "#!ipxe
# siderite: boot the agent environment agent
imgfree
kernel http://10.0.0.1:8081/assets/agent/kernel console=tty0 console=ttyS0 siderite.server=10.0.0.1:50051 siderite.mac=${netX/mac:hexhyp} || goto failed
initrd --name initramfs.cpio.zst http://10.0.0.1:8081/assets/agent/initrd || goto failed
boot || goto failed
:failed
echo siderite: booting environment agent failed, asking the server again in 10 s
sleep 10
chain --replace --autofree http://10.0.0.1:8081/boot.ipxe || goto failed
"
        );
    }

    #[test]
    fn snapshot_agent_uefi() {
        let server = authority("10.0.0.1:8081");
        let args = strings(AGENT_ARGS);
        let k = KernelBoot {
            server: &server,
            env: "agent",
            purpose: Purpose::Agent,
            args: &args,
            platform: Some(Platform::Efi),
        };
        assert_eq!(
            kernel_script(&k),
            "#!ipxe
# siderite: boot the agent environment agent
imgfree
kernel http://10.0.0.1:8081/assets/agent/kernel initrd=initramfs.cpio.zst console=tty0 console=ttyS0 siderite.server=10.0.0.1:50051 siderite.mac=${netX/mac:hexhyp} || goto failed
initrd --name initramfs.cpio.zst http://10.0.0.1:8081/assets/agent/initrd || goto failed
boot || goto failed
:failed
echo siderite: booting environment agent failed, asking the server again in 10 s
sleep 10
chain --replace --autofree http://10.0.0.1:8081/boot.ipxe || goto failed
"
        );
    }

    #[test]
    fn snapshot_install_uefi() {
        let server = authority("boot.rack1.example:8081");
        let args = strings(&[
            "console=ttyS0",
            "talos.platform=metal",
            "talos.config=http://boot.rack1.example:8081/configdata?uuid=5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e",
        ]);
        let k = KernelBoot {
            server: &server,
            env: "talos-1-9",
            purpose: Purpose::Install,
            args: &args,
            platform: Some(Platform::Efi),
        };
        assert_eq!(
            kernel_script(&k),
            "#!ipxe
# siderite: boot the install environment talos-1-9
imgfree
kernel http://boot.rack1.example:8081/assets/talos-1-9/kernel initrd=initramfs.cpio.zst console=ttyS0 talos.platform=metal talos.config=http://boot.rack1.example:8081/configdata?uuid=5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e || goto failed
initrd --name initramfs.cpio.zst http://boot.rack1.example:8081/assets/talos-1-9/initrd || goto failed
boot || goto failed
:failed
echo siderite: booting environment talos-1-9 failed, asking the server again in 10 s
sleep 10
chain --replace --autofree http://boot.rack1.example:8081/boot.ipxe || goto failed
"
        );
    }

    #[test]
    fn snapshot_local_disk_bios() {
        assert_eq!(
            local_disk_script(Some(Platform::Pcbios)),
            "#!ipxe
# siderite: boot from the local disk (BIOS)
sanboot --no-describe --drive 0x80 || goto failed
:failed
echo siderite: the first local disk did not boot, handing back to the firmware
exit 1
"
        );
    }

    #[test]
    fn snapshot_local_disk_uefi() {
        assert_eq!(
            local_disk_script(Some(Platform::Efi)),
            "#!ipxe
# siderite: boot from the local disk (UEFI): hand back to the firmware's next boot entry
exit 1
"
        );
    }

    #[test]
    fn snapshot_local_disk_unknown_platform() {
        assert_eq!(
            local_disk_script(None),
            "#!ipxe
# siderite: boot from the local disk
iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||
echo siderite: handing back to the firmware
exit 1
"
        );
    }

    #[test]
    fn snapshot_wait() {
        assert_eq!(
            wait_script(&authority("10.0.0.1:8081"), "environment talos is not ready: kernel sha512 mismatch: want 0123456789abcdef…, got ${x} # || \n"),
            "#!ipxe
# siderite: nothing to boot yet
echo siderite: environment talos is not ready: kernel sha512 mismatch: want 0123456789abcdef..., got ??x? ? ?? ?
:retry
echo siderite: asking the server again in 30 s
sleep 30
chain --replace --autofree http://10.0.0.1:8081/boot.ipxe || goto retry
"
        );
    }

    // ---- decisions to scripts ----

    struct Fixture {
        _dir: tempfile::TempDir,
        envs: Arc<Environments>,
        kernel: Vec<u8>,
    }

    /// `agent` (amd64, ready), `talos` (ready), `broken` (kernel sha512 mismatch),
    /// `arm` (arm64, ready).
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let envs = Arc::new(Environments::new());
        let mut agent = env_on_disk(dir.path(), "agent", &kernel, b"agent initrd");
        agent.spec.args = strings(&["console=tty0", "console=ttyS0"]);
        let mut talos = env_on_disk(dir.path(), "talos", b"talos kernel", b"talos initrd");
        talos.spec.args = strings(&["console=ttyS0"]);
        let mut broken = env_on_disk(dir.path(), "broken", b"real kernel", b"initrd");
        broken.spec.kernel.sha512 = sha512_hex(b"expected kernel");
        let mut arm = env_on_disk(dir.path(), "arm", b"k", b"i");
        arm.spec.arch = Arch::Arm64;
        for e in [agent, talos, broken, arm] {
            envs.apply(e, &LocalFileFetcher).await;
        }
        Fixture {
            _dir: dir,
            envs,
            kernel,
        }
    }

    fn config() -> BootHttpConfig {
        BootHttpConfig {
            agent_api_port: Some(50051),
            ..BootHttpConfig::new(authority("192.0.2.1:8081"))
        }
    }

    fn efi_amd64() -> MachineQuery {
        MachineQuery {
            arch: Some(Arch::Amd64),
            platform: Some(Platform::Efi),
            ..MachineQuery::default()
        }
    }

    #[tokio::test]
    async fn snapshot_unknown_machine_boots_the_agent() {
        let f = fixture().await;
        let server = authority("10.0.0.1:8081");
        let s = machine_script(
            &BootDecision::Unknown,
            &f.envs,
            &config(),
            &server,
            &efi_amd64(),
        )
        .unwrap();
        assert_eq!(
            s,
            "#!ipxe
# siderite: boot the agent environment agent
imgfree
kernel http://10.0.0.1:8081/assets/agent/kernel initrd=initramfs.cpio.zst console=tty0 console=ttyS0 siderite.server=10.0.0.1:50051 siderite.mac=${netX/mac:hexhyp} || goto failed
initrd --name initramfs.cpio.zst http://10.0.0.1:8081/assets/agent/initrd || goto failed
boot || goto failed
:failed
echo siderite: booting environment agent failed, asking the server again in 10 s
sleep 10
chain --replace --autofree http://10.0.0.1:8081/boot.ipxe || goto failed
"
        );
        // The same as an explicit Agent decision without extra args.
        let agent = BootDecision::Agent {
            env: "agent".into(),
            args: vec![],
        };
        assert_eq!(
            machine_script(&agent, &f.envs, &config(), &server, &efi_amd64()).unwrap(),
            s
        );
    }

    #[tokio::test]
    async fn install_gets_the_callers_args_and_no_agent_keys() {
        let f = fixture().await;
        let server = authority("10.0.0.1:8081");
        let d = BootDecision::Install {
            env: "talos".into(),
            args: strings(&["talos.platform=metal", "talos.config=http://x/c?a=1&b=2"]),
        };
        let q = MachineQuery {
            platform: Some(Platform::Pcbios),
            ..efi_amd64()
        };
        let s = machine_script(&d, &f.envs, &config(), &server, &q).unwrap();
        assert!(
            s.contains("\nkernel http://10.0.0.1:8081/assets/talos/kernel console=ttyS0 talos.platform=metal talos.config=http://x/c?a=1&b=2 || goto failed\n"),
            "{s}"
        );
        assert!(!s.contains("siderite."), "{s}");
    }

    #[tokio::test]
    async fn environments_that_cannot_boot_give_a_wait_script_with_the_reason() {
        let f = fixture().await;
        let server = authority("10.0.0.1:8081");
        let cfg = config();
        let run = |d: BootDecision, q: MachineQuery| {
            machine_script(&d, &f.envs, &cfg, &server, &q).unwrap()
        };
        let s = run(
            BootDecision::Install {
                env: "broken".into(),
                args: vec![],
            },
            efi_amd64(),
        );
        assert!(s.starts_with("#!ipxe\n# siderite: nothing to boot yet\necho siderite: environment broken is not ready: kernel sha512 mismatch: want "), "{s}");
        let s = run(
            BootDecision::Install {
                env: "nope".into(),
                args: vec![],
            },
            efi_amd64(),
        );
        assert!(
            s.contains("\necho siderite: environment nope does not exist\n"),
            "{s}"
        );
        let s = run(
            BootDecision::Install {
                env: "arm".into(),
                args: vec![],
            },
            efi_amd64(),
        );
        assert!(
            s.contains("\necho siderite: environment arm is for arm64, this machine is amd64\n"),
            "{s}"
        );
        // Without an arch in the query the Environment's arch is trusted.
        let s = run(
            BootDecision::Install {
                env: "arm".into(),
                args: vec![],
            },
            MachineQuery::default(),
        );
        assert!(s.contains("/assets/arm/kernel"), "{s}");
    }

    #[tokio::test]
    async fn decision_args_that_would_break_the_script_are_refused() {
        let f = fixture().await;
        let d = BootDecision::Install {
            env: "talos".into(),
            args: strings(&["ok=1", "x\nshell"]),
        };
        let e =
            machine_script(&d, &f.envs, &config(), &authority("h:1"), &efi_amd64()).unwrap_err();
        assert_eq!(e.arg, "x\nshell");
    }

    #[tokio::test]
    async fn local_disk_follows_the_platform() {
        let f = fixture().await;
        let q = MachineQuery {
            platform: Some(Platform::Pcbios),
            ..MachineQuery::default()
        };
        let s = machine_script(
            &BootDecision::LocalDisk,
            &f.envs,
            &config(),
            &authority("h"),
            &q,
        )
        .unwrap();
        assert_eq!(s, local_disk_script(Some(Platform::Pcbios)));
    }

    // ---- parsing ----

    #[test]
    fn authorities() {
        let ok = |s: &str| s.parse::<Authority>().map(|a| a.to_string());
        assert_eq!(ok("10.0.0.1:8081").unwrap(), "10.0.0.1:8081");
        assert_eq!(ok("10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(ok("Boot.Example").unwrap(), "boot.example");
        assert_eq!(ok("[fd00::0001]:80").unwrap(), "[fd00::1]:80");
        assert_eq!(ok("[fd00::1]").unwrap(), "[fd00::1]");
        assert_eq!(
            authority("[fd00::1]:80").with_port(50051).to_string(),
            "[fd00::1]:50051"
        );
        for bad in [
            "",
            "a b",
            "h:0",
            "h:65536",
            "h:",
            "h:+1",
            "fd00::1",
            "[fd00::1]x",
            "[zz]",
            "-a.b",
            "a..b",
            "x${uuid}",
            "a/b",
            "a:1:2",
            "é",
        ] {
            assert!(bad.parse::<Authority>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queries() {
        let q = parse_query(Some("uuid=5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e&mac=52-54-00-12-34-56&arch=x86_64&platform=efi")).unwrap();
        assert_eq!(
            q.uuid.unwrap().to_string(),
            "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e"
        );
        assert_eq!(q.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(q.arch, Some(Arch::Amd64));
        assert_eq!(q.platform, Some(Platform::Efi));
        // What an iPXE without these settings sends.
        assert_eq!(
            parse_query(Some("uuid=&mac=&arch=&platform=")).unwrap(),
            MachineQuery::default()
        );
        assert_eq!(parse_query(None).unwrap(), MachineQuery::default());
        assert_eq!(
            parse_query(Some("mac=52%3A54%3A00%3A12%3A34%3A56"))
                .unwrap()
                .mac
                .unwrap()
                .to_string(),
            "52:54:00:12:34:56"
        );
        assert_eq!(
            parse_query(Some("arch=i386")).unwrap().arch,
            Some(Arch::Amd64)
        );
        assert_eq!(
            parse_query(Some("arch=arm64")).unwrap().arch,
            Some(Arch::Arm64)
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let e = |s: &str| parse_query(Some(s)).unwrap_err().to_string();
        assert_eq!(e("uuid=nope"), r#"uuid "nope": not a UUID"#);
        assert_eq!(
            e("mac=52-54-00-12-34"),
            r#"mac "52-54-00-12-34": want six hex pairs separated by '-' or ':'"#
        );
        assert_eq!(
            e("mac=52-54:00-12-34-56"),
            r#"mac "52-54:00-12-34-56": want six hex pairs separated by '-' or ':'"#
        );
        assert_eq!(
            e("mac=+2-54-00-12-34-56"),
            r#"mac "+2-54-00-12-34-56": want six hex pairs separated by '-' or ':'"#
        );
        assert_eq!(
            e("arch=mips"),
            r#"arch "mips": want iPXE's buildarch: x86_64, i386 or arm64"#
        );
        assert_eq!(e("platform=arm"), r#"platform "arm": want pcbios or efi"#);
        assert_eq!(
            e("serial=1"),
            r#"query parameter "serial" is not known; expected uuid, mac, arch and platform"#
        );
        assert_eq!(e("mac=&mac="), "query parameter mac is given twice");
        assert_eq!(
            e("uuid=%zz"),
            r#"query parameter "uuid" has bad percent-encoding"#
        );
        assert_eq!(
            e("uuid=%ff"),
            r#"query parameter "uuid" has bad percent-encoding"#
        );
        assert_eq!(
            e(&"a".repeat(2000)),
            "the query is 2000 bytes; the limit is 1024"
        );
    }

    // ---- over HTTP ----

    struct Served {
        base: String,
        decider: Arc<FixedDecider>,
        fixture: Fixture,
        client: reqwest::Client,
        _task: tokio::task::JoinHandle<()>,
    }

    async fn serve() -> Served {
        let fixture = fixture().await;
        let decider = Arc::new(FixedDecider::new(BootDecision::Unknown));
        let state = BootHttpState {
            config: Arc::new(config()),
            decider: decider.clone(),
            environments: fixture.envs.clone(),
            agent_trust: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        Served {
            base: format!("http://{addr}"),
            decider,
            fixture,
            client: reqwest::Client::new(),
            _task: task,
        }
    }

    impl Served {
        async fn get(
            &self,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
            self.send(reqwest::Method::GET, path, headers).await
        }

        async fn send(
            &self,
            method: reqwest::Method,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
            let mut req = self.client.request(method, format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.bytes().await.unwrap().to_vec())
        }

        fn authority(&self) -> Authority {
            self.base.trim_start_matches("http://").parse().unwrap()
        }
    }

    fn text(body: &[u8]) -> String {
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http_boot_ipxe_points_at_the_address_the_machine_used() {
        let s = serve().await;
        let (status, headers, body) = s.get("/boot.ipxe", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(text(&body), boot_script(&s.authority()));

        let (_, _, body) = s
            .get("/boot.ipxe", &[("host", "boot.rack1.example:8081")])
            .await;
        assert_eq!(
            text(&body),
            boot_script(&authority("boot.rack1.example:8081"))
        );
        // A Host that cannot be trusted into a script: the configured address.
        let (status, _, body) = s.get("/boot.ipxe", &[("host", "x${uuid} || shell")]).await;
        assert_eq!(status, 200);
        assert_eq!(text(&body), boot_script(&authority("192.0.2.1:8081")));
    }

    #[tokio::test]
    async fn http_ipxe_renders_the_decision_for_the_machine() {
        let s = serve().await;
        let q = "/ipxe?uuid=5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e&mac=52-54-00-12-34-56&arch=x86_64&platform=efi";
        let (status, headers, body) = s.get(q, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/plain");
        let server = s.authority();
        let args = strings(&[
            "console=tty0",
            "console=ttyS0",
            "siderite.server=127.0.0.1:50051",
            "siderite.mac=${netX/mac:hexhyp}",
        ]);
        let want = kernel_script(&KernelBoot {
            server: &server,
            env: "agent",
            purpose: Purpose::Agent,
            args: &args,
            platform: Some(Platform::Efi),
        });
        assert_eq!(text(&body), want);
        let asked = s.decider.asked();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0].0.unwrap().to_string(),
            "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e"
        );
        assert_eq!(asked[0].1.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(asked[0].2, Some(Arch::Amd64));

        s.decider.set(BootDecision::LocalDisk);
        let (_, _, body) = s.get(&q.replace("efi", "pcbios"), &[]).await;
        assert_eq!(text(&body), local_disk_script(Some(Platform::Pcbios)));
        s.decider.set(BootDecision::Install {
            env: "talos".into(),
            args: strings(&["talos.platform=metal"]),
        });
        let (_, _, body) = s.get(q, &[]).await;
        assert!(text(&body).contains("/assets/talos/kernel initrd=initramfs.cpio.zst console=ttyS0 talos.platform=metal || goto failed"));
    }

    #[tokio::test]
    async fn http_ipxe_refuses_bad_input_with_400() {
        let s = serve().await;
        for (q, want) in [
            ("/ipxe?uuid=nope", "uuid \"nope\": not a UUID\n"),
            (
                "/ipxe?mac=zz-zz-zz-zz-zz-zz",
                "mac \"zz-zz-zz-zz-zz-zz\": want six hex pairs separated by '-' or ':'\n",
            ),
            (
                "/ipxe?arch=sparc",
                "arch \"sparc\": want iPXE's buildarch: x86_64, i386 or arm64\n",
            ),
            (
                "/ipxe?token=secret",
                "query parameter \"token\" is not known; expected uuid, mac, arch and platform\n",
            ),
        ] {
            let (status, headers, body) = s.get(q, &[]).await;
            assert_eq!(status, 400, "{q}");
            assert_eq!(headers["content-type"], "text/plain");
            assert_eq!(text(&body), want);
        }
        assert!(
            s.decider.asked().is_empty(),
            "bad input reaches no decision"
        );
        // A decision the server cannot render is the server's fault.
        s.decider.set(BootDecision::Install {
            env: "talos".into(),
            args: strings(&["a b"]),
        });
        let (status, _, body) = s.get("/ipxe", &[]).await;
        assert_eq!(status, 500);
        assert!(text(&body).starts_with("decision arg \"a b\": "));
    }

    #[tokio::test]
    async fn http_assets_serve_whole_files_and_ranges() {
        let s = serve().await;
        let k = &s.fixture.kernel;
        let len = k.len().to_string();

        let (status, h, body) = s.get("/assets/agent/kernel", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(h["content-length"], len.as_str());
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["content-type"], "application/octet-stream");
        assert_eq!(h["etag"], format!("\"{}\"", sha512_hex(k)).as_str());
        assert_eq!(&body, k);

        let (status, h, body) = s
            .get("/assets/agent/kernel", &[("range", "bytes=0-99")])
            .await;
        assert_eq!(status, 206);
        assert_eq!(h["content-range"], "bytes 0-99/1000");
        assert_eq!(h["content-length"], "100");
        assert_eq!(body, k[..100]);

        let (status, h, body) = s
            .get("/assets/agent/kernel", &[("range", "bytes=-100")])
            .await;
        assert_eq!(status, 206);
        assert_eq!(h["content-range"], "bytes 900-999/1000");
        assert_eq!(body, k[900..]);

        let (status, h, body) = s
            .get("/assets/agent/kernel", &[("range", "bytes=950-")])
            .await;
        assert_eq!(status, 206);
        assert_eq!(h["content-range"], "bytes 950-999/1000");
        assert_eq!(body, k[950..]);

        let (status, h, _) = s
            .get("/assets/agent/kernel", &[("range", "bytes=1000-")])
            .await;
        assert_eq!(status, 416);
        assert_eq!(h["content-range"], "bytes */1000");

        // If-Range with another validator: the whole file.
        let (status, _, body) = s
            .get(
                "/assets/agent/kernel",
                &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(&body, k);

        let (status, h, body) = s
            .send(reqwest::Method::HEAD, "/assets/agent/kernel", &[])
            .await;
        assert_eq!(status, 200);
        assert_eq!(h["content-length"], len.as_str());
        assert!(body.is_empty());
        // Range is for GET only.
        let (status, h, _) = s
            .send(
                reqwest::Method::HEAD,
                "/assets/agent/kernel",
                &[("range", "bytes=0-9")],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(h["content-length"], len.as_str());

        let (status, _, body) = s.get("/assets/agent/initrd", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body, b"agent initrd");
    }

    #[tokio::test]
    async fn http_assets_are_refused_unless_verified() {
        let s = serve().await;
        let (status, h, body) = s.get("/assets/broken/kernel", &[]).await;
        assert_eq!(status, 409);
        assert_eq!(h["content-type"], "text/plain");
        let want = format!(
            "environment broken is not ready: kernel sha512 mismatch: want {}, got {}\n",
            crate::environment::short(&sha512_hex(b"expected kernel")),
            crate::environment::short(&sha512_hex(b"real kernel"))
        );
        assert_eq!(text(&body), want);
        // Not even the file that matched is served from an environment that is not ready.
        let (status, _, _) = s.get("/assets/broken/initrd", &[]).await;
        assert_eq!(status, 409);

        let (status, _, body) = s.get("/assets/nope/kernel", &[]).await;
        assert_eq!(
            (status, text(&body)),
            (404, "no environment named \"nope\"\n".into())
        );
        let (status, _, body) = s.get("/assets/agent/rootfs", &[]).await;
        assert_eq!(
            (status, text(&body)),
            (
                404,
                "no asset \"rootfs\": an environment has a kernel and an initrd\n".into()
            )
        );
        let (status, _, body) = s.get("/assets/..%2Fetc/kernel", &[]).await;
        assert_eq!(status, 400);
        assert!(
            text(&body).starts_with("invalid environment name \"../etc\""),
            "{}",
            text(&body)
        );
    }

    #[tokio::test]
    async fn http_a_file_changed_after_verification_is_refused() {
        let s = serve().await;
        let entry = s.fixture.envs.get("agent").unwrap();
        let path = entry.verified.as_ref().unwrap().kernel.path.clone();
        std::fs::write(&path, b"a different kernel").unwrap();
        let (status, _, body) = s.get("/assets/agent/kernel", &[]).await;
        assert_eq!(status, 409);
        assert_eq!(text(&body), "kernel of environment agent changed on disk since it was verified; apply the environment again\n");
        // Applying it again with the new digest makes it servable.
        let mut env: Environment = entry.environment.clone();
        env.spec.kernel.sha512 = sha512_hex(b"a different kernel");
        assert!(s.fixture.envs.apply(env, &LocalFileFetcher).await.ready);
        let (status, _, body) = s.get("/assets/agent/kernel", &[]).await;
        assert_eq!((status, body), (200, b"a different kernel".to_vec()));
    }
}
