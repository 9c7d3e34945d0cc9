//! The decision: which requests get an answer, and what the answer says.
use std::net::Ipv4Addr;
use std::time::Instant;

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};

use super::lease::RequestOutcome;
use super::{DhcpError, MacAddr, Pool};

/// Path of the iPXE script on the HTTP server; iPXE clients are sent here.
pub const IPXE_SCRIPT_PATH: &str = "/boot.ipxe";

/// Option 175 (iPXE's encapsulated options) holding sub-option 176 (0xb0,
/// "no-pxedhcp") = 1, sent to iPXE clients.
///
/// iPXE reads the flag only from the offer that carries its address (`yiaddr`); then it
/// stops waiting for ProxyDHCP offers and does not send a ProxyDHCP REQUEST to port 4011
/// after the ACK. That is what it does in full mode, where our offer is both the address
/// and the boot offer (without it, iPXE would ACK and then also ask port 4011 because
/// our offer says "PXEClient" without a boot menu). In proxy mode our offer has no
/// address, so iPXE ignores the flag: there iPXE leaves discovery as soon as it holds
/// the site's offer and ours, and asks port 4011 once, which we answer.
pub const IPXE_NO_PXEDHCP: [u8; 3] = [0xb0, 0x01, 0x01];

const OPT_IPXE_ENCAP: u8 = 175;
/// iPXE feature sub-option (in 175) announcing HTTP support.
const IPXE_FEATURE_HTTP: u8 = 0x13;
const PXE_CLIENT: &[u8] = b"PXEClient";
const IPXE_USER_CLASS: &[u8] = b"iPXE";
/// Option 43 for PXE clients: sub-option 6 (PXE_DISCOVERY_CONTROL) = 8, i.e. bit 3
/// "boot file name given, no boot server discovery or menu", then END.
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];
/// The `file` header field is 128 bytes, NUL-terminated.
const MAX_FILE_FIELD: usize = 127;
/// Option 97: type byte + 16-byte GUID.
const MAX_MACHINE_ID: usize = 17;

/// RFC 4578 client system architecture types we have boot files for.
const ARCH_BIOS_X86: u16 = 0;
const ARCH_EFI_BC: u16 = 7;
const ARCH_EFI_X86_64: u16 = 9;
const ARCH_EFI_ARM64: u16 = 11;

/// TFTP file names of the iPXE builds handed to PXE ROMs, per client architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Architecture 0 (BIOS x86).
    pub bios: String,
    /// Architectures 7 and 9 (EFI byte code / EFI x86-64).
    pub efi_x64: String,
    /// Architecture 11 (EFI arm64); clients get no answer when unset.
    pub efi_arm64: Option<String>,
}

impl Default for BootFiles {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_arm64: None,
        }
    }
}

impl BootFiles {
    pub fn validate(&self) -> Result<(), DhcpError> {
        let names = [
            Some(&self.bios),
            Some(&self.efi_x64),
            self.efi_arm64.as_ref(),
        ];
        for name in names.into_iter().flatten() {
            if name.is_empty() || name.len() > MAX_FILE_FIELD || name.contains('\0') {
                return Err(DhcpError::Config(format!(
                    "boot file name {name:?} must be 1 to {MAX_FILE_FIELD} bytes without NUL"
                )));
            }
        }
        Ok(())
    }
}

/// The port a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenPort {
    /// 67: broadcast DHCP.
    Dhcp,
    /// 4011: PXE clients ask the proxy for boot information once they have an address.
    Pxe,
}

#[derive(Debug)]
pub enum Mode {
    /// Boot information only, next to the site's DHCP server; non-PXE clients ignored.
    Proxy,
    /// We are the network's DHCP server: addresses for everyone, boot information for
    /// PXE clients.
    Full { pool: Box<Pool> },
}

