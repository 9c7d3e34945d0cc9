//! The executor against fake disks, fake power and a loopback HTTP server.
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use sha2::{Digest, Sha512};
use siderite::proto::agent::v1::{
    self as pb, agent_message, command, AgentMessage, Command, CommandAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::install::{hex, FakePower, KexecCall};
use crate::wipe::fake::{FakeOpener, MemDisk};
use crate::wipe::{Disk, FileOpener, WipeError};

const WAIT: Duration = Duration::from_secs(20);

fn timing() -> Timing {
    Timing {
        settle: Duration::from_millis(10),
        progress_interval: Duration::ZERO,
        send_timeout: Duration::from_secs(1),
        wipe_samples: 16,
    }
}

/// Counts opens, and can hold every disk's writes until the gate opens.
pub(crate) struct TestOpener {
    inner: Box<dyn DiskOpener>,
    opens: AtomicUsize,
    gate: Arc<AtomicBool>,
}

impl TestOpener {
    pub(crate) fn new(inner: impl DiskOpener + 'static) -> Arc<Self> {
        Arc::new(TestOpener {
            inner: Box::new(inner),
            opens: AtomicUsize::new(0),
            gate: Arc::new(AtomicBool::new(true)),
        })
    }
    pub(crate) fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
    pub(crate) fn hold(&self) {
        self.gate.store(false, Ordering::SeqCst);
    }
    pub(crate) fn release(&self) {
        self.gate.store(true, Ordering::SeqCst);
    }
}

impl DiskOpener for TestOpener {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.open(req)?;
        Ok(Box::new(GatedDisk {
            inner,
            gate: self.gate.clone(),
        }))
    }
}

struct GatedDisk {
    inner: Box<dyn Disk>,
    gate: Arc<AtomicBool>,
}

impl Disk for GatedDisk {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        while !self.gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.write_at(offset, buf)
    }
    fn discard(&mut self, offset: u64, len: u64, secure: bool) -> io::Result<()> {
        self.inner.discard(offset, len, secure)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn mem_disks() -> FakeOpener {
    let mut data = vec![0u8; 1 << 20];
    data[..4096].fill(0xab);
    FakeOpener::with([MemDisk::new("sda", data.clone()), MemDisk::new("sdb", data)])
}

/// A session stand-in: what the executor sends.
struct Session {
    rx: mpsc::Receiver<AgentMessage>,
    _attached: Attachment,
}

impl Session {
    fn open(ex: &Executor) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        Session {
            rx,
            _attached: ex.attach(tx),
        }
    }

    async fn next(&mut self) -> agent_message::Msg {
        let m = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message in time")
            .expect("the channel open");
        m.msg.expect("a message body")
    }

    /// The next ack; progress and logs on the way are kept in `seen`.
    async fn ack(&mut self, seen: &mut Vec<agent_message::Msg>) -> CommandAck {
        loop {
            match self.next().await {
                agent_message::Msg::Ack(a) => return a,
                other => seen.push(other),
            }
        }
    }

    async fn ack_only(&mut self) -> CommandAck {
        self.ack(&mut Vec::new()).await
    }
}

fn cmd(id: &str, kind: command::Kind) -> Command {
    Command {
        id: id.to_string(),
        kind: Some(kind),
    }
}

fn wipe(id: &str, mode: &str, disks: &[&str]) -> Command {
    cmd(
        id,
        command::Kind::Wipe(pb::Wipe {
            mode: mode.to_string(),
            disks: disks
                .iter()
                .map(|d| pb::WipeDisk {
                    name: d.to_string(),
                    ..Default::default()
                })
                .collect(),
        }),
    )
}

async fn submit(ex: &Executor, c: Command) {
    assert!(matches!(ex.submit(c).await, Routed::Handled));
}

async fn idle(ex: &Executor) {
    tokio::time::timeout(WAIT, ex.idle())
        .await
        .expect("the command ends in time");
}

