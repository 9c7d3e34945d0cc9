//! The wipe end to end on image files and fake disks.
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fake::{FakeOpener, Fault, MemDisk};
use super::*;
use crate::hw::signatures::{probe, DeviceFile};

const MIB: u64 = 1 << 20;
const PATTERN: &[u8; 16] = b"siderite-pattern";

/// A used disk in memory: [`bench::used_disk`]'s GPT, partitions and superblocks over a
/// pattern everywhere else. Partition 2 spans 24..40 MiB of a 64 MiB disk.
pub(crate) fn image(size: u64, sector: u64) -> Vec<u8> {
    let mut d = PATTERN.repeat(size as usize / PATTERN.len());
    for (at, bytes) in bench::used_disk(size, sector) {
        d[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
    }
    d
}

fn write_image(dir: &Path, name: &str, size: u64, sector: u64) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, image(size, sector)).unwrap();
    path
}

fn found(path: &Path, sector: u32) -> Vec<String> {
    let f = DeviceFile::open(path).unwrap();
    let mut names = probe(&f, sector).unwrap().names();
    for p in layout::read_layout(&f, sector).unwrap().partitions {
        let w = disk::Window {
            disk: &FileDisk::open(path, sector).unwrap(),
            start: p.start,
            len: p.len,
        };
        names.extend(probe(&w, sector).unwrap().names());
    }
    names
}

fn opts(mode: Mode) -> WipeOptions {
    WipeOptions::new(mode, "cmd-42")
}

async fn run(dir: &Path, names: &[&str], mode: Mode) -> Vec<DiskResult> {
    let reqs = names.iter().map(|n| DiskRequest::named(n)).collect();
    wipe(
        reqs,
        opts(mode),
        &FileOpener::new(dir),
        no_progress(),
        std::future::pending(),
    )
    .await
}

fn zero_at(d: &[u8], range: std::ops::Range<u64>) -> bool {
    d[range.start as usize..range.end as usize]
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn modes_by_name() {
    for m in Mode::ALL {
        assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
    }
    assert_eq!(
        "shred".parse::<Mode>().unwrap_err().to_string(),
        "unknown wipe mode \"shred\" (fast, discard, zero, secure)"
    );
}

#[test]
fn the_test_image_has_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk0", 64 * MIB, 512);
    assert_eq!(
        found(&path, 512),
        [
            "gpt",
            "linux_raid",
            "pmbr",
            "ext4",
            "linux_raid",
            "xfs",
            "linux_raid"
        ]
    );
    // Both headers carry a valid CRC, like a partitioning tool's.
    let d = fs::read(&path).unwrap();
    for at in [512usize, 64 * MIB as usize - 512] {
        let mut h = d[at..at + 92].to_vec();
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        h[16..20].fill(0);
        assert_eq!(bench::crc32(&h), crc);
    }
}

#[tokio::test]
async fn fast_removes_every_signature_and_leaves_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk0", 64 * MIB, 512);
    let results = run(dir.path(), &["disk0"], Mode::Fast).await;
    let s = results[0].outcome.as_ref().unwrap();

    assert!(found(&path, 512).is_empty(), "{:?}", found(&path, 512));
    let d = fs::read(&path).unwrap();
    assert!(zero_at(&d, 0..16 * MIB), "first 16 MiB");
    assert!(zero_at(&d, 48 * MIB..64 * MIB), "last 16 MiB");
    // Partition 2's edges are zero; the data between them is not: a fast wipe is not an
    // erase.
    assert!(zero_at(&d, 24 * MIB..25 * MIB));
    assert!(zero_at(&d, 39 * MIB..40 * MIB));
    assert_eq!(&d[20 * MIB as usize..20 * MIB as usize + 16], PATTERN);
    assert_eq!(&d[30 * MIB as usize..30 * MIB as usize + 16], PATTERN);

    assert_eq!(s.partitions, 2);
    assert_eq!(s.methods, ["write"]);
    // 16 MiB at each end, 1 MiB at each end of partition 2, and the 4 KiB before it, which
    // is half of the 8 KiB around the xfs magic at its start.
    assert_eq!(s.bytes_written, 34 * MIB + 4096);
    assert_eq!(s.verified_bytes, s.bytes_written);
    assert!(s.signatures_removed.contains(&"gpt@512".to_string()));
    assert!(s.notes[0].contains("not erased"));
}

