//! Tests of the decision ([`respond`]), the packet handler and the real sockets.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

use super::server::{Handler, PacketMeta};
use super::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUID: [u8; 17] = [
    0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x00,
];
const HTTP_PORT: u16 = 8080;
const IPXE_URL: &str = "http://10.0.0.1:8080/boot.ipxe";

fn request(msg_type: MessageType, mac: [u8; 6]) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234_5678, z, z, z, z, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(msg_type));
    m
}

/// What a PXE ROM sends: PXE vendor class, architecture, NIC type, machine GUID.
fn pxe(msg_type: MessageType, arch: u16) -> Message {
    let mut m = request(msg_type, MAC);
    m.set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch,
    )));
    opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    opts.insert(DhcpOption::ClientMachineIdentifier(GUID.to_vec()));
    m
}

/// What iPXE sends: the PXE options plus user class "iPXE" and its feature list
/// (HTTP 0x13, TFTP 0x15) in option 175.
fn ipxe(msg_type: MessageType, arch: u16) -> Message {
    let mut m = pxe(msg_type, arch);
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    m.opts_mut().insert(opt175(vec![0x13, 1, 1, 0x15, 1, 1]));
    m
}

fn opt175(data: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), data))
}

fn proxy_ctx<'a>(mode: &'a Mode, files: &'a BootFiles, port: ListenPort) -> Context<'a> {
    Context {
        server_ip: SERVER,
        http_port: HTTP_PORT,
        tftp: true,
        mode,
        boot_files: files,
        port,
        now: Instant::now(),
    }
}

fn opt(m: &Message, code: u8) -> Option<Vec<u8>> {
    let o = m.opts().get(OptionCode::from(code))?;
    let mut buf = Vec::new();
    o.encode(&mut dhcproto::Encoder::new(&mut buf)).unwrap();
    Some(buf[2..].to_vec())
}

fn boot_file(m: &Message) -> String {
    String::from_utf8(opt(m, 67).expect("option 67")).unwrap()
}

fn proxy_offer(req: &Message) -> Option<Reply> {
    respond(
        req,
        &proxy_ctx(&Mode::Proxy, &BootFiles::default(), ListenPort::Dhcp),
    )
}

// ---- Client architecture -> boot file ----

#[test]
fn bios_pxe_rom_gets_undionly_over_tftp() {
    let reply = proxy_offer(&pxe(MessageType::Discover, 0)).expect("offer");
    let m = &reply.message;
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.xid(), 0x1234_5678);
    assert_eq!(m.chaddr(), MAC);
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "ProxyDHCP gives no address"
    );
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(m.fname(), Some(&b"undionly.kpxe"[..]));
    assert_eq!(m.sname(), Some(&b"10.0.0.1"[..]));
    assert_eq!(boot_file(m), "undionly.kpxe");
    assert_eq!(opt(m, 66).unwrap(), b"10.0.0.1");
    assert_eq!(opt(m, 54).unwrap(), SERVER.octets());
    assert_eq!(opt(m, 60).unwrap(), b"PXEClient");
    assert_eq!(
        opt(m, 43).unwrap(),
        [6, 1, 8, 255],
        "discovery control: bit 3"
    );
    assert_eq!(opt(m, 97).unwrap(), GUID, "machine identifier echoed");
    assert_eq!(opt(m, 175), None, "option 175 is for iPXE only");
    assert_eq!(reply.to, ReplyTo::Broadcast);
}

#[test]
fn efi_x64_and_efi_bc_get_ipxe_efi() {
    for arch in [7, 9] {
        let reply = proxy_offer(&pxe(MessageType::Discover, arch)).expect("offer");
        assert_eq!(boot_file(&reply.message), "ipxe.efi", "arch {arch}");
        assert_eq!(reply.message.fname(), Some(&b"ipxe.efi"[..]));
    }
}

