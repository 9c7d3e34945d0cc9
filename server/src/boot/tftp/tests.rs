//! Loopback tests: the real server against the client in `client.rs` and raw sockets.
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{fetch, ClientError, ClientOptions, Fetched};
use super::packet::{ack_packet, parse, Packet, Request, TftpOption};
use super::*;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), TftpError>>,
}

impl Running {
    async fn stop(mut self) -> Duration {
        let t = Instant::now();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops within 5 s")
            .expect("server task")
            .expect("server result");
        t.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config() -> TftpConfig {
    TftpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        timeout: Duration::from_millis(300),
        retries: 3,
        ..TftpConfig::default()
    }
}

async fn start(config: TftpConfig, source: Arc<dyn FileSource>) -> Running {
    let server = TftpServer::bind(config, source).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn start_dir(config: TftpConfig, root: &Path) -> Running {
    start(config, Arc::new(DirSource::new(root).unwrap())).await
}

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn assert_same(got: &Fetched, want: &[u8]) {
    assert_eq!(got.bytes, want.len() as u64);
    assert_eq!(got.data.len(), want.len());
    assert_eq!(sha(&got.data), sha(want));
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(800),
        ..ClientOptions::default()
    }
}

async fn raw_socket(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).await.unwrap()
}

fn rrq(name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    Packet::Rrq(Request {
        filename: name,
        mode,
        options: options
            .iter()
            .map(|&(name, value)| TftpOption { name, value })
            .collect(),
    })
    .to_bytes()
}