#[tokio::test]
async fn fast_on_4k_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk4k", 64 * MIB, 4096);
    assert!(found(&path, 4096).contains(&"xfs".to_string()));
    let opener = FileOpener {
        dir: dir.path().to_path_buf(),
        block_size: 4096,
    };
    let r = wipe(
        vec![DiskRequest::named("disk4k")],
        opts(Mode::Fast),
        &opener,
        no_progress(),
        std::future::pending(),
    )
    .await;
    assert!(r[0].outcome.is_ok(), "{:?}", r[0].outcome);
    assert!(found(&path, 4096).is_empty());
}

#[tokio::test]
async fn fast_handles_a_disk_smaller_than_its_edges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny");
    let mut d = vec![0xFFu8; 3 * MIB as usize];
    d[0..4].copy_from_slice(b"XFSB");
    fs::write(&path, d).unwrap();
    let r = run(dir.path(), &["tiny"], Mode::Fast).await;
    assert_eq!(r[0].outcome.as_ref().unwrap().bytes_written, 3 * MIB);
    assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn zero_writes_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk0", 64 * MIB, 512);
    let r = run(dir.path(), &["disk0"], Mode::Zero).await;
    let s = r[0].outcome.as_ref().unwrap();
    assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0));
    assert_eq!(s.methods, ["write"]);
    assert_eq!(s.bytes_written, 64 * MIB);
    // Both 1 MiB edges plus 256 samples of 64 KiB.
    assert_eq!(s.verified_bytes, 2 * MIB + 256 * 64 * 1024);
}

#[tokio::test]
async fn discard_on_a_file_punches_holes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk0", 64 * MIB, 512);
    let r = run(dir.path(), &["disk0"], Mode::Discard).await;
    let s = r[0].outcome.as_ref().unwrap();
    assert_eq!(s.methods, ["discard"], "{s:?}");
    assert_eq!(s.bytes_written, 0);
    assert_eq!(s.bytes_offloaded, 64 * MIB);
    assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0));
    // The blocks were given back, as a discarded SSD's would be.
    assert!(fs::metadata(&path).unwrap().blocks() * 512 < MIB);
}

#[tokio::test]
async fn secure_on_a_file_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "disk0", 64 * MIB, 512);
    let r = run(dir.path(), &["disk0"], Mode::Secure).await;
    let e = r[0].outcome.as_ref().unwrap_err();
    assert_eq!(
        e.to_string(),
        "secure erase not supported on disk0 (file transport: image files have no secure erase)"
    );
    assert_eq!(fs::read(&path).unwrap(), image(64 * MIB, 512));
}

#[tokio::test]
async fn read_only_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), "ro", 8 * MIB, 512);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
    write_image(dir.path(), "rw", 8 * MIB, 512);
    let r = run(dir.path(), &["ro", "rw", "missing"], Mode::Zero).await;
    assert_eq!(
        r[0].outcome.as_ref().unwrap_err().to_string(),
        "refusing to wipe ro: read-only"
    );
    assert!(r[1].outcome.is_ok());
    assert!(matches!(
        r[2].outcome.as_ref().unwrap_err(),
        WipeError::Open { .. }
    ));
    assert_eq!(fs::read(&path).unwrap(), image(8 * MIB, 512));
}