#[test]
fn efi_arm64_needs_a_configured_file() {
    let req = pxe(MessageType::Discover, 11);
    assert_eq!(proxy_offer(&req), None);
    let files = BootFiles {
        efi_arm64: Some("ipxe-arm64.efi".into()),
        ..BootFiles::default()
    };
    let reply = respond(&req, &proxy_ctx(&Mode::Proxy, &files, ListenPort::Dhcp)).unwrap();
    assert_eq!(boot_file(&reply.message), "ipxe-arm64.efi");
}

#[test]
fn unknown_architectures_get_no_answer() {
    for arch in [1, 6, 10, 16, 0xffff] {
        assert_eq!(
            proxy_offer(&pxe(MessageType::Discover, arch)),
            None,
            "arch {arch}"
        );
    }
}

#[test]
fn architecture_falls_back_to_the_vendor_class() {
    let mut req = pxe(MessageType::Discover, 7);
    req.opts_mut().remove(OptionCode::ClientSystemArchitecture);
    assert_eq!(boot_file(&proxy_offer(&req).unwrap().message), "ipxe.efi");

    req.opts_mut()
        .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    assert_eq!(proxy_offer(&req), None, "no architecture at all");
}

// ---- iPXE vs PXE ROM ----

#[test]
fn ipxe_is_chained_to_http_with_option_175() {
    for arch in [0, 7, 9] {
        let reply = proxy_offer(&ipxe(MessageType::Discover, arch)).expect("offer");
        let m = &reply.message;
        assert_eq!(boot_file(m), IPXE_URL, "arch {arch}");
        assert_eq!(m.fname(), Some(IPXE_URL.as_bytes()));
        assert_eq!(opt(m, 175).unwrap(), [0xb0, 0x01, 0x01]);
        assert_eq!(opt(m, 60).unwrap(), b"PXEClient");
        assert_eq!(opt(m, 66), None, "no TFTP for iPXE");
        assert_eq!(m.siaddr(), SERVER);
    }
}

#[test]
fn option_175_alone_marks_ipxe() {
    let mut req = pxe(MessageType::Discover, 0);
    req.opts_mut().insert(opt175(vec![0x13, 1, 1]));
    assert_eq!(boot_file(&proxy_offer(&req).unwrap().message), IPXE_URL);
}

#[test]
fn rfc3004_user_class_ipxe_is_recognised() {
    let mut req = pxe(MessageType::Discover, 0);
    req.opts_mut()
        .insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
    assert_eq!(ClientKind::of(&req), ClientKind::Ipxe);
}

#[test]
fn ipxe_without_http_gets_our_ipxe_build() {
    let mut req = ipxe(MessageType::Discover, 0);
    // Features: TFTP only.
    req.opts_mut().insert(opt175(vec![0x15, 1, 1]));
    let reply = proxy_offer(&req).unwrap();
    assert_eq!(boot_file(&reply.message), "undionly.kpxe");
    assert_eq!(opt(&reply.message, 175), None);
}

#[test]
fn non_pxe_clients_are_ignored_in_proxy_mode() {
    let plain = request(MessageType::Discover, MAC);
    assert_eq!(proxy_offer(&plain), None);
    let mut other_vendor = request(MessageType::Discover, MAC);
    other_vendor
        .opts_mut()
        .insert(DhcpOption::ClassIdentifier(b"MSFT 5.0".to_vec()));
    assert_eq!(proxy_offer(&other_vendor), None);
}

#[test]
fn proxy_mode_leaves_requests_on_67_to_the_site_server() {
    for t in [
        MessageType::Request,
        MessageType::Release,
        MessageType::Decline,
        MessageType::Inform,
    ] {
        assert_eq!(proxy_offer(&pxe(t, 0)), None, "{t:?}");
    }
}

#[test]
fn bootp_and_non_ethernet_requests_are_ignored() {
    let mut bootp = pxe(MessageType::Discover, 0);
    bootp.opts_mut().remove(OptionCode::MessageType);
    assert_eq!(proxy_offer(&bootp), None);
    let mut ib = pxe(MessageType::Discover, 0);
    ib.set_chaddr(&[1; 16]);
    assert_eq!(proxy_offer(&ib), None);
}