async fn recv(sock: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(within, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

fn error_of(bytes: &[u8]) -> (u16, String) {
    match parse(bytes) {
        Ok(Packet::Error { code, message }) => (code, message.into_owned()),
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

fn data_of(bytes: &[u8]) -> (u16, Vec<u8>) {
    match parse(bytes) {
        Ok(Packet::Data { block, data }) => (block, data.to_vec()),
        other => panic!("expected DATA, got {other:?}"),
    }
}

async fn request_error(server: SocketAddr, packet: &[u8]) -> Option<(u16, String)> {
    let sock = raw_socket("127.0.0.1").await;
    sock.send_to(packet, server).await.unwrap();
    recv(&sock, Duration::from_millis(500))
        .await
        .map(|(b, _)| error_of(&b))
}

#[tokio::test]
async fn default_blksize_files_of_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 511, 512, 1024, 3000];
    for &n in &sizes {
        std::fs::write(dir.path().join(format!("f{n}")), pseudo_random(n, n as u64)).unwrap();
    }
    let server = start_dir(config(), dir.path()).await;
    for &n in &sizes {
        let got = fetch(server.addr, &format!("f{n}"), &opts()).await.unwrap();
        assert_same(&got, &pseudo_random(n, n as u64));
        // A file that fills its last block ends with an empty one.
        assert_eq!(got.blocks, n as u64 / 512 + 1, "blocks for {n} bytes");
        assert!(got.oack.is_empty());
        assert_eq!(got.duplicates, 0);
    }
    server.stop().await;
}

#[tokio::test]
async fn blksize_1468_with_tsize() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(200_000, 7);
    std::fs::write(dir.path().join("undionly.kpxe"), &data).unwrap();
    let server = start_dir(config(), dir.path()).await;
    let o = ClientOptions {
        blksize: Some(1468),
        tsize: true,
        ..opts()
    };
    // PXE clients send a leading slash.
    let got = fetch(server.addr, "/undionly.kpxe", &o).await.unwrap();
    assert_same(&got, &data);
    assert_eq!(got.blksize, 1468);
    assert_eq!(got.tsize, Some(200_000));
    assert_eq!(
        got.oack,
        vec![
            ("blksize".to_string(), "1468".to_string()),
            ("tsize".to_string(), "200000".to_string())
        ]
    );
    assert_eq!(got.blocks, 200_000 / 1468 + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_4_blksize_8192_five_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 * 1024 * 1024 + 123, 42);
    std::fs::write(dir.path().join("initrd"), &data).unwrap();
    let server = start_dir(config(), dir.path()).await;
    let o = ClientOptions {
        blksize: Some(8192),
        windowsize: Some(4),
        tsize: true,
        ..opts()
    };
    let got = fetch(server.addr, "initrd", &o).await.unwrap();
    assert_same(&got, &data);
    assert_eq!((got.blksize, got.windowsize), (8192, 4));
    assert_eq!(got.tsize, Some(data.len() as u64));
    server.stop().await;
}

/// Each 512-byte block starts with its own number, so a misplaced block shows.
fn numbered_blocks(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(512).enumerate() {
        let tag = (i as u64).to_le_bytes();
        let n = chunk.len().min(8);
        chunk[..n].copy_from_slice(&tag[..n]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over_past_65535() {
    // 33 MiB at 512 bytes a block is 67584 blocks: the wire number wraps to 0.
    let len = 33 * 1024 * 1024 + 100;
    let data = numbered_blocks(len);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.img"), &data).unwrap();
    let server = start_dir(config(), dir.path()).await;
    let t = Instant::now();
    let got = fetch(server.addr, "big.img", &opts()).await.unwrap();
    let lockstep = t.elapsed();
    assert_same(&got, &data);
    assert_eq!(got.blocks, (len / 512 + 1) as u64);
    assert!(got.blocks > 65536);
    // The same across the wrap with a window in flight.
    let o = ClientOptions {
        windowsize: Some(8),
        ..opts()
    };
    let got = fetch(server.addr, "big.img", &o).await.unwrap();
    assert_same(&got, &data);
    eprintln!("33 MiB at blksize 512: lockstep {lockstep:?}");
    server.stop().await;
}

#[tokio::test]
async fn lost_data_is_resent_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(20_000, 3);
    std::fs::write(dir.path().join("f"), &data).unwrap();
    let server = start_dir(config(), dir.path()).await;
    let o = ClientOptions {
        drop_once: HashSet::from([3, 10]),
        ..opts()
    };
    let t = Instant::now();
    let got = fetch(server.addr, "f", &o).await.unwrap();
    assert_same(&got, &data);
    // Each loss costs one server timeout (300 ms): nothing else resends.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn lost_data_in_a_window_is_resent_from_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(100_000, 4);
    std::fs::write(dir.path().join("f"), &data).unwrap();
    let mut cfg = config();
    // Long enough that only the client's gap ACK can explain a quick recovery.
    cfg.timeout = Duration::from_secs(3);
    let server = start_dir(cfg, dir.path()).await;
    let o = ClientOptions {
        blksize: Some(1024),
        windowsize: Some(4),
        drop_once: HashSet::from([5, 6, 50]),
        ..opts()
    };
    let t = Instant::now();
    let got = fetch(server.addr, "f", &o).await.unwrap();
    assert_same(&got, &data);
    assert!(got.duplicates > 0);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn unanswered_data_is_resent_and_duplicate_acks_are_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(3000, 5);
    std::fs::write(dir.path().join("f"), &data).unwrap();
    let mut cfg = config();
    // Leaves room to see that nothing comes before the timeout, even on a busy machine.
    cfg.timeout = Duration::from_millis(600);
    let server = start_dir(cfg, dir.path()).await;
    let sock = raw_socket("127.0.0.1").await;
    sock.send_to(&rrq("f", "octet", &[]), server.addr)
        .await
        .unwrap();
    let (b, tid) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_ne!(tid, server.addr, "a transfer has its own TID");
    assert_eq!(data_of(&b), (1, data[..512].to_vec()));
    // No ACK: the server sends block 1 again after its timeout.
    let (b, from) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!((from, data_of(&b).0), (tid, 1));
    // ACK 1 three times: block 2 comes once (no Sorcerer's Apprentice).
    for _ in 0..3 {
        sock.send_to(&ack_packet(1), tid).await.unwrap();
    }
    let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!(data_of(&b).0, 2);
    assert!(
        recv(&sock, Duration::from_millis(200)).await.is_none(),
        "duplicate ACKs were answered with data"
    );
    // After `retries` (3) unanswered resends, the server gives up with an ERROR.
    let mut resends = 0;
    loop {
        let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
        match parse(&b).unwrap() {
            Packet::Data { block: 2, .. } => resends += 1,
            Packet::Error { code: 0, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resends, 3);
    server.stop().await;
}

#[tokio::test]
async fn write_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dir(config(), dir.path()).await;
    let wrq = Packet::Wrq(Request {
        filename: "upload",
        mode: "octet",
        options: vec![],
    })
    .to_bytes();
    let (code, msg) = request_error(server.addr, &wrq).await.unwrap();
    assert_eq!(code, ErrorCode::AccessViolation as u16, "{msg}");
    assert!(!dir.path().join("upload").exists());
    server.stop().await;
}

#[tokio::test]
async fn paths_cannot_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("pub")).unwrap();
    std::fs::write(root.join("pub/ok"), b"ok").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape-link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("escape-dir")).unwrap();
    std::os::unix::fs::symlink("pub/ok", root.join("inner-link")).unwrap();
    let server = start_dir(config(), root).await;

    let code = |e: ClientError| e.code();
    for path in [
        "../../etc/passwd",
        "pub/../../etc/passwd",
        "..\\..\\etc\\passwd",
        "escape-link",
        "escape-dir/secret",
        "pub",
    ] {
        let e = fetch(server.addr, path, &opts()).await.unwrap_err();
        assert_eq!(code(e), Some(ErrorCode::AccessViolation as u16), "{path}");
    }
    // An absolute path is looked up under the root, never at /.
    let e = fetch(server.addr, "/etc/passwd", &opts())
        .await
        .unwrap_err();
    assert_eq!(code(e), Some(ErrorCode::FileNotFound as u16));
    std::fs::create_dir(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), b"root's own").unwrap();
    let got = fetch(server.addr, "/etc/passwd", &opts()).await.unwrap();
    assert_eq!(got.data, b"root's own");
    let got = fetch(server.addr, "inner-link", &opts()).await.unwrap();
    assert_eq!(got.data, b"ok");
    server.stop().await;
}