/// Everything [`respond`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Address of the interface the request arrived on: what clients are told to use.
    pub server_ip: Ipv4Addr,
    /// Port of the HTTP server serving [`IPXE_SCRIPT_PATH`].
    pub http_port: u16,
    /// Whether a TFTP server is serving [`BootFiles`]; PXE ROMs get no boot answer
    /// without one.
    pub tftp: bool,
    pub mode: &'a Mode,
    pub boot_files: &'a BootFiles,
    pub port: ListenPort,
    /// Lease clock (full mode).
    pub now: Instant,
}

/// Who is asking, judged by the request's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Not a network-boot client.
    Other,
    /// A firmware PXE ROM (or an iPXE that cannot fetch over HTTP): gets iPXE by TFTP.
    Pxe,
    /// iPXE with HTTP: gets the script URL.
    Ipxe,
}

impl ClientKind {
    pub fn of(req: &Message) -> Self {
        let opts = req.opts();
        let vendor_pxe = matches!(
            opts.get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(PXE_CLIENT)
        );
        let user_class_ipxe = matches!(
            opts.get(OptionCode::UserClass),
            Some(DhcpOption::UserClass(v)) if is_ipxe_user_class(v)
        );
        let ipxe_encap = ipxe_options(req);
        if user_class_ipxe || ipxe_encap.is_some() {
            // iPXE lists its features in option 175; one that lacks HTTP cannot fetch
            // the script, so it is given our own iPXE build like a PXE ROM would be.
            match ipxe_encap {
                Some(features) if !has_suboption(features, IPXE_FEATURE_HTTP) => Self::Pxe,
                _ => Self::Ipxe,
            }
        } else if vendor_pxe {
            Self::Pxe
        } else {
            Self::Other
        }
    }
}

/// Raw user class "iPXE" (what iPXE sends) or an RFC 3004 list holding it.
fn is_ipxe_user_class(v: &[u8]) -> bool {
    if v == IPXE_USER_CLASS {
        return true;
    }
    let mut rest = v;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || tail.len() < len {
            return false;
        }
        if &tail[..len] == IPXE_USER_CLASS {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

fn ipxe_options(req: &Message) -> Option<&[u8]> {
    match req.opts().get(OptionCode::Unknown(OPT_IPXE_ENCAP)) {
        Some(DhcpOption::Unknown(u)) => Some(u.data()),
        _ => None,
    }
}

/// Whether an encapsulated option list (code, len, data...) holds `code`.
fn has_suboption(mut rest: &[u8], code: u8) -> bool {
    while let Some((&c, tail)) = rest.split_first() {
        match c {
            0 => rest = tail,
            255 => return false,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    return false;
                };
                if c == code {
                    return true;
                }
                rest = tail.get(usize::from(len)..).unwrap_or_default();
            }
        }
    }
    false
}

/// The client's architecture: option 93, else the PXE vendor class
/// "PXEClient:Arch:xxxxx:UNDI:yyyzzz".
fn client_arch(req: &Message) -> Option<u16> {
    if let Some(DhcpOption::ClientSystemArchitecture(a)) =
        req.opts().get(OptionCode::ClientSystemArchitecture)
    {
        return Some(u16::from(*a));
    }
    let Some(DhcpOption::ClassIdentifier(v)) = req.opts().get(OptionCode::ClassIdentifier) else {
        return None;
    };
    let mut parts = std::str::from_utf8(v).ok()?.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("PXEClient"), Some("Arch"), Some(arch)) => arch.parse().ok(),
        _ => None,
    }
}

/// Where a boot client is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BootTarget {
    Tftp(String),
    Http(String),
}

impl BootTarget {
    fn name(&self) -> &str {
        match self {
            Self::Tftp(f) | Self::Http(f) => f,
        }
    }
}