#[tokio::test]
async fn a_failing_disk_fails_alone_with_the_offset() {
    let bad =
        MemDisk::new("bad", image(64 * MIB, 512)).with_fault(Fault::WriteFailsAt(60 * MIB + 4096));
    let good = MemDisk::new("good", image(64 * MIB, 512));
    let opener = FakeOpener::with([bad, good.clone()]);
    let r = wipe(
        vec![DiskRequest::named("bad"), DiskRequest::named("good")],
        opts(Mode::Fast),
        &opener,
        no_progress(),
        std::future::pending(),
    )
    .await;
    let e = r[0].outcome.as_ref().unwrap_err();
    assert_eq!(r[0].disk, "bad");
    assert!(
        matches!(e, WipeError::Io { op: Op::Write, offset, .. } if *offset == 60 * MIB),
        "{e:?}"
    );
    assert_eq!(
        e.reason(),
        "writing 4194304 bytes at offset 62914560 on bad: medium error at sector 122888"
    );
    assert!(r[1].outcome.is_ok());
    assert!(probe(&*good.bytes(), 512).unwrap().is_clean());
}

#[tokio::test]
async fn verification_catches_a_disk_that_drops_writes() {
    for mode in [Mode::Fast, Mode::Zero, Mode::Discard] {
        let liar = MemDisk::new("liar", image(16 * MIB, 512)).with_fault(Fault::DropsWrites);
        let r = wipe(
            vec![DiskRequest::named("liar")],
            opts(mode),
            &FakeOpener::with([liar]),
            no_progress(),
            std::future::pending(),
        )
        .await;
        let e = r[0].outcome.as_ref().unwrap_err();
        // The protective MBR's first byte is zero; its partition entry is not.
        assert!(
            matches!(e, WipeError::NotZero { offset: 450, .. }),
            "{mode}: {e:?}"
        );
        assert_eq!(
            e.to_string(),
            "verification failed on liar: non-zero byte at offset 450"
        );
    }
}

#[tokio::test]
async fn discard_without_zeros_is_said_and_fixed() {
    let disk = MemDisk::new("ssd", image(32 * MIB, 512)).with_fault(Fault::DiscardKeepsData);
    let r = wipe(
        vec![DiskRequest::named("ssd")],
        opts(Mode::Discard),
        &FakeOpener::with([disk.clone()]),
        no_progress(),
        std::future::pending(),
    )
    .await;
    let s = r[0].outcome.as_ref().unwrap();
    assert_eq!(s.methods, ["discard", "write"]);
    assert!(s.notes[0].starts_with("the disk did not read back zeros after discard"));
    assert!(disk.bytes().iter().all(|&b| b == 0));
}