#[tokio::test]
async fn missing_file_is_error_1() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dir(config(), dir.path()).await;
    let e = fetch(server.addr, "ipxe.efi", &opts()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FileNotFound as u16), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_do_not_disturb_a_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(2 * 1024 * 1024, 9);
    std::fs::write(dir.path().join("f"), &data).unwrap();
    std::fs::write(dir.path().join("small"), b"small").unwrap();
    let server = start_dir(config(), dir.path()).await;
    let addr = server.addr;

    let good = tokio::spawn(async move { fetch(addr, "f", &opts()).await });

    let illegal = ErrorCode::IllegalOperation as u16;
    let negotiation = ErrorCode::OptionNegotiation as u16;
    let mut dup = rrq("small", "octet", &[("blksize", "512")]);
    dup.extend_from_slice(b"BLKSIZE\x001024\x00");
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("empty", vec![], None),
        ("one byte", vec![0], None),
        ("unknown opcode", vec![0, 9, 1, 2, 3], None),
        ("stray ACK", ack_packet(1).to_vec(), None),
        ("stray ERROR", vec![0, 5, 0, 0, 0], None),
        ("RRQ without NUL", b"\x00\x01small".to_vec(), Some(illegal)),
        (
            "RRQ without mode",
            b"\x00\x01small\x00".to_vec(),
            Some(illegal),
        ),
        ("duplicate option", dup, Some(illegal)),
        (
            "option without value",
            rrq("small", "octet", &[("blksize", "512")])[..24].to_vec(),
            Some(illegal),
        ),
        (
            "oversized request",
            rrq(&"a".repeat(600), "octet", &[]),
            Some(illegal),
        ),
        (
            "not UTF-8",
            b"\x00\x01sm\xffall\x00octet\x00".to_vec(),
            Some(illegal),
        ),
        (
            "blksize not a number",
            rrq("small", "octet", &[("blksize", "abc")]),
            Some(negotiation),
        ),
        (
            "blksize too small",
            rrq("small", "octet", &[("blksize", "4")]),
            Some(negotiation),
        ),
        (
            "timeout zero",
            rrq("small", "octet", &[("timeout", "0")]),
            Some(negotiation),
        ),
        (
            "windowsize huge",
            rrq("small", "octet", &[("windowsize", "99999")]),
            Some(negotiation),
        ),
        ("mode mail", rrq("small", "mail", &[]), Some(illegal)),
    ];
    for (what, packet, want) in cases {
        let got = request_error(addr, &packet).await.map(|(c, _)| c);
        assert_eq!(got, want, "{what}");
    }
    // A burst of random junk, all of it dropped or refused.
    let junk = raw_socket("127.0.0.1").await;
    for i in 0..500u64 {
        let len = (i % 700) as usize;
        let mut p = pseudo_random(len, i + 1);
        if i % 2 == 0 && len >= 2 {
            p[0] = 0;
            p[1] = (i % 7) as u8;
        }
        junk.send_to(&p, addr).await.unwrap();
    }

    let got = good.await.unwrap().unwrap();
    assert_same(&got, &data);
    // And the server still answers new requests.
    let got = fetch(addr, "small", &opts()).await.unwrap();
    assert_eq!(got.data, b"small");
    server.stop().await;
}