#[test]
fn pxe_port_request_gets_an_ack_back_to_its_source() {
    let mut req = pxe(MessageType::Request, 9);
    req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let files = BootFiles::default();
    let reply = respond(&req, &proxy_ctx(&Mode::Proxy, &files, ListenPort::Pxe)).unwrap();
    let m = &reply.message;
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(reply.to, ReplyTo::Source);
    assert_eq!(m.ciaddr(), Ipv4Addr::new(10, 0, 0, 77));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(boot_file(m), "ipxe.efi");
    assert_eq!(opt(m, 43).unwrap(), [6, 1, 8, 255]);

    // A DISCOVER on 4011 is nonsense.
    let d = pxe(MessageType::Discover, 9);
    assert_eq!(
        respond(&d, &proxy_ctx(&Mode::Proxy, &files, ListenPort::Pxe)),
        None
    );
}

#[test]
fn the_server_address_is_the_arrival_interfaces() {
    let files = BootFiles::default();
    let mut ctx = proxy_ctx(&Mode::Proxy, &files, ListenPort::Dhcp);
    ctx.server_ip = Ipv4Addr::new(192, 168, 7, 2);
    let m = respond(&ipxe(MessageType::Discover, 0), &ctx)
        .unwrap()
        .message;
    assert_eq!(m.siaddr(), ctx.server_ip);
    assert_eq!(opt(&m, 54).unwrap(), [192, 168, 7, 2]);
    assert_eq!(boot_file(&m), "http://192.168.7.2:8080/boot.ipxe");
}

#[test]
fn without_tftp_only_ipxe_is_answered() {
    let files = BootFiles::default();
    let mut ctx = proxy_ctx(&Mode::Proxy, &files, ListenPort::Dhcp);
    ctx.tftp = false;
    assert_eq!(respond(&pxe(MessageType::Discover, 0), &ctx), None);
    assert!(respond(&ipxe(MessageType::Discover, 0), &ctx).is_some());
}

#[test]
fn destinations_follow_rfc_2131() {
    let mut req = pxe(MessageType::Discover, 0);
    req.set_flags(Flags::default());
    assert_eq!(
        proxy_offer(&req).unwrap().to,
        ReplyTo::Broadcast,
        "no address yet"
    );
    req.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
    let reply = proxy_offer(&req).unwrap();
    assert_eq!(reply.to, ReplyTo::Relay(Ipv4Addr::new(10, 9, 0, 1)));
    assert_eq!(reply.message.giaddr(), Ipv4Addr::new(10, 9, 0, 1));
}

// ---- Full mode ----