/// The boot file for a PXE or iPXE client, or `None` (logged) when we have nothing
/// it can boot.
fn boot_target(req: &Message, kind: ClientKind, ctx: &Context<'_>) -> Option<BootTarget> {
    match kind {
        ClientKind::Other => None,
        ClientKind::Ipxe => Some(BootTarget::Http(format!(
            "http://{}:{}{IPXE_SCRIPT_PATH}",
            ctx.server_ip, ctx.http_port
        ))),
        ClientKind::Pxe => {
            let arch = client_arch(req);
            let file = match arch {
                Some(ARCH_BIOS_X86) => Some(&ctx.boot_files.bios),
                Some(ARCH_EFI_BC | ARCH_EFI_X86_64) => Some(&ctx.boot_files.efi_x64),
                Some(ARCH_EFI_ARM64) => {
                    if ctx.boot_files.efi_arm64.is_none() {
                        tracing::warn!(
                            arch = ARCH_EFI_ARM64,
                            "EFI arm64 client: no arm64 boot file configured, not answering"
                        );
                        return None;
                    }
                    ctx.boot_files.efi_arm64.as_ref()
                }
                Some(other) => {
                    tracing::warn!(
                        arch = other,
                        "PXE client architecture not supported, not answering"
                    );
                    return None;
                }
                None => {
                    tracing::warn!("PXE client without an architecture (option 93), not answering");
                    return None;
                }
            };
            if !ctx.tftp {
                tracing::warn!(arch, "PXE ROM needs TFTP, which is disabled; not answering");
                return None;
            }
            file.map(|f| BootTarget::Tftp(f.clone()))
        }
    }
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub to: ReplyTo,
}

/// Destination of a reply; the socket layer turns it into an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// 255.255.255.255:68 out of the interface the request came in on.
    Broadcast,
    /// The client's own address (ciaddr), port 68.
    Unicast(Ipv4Addr),
    /// The relay agent (giaddr), port 67.
    Relay(Ipv4Addr),
    /// Back to the request's source address and port (port 4011 requests).
    Source,
}

/// Decides the answer to one request. `None`: stay silent (not a boot client in proxy
/// mode, not addressed to us, nothing to boot, pool exhausted...); the reason is logged.
pub fn respond(req: &Message, ctx: &Context<'_>) -> Option<Reply> {
    if req.opcode() != Opcode::BootRequest {
        tracing::debug!("not a BOOTREQUEST, ignored");
        return None;
    }
    // Checked before chaddr(), which slices by hlen.
    if req.htype() != HType::Eth || req.hlen() != 6 {
        tracing::debug!(htype = ?req.htype(), hlen = req.hlen(), "not an Ethernet client, ignored");
        return None;
    }
    let mut mac = [0; 6];
    mac.copy_from_slice(req.chaddr());
    let mac = MacAddr(mac);
    let span = tracing::info_span!("dhcp", %mac, xid = format_args!("{:#010x}", req.xid()));
    let _entered = span.enter();

    let Some(msg_type) = req.opts().msg_type() else {
        tracing::debug!("BOOTP request without a DHCP message type, ignored");
        return None;
    };
    let kind = ClientKind::of(req);
    match (ctx.port, msg_type, ctx.mode) {
        (ListenPort::Pxe, MessageType::Request | MessageType::Inform, _) => {
            proxy_reply(req, ctx, kind, MessageType::Ack)
        }
        (ListenPort::Pxe, other, _) => {
            tracing::debug!(msg_type = ?other, "unexpected message on the PXE port, ignored");
            None
        }
        (ListenPort::Dhcp, MessageType::Discover, Mode::Proxy) => {
            proxy_reply(req, ctx, kind, MessageType::Offer)
        }
        (ListenPort::Dhcp, other, Mode::Proxy) => {
            // The site's DHCP server handles everything but the boot offer.
            tracing::debug!(msg_type = ?other, "not for a ProxyDHCP server, ignored");
            None
        }
        (ListenPort::Dhcp, _, Mode::Full { pool }) => full(req, ctx, pool, kind, mac, msg_type),
    }
}