#[tokio::test]
async fn session_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), pseudo_random(10_000, 1)).unwrap();
    let mut cfg = config();
    cfg.max_sessions = 3;
    cfg.per_client_sessions = 2;
    cfg.timeout = Duration::from_secs(2);
    let server = start_dir(cfg, dir.path()).await;

    // Starts a transfer and leaves it waiting for an ACK.
    async fn hold(server: SocketAddr, ip: &str) -> (UdpSocket, Result<SocketAddr, (u16, String)>) {
        let sock = raw_socket(ip).await;
        sock.send_to(&rrq("f", "octet", &[]), server).await.unwrap();
        let (b, from) = recv(&sock, Duration::from_secs(1)).await.unwrap();
        let r = match parse(&b) {
            Ok(Packet::Data { block: 1, .. }) => Ok(from),
            _ => Err(error_of(&b)),
        };
        (sock, r)
    }

    let (a, ra) = hold(server.addr, "127.0.0.1").await;
    let (_b, rb) = hold(server.addr, "127.0.0.1").await;
    assert!(ra.is_ok() && rb.is_ok());
    let (_c, rc) = hold(server.addr, "127.0.0.1").await;
    assert_eq!(rc.unwrap_err().1, "too many transfers from this address");
    let (_d, rd) = hold(server.addr, "127.0.0.2").await;
    assert!(rd.is_ok(), "another address still gets a transfer");
    let (_e, re) = hold(server.addr, "127.0.0.3").await;
    assert_eq!(re.unwrap_err().1, "server busy: too many transfers");

    // Cancelling one transfer frees its slot.
    let tid = ra.unwrap();
    a.send_to(
        &super::packet::error_packet(ErrorCode::NotDefined, "cancel"),
        tid,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_f, rf) = hold(server.addr, "127.0.0.3").await;
    assert!(rf.is_ok(), "{rf:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_running_transfers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), pseudo_random(10_000, 1)).unwrap();
    let mut cfg = config();
    cfg.timeout = Duration::from_secs(30);
    let server = start_dir(cfg, dir.path()).await;
    let sock = raw_socket("127.0.0.1").await;
    sock.send_to(&rrq("f", "octet", &[]), server.addr)
        .await
        .unwrap();
    let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!(data_of(&b).0, 1);
    let took = server.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!(error_of(&b), (0, "server shutting down".to_string()));
}

#[tokio::test]
async fn a_resent_rrq_starts_one_transfer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), pseudo_random(10_000, 1)).unwrap();
    let mut cfg = config();
    cfg.timeout = Duration::from_secs(2);
    let server = start_dir(cfg, dir.path()).await;
    let sock = raw_socket("127.0.0.1").await;
    let req = rrq("f", "octet", &[]);
    sock.send_to(&req, server.addr).await.unwrap();
    sock.send_to(&req, server.addr).await.unwrap();
    let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!(data_of(&b).0, 1);
    assert!(
        recv(&sock, Duration::from_millis(300)).await.is_none(),
        "a second transfer answered"
    );
    server.stop().await;
}