fn full_mode(start: u8, end: u8) -> Mode {
    Mode::Full {
        pool: Box::new(
            Pool::new(PoolConfig {
                start: Ipv4Addr::new(10, 0, 0, start),
                end: Ipv4Addr::new(10, 0, 0, end),
                subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
                router: Some(Ipv4Addr::new(10, 0, 0, 254)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
                lease_time: Duration::from_secs(3600),
            })
            .unwrap(),
        ),
    }
}

fn pool(mode: &Mode) -> &Pool {
    match mode {
        Mode::Full { pool } => pool,
        Mode::Proxy => unreachable!(),
    }
}

fn select(mut req: Message, ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    req
}

#[test]
fn full_mode_lease_lifecycle() {
    let mode = full_mode(10, 11);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    let ip = Ipv4Addr::new(10, 0, 0, 10);

    // DISCOVER -> OFFER with an address and the lease options.
    let offer = respond(&pxe(MessageType::Discover, 0), &ctx).unwrap();
    let m = &offer.message;
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.yiaddr(), ip);
    assert_eq!(opt(m, 1).unwrap(), [255, 255, 255, 0]);
    assert_eq!(opt(m, 3).unwrap(), [10, 0, 0, 254]);
    assert_eq!(opt(m, 6).unwrap(), [10, 0, 0, 53]);
    assert_eq!(opt(m, 51).unwrap(), 3600u32.to_be_bytes());
    assert_eq!(opt(m, 58).unwrap(), 1800u32.to_be_bytes());
    assert_eq!(opt(m, 59).unwrap(), 3150u32.to_be_bytes());
    assert_eq!(opt(m, 54).unwrap(), SERVER.octets());
    assert_eq!(
        boot_file(m),
        "undionly.kpxe",
        "PXE clients also get boot info"
    );
    assert_eq!(offer.to, ReplyTo::Broadcast);
    assert_eq!(
        pool(&mode).lease(MacAddr(MAC)).unwrap().state,
        LeaseState::Offered
    );

    // REQUEST (selecting us) -> ACK.
    let ack = respond(&select(pxe(MessageType::Request, 0), ip, SERVER), &ctx).unwrap();
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), ip);
    assert_eq!(boot_file(&ack.message), "undionly.kpxe");
    let lease = pool(&mode).lease(MacAddr(MAC)).unwrap();
    assert_eq!((lease.ip, lease.state), (ip, LeaseState::Bound));

    // Renewing (ciaddr set, unicast) -> ACK for the same address, sent to it.
    let mut renew = pxe(MessageType::Request, 0);
    renew.set_ciaddr(ip);
    renew.set_flags(Flags::default());
    let later = Context {
        now: ctx.now + Duration::from_secs(1800),
        ..ctx
    };
    let ack = respond(&renew, &later).unwrap();
    assert_eq!(ack.message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.message.yiaddr(), ip);
    assert_eq!(ack.to, ReplyTo::Unicast(ip));
    assert!(pool(&mode).lease(MacAddr(MAC)).unwrap().expires > lease.expires);

    // A rebooting client DISCOVERs again: same address.
    let again = respond(&pxe(MessageType::Discover, 0), &later).unwrap();
    assert_eq!(again.message.yiaddr(), ip);

    // Asking for an address that is not its own -> NAK, broadcast.
    let wrong = select(
        pxe(MessageType::Request, 0),
        Ipv4Addr::new(10, 0, 0, 11),
        SERVER,
    );
    let nak = respond(&wrong, &later).unwrap();
    assert_eq!(nak.message.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(nak.to, ReplyTo::Broadcast);
    // Off-subnet (it moved networks) -> NAK too.
    let moved = select(
        pxe(MessageType::Request, 0),
        Ipv4Addr::new(172, 16, 0, 9),
        SERVER,
    );
    assert_eq!(
        respond(&moved, &later).unwrap().message.opts().msg_type(),
        Some(MessageType::Nak)
    );

    // RELEASE frees it: another client gets it.
    let mut release = request(MessageType::Release, MAC);
    release.set_ciaddr(ip);
    release
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    assert_eq!(respond(&release, &later), None);
    assert_eq!(pool(&mode).lease(MacAddr(MAC)), None);
    let other = respond(&request(MessageType::Discover, [2; 6]), &later).unwrap();
    assert_eq!(other.message.yiaddr(), ip);
}

#[test]
fn full_mode_pool_exhaustion_means_no_offer() {
    let mode = full_mode(10, 11);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    let a = respond(&request(MessageType::Discover, [1; 6]), &ctx).unwrap();
    let b = respond(&request(MessageType::Discover, [2; 6]), &ctx).unwrap();
    assert_ne!(a.message.yiaddr(), b.message.yiaddr());
    assert_eq!(respond(&request(MessageType::Discover, [3; 6]), &ctx), None);
}