/// ProxyDHCP OFFER (port 67) or ACK (port 4011): boot information, no address.
fn proxy_reply(
    req: &Message,
    ctx: &Context<'_>,
    kind: ClientKind,
    msg_type: MessageType,
) -> Option<Reply> {
    if kind == ClientKind::Other {
        tracing::debug!("not a PXE client, ignored");
        return None;
    }
    let target = boot_target(req, kind, ctx)?;
    let mut m = base_reply(req, msg_type, ctx.server_ip);
    if ctx.port == ListenPort::Pxe {
        m.set_ciaddr(req.ciaddr());
    }
    add_boot_info(&mut m, req, ctx, kind, &target);
    tracing::info!(?msg_type, boot_file = target.name(), client = ?kind, "ProxyDHCP reply");
    Some(Reply {
        message: m,
        to: destination(req, ctx.port, false),
    })
}

fn full(
    req: &Message,
    ctx: &Context<'_>,
    pool: &Pool,
    kind: ClientKind,
    mac: MacAddr,
    msg_type: MessageType,
) -> Option<Reply> {
    // The pool belongs to one network: the one the request came from (the relay's
    // when relayed, else the interface's).
    let network = if req.giaddr().is_unspecified() {
        ctx.server_ip
    } else {
        req.giaddr()
    };
    if !pool.on_subnet(network) {
        tracing::debug!(%network, "request from outside the pool's subnet, ignored");
        return None;
    }
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    match msg_type {
        MessageType::Discover => {
            let Some(ip) = pool.offer(mac, requested, ctx.server_ip, ctx.now) else {
                tracing::warn!(
                    start = %pool.config().start,
                    end = %pool.config().end,
                    "address pool exhausted, no offer"
                );
                return None;
            };
            let mut m = base_reply(req, MessageType::Offer, ctx.server_ip);
            m.set_yiaddr(ip);
            add_lease_options(&mut m, pool, true);
            let boot = add_boot_if_pxe(&mut m, req, ctx, kind);
            tracing::info!(%ip, boot_file = boot.as_deref(), "DHCP offer");
            Some(Reply {
                message: m,
                to: destination(req, ctx.port, false),
            })
        }
        MessageType::Request => {
            if let Some(sid) = server_id.filter(|sid| *sid != ctx.server_ip) {
                pool.forget_offer(mac);
                tracing::debug!(server = %sid, "client chose another DHCP server");
                return None;
            }
            let ip = requested.or((!req.ciaddr().is_unspecified()).then_some(req.ciaddr()));
            let Some(ip) = ip else {
                tracing::debug!("REQUEST without an address, ignored");
                return None;
            };
            match pool.request(mac, ip, ctx.server_ip, ctx.now) {
                RequestOutcome::Ack(ip) => {
                    let mut m = base_reply(req, MessageType::Ack, ctx.server_ip);
                    m.set_ciaddr(req.ciaddr());
                    m.set_yiaddr(ip);
                    add_lease_options(&mut m, pool, true);
                    let boot = add_boot_if_pxe(&mut m, req, ctx, kind);
                    tracing::info!(%ip, boot_file = boot.as_deref(), "DHCP ack");
                    Some(Reply {
                        message: m,
                        to: destination(req, ctx.port, false),
                    })
                }
                RequestOutcome::Nak => {
                    let mut m = base_reply(req, MessageType::Nak, ctx.server_ip);
                    if !req.giaddr().is_unspecified() {
                        m.set_flags(Flags::default().set_broadcast());
                    }
                    tracing::info!(requested = %ip, "DHCP nak: address not valid for this client");
                    Some(Reply {
                        message: m,
                        to: destination(req, ctx.port, true),
                    })
                }
                RequestOutcome::Silent => {
                    tracing::debug!(requested = %ip, "REQUEST for an address we do not manage, ignored");
                    None
                }
            }
        }
        MessageType::Release => {
            if pool.release(mac, req.ciaddr()) {
                tracing::info!(ip = %req.ciaddr(), "lease released");
            } else {
                tracing::debug!(ip = %req.ciaddr(), "RELEASE for an address the client does not hold");
            }
            None
        }
        MessageType::Decline => {
            match requested {
                Some(ip) if pool.decline(mac, ip, ctx.now) => {
                    tracing::warn!(%ip, "client declined the address (in use by someone else?); skipping it for a while");
                }
                _ => tracing::debug!("DECLINE for an address the client does not hold"),
            }
            None
        }
        MessageType::Inform => {
            if req.ciaddr().is_unspecified() {
                tracing::debug!("INFORM without ciaddr, ignored");
                return None;
            }
            let mut m = base_reply(req, MessageType::Ack, ctx.server_ip);
            m.set_ciaddr(req.ciaddr());
            add_lease_options(&mut m, pool, false);
            add_boot_if_pxe(&mut m, req, ctx, kind);
            Some(Reply {
                message: m,
                to: destination(req, ctx.port, false),
            })
        }
        other => {
            tracing::debug!(msg_type = ?other, "not a client message, ignored");
            None
        }
    }
}