#[tokio::test]
async fn pxe_tsize_probe_then_the_real_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(3000, 11);
    std::fs::write(dir.path().join("pxelinux.0"), &data).unwrap();
    let server = start_dir(config(), dir.path()).await;
    let sock = raw_socket("127.0.0.1").await;
    sock.send_to(&rrq("pxelinux.0", "octet", &[("tsize", "0")]), server.addr)
        .await
        .unwrap();
    let (b, tid) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    let Ok(Packet::Oack { options }) = parse(&b) else {
        panic!("expected an OACK")
    };
    assert_eq!(
        options,
        vec![TftpOption {
            name: "tsize",
            value: "3000"
        }]
    );
    // The ROM cancels, then asks again from the same port.
    sock.send_to(
        &super::packet::error_packet(ErrorCode::OptionNegotiation, "tsize probe"),
        tid,
    )
    .await
    .unwrap();
    sock.send_to(
        &rrq("pxelinux.0", "octet", &[("blksize", "1456")]),
        server.addr,
    )
    .await
    .unwrap();
    let (b, tid2) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_ne!(tid, tid2);
    assert!(matches!(parse(&b), Ok(Packet::Oack { .. })));
    sock.send_to(&ack_packet(0), tid2).await.unwrap();
    let mut got = Vec::new();
    loop {
        let (b, from) = recv(&sock, Duration::from_secs(1)).await.unwrap();
        assert_eq!(from, tid2);
        let (block, d) = data_of(&b);
        got.extend_from_slice(&d);
        sock.send_to(&ack_packet(block), tid2).await.unwrap();
        if d.len() < 1456 {
            break;
        }
    }
    assert_eq!(got, data);
    server.stop().await;
}

#[tokio::test]
async fn netascii_mode_converts_line_ends() {
    let mem = Arc::new(MemSource::new());
    mem.insert("menu.txt", Bytes::from_static(b"a\nb\rc"))
        .unwrap();
    let server = start(config(), mem).await;
    let o = ClientOptions {
        mode: "NetASCII".into(),
        blksize: Some(1024),
        tsize: true,
        ..opts()
    };
    let got = fetch(server.addr, "menu.txt", &o).await.unwrap();
    assert_eq!(got.data, b"a\r\nb\r\0c");
    // The converted size is not known up front, so tsize is not acknowledged.
    assert_eq!(got.oack, vec![("blksize".to_string(), "1024".to_string())]);
    server.stop().await;
}

#[tokio::test]
async fn memory_source_with_clamped_options() {
    let mem = Arc::new(MemSource::new());
    let data = pseudo_random(1024 * 1024, 12);
    mem.insert("boot.ipxe", Bytes::from(data.clone())).unwrap();
    let mut cfg = config();
    cfg.max_windowsize = 4;
    let server = start(cfg, mem).await;
    let o = ClientOptions {
        blksize: Some(65535),
        windowsize: Some(100),
        timeout_option: Some(2),
        ..opts()
    };
    let got = fetch(server.addr, "boot.ipxe", &o).await.unwrap();
    assert_same(&got, &data);
    assert_eq!((got.blksize, got.windowsize), (65464, 4));
    assert!(got.oack.contains(&("timeout".to_string(), "2".to_string())));
    server.stop().await;
}

#[tokio::test]
async fn unknown_options_alone_get_plain_data() {
    let mem = Arc::new(MemSource::new());
    mem.insert("f", Bytes::from_static(b"x")).unwrap();
    let server = start(config(), mem).await;
    let sock = raw_socket("127.0.0.1").await;
    sock.send_to(&rrq("f", "octet", &[("multicast", "")]), server.addr)
        .await
        .unwrap();
    let (b, _) = recv(&sock, Duration::from_secs(1)).await.unwrap();
    assert_eq!(data_of(&b), (1, b"x".to_vec()));
    server.stop().await;
}

#[tokio::test]
async fn serves_over_ipv6() {
    let mem = Arc::new(MemSource::new());
    let data = pseudo_random(5000, 13);
    mem.insert("f", Bytes::from(data.clone())).unwrap();
    let mut cfg = config();
    cfg.listen = "[::1]:0".parse().unwrap();
    let server = start(cfg, mem).await;
    let o = ClientOptions {
        blksize: Some(1428),
        ..opts()
    };
    let got = fetch(server.addr, "f", &o).await.unwrap();
    assert_same(&got, &data);
    assert!(got.server_tid.unwrap().is_ipv6());
    server.stop().await;
}

#[tokio::test]
async fn bad_configs_are_refused() {
    let mem: Arc<dyn FileSource> = Arc::new(MemSource::new());
    for cfg in [
        TftpConfig {
            max_sessions: 0,
            ..config()
        },
        TftpConfig {
            timeout: Duration::ZERO,
            ..config()
        },
        TftpConfig {
            max_blksize: 4,
            ..config()
        },
    ] {
        assert!(matches!(
            TftpServer::bind(cfg, mem.clone()).await,
            Err(TftpError::Config(_))
        ));
    }
}