#[test]
fn full_mode_answers_everyone_but_boots_only_pxe_clients() {
    let mode = full_mode(10, 20);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    let plain = respond(&request(MessageType::Discover, [1; 6]), &ctx).unwrap();
    assert!(!plain.message.yiaddr().is_unspecified());
    for code in [43, 60, 66, 67, 175] {
        assert_eq!(opt(&plain.message, code), None, "option {code}");
    }
    assert_eq!(plain.message.fname(), None);

    let ipxe = respond(&ipxe(MessageType::Discover, 9), &ctx).unwrap();
    assert!(!ipxe.message.yiaddr().is_unspecified());
    assert_eq!(boot_file(&ipxe.message), IPXE_URL);
    // With its address from us, iPXE must not go on to ask port 4011.
    assert_eq!(opt(&ipxe.message, 175).unwrap(), IPXE_NO_PXEDHCP);
}

#[test]
fn full_mode_client_choosing_another_server_frees_the_offer() {
    let mode = full_mode(10, 10);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    let offer = respond(&request(MessageType::Discover, [1; 6]), &ctx).unwrap();
    let elsewhere = select(
        request(MessageType::Request, [1; 6]),
        offer.message.yiaddr(),
        Ipv4Addr::new(10, 0, 0, 2),
    );
    assert_eq!(respond(&elsewhere, &ctx), None);
    assert!(respond(&request(MessageType::Discover, [2; 6]), &ctx).is_some());
}

#[test]
fn full_mode_decline_skips_the_address() {
    let mode = full_mode(10, 11);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    let first = respond(&request(MessageType::Discover, [1; 6]), &ctx).unwrap();
    let ip = first.message.yiaddr();
    let mut decline = request(MessageType::Decline, [1; 6]);
    decline
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip));
    assert_eq!(respond(&decline, &ctx), None);
    let next = respond(&request(MessageType::Discover, [1; 6]), &ctx).unwrap();
    assert_ne!(next.message.yiaddr(), ip);
}

#[test]
fn full_mode_ignores_requests_from_other_networks() {
    let mode = full_mode(10, 20);
    let files = BootFiles::default();
    let mut ctx = proxy_ctx(&mode, &files, ListenPort::Dhcp);
    ctx.server_ip = Ipv4Addr::new(192, 168, 1, 1);
    assert_eq!(respond(&request(MessageType::Discover, [1; 6]), &ctx), None);
    // Relayed from the pool's network: answered, to the relay.
    let mut relayed = request(MessageType::Discover, [1; 6]);
    relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    let r = respond(&relayed, &ctx).unwrap();
    assert_eq!(r.to, ReplyTo::Relay(Ipv4Addr::new(10, 0, 0, 254)));
}

#[test]
fn full_mode_pxe_port_still_gives_boot_info_only() {
    let mode = full_mode(10, 20);
    let files = BootFiles::default();
    let ctx = proxy_ctx(&mode, &files, ListenPort::Pxe);
    let mut req = pxe(MessageType::Request, 0);
    req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 12));
    let reply = respond(&req, &ctx).unwrap();
    assert_eq!(reply.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(boot_file(&reply.message), "undionly.kpxe");
    assert_eq!(pool(&mode).lease(MacAddr(MAC)), None);
}

// ---- Snapshot of a whole encoded reply ----

/// `hexdump`-style: offset, 16 bytes; runs of all-zero lines collapse into "*".
fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut in_zeros = false;
    for (i, line) in bytes.chunks(16).enumerate() {
        if line.iter().all(|b| *b == 0) && i > 0 {
            if !in_zeros {
                out.push_str("*\n");
            }
            in_zeros = true;
            continue;
        }
        in_zeros = false;
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{:04x}: {}\n", i * 16, hex.join(" ")));
    }
    out
}