/// RFC 2131 4.1 destinations, without raw-socket unicast to an unconfigured client
/// (that needs an ARP entry we cannot add without privileges): broadcast instead.
fn destination(req: &Message, port: ListenPort, nak: bool) -> ReplyTo {
    if port == ListenPort::Pxe {
        return ReplyTo::Source;
    }
    if !req.giaddr().is_unspecified() {
        return ReplyTo::Relay(req.giaddr());
    }
    if nak || req.ciaddr().is_unspecified() || req.flags().broadcast() {
        ReplyTo::Broadcast
    } else {
        ReplyTo::Unicast(req.ciaddr())
    }
}

fn base_reply(req: &Message, msg_type: MessageType, server_ip: Ipv4Addr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.opts_mut().insert(DhcpOption::MessageType(msg_type));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server_ip));
    m
}

fn add_lease_options(m: &mut Message, pool: &Pool, lease_time: bool) {
    let c = pool.config();
    let opts = m.opts_mut();
    opts.insert(DhcpOption::SubnetMask(c.subnet_mask));
    if let Some(r) = c.router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if !c.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(c.dns.clone()));
    }
    if lease_time {
        // Validated to fit in 32 bits.
        let secs = u32::try_from(c.lease_time.as_secs()).unwrap_or(u32::MAX);
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
}

/// Full mode: boot information on top of the lease, for PXE clients only.
fn add_boot_if_pxe(
    m: &mut Message,
    req: &Message,
    ctx: &Context<'_>,
    kind: ClientKind,
) -> Option<String> {
    if kind == ClientKind::Other {
        return None;
    }
    let target = boot_target(req, kind, ctx)?;
    add_boot_info(m, req, ctx, kind, &target);
    Some(target.name().to_owned())
}

fn add_boot_info(
    m: &mut Message,
    req: &Message,
    ctx: &Context<'_>,
    kind: ClientKind,
    target: &BootTarget,
) {
    m.set_siaddr(ctx.server_ip);
    let file = target.name().as_bytes();
    if file.len() <= MAX_FILE_FIELD {
        m.set_fname(file);
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::BootfileName(file.to_vec()));
    if let BootTarget::Tftp(_) = target {
        let server = ctx.server_ip.to_string();
        m.set_sname_str(&server);
        m.opts_mut()
            .insert(DhcpOption::TFTPServerName(server.into_bytes()));
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ClassIdentifier(PXE_CLIENT.to_vec()));
    opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
    // Type 0 + a 16-byte GUID (RFC 4578 2.3); anything longer is not echoed, which
    // keeps replies small whatever the client sends.
    if let Some(DhcpOption::ClientMachineIdentifier(guid)) =
        req.opts().get(OptionCode::ClientMachineIdentifier)
    {
        if guid.len() <= MAX_MACHINE_ID {
            opts.insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
        }
    }
    if kind == ClientKind::Ipxe {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(OPT_IPXE_ENCAP),
            IPXE_NO_PXEDHCP.to_vec(),
        )));
    }
}