#[test]
fn zeroout_offload_is_used_when_there() {
    let mut disk = MemDisk::new("nvme0n1", image(32 * MIB, 512));
    disk.zeroout = true;
    let s = wipe_disk(
        &mut disk,
        &opts(Mode::Zero),
        &no_progress(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.methods, ["zeroout"]);
    assert_eq!((s.bytes_written, s.bytes_offloaded), (0, 32 * MIB));
    assert!(disk.bytes().iter().all(|&b| b == 0));
}

#[test]
fn secure_erase_where_the_drive_has_it() {
    let mut disk = MemDisk::new("nvme0n1", image(32 * MIB, 512));
    disk.secure_erase = true;
    let s = wipe_disk(
        &mut disk,
        &opts(Mode::Secure),
        &no_progress(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.methods, ["fake secure erase"]);
}

#[test]
fn progress_reports_both_phases_to_the_end() {
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let s = seen.clone();
    let sink: ProgressSink = Arc::new(move |p: &Progress| s.lock().unwrap().push(p.clone()));
    let mut o = opts(Mode::Zero);
    o.progress_interval = Duration::ZERO;
    let mut disk = MemDisk::new("sda", image(32 * MIB, 512));
    wipe_disk(&mut disk, &o, &sink, &AtomicBool::new(false)).unwrap();
    let seen = seen.lock().unwrap();
    let wiping: Vec<&Progress> = seen.iter().filter(|p| p.phase == Phase::Wiping).collect();
    assert_eq!(wiping.len(), 8 + 1, "one per 4 MiB write and the end");
    assert!(wiping
        .windows(2)
        .all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert_eq!(wiping.last().unwrap().bytes_done, 32 * MIB);
    assert_eq!(wiping.last().unwrap().eta, Some(Duration::ZERO));
    let last = seen.last().unwrap();
    assert_eq!(last.phase, Phase::Verifying);
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(seen.iter().all(|p| p.disk == "sda"));
}

#[tokio::test]
async fn busy_and_twice_named_disks_are_refused() {
    let mut opener = FakeOpener::with([MemDisk::new("sda", vec![0; MIB as usize])]);
    opener
        .busy
        .insert("sdb".into(), "sdb1 is mounted at /".into());
    let r = wipe(
        ["sda", "sdb", "sda"]
            .iter()
            .map(|n| DiskRequest::named(n))
            .collect(),
        opts(Mode::Zero),
        &opener,
        no_progress(),
        std::future::pending(),
    )
    .await;
    assert!(r[0].outcome.is_ok());
    assert_eq!(
        r[1].outcome.as_ref().unwrap_err().to_string(),
        "refusing to wipe sdb: busy (sdb1 is mounted at /)"
    );
    assert_eq!(
        r[2].outcome.as_ref().unwrap_err().to_string(),
        "refusing to wipe sda: named twice in one command"
    );
}

/// A disk that takes its time, so that shutdown lands mid-wipe.
struct Slow(MemDisk);

impl Disk for Slow {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn logical_block_size(&self) -> u32 {
        512
    }
    fn read_at(&self, o: u64, b: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(o, b)
    }
    fn write_at(&mut self, o: u64, b: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.write_at(o, b)
    }
    fn discard(&mut self, o: u64, l: u64, s: bool) -> std::io::Result<()> {
        self.0.discard(o, l, s)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct SlowOpener;

impl DiskOpener for SlowOpener {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        Ok(Box::new(Slow(MemDisk::new(&req.name, vec![1; 64 << 20]))))
    }
}

#[tokio::test]
async fn shutdown_cancels_running_wipes() {
    let r = wipe(
        vec![DiskRequest::named("sda"), DiskRequest::named("sdb")],
        opts(Mode::Zero),
        &SlowOpener,
        no_progress(),
        tokio::time::sleep(Duration::from_millis(50)),
    )
    .await;
    for d in &r {
        assert!(
            matches!(d.outcome, Err(WipeError::Cancelled { .. })),
            "{:?}",
            d.outcome
        );
    }
}

/// The block-device transport on a fixture root whose /dev node is an image file: O_DIRECT
/// and O_EXCL opens, aligned I/O, and the ioctls failing as on a device without them.
#[tokio::test]
async fn the_device_opener_on_a_fixture_root() {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("sys/block/vda");
    fs::create_dir_all(sys.join("queue")).unwrap();
    fs::create_dir_all(sys.join("holders")).unwrap();
    fs::write(sys.join("dev"), "254:0").unwrap();
    fs::write(sys.join("size"), (64 * MIB / 512).to_string()).unwrap();
    fs::write(sys.join("ro"), "0").unwrap();
    fs::write(sys.join("queue/logical_block_size"), "512").unwrap();
    fs::create_dir_all(root.path().join("dev")).unwrap();
    let node = write_image(&root.path().join("dev"), "vda", 64 * MIB, 512);
    let opener = DevOpener::new(root.path());

    for mode in [Mode::Fast, Mode::Discard, Mode::Zero] {
        fs::write(&node, image(64 * MIB, 512)).unwrap();
        let r = wipe(
            vec![DiskRequest::named("vda")],
            opts(mode),
            &opener,
            no_progress(),
            std::future::pending(),
        )
        .await;
        let s = r[0].outcome.as_ref().unwrap();
        assert!(found(&node, 512).is_empty(), "{mode}");
        assert!(
            s.notes.iter().any(|n| n.contains("BLKRRPART")),
            "{mode}: {s:?}"
        );
        if mode == Mode::Discard {
            assert!(s.notes[0].starts_with("discard not supported (BLKDISCARD"));
        }
        if mode != Mode::Fast {
            assert!(fs::read(&node).unwrap().iter().all(|&b| b == 0), "{mode}");
        }
    }
    let r = wipe(
        vec![DiskRequest::named("vda")],
        opts(Mode::Secure),
        &opener,
        no_progress(),
        std::future::pending(),
    )
    .await;
    assert_eq!(
        r[0].outcome.as_ref().unwrap_err().to_string(),
        "secure erase not supported on vda (virtio disks have no secure erase)"
    );
}

/// The benchmark runs and every tool it compares with sees clean disks after our fast wipe.
/// `SIDERITE_WIPE_BENCH_MB` sets the disk size (64 MiB by default); `--nocapture` prints it.
#[test]
fn bench_reports_every_mode() {
    let mb = std::env::var("SIDERITE_WIPE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let report = bench::bench(dir.path(), mb).unwrap();
    println!("{report}");
    for row in ["zero ", "discard ", "fast ", "secure "] {
        assert!(
            report.lines().any(|l| l.starts_with(row)),
            "{row}: {report}"
        );
    }
    assert!(
        report.contains("0 failed, 10/10 clean for wipefs"),
        "{report}"
    );
    assert!(
        report.contains("wipefs --no-act lists nothing; blkid -p finds nothing"),
        "{report}"
    );
    // libblkid takes our GPT for a real one (it checks both CRCs) before the wipe.
    assert!(report.contains(r#"PTTYPE=\"gpt\""#), "{report}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A loop device over an image: the real block-device transport with the kernel's ioctls,
/// O_DIRECT and O_EXCL. Needs root and loop devices: opt in by name with
/// `cargo test -p siderite-agent --lib wipe::tests::root_ -- --ignored`.
#[tokio::test]
#[ignore = "needs root and /dev/loop-control"]
async fn root_loop_device_wipes_and_refuses_when_busy() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Command;

    struct Loop(String);
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("loop.img");
    let size = 64 * MIB;
    let out = Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg({
            bench::make_disk(&image_path, size, true).unwrap();
            &image_path
        })
        .output()
        .expect("losetup (util-linux) must be installed");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let name = dev.0.trim_start_matches("/dev/").to_string();
    let opener = DevOpener::new(Path::new("/"));
    let go = |mode| {
        wipe(
            vec![DiskRequest::named(&name)],
            opts(mode),
            &opener,
            no_progress(),
            std::future::pending(),
        )
    };

    // Held exclusively (as a mount or an md array would): busy. (The kernel here parses no
    // partition tables, so the partition case is left to the sysfs fixtures in `guard`.)
    let held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&dev.0)
        .unwrap();
    let r = go(Mode::Fast).await;
    assert!(
        matches!(r[0].outcome, Err(WipeError::Busy { .. })),
        "{:?}",
        r[0].outcome
    );
    drop(held);

    let r = go(Mode::Fast).await;
    let s = r[0].outcome.as_ref().unwrap();
    assert_eq!(s.partitions, 2);
    assert!(found(&image_path, 512).is_empty());
    assert!(s.notes.iter().all(|n| !n.contains("BLKRRPART")), "{s:?}");

    for (mode, method) in [(Mode::Zero, "zeroout"), (Mode::Discard, "discard")] {
        bench::make_disk(&image_path, size, true).unwrap();
        let r = go(mode).await;
        let s = r[0].outcome.as_ref().unwrap();
        assert_eq!(s.methods, [method], "{mode}: {s:?}");
        assert!(fs::read(&image_path).unwrap().iter().all(|&b| b == 0));
    }
    let r = go(Mode::Secure).await;
    assert!(matches!(
        r[0].outcome,
        Err(WipeError::SecureEraseUnsupported { .. })
    ));
}