#[test]
fn snapshot_proxy_offer_to_a_bios_pxe_rom() {
    let reply = proxy_offer(&pxe(MessageType::Discover, 0)).unwrap();
    let bytes = reply.message.to_vec().unwrap();
    // 0000: op=2 htype=1 hlen=6 hops=0, xid, secs=0, flags=0x8000 (broadcast, echoed)
    // 0010: yiaddr=0, siaddr=10.0.0.1, giaddr=0, chaddr...
    // 002c: sname "10.0.0.1"; 006c: file "undionly.kpxe"; 00ec: magic cookie, then
    // options in code order: 43 [6,1,8,255], 53 offer, 54 server, 60 "PXEClient",
    // 66 "10.0.0.1", 67 "undionly.kpxe", 97 the client's GUID, END.
    let expected = "\
0000: 02 01 06 00 12 34 56 78 00 00 80 00 00 00 00 00
0010: 00 00 00 00 0a 00 00 01 00 00 00 00 52 54 00 12
0020: 34 56 00 00 00 00 00 00 00 00 00 00 31 30 2e 30
0030: 2e 30 2e 31 00 00 00 00 00 00 00 00 00 00 00 00
*
0060: 00 00 00 00 00 00 00 00 00 00 00 00 75 6e 64 69
0070: 6f 6e 6c 79 2e 6b 70 78 65 00 00 00 00 00 00 00
*
00e0: 00 00 00 00 00 00 00 00 00 00 00 00 63 82 53 63
00f0: 2b 04 06 01 08 ff 35 01 02 36 04 0a 00 00 01 3c
0100: 09 50 58 45 43 6c 69 65 6e 74 42 08 31 30 2e 30
0110: 2e 30 2e 31 43 0d 75 6e 64 69 6f 6e 6c 79 2e 6b
0120: 70 78 65 61 11 00 11 22 33 44 55 66 77 88 99 aa
0130: bb cc dd ee ff 00 ff
";
    assert_eq!(hexdump(&bytes), expected);
    // And it decodes back to the same message.
    let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert_eq!(back.opts(), reply.message.opts());
}

// ---- The packet handler: bytes in, bytes out ----

fn handler(config: DhcpConfig) -> Handler {
    Handler::new(&config, Instant::now()).unwrap()
}

fn meta(port: ListenPort, len: usize) -> PacketMeta {
    PacketMeta {
        port,
        len,
        source: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68),
        local: SERVER,
        ifindex: 2,
    }
}

#[test]
fn handler_encodes_replies_and_picks_destinations() {
    let mut h = handler(DhcpConfig {
        http_port: HTTP_PORT,
        ..DhcpConfig::default()
    });
    let bytes = pxe(MessageType::Discover, 0).to_vec().unwrap();
    let out = h
        .handle(&bytes, &meta(ListenPort::Dhcp, bytes.len()), Instant::now())
        .unwrap();
    assert_eq!(out.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(out.ifindex, 2, "broadcast leaves by the arrival interface");
    assert_eq!(out.source, SERVER);
    let m = Message::decode(&mut Decoder::new(&out.bytes)).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));

    let mut req = pxe(MessageType::Request, 0);
    req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let bytes = req.to_vec().unwrap();
    let mut at = meta(ListenPort::Pxe, bytes.len());
    at.source = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4011);
    let out = h.handle(&bytes, &at, Instant::now()).unwrap();
    assert_eq!(out.dest, at.source);
}

#[test]
fn handler_counts_malformed_and_never_answers_them() {
    let counters = Arc::new(DhcpCounters::default());
    let mut h = handler(DhcpConfig {
        counters: counters.clone(),
        ..DhcpConfig::default()
    });
    let mut bytes = pxe(MessageType::Discover, 0).to_vec().unwrap();
    bytes[0] = 2; // a BOOTREPLY
    assert!(h
        .handle(&bytes, &meta(ListenPort::Dhcp, bytes.len()), Instant::now())
        .is_none());
    assert!(h
        .handle(&[1, 2, 3], &meta(ListenPort::Dhcp, 3), Instant::now())
        .is_none());
    assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
    assert_eq!(counters.received.load(Ordering::Relaxed), 2);
}

