//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the replay test
//! `tests/fuzz_regressions.rs` (every file of `fuzz/corpus/*` and `fuzz/regressions/*`).
//!
//! Each target takes arbitrary bytes and must not panic; it also asserts what the code under
//! test promises, so a broken promise is a crash the fuzzer reports like any other.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use siderite::proto::agent::v1::{BlockDevice, Hardware, Nic, RegisterRequest, System};
use siderite::{ServerId, UuidVerdict};
use siderite_agent::config::{self, ServerAddr};
use siderite_agent::hw::smbios::{self, EntryPointKind, RawSmbios};
use siderite_server::accept::AutoAccept;
use siderite_server::boot::dhcp::{self, BootFiles, Context, ListenPort, Mode, Pool, PoolConfig};
use siderite_server::boot::tftp::{self, packet::MAX_BLKSIZE, Packet};
use siderite_server::registry::{self, Limits, Registry};
use siderite_server::sessions::Sessions;
use siderite_server::store::{EmbeddedStore, Store, Txn, Versioned};
use siderite_server::{fake, model};

/// A fuzz target: arbitrary bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its directory under `fuzz/corpus` and
/// `fuzz/regressions`, and its binary in `fuzz/fuzz_targets`.
pub const TARGETS: &[(&str, Target)] = &[
    ("dhcp", dhcp),
    ("tftp", tftp),
    ("smbios", smbios),
    ("cmdline", cmdline),
    ("register", register),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

// ---------------------------------------------------------------------------------------
// DHCP

const DHCP_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const POOL_END: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

/// A datagram through `parse_request`, then every parsed request through `respond` in both
/// modes, on both ports, with and without TFTP.
pub fn dhcp(data: &[u8]) {
    let Ok(req) = dhcp::parse_request(data) else {
        return;
    };
    let pool = Pool::new(PoolConfig {
        start: POOL_START,
        end: POOL_END,
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
        lease_time: Duration::from_secs(3600),
    })
    .expect("valid pool");
    let full = Mode::Full {
        pool: Box::new(pool),
    };
    let boot_files = BootFiles {
        efi_arm64: Some("ipxe-arm64.efi".into()),
        ..BootFiles::default()
    };
    let now = Instant::now();
    for mode in [&Mode::Proxy, &full] {
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            for tftp in [true, false] {
                let ctx = Context {
                    server_ip: DHCP_SERVER_IP,
                    http_port: 8080,
                    tftp,
                    mode,
                    boot_files: &boot_files,
                    port,
                    now,
                };
                let Some(reply) = dhcp::respond(&req, &ctx) else {
                    continue;
                };
                let m = &reply.message;
                assert_eq!(m.xid(), req.xid(), "reply carries the request's xid");
                assert_eq!(m.chaddr(), req.chaddr(), "reply carries the client's MAC");
                let yiaddr = m.yiaddr();
                match mode {
                    Mode::Proxy => assert!(
                        yiaddr.is_unspecified(),
                        "ProxyDHCP handed out address {yiaddr}"
                    ),
                    Mode::Full { .. } => assert!(
                        yiaddr.is_unspecified() || (POOL_START..=POOL_END).contains(&yiaddr),
                        "address {yiaddr} is outside the pool"
                    ),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// TFTP

/// Server limits the options are negotiated against: the defaults, tight ones, and
/// degenerate ones (zero sizes) that the negotiation must still keep sane.
const TFTP_LIMITS: [tftp::Limits; 3] = [
    tftp::Limits {
        max_blksize: MAX_BLKSIZE,
        max_windowsize: 64,
        max_window_bytes: 1 << 20,
    },
    tftp::Limits {
        max_blksize: 1428,
        max_windowsize: 4,
        max_window_bytes: 4096,
    },
    tftp::Limits {
        max_blksize: 0,
        max_windowsize: 0,
        max_window_bytes: 0,
    },
];

/// A datagram through `parse`; a parsed packet re-encodes to bytes that parse to the same
/// packet; a request's file name through `normalize_path` and its options through
/// `negotiate`.
pub fn tftp(data: &[u8]) {
    let Ok(packet) = tftp::parse(data) else {
        return;
    };
    let again = packet.to_bytes();
    assert_eq!(
        tftp::parse(&again).as_ref(),
        Ok(&packet),
        "re-encoded packet {again:?} parses differently"
    );
    let options = match &packet {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            if let Ok(path) = tftp::normalize_path(r.filename) {
                let clean = !path.is_empty()
                    && !path.contains('\\')
                    && !path.chars().any(char::is_control)
                    && path.split('/').all(|c| !matches!(c, "" | "." | ".."));
                assert!(clean, "{:?} normalized to {path:?}", r.filename);
            }
            &r.options
        }
        Packet::Oack { options } => options,
        _ => return,
    };
    for limits in &TFTP_LIMITS {
        let Ok(n) = tftp::negotiate(options, limits) else {
            continue;
        };
        // Without a blksize option the transfer uses RFC 1350's 512, whatever the limit.
        let max_blksize = limits.max_blksize.clamp(8, MAX_BLKSIZE).max(512);
        assert!(
            (8..=max_blksize).contains(&n.blksize),
            "blksize {} with {limits:?}",
            n.blksize
        );
        assert!(n.windowsize >= 1, "windowsize 0 with {limits:?}");
        let window = usize::from(n.windowsize) * usize::from(n.blksize);
        assert!(
            n.windowsize == 1 || window <= limits.max_window_bytes,
            "window of {window} bytes with {limits:?}"
        );
        assert!(n.timeout.is_none_or(|t| t >= 1), "timeout 0 granted");
        for (name, value) in n.oack(Some(u64::MAX)) {
            assert!(
                value.parse::<u64>().is_ok(),
                "OACK option {name} has value {value:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// SMBIOS

/// Input layout: `[n][flags][n bytes of entry point][structure table]`. Flag bit 0 repairs
/// the entry point's checksums first, so that mutations get past them into the table walk
/// and smbioslib. Besides [`smbios::parse`], the whole input also goes through
/// `parse_entry_point` and the table through `walk`.
pub fn smbios(data: &[u8]) {
    let _ = smbios::parse_entry_point(data);
    let (ep_len, flags, rest) = match data {
        [n, f, rest @ ..] => (usize::from(*n).min(rest.len()), *f, rest),
        _ => return,
    };
    let (entry_point, table) = rest.split_at(ep_len);
    let mut entry_point = entry_point.to_vec();
    if flags & 1 != 0 {
        repair_checksums(&mut entry_point);
    }
    if let Ok(spans) = smbios::walk(table) {
        let mut next = 0;
        for s in &spans {
            assert!(
                s.start == next && s.start + 4 <= s.end && s.end <= table.len(),
                "structure span {s:?} after offset {next} in a {}-byte table",
                table.len()
            );
            next = s.end;
        }
    }
    let raw = RawSmbios {
        entry_point,
        table: table.to_vec(),
    };
    let Ok(info) = smbios::parse(&raw) else {
        return;
    };
    let ep = smbios::parse_entry_point(&raw.entry_point).expect("parse accepted it");
    assert_eq!((info.major, info.minor), (ep.major, ep.minor));
    if matches!(ep.kind, EntryPointKind::Bits32 | EntryPointKind::Legacy) {
        assert!(raw.table.len() >= ep.table_len, "short table accepted");
    }
}

/// Makes every checksum of a `_SM_`, `_SM3_` or `_DMI_` entry point add up, as firmware
/// would have computed them.
fn repair_checksums(ep: &mut [u8]) {
    let fix = |ep: &mut [u8], range: std::ops::Range<usize>, at: usize| {
        if range.end > ep.len() {
            return;
        }
        ep[at] = 0;
        let sum = ep[range].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        ep[at] = sum.wrapping_neg();
    };
    if ep.starts_with(b"_SM3_") && ep.len() >= 0x18 {
        let len = usize::from(ep[6]).clamp(0x18, ep.len());
        fix(ep, 0..len, 5);
    } else if ep.starts_with(b"_SM_") && ep.len() >= 0x1F {
        // The intermediate (_DMI_) checksum is inside the whole one: fix it first.
        fix(ep, 0x10..0x1F, 0x15);
        let len = usize::from(ep[5]).clamp(0x1F, ep.len());
        fix(ep, 0..len, 4);
    } else if ep.starts_with(b"_DMI_") {
        fix(ep, 0..0x0F, 5);
    }
}

// ---------------------------------------------------------------------------------------
// Kernel command line

/// The bytes as a command line (lossily: the kernel's is bytes, the agent reads it as
/// UTF-8 the same way); a parsed configuration holds only values that print and parse
/// back to themselves, and never shows the token.
pub fn cmdline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (cfg, problems) = config::parse(&text);
    for p in &problems {
        let _ = (p.to_string(), p.severity());
    }
    for (i, s) in cfg.servers.iter().enumerate() {
        assert_ne!(s.port, 0, "server {s} has port 0");
        assert_eq!(
            s.to_string().parse::<ServerAddr>().as_ref(),
            Ok(s),
            "server address does not round-trip"
        );
        assert!(!cfg.servers[..i].contains(s), "server {s} listed twice");
    }
    if let Some(mac) = cfg.boot_mac {
        assert_eq!(mac.to_string().parse().ok(), Some(mac));
    }
    for ip in &cfg.static_ips {
        let max = if ip.address.is_ipv4() { 32 } else { 128 };
        assert!(ip.prefix_len <= max, "{ip:?}");
        assert!(
            ip.gateway
                .is_none_or(|g| g.is_ipv4() == ip.address.is_ipv4()),
            "{ip:?}"
        );
    }
    if let Some(token) = &cfg.token {
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }
    assert_eq!(
        config::parse(&text),
        (cfg, problems),
        "parse is not a function"
    );
}

// ---------------------------------------------------------------------------------------
// Registration

/// The runtime and the embedded store every registration runs on, made once per process:
/// opening a redb database costs far more than a registration. Each input starts by emptying
/// the store, so inputs do not see each other. The database file is unlinked as soon as it is
/// open (the store keeps its file handle), so nothing is left behind when the process ends.
struct RegisterEnv {
    runtime: tokio::runtime::Runtime,
    store: Arc<EmbeddedStore>,
}

fn register_env() -> &'static Mutex<RegisterEnv> {
    static ENV: OnceLock<Mutex<RegisterEnv>> = OnceLock::new();
    ENV.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // tmpfs when there is one: every commit is an fsync.
        let shm = std::path::Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("siderite-fuzz-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("temporary directory");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open the embedded store"));
        drop(dir);
        Mutex::new(RegisterEnv { runtime, store })
    })
}

pub fn register(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let requests = if mode & 1 == 0 {
        let Ok(req) = RegisterRequest::decode(rest) else {
            return;
        };
        vec![req.clone(), req]
    } else {
        build_requests(&mut Reader(rest))
    };
    // A panic while the lock was held (a failed replay in a test) leaves the store to be
    // emptied like any other.
    let env = register_env().lock().unwrap_or_else(|e| e.into_inner());
    let store: Arc<dyn Store> = env.store.clone();
    env.runtime.block_on(async {
        clear(store.as_ref()).await;
        register_all(store, requests, mode & 1 == 0, mode & 2 == 0).await;
    });
}

/// The one join token the register target's store knows.
const FUZZ_JOIN_TOKEN: &str = "fuzzjt.0123456789abcdef0123456789abcdef";

async fn clear(store: &dyn Store) {
    let keys = store.list("").await.expect("list the store");
    if keys.is_empty() {
        return;
    }
    let txn = keys
        .into_iter()
        .fold(Txn::new(), |txn, (key, _)| txn.delete(key));
    store.txn(txn).await.expect("empty the store");
}

/// As the gRPC handler: the join token first, then validate and register. With
/// `with_token` the request carries the valid join token, else whatever the input gave.
async fn register_all(
    store: Arc<dyn Store>,
    requests: Vec<RegisterRequest>,
    same_twice: bool,
    with_token: bool,
) {
    let (id, secret) = FUZZ_JOIN_TOKEN.split_once('.').unwrap();
    let token = siderite_server::auth::StoredJoinToken {
        id: id.into(),
        secret: secret.into(),
        description: String::new(),
        created: "2026-01-01T00:00:00Z".into(),
        expires: None,
        revoked: None,
        boot: true,
    };
    store
        .txn(Txn::new().put(
            format!("{}{id}", siderite_server::auth::JOIN_PREFIX),
            serde_json::to_vec(&token).unwrap(),
        ))
        .await
        .expect("store the join token");
    let auth = siderite_server::auth::Auth::new(store.clone());
    let auto_accept: AutoAccept = "manufacturer=Siderite*,serial=SIM-1*".parse().unwrap();
    let registry = Registry::new(
        store.clone(),
        Arc::new(Sessions::default()),
        auto_accept.clone(),
    );
    let limits = Limits::default();
    let mut results = Vec::new();
    for mut req in requests {
        let before = snapshot(store.as_ref()).await;
        if with_token {
            req.join_token = FUZZ_JOIN_TOKEN.into();
        }
        let admitted = auth.check_join_token(&req.join_token).await.is_ok();
        assert_eq!(
            admitted,
            req.join_token == FUZZ_JOIN_TOKEN,
            "join token {:?} judged wrongly",
            req.join_token
        );
        if !admitted {
            assert_eq!(snapshot(store.as_ref()).await, before, "refusal wrote");
            results.push(None);
            continue;
        }
        let v = match registry::validate(req, &limits) {
            Ok(v) => v,
            Err(_) => {
                assert_eq!(snapshot(store.as_ref()).await, before, "refusal wrote");
                results.push(None);
                continue;
            }
        };
        let r = match registry.register(&v, Some("192.0.2.1:4000".into())).await {
            Ok(r) => r,
            Err(e) => {
                assert_eq!(snapshot(store.as_ref()).await, before, "failure wrote: {e}");
                results.push(None);
                continue;
            }
        };
        let stored = model::load(store.as_ref(), r.server_id)
            .await
            .expect("registered server loads")
            .expect("registered server exists");
        let status = stored.server.status.clone().unwrap_or_default();
        assert_eq!(status.boot_id, v.boot_id);
        assert_eq!(status.agent_version, v.agent_version);
        assert_eq!(status.hardware.as_ref(), Some(&v.hardware));
        assert_eq!(model::name(&stored.server), r.server_id.to_string());
        assert!(
            registry
                .check_session(r.server_id, &v.boot_id, &r.session_token)
                .await
                .unwrap(),
            "session secret of {} not stored",
            r.server_id
        );
        for mac in &v.macs {
            let ix = store.get(&model::mac_index_key(mac)).await.unwrap();
            assert_eq!(
                ix.map(|ix| ix.value),
                Some(r.server_id.to_string().into_bytes()),
                "MAC {mac} is not indexed to {}",
                r.server_id
            );
        }
        if r.created {
            assert_eq!(r.accepted, auto_accept.matches(&v.hardware));
            let usable = v.smbios.filter(|u| u.verdict() == UuidVerdict::Usable);
            match usable {
                Some(u) if !r.identity_issued => {
                    assert_eq!(r.server_id, ServerId::from_smbios(u))
                }
                Some(_) => {}
                None => assert!(r.identity_issued, "identity not issued without a UUID"),
            }
        }
        results.push(Some((r, v)));
    }
    check_store(store.as_ref()).await;
    if same_twice {
        // The same request twice is one machine, found again by its UUID or its NICs.
        if let [Some((first, v)), Some((second, _))] = &results[..] {
            let findable =
                v.smbios.is_some_and(|u| u.verdict() == UuidVerdict::Usable) || !v.macs.is_empty();
            if findable {
                assert_eq!(first.server_id, second.server_id, "re-registration moved");
                assert!(!second.created && !second.new_boot, "{second:?}");
            }
        }
    }
}

async fn snapshot(store: &dyn Store) -> BTreeMap<String, Versioned> {
    store.list("").await.unwrap().into_iter().collect()
}

/// Every server decodes; every UUID and MAC index entry, and every session secret, belongs
/// to a stored server.
async fn check_store(store: &dyn Store) {
    let all = snapshot(store).await;
    let servers: Vec<ServerId> = all
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(model::SERVERS_PREFIX)?;
            model::decode(&v.value, v.revision).unwrap_or_else(|e| panic!("{k}: {e}"));
            Some(id.parse().unwrap_or_else(|e| panic!("{k}: {e}")))
        })
        .collect();
    for (k, v) in &all {
        let owner = if k.starts_with("index/uuid/") || k.starts_with("index/mac/") {
            let text = String::from_utf8_lossy(&v.value);
            text.parse::<ServerId>()
                .unwrap_or_else(|e| panic!("{k}: {e}"))
        } else if let Some(id) = k.strip_prefix("secrets/session/") {
            id.parse().unwrap_or_else(|e| panic!("{k}: {e}"))
        } else {
            continue;
        };
        assert!(servers.contains(&owner), "{k} names a missing server");
    }
}

/// Bytes read as choices; zeros once they run out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn pick<T: Clone>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()].clone()
    }

    /// Up to 255 bytes, lossily as text.
    fn text(&mut self) -> String {
        let n = usize::from(self.byte()).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

const UUIDS: &[&str] = &[
    "51515151-0000-4000-8000-000000000001",
    "51515151-0000-4000-8000-000000000002",
    // The first again, as some firmware prints it.
    "51515151-0000-4000-8000-000000000001",
    "{51515151-0000-4000-8000-000000000001}",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
    "not a uuid",
    "",
];
const MACS: &[&str] = &[
    "52:54:00:00:00:01",
    "52:54:00:00:00:02",
    "52-54-00-00-00-01",
    "00:00:00:00:00:00",
    "",
    "52:54:00:00:00:zz",
];
const SERIALS: &[&str] = &["SIM-1-000001", "SIM-2-000002", "To be filled by O.E.M.", ""];
const BOOT_IDS: &[&str] = &["boot-1", "boot-2", "boot-3", " boot-1 ", ""];

fn build_requests(r: &mut Reader<'_>) -> Vec<RegisterRequest> {
    let n = 1 + usize::from(r.byte() % 4);
    (0..n).map(|_| build_request(r)).collect()
}

fn build_request(r: &mut Reader<'_>) -> RegisterRequest {
    let boot_id = match r.byte() % 8 {
        7 => r.text(),
        b => BOOT_IDS[usize::from(b) % BOOT_IDS.len()].to_string(),
    };
    let server_id = match r.byte() % 4 {
        0 => String::new(),
        1 => ServerId::from_smbios(UUIDS[0].parse().unwrap()).to_string(),
        2 => r.text(),
        _ => "51515151-0000-4000-8000-0000000000ff".into(),
    };
    let agent_version = match r.byte() % 4 {
        0 => "x".repeat(65),
        _ => "0.1.0".into(),
    };
    let hardware = (!r.byte().is_multiple_of(8)).then(|| {
        let mut hw: Hardware = fake::hardware(1, u32::from(r.byte() % 3));
        hw.system = match r.byte() % 4 {
            0 => None,
            _ => Some(System {
                uuid: r.pick(UUIDS).into(),
                manufacturer: "Siderite Sim".into(),
                serial: r.pick(SERIALS).into(),
                ..hw.system.unwrap_or_default()
            }),
        };
        hw.nics = (0..r.byte() % 4)
            .map(|i| Nic {
                name: format!("eth{i}"),
                mac: r.pick(MACS).into(),
                r#virtual: r.byte().is_multiple_of(4),
                ..Default::default()
            })
            .collect();
        if r.byte().is_multiple_of(4) {
            hw.disks.push(BlockDevice {
                name: r.text(),
                serial: r.text(),
                ..Default::default()
            });
        }
        hw
    });
    RegisterRequest {
        boot_id,
        agent_version,
        hardware,
        server_id,
        ..Default::default()
    }
}