fn sha(data: &[u8]) -> String {
    hex(&Sha512::digest(data))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_wipe_is_answered_from_the_table_not_run_again() {
    let opener = TestOpener::new(mem_disks());
    let ex = Executor::new(opener.clone(), Arc::new(FakePower::default()), timing());
    let mut s = Session::open(&ex);

    submit(&ex, wipe("w1", "zero", &["sda"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let done = s.ack_only().await;
    assert_eq!(
        (done.command_id.as_str(), done.state.as_str()),
        ("w1", "done")
    );
    idle(&ex).await;

    submit(&ex, wipe("w2", "zero", &["sda", "sdz"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let failed = s.ack_only().await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    idle(&ex).await;
    assert_eq!(opener.opens(), 3);

    // A new session (the old one dropped), and the server sends both again.
    drop(s);
    let mut s = Session::open(&ex);
    submit(&ex, wipe("w1", "zero", &["sda"])).await;
    assert_eq!(s.ack_only().await, done, "done stays done");
    submit(&ex, wipe("w2", "zero", &["sda", "sdz"])).await;
    assert_eq!(
        s.ack_only().await,
        failed,
        "failed stays failed, with its reasons"
    );
    assert_eq!(opener.opens(), 3, "nothing opened again");
    assert_eq!(ex.state("w1"), Some(CommandState::Finished(done)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_acks_report_every_disk() {
    let opener = TestOpener::new(mem_disks());
    let ex = Executor::new(opener.clone(), Arc::new(FakePower::default()), timing());
    let mut s = Session::open(&ex);

    submit(&ex, wipe("w", "zero", &["sda", "sdz", "sdb"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert_eq!(a.message, "1 of 3 disks not wiped: sdz: sdz not found");
    let names: Vec<&str> = a.disks.iter().map(|d| d.disk.as_str()).collect();
    assert_eq!(names, ["sda", "sdz", "sdb"]);
    let sda = &a.disks[0];
    assert!(sda.ok && sda.error.is_empty());
    assert_eq!(sda.mode, "zero");
    assert_eq!(sda.size_bytes, 1 << 20);
    assert_eq!(sda.bytes_written, 1 << 20);
    assert_eq!(sda.methods, ["write"]);
    assert!(sda.verified_bytes > 0 && sda.verified_regions > 0);
    let sdz = &a.disks[1];
    assert!(!sdz.ok);
    assert_eq!(
        (sdz.error.as_str(), sdz.mode.as_str()),
        ("sdz not found", "zero")
    );

    submit(&ex, wipe("all", "fast", &["sda", "sdb"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.state, "done");
    assert_eq!(a.message, "fast wipe verified on sda, sdb");
    assert!(a.disks.iter().all(|d| d.ok && d.mode == "fast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wipe_commands_fail_at_once_and_touch_nothing() {
    let opener = TestOpener::new(mem_disks());
    let ex = Executor::new(opener.clone(), Arc::new(FakePower::default()), timing());
    let mut s = Session::open(&ex);

    submit(&ex, wipe("m", "shred", &["sda"])).await;
    let a = s.ack_only().await;
    assert_eq!(
        (a.state.as_str(), a.message.as_str()),
        (
            "failed",
            "unknown wipe mode \"shred\" (fast, discard, zero, secure)"
        )
    );
    submit(&ex, wipe("n", "zero", &[])).await;
    let a = s.ack_only().await;
    assert_eq!(
        (a.state.as_str(), a.message.as_str()),
        ("failed", "no disks named")
    );
    submit(
        &ex,
        Command {
            id: "k".into(),
            kind: None,
        },
    )
    .await;
    assert_eq!(s.ack_only().await.state, "failed");
    assert_eq!(opener.opens(), 0);
    assert_eq!(ex.running(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_wipe_is_accepted_again_others_are_refused_and_it_outlives_the_session() {
    let opener = TestOpener::new(mem_disks());
    let ex = Executor::new(opener.clone(), Arc::new(FakePower::default()), timing());
    let mut s = Session::open(&ex);
    opener.hold();

    submit(&ex, wipe("long", "zero", &["sda"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    submit(&ex, wipe("long", "zero", &["sda"])).await;
    let again = s.ack_only().await;
    assert_eq!(
        (again.command_id.as_str(), again.state.as_str()),
        ("long", "accepted")
    );

    submit(&ex, wipe("other", "zero", &["sdb"])).await;
    let busy = s.ack_only().await;
    assert_eq!(
        (busy.state.as_str(), busy.message.as_str()),
        ("failed", "busy with command long")
    );
    submit(&ex, cmd("boot", command::Kind::Reboot(pb::Reboot {}))).await;
    assert_eq!(s.ack_only().await.message, "busy with command long");
    submit(
        &ex,
        cmd("wait", command::Kind::Wait(pb::Wait { reason: "x".into() })),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "done", "Wait still answers");

    // The session drops mid-wipe; the wipe goes on and finishes with nobody to tell.
    drop(s);
    opener.release();
    idle(&ex).await;
    assert_eq!(opener.opens(), 1);

    // The next session: the server sends the command again and learns the outcome.
    let mut s = Session::open(&ex);
    submit(&ex, wipe("long", "zero", &["sda"])).await;
    let done = s.ack_only().await;
    assert_eq!(done.state, "done", "{done:?}");
    assert_eq!(done.disks.len(), 1);
    assert_eq!(opener.opens(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_progress_goes_to_the_session() {
    let ex = Executor::new(
        TestOpener::new(mem_disks()),
        Arc::new(FakePower::default()),
        timing(),
    );
    let mut s = Session::open(&ex);
    submit(&ex, wipe("p", "zero", &["sda"])).await;
    let mut seen = Vec::new();
    s.ack(&mut seen).await;
    assert_eq!(s.ack(&mut seen).await.state, "done");
    let progress: Vec<&pb::Progress> = seen
        .iter()
        .filter_map(|m| match m {
            agent_message::Msg::Progress(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty());
    assert!(progress
        .iter()
        .all(|p| p.command_id == "p" && p.subject == "sda" && p.total_bytes > 0));
    assert!(progress
        .iter()
        .any(|p| p.done_bytes == p.total_bytes && p.total_bytes == 1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_and_power_off_ack_then_restart_only_as_pid1() {
    let power = Arc::new(FakePower::default());
    let ex = Executor::new(TestOpener::new(mem_disks()), power.clone(), timing());
    let mut s = Session::open(&ex);
    submit(&ex, cmd("r", command::Kind::Reboot(pb::Reboot {}))).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    assert_eq!(s.ack_only().await.state, "done");
    idle(&ex).await;
    submit(&ex, cmd("p", command::Kind::PowerOff(pb::PowerOff {}))).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    assert_eq!(s.ack_only().await.state, "done");
    idle(&ex).await;
    assert_eq!(power.restarts(), [Restart::Reboot, Restart::PowerOff]);

    let power = Arc::new(FakePower {
        not_pid1: true,
        ..Default::default()
    });
    let ex = Executor::new(TestOpener::new(mem_disks()), power.clone(), timing());
    let mut s = Session::open(&ex);
    submit(&ex, cmd("r", command::Kind::Reboot(pb::Reboot {}))).await;
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert!(a.message.starts_with("not PID 1"), "{}", a.message);
    assert!(power.restarts().is_empty());
}

#[test]
fn the_table_is_bounded_and_keeps_what_runs() {
    let mut t = Table::new();
    t.set("running", CommandState::Running);
    for i in 0..Table::CAP {
        t.set(&i.to_string(), CommandState::Finished(ack("x", "done", "")));
    }
    assert_eq!(t.states.len(), Table::CAP);
    assert_eq!(t.get("running"), Some(&CommandState::Running));
    assert!(t.get("0").is_none(), "the oldest finished ID went");
    assert!(t.get("1").is_some());
}

// ---- install ----------------------------------------------------------------------------

/// A loopback HTTP/1.1 server for a few files; counts requests.
struct Files {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Files {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Files {
    async fn serve(files: Vec<(&str, Vec<u8>)>) -> Files {
        let files: Arc<HashMap<String, Vec<u8>>> =
            Arc::new(files.into_iter().map(|(p, b)| (p.to_string(), b)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let files = files.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let resp = match files.get(&path) {
                        Some(body) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let mut r = head.into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec(),
                    };
                    for piece in resp.chunks(64 << 10) {
                        if sock.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Files { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn artifact(url: String, sha512: String) -> Option<pb::Artifact> {
    Some(pb::Artifact {
        url,
        sha512,
        ..Default::default()
    })
}

fn kexec(id: &str, kernel: Option<pb::Artifact>, initrd: Option<pb::Artifact>) -> Command {
    cmd(
        id,
        command::Kind::Install(pb::Install {
            mode: "kexec".into(),
            kernel,
            initrd,
            cmdline: "console=ttyS0 talos.platform=metal talos.config=http://10.0.0.1/c".into(),
            ..Default::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kexec_downloads_verifies_and_stages_kernel_initrd_and_cmdline() {
    let kernel = pattern((3 << 20) + 17, 1);
    let initrd = pattern(1 << 20, 2);
    let files = Files::serve(vec![
        ("/vmlinuz", kernel.clone()),
        ("/initramfs.xz", initrd.clone()),
    ])
    .await;
    let power = Arc::new(FakePower::default());
    let ex = Executor::new(TestOpener::new(mem_disks()), power.clone(), timing());
    let mut s = Session::open(&ex);

    let c = kexec(
        "k",
        artifact(files.url("/vmlinuz"), sha(&kernel).to_uppercase()),
        artifact(files.url("/initramfs.xz"), sha(&initrd)),
    );
    submit(&ex, c.clone()).await;
    let mut seen = Vec::new();
    assert_eq!(s.ack(&mut seen).await.state, "accepted");
    let done = s.ack(&mut seen).await;
    assert_eq!(done.state, "done", "{done:?}");
    assert_eq!(
        done.message,
        format!("kexec into {}", files.url("/vmlinuz"))
    );
    idle(&ex).await;

    assert_eq!(
        power.loaded(),
        [KexecCall {
            kernel,
            initrd: Some(initrd),
            cmdline: "console=ttyS0 talos.platform=metal talos.config=http://10.0.0.1/c".into(),
        }]
    );
    assert_eq!(power.restarts(), [Restart::Kexec]);
    let subjects: Vec<&str> = seen
        .iter()
        .filter_map(|m| match m {
            agent_message::Msg::Progress(p) if p.done_bytes == p.total_bytes => {
                Some(p.subject.as_str())
            }
            _ => None,
        })
        .collect();
    assert!(
        subjects.contains(&"kernel") && subjects.contains(&"initrd"),
        "{subjects:?}"
    );
    assert!(seen.iter().any(|m| matches!(m,
        agent_message::Msg::Log(l) if l.message.starts_with("kexec_file_load: kernel"))));

    // A replay tells the same, and downloads nothing.
    let hits = files.hits();
    submit(&ex, c).await;
    assert_eq!(s.ack_only().await, done);
    assert_eq!(files.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kexec_refuses_what_does_not_verify_and_never_restarts() {
    let kernel = pattern(100_000, 3);
    let initrd = pattern(50_000, 4);
    let files = Files::serve(vec![("/k", kernel.clone()), ("/i", initrd.clone())]).await;
    let power = Arc::new(FakePower::default());
    let ex = Executor::new(TestOpener::new(mem_disks()), power.clone(), timing());
    let mut s = Session::open(&ex);

    let wrong = sha(b"something else");
    submit(
        &ex,
        kexec(
            "bad-initrd",
            artifact(files.url("/k"), sha(&kernel)),
            artifact(files.url("/i"), wrong.clone()),
        ),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert_eq!(
        a.message,
        format!(
            "initrd sha512 mismatch: expected {wrong} got {}",
            sha(&initrd)
        )
    );
    idle(&ex).await;

    submit(
        &ex,
        kexec("missing", artifact(files.url("/nope"), sha(&kernel)), None),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(
        a.message,
        format!(
            "downloading the kernel from {}: HTTP 404",
            files.url("/nope")
        )
    );
    idle(&ex).await;

    submit(
        &ex,
        kexec("unverified", artifact(files.url("/k"), String::new()), None),
    )
    .await;
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert!(a.message.contains("without a sha512"), "{}", a.message);

    assert!(power.loaded().is_empty());
    assert!(power.restarts().is_empty());

    // kexec_file_load refusing: the reason and what to check.
    let power = Arc::new(FakePower {
        kexec_errno: Some(Errno::EPERM),
        ..Default::default()
    });
    let ex = Executor::new(TestOpener::new(mem_disks()), power.clone(), timing());
    let mut s = Session::open(&ex);
    submit(
        &ex,
        kexec("eperm", artifact(files.url("/k"), sha(&kernel)), None),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert!(
        a.message.starts_with("kexec_file_load: EPERM") && a.message.contains("lockdown"),
        "{}",
        a.message
    );
    idle(&ex).await;
    assert!(power.restarts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kexec_outside_pid1_fails_before_downloading() {
    let kernel = pattern(1000, 5);
    let files = Files::serve(vec![("/k", kernel.clone())]).await;
    let power = Arc::new(FakePower {
        not_pid1: true,
        ..Default::default()
    });
    let ex = Executor::new(TestOpener::new(mem_disks()), power, timing());
    let mut s = Session::open(&ex);
    submit(
        &ex,
        kexec("k", artifact(files.url("/k"), sha(&kernel)), None),
    )
    .await;
    let a = s.ack_only().await;
    assert_eq!(
        (a.state.as_str(), a.message.as_str()),
        (
            "failed",
            "kexec needs the agent to run as PID 1 of the boot image"
        )
    );
    assert_eq!(files.hits(), 0);
}

fn image_cmd(
    id: &str,
    url: String,
    sha512: String,
    compression: &str,
    unpacked: String,
) -> Command {
    cmd(
        id,
        command::Kind::Install(pb::Install {
            mode: "image".into(),
            image: Some(pb::Artifact {
                url,
                sha512,
                compression: compression.into(),
                unpacked_sha512: unpacked,
            }),
            disk: "vda".into(),
            ..Default::default()
        }),
    )
}

fn file_disk(dir: &std::path::Path, size: usize) -> std::path::PathBuf {
    let path = dir.join("vda");
    std::fs::write(&path, vec![0x5au8; size]).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_image_is_written_read_back_and_verified() {
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};
    let dir = tempfile::tempdir().unwrap();
    let path = file_disk(dir.path(), 16 << 20);
    // Not a whole number of blocks, nor of 4 MiB writes.
    let image = pattern((9 << 20) + 1000, 6);
    let packed = compress_to_vec(&image[..], CompressionLevel::Fastest);
    let files = Files::serve(vec![("/disk.raw.zst", packed.clone())]).await;
    let power = Arc::new(FakePower::default());
    let opener = TestOpener::new(FileOpener::new(dir.path()));
    let ex = Executor::new(opener.clone(), power.clone(), timing());
    let mut s = Session::open(&ex);

    submit(
        &ex,
        image_cmd(
            "img",
            files.url("/disk.raw.zst"),
            sha(&packed),
            "zstd",
            sha(&image),
        ),
    )
    .await;
    let mut seen = Vec::new();
    assert_eq!(s.ack(&mut seen).await.state, "accepted");
    let a = s.ack(&mut seen).await;
    assert_eq!(a.state, "done", "{a:?}");
    assert!(
        a.message.starts_with(&format!(
            "wrote {} bytes ({} downloaded) to vda",
            image.len(),
            packed.len()
        )),
        "{}",
        a.message
    );
    idle(&ex).await;
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(disk.len(), 16 << 20, "the disk did not grow");
    assert_eq!(&disk[..image.len()], &image[..]);
    assert_eq!(power.restarts(), [Restart::Reboot]);
    for subject in ["image", "image verify"] {
        assert!(
            seen.iter().any(|m| matches!(m,
                agent_message::Msg::Progress(p) if p.subject == subject && p.command_id == "img")),
            "{subject}"
        );
    }

    // The server's unpacked checksum disagrees: failed, and no reboot.
    let wrong = sha(b"other");
    submit(
        &ex,
        image_cmd(
            "img2",
            files.url("/disk.raw.zst"),
            String::new(),
            "zstd",
            wrong.clone(),
        ),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(
        a.message,
        format!(
            "unpacked image sha512 mismatch: expected {wrong} got {}",
            sha(&image)
        )
    );
    idle(&ex).await;
    assert_eq!(power.restarts(), [Restart::Reboot]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_refusals_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_disk(dir.path(), 1 << 20);
    let big = pattern((1 << 20) + 512, 7);
    let files = Files::serve(vec![("/big.raw", big.clone())]).await;
    let power = Arc::new(FakePower {
        not_pid1: true,
        ..Default::default()
    });
    let ex = Executor::new(
        TestOpener::new(FileOpener::new(dir.path())),
        power.clone(),
        timing(),
    );
    let mut s = Session::open(&ex);

    submit(
        &ex,
        image_cmd("big", files.url("/big.raw"), sha(&big), "", String::new()),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.message, "the image does not fit on vda (1048576 bytes)");
    idle(&ex).await;

    // A read-only disk: refused before anything is downloaded.
    let hits = files.hits();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&path, perm).unwrap();
    submit(
        &ex,
        image_cmd("ro", files.url("/big.raw"), sha(&big), "raw", String::new()),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.message, "refusing to write the image to vda: read-only");
    idle(&ex).await;
    assert_eq!(files.hits(), hits);

    submit(
        &ex,
        image_cmd(
            "gz",
            files.url("/big.raw"),
            sha(&big),
            "gzip",
            String::new(),
        ),
    )
    .await;
    let a = s.ack_only().await;
    assert_eq!(a.message, "unknown image compression \"gzip\" (raw, zstd)");
    assert!(power.restarts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_image_fits_and_outside_pid1_is_not_rebooted() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_disk(dir.path(), 4 << 20);
    let image = pattern(4 << 20, 8);
    let files = Files::serve(vec![("/exact.raw", image.clone())]).await;
    let power = Arc::new(FakePower {
        not_pid1: true,
        ..Default::default()
    });
    let ex = Executor::new(
        TestOpener::new(FileOpener::new(dir.path())),
        power.clone(),
        timing(),
    );
    let mut s = Session::open(&ex);
    submit(
        &ex,
        image_cmd(
            "exact",
            files.url("/exact.raw"),
            sha(&image),
            "raw",
            String::new(),
        ),
    )
    .await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let a = s.ack_only().await;
    assert_eq!(a.state, "done", "{a:?}");
    assert!(
        a.message.ends_with(
            "not rebooting: not PID 1: only the agent of the boot image reboots the machine"
        ),
        "{}",
        a.message
    );
    assert_eq!(std::fs::read(&path).unwrap(), image);
    assert!(power.restarts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_running_wipe_and_says_so() {
    let opener = TestOpener::new(mem_disks());
    let ex = Executor::new(opener.clone(), Arc::new(FakePower::default()), timing());
    let mut s = Session::open(&ex);
    opener.hold();
    submit(&ex, wipe("w", "zero", &["sda"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    let stopping = tokio::spawn({
        let ex = ex.clone();
        async move { ex.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    opener.release();
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let a = s.ack_only().await;
    assert_eq!(a.state, "failed");
    assert_eq!(
        a.message,
        "1 of 1 disks not wiped: sda: wipe of sda cancelled"
    );
    assert_eq!(ex.running(), None);
}

struct PanickingOpener;

impl DiskOpener for PanickingOpener {
    fn open(&self, _: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        panic!("a bug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_panics_ends_failed_and_frees_the_agent() {
    let ex = Executor::new(
        Arc::new(PanickingOpener),
        Arc::new(FakePower::default()),
        timing(),
    );
    let mut s = Session::open(&ex);
    submit(&ex, wipe("w", "zero", &["sda"])).await;
    assert_eq!(s.ack_only().await.state, "accepted");
    idle(&ex).await;
    submit(&ex, wipe("w", "zero", &["sda"])).await;
    let a = s.ack_only().await;
    assert_eq!(
        (a.state.as_str(), a.message.as_str()),
        ("failed", "the command stopped unexpectedly")
    );
}