#[test]
fn handler_rate_limits_per_mac() {
    let counters = Arc::new(DhcpCounters::default());
    let mut h = handler(DhcpConfig {
        counters: counters.clone(),
        rate_limit: RateLimit {
            per_mac_per_second: 4,
            max_macs: 100,
        },
        ..DhcpConfig::default()
    });
    let now = Instant::now();
    let flood = pxe(MessageType::Discover, 0).to_vec().unwrap();
    let answered = (0..50)
        .filter(|_| {
            h.handle(&flood, &meta(ListenPort::Dhcp, flood.len()), now)
                .is_some()
        })
        .count();
    assert_eq!(answered, 4);
    assert_eq!(counters.rate_limited.load(Ordering::Relaxed), 46);
    let mut other = pxe(MessageType::Discover, 0);
    other.set_chaddr(&[0x52, 0x54, 0, 0, 0, 1]);
    let other = other.to_vec().unwrap();
    assert!(h
        .handle(&other, &meta(ListenPort::Dhcp, other.len()), now)
        .is_some());
}

#[test]
fn handler_serves_only_configured_addresses_and_interfaces() {
    let counters = Arc::new(DhcpCounters::default());
    let mut h = handler(DhcpConfig {
        counters: counters.clone(),
        addresses: vec![Ipv4Addr::new(10, 0, 0, 2)],
        ..DhcpConfig::default()
    });
    let bytes = pxe(MessageType::Discover, 0).to_vec().unwrap();
    assert!(h
        .handle(&bytes, &meta(ListenPort::Dhcp, bytes.len()), Instant::now())
        .is_none());
    assert_eq!(counters.filtered.load(Ordering::Relaxed), 1);

    let mut h = handler(DhcpConfig {
        interfaces: vec!["lo".into()],
        ..DhcpConfig::default()
    });
    let lo = nix::net::if_::if_nametoindex("lo").unwrap();
    let mut at = meta(ListenPort::Dhcp, bytes.len());
    at.ifindex = lo;
    assert!(h.handle(&bytes, &at, Instant::now()).is_some());
    at.ifindex = lo + 1000;
    assert!(h.handle(&bytes, &at, Instant::now()).is_none());
}

#[test]
fn bad_configuration_is_refused() {
    let long = DhcpConfig {
        boot_files: BootFiles {
            bios: "x".repeat(200),
            ..BootFiles::default()
        },
        ..DhcpConfig::default()
    };
    assert!(Handler::new(&long, Instant::now()).is_err());
    let no_http = DhcpConfig {
        http_port: 0,
        ..DhcpConfig::default()
    };
    assert!(Handler::new(&no_http, Instant::now()).is_err());
}

fn full_config() -> DhcpConfig {
    DhcpConfig {
        mode: ModeConfig::Full(PoolConfig {
            start: Ipv4Addr::new(10, 0, 0, 10),
            end: Ipv4Addr::new(10, 0, 0, 20),
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_time: Duration::from_secs(600),
        }),
        rate_limit: RateLimit {
            per_mac_per_second: u32::MAX,
            max_macs: 1 << 20,
        },
        ..DhcpConfig::default()
    }
}

/// A valid PXE DISCOVER cut at `cut` with `tail` appended, and bytes flipped.
fn mutated(cut: usize, tail: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut b = ipxe(MessageType::Discover, 7).to_vec().unwrap();
    b.truncate(cut.min(b.len()));
    b.extend_from_slice(tail);
    for (i, x) in flips {
        if !b.is_empty() {
            let n = b.len();
            b[i % n] ^= x;
        }
    }
    b
}

fn header_then(options: &[u8]) -> Vec<u8> {
    let mut b = pxe(MessageType::Discover, 0).to_vec().unwrap();
    b.truncate(240);
    b.extend_from_slice(options);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_handler(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut proxy = handler(DhcpConfig::default());
        let mut full = handler(full_config());
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            let _ = proxy.handle(&bytes, &meta(port, bytes.len()), Instant::now());
            let _ = full.handle(&bytes, &meta(port, bytes.len()), Instant::now());
        }
    }

    #[test]
    fn arbitrary_options_never_panic_the_handler(options in proptest::collection::vec(any::<u8>(), 0..600)) {
        let bytes = header_then(&options);
        let mut proxy = handler(DhcpConfig::default());
        let mut full = handler(full_config());
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            let _ = proxy.handle(&bytes, &meta(port, bytes.len()), Instant::now());
            let _ = full.handle(&bytes, &meta(port, bytes.len()), Instant::now());
        }
    }

    /// Well-formed option lists (so dhcproto decodes every one) with random codes and
    /// short lengths, after a message type and a PXE vendor class so that `respond`
    /// sees them too.
    #[test]
    fn random_well_formed_options_never_panic_the_handler(
        msg_type in 1u8..=8,
        opts in proptest::collection::vec((1u8..=254, proptest::collection::vec(any::<u8>(), 0..10)), 0..12),
    ) {
        let mut raw = vec![53, 1, msg_type, 60, 9];
        raw.extend_from_slice(b"PXEClient");
        for (code, data) in &opts {
            raw.push(*code);
            raw.push(data.len() as u8);
            raw.extend_from_slice(data);
        }
        raw.push(255);
        let bytes = header_then(&raw);
        let mut proxy = handler(DhcpConfig::default());
        let mut full = handler(full_config());
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            let _ = proxy.handle(&bytes, &meta(port, bytes.len()), Instant::now());
            let _ = full.handle(&bytes, &meta(port, bytes.len()), Instant::now());
        }
    }

    #[test]
    fn mutated_requests_never_panic_the_handler(
        cut in 0usize..400,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let bytes = mutated(cut, &tail, &flips);
        let mut proxy = handler(DhcpConfig::default());
        let mut full = handler(full_config());
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            let _ = proxy.handle(&bytes, &meta(port, bytes.len()), Instant::now());
            let _ = full.handle(&bytes, &meta(port, bytes.len()), Instant::now());
        }
    }
}

// ---- Real sockets on loopback ----

#[tokio::test]
async fn real_sockets_answer_discover_on_67_and_request_on_4011() {
    let counters = Arc::new(DhcpCounters::default());
    let config = DhcpConfig {
        listen: Ipv4Addr::LOCALHOST,
        dhcp_port: 0,
        pxe_port: 0,
        http_port: HTTP_PORT,
        reply_to_source: true,
        counters: counters.clone(),
        ..DhcpConfig::default()
    };
    let server = DhcpServer::bind(config).await.unwrap();
    let (dhcp_addr, pxe_addr) = server.local_addrs();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let exchange = |req: Vec<u8>, to: std::net::SocketAddr| {
        let client = &client;
        async move {
            client.send_to(&req, to).await.unwrap();
            let mut buf = vec![0u8; 1500];
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("a reply within 5 s")
                    .unwrap();
            assert_eq!(from, to, "reply comes from the port asked");
            Message::decode(&mut Decoder::new(&buf[..n])).unwrap()
        }
    };

    // Garbage first: dropped and counted, no reply (the next reply must be the OFFER).
    client.send_to(b"not dhcp", dhcp_addr).await.unwrap();

    let offer = exchange(pxe(MessageType::Discover, 0).to_vec().unwrap(), dhcp_addr).await;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.xid(), 0x1234_5678);
    assert_eq!(
        offer.siaddr(),
        Ipv4Addr::LOCALHOST,
        "the arrival address, from IP_PKTINFO"
    );
    assert_eq!(opt(&offer, 54).unwrap(), [127, 0, 0, 1]);
    assert_eq!(boot_file(&offer), "undionly.kpxe");

    let mut req = ipxe(MessageType::Request, 9);
    req.set_ciaddr(Ipv4Addr::LOCALHOST);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST));
    let ack = exchange(req.to_vec().unwrap(), pxe_addr).await;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(boot_file(&ack), "http://127.0.0.1:8080/boot.ipxe");
    assert_eq!(opt(&ack, 175).unwrap(), IPXE_NO_PXEDHCP);

    assert_eq!(counters.malformed.load(Ordering::Relaxed), 1);
    assert_eq!(counters.replied.load(Ordering::Relaxed), 2);
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
