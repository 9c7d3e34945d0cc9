//! Wipe throughput on file-backed disks, side by side with the usual tools on the same
//! files, and the fast wipe of ten disks at once. Run by the CLI (`bench(dir, size_mb)`).
//!
//! The tools: `dd` for zero, `fallocate --punch-hole` for discard (`blkdiscard` works only
//! on block devices; on a file the kernel's discard is a punched hole), `wipefs -a` for fast.
//! Every file is filled with a pattern and a partitioned layout and synced before each run;
//! times include the final fsync. Ours also includes the verification, reported apart.
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{no_progress, wipe, wipe_disk, DiskRequest, FileDisk, FileOpener, Mode, WipeOptions};

const MIB: u64 = 1 << 20;

/// CRC-32 (IEEE), as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What a used disk carries, as (offset, bytes) to write over a blank or patterned disk: a
/// real GPT (protective MBR, both headers with their CRCs, both entry arrays) with two
/// partitions, partition 1 (1 MiB..size/4) with ext4 and md 1.2, partition 2 (3/8..5/8 of
/// the disk) with xfs and md 1.0 at its end, and md 0.90 at the end of the disk.
/// `size` at least 8 MiB.
pub fn used_disk(size: u64, sector: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let last = size / sector - 1;
    let entries_len = 128 * 128u64;
    let entry_sectors = entries_len.div_ceil(sector);

    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0xEE;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&(last.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
    out.push((0, mbr));

    // Linux filesystem data type GUID, mixed-endian on disk.
    let linux_fs = [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ];
    let (p1, p1_end) = (MIB, size / 4);
    let (p2, p2_len) = (size / 8 * 3, size / 4);
    let mut entries = vec![0u8; entries_len as usize];
    for (i, (start, end)) in [(p1, p1_end), (p2, p2 + p2_len)].iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(&linux_fs);
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&(start / sector).to_le_bytes());
        e[40..48].copy_from_slice(&(end / sector - 1).to_le_bytes());
        for (j, c) in "data".encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let header = |my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; sector as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(last - 1 - entry_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&[0x5A; 16]);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_entries = last - entry_sectors;
    out.push((sector, header(1, last, 2)));
    out.push((2 * sector, entries.clone()));
    out.push((backup_entries * sector, entries));
    out.push((last * sector, header(last, 1, backup_entries)));

    let md = 0xa92b_4efc_u32.to_le_bytes().to_vec();
    let mut ext4 = vec![0u8; 1024];
    ext4[0x38..0x3A].copy_from_slice(&[0x53, 0xEF]);
    ext4[0x60] = 0x40;
    out.push((p1 + 1024, ext4));
    out.push((p1 + 4096, md.clone()));
    out.push((p2, b"XFSB".to_vec()));
    out.push((p2 + ((p2_len / 512 - 16) & !7) * 512, md.clone()));
    out.push(((size & !(64 * 1024 - 1)) - 64 * 1024, md));
    out
}

/// Fills `path` (`size` bytes) with a pattern (or leaves it sparse) and writes a used
/// disk's layout over it, then syncs.
pub fn make_disk(path: &Path, size: u64, patterned: bool) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    if patterned {
        let chunk: Vec<u8> = b"siderite-pattern"
            .iter()
            .copied()
            .cycle()
            .take(4 * MIB as usize)
            .collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    } else {
        f.set_len(size)?;
    }
    for (at, bytes) in used_disk(size, 512) {
        f.write_all_at(&bytes, at)?;
    }
    f.sync_all()?;
    Ok(())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs a tool; `None` when it is not installed.
fn tool(cmd: &str, args: &[&str]) -> anyhow::Result<Option<(Duration, String)>> {
    let start = Instant::now();
    let out = match Command::new(cmd).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {cmd}")),
    };
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some((
        took,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )))
}

const RUNS: usize = 3;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What wipefs and blkid find on `path`.
fn tools_see(path: &str) -> anyhow::Result<String> {
    let wipefs = match tool("wipefs", &["--no-act", path])? {
        None => "(wipefs missing)".to_string(),
        Some((_, out)) if out.trim().is_empty() => "nothing".to_string(),
        Some((_, out)) => format!("{:?}", out.trim()),
    };
    let blkid = match Command::new("blkid").args(["-p", path]).output() {
        Err(_) => "missing".to_string(),
        // blkid -p exits 2 when it finds nothing.
        Ok(o) if o.status.code() == Some(2) => "finds nothing".to_string(),
        Ok(o) => format!("says {:?}", String::from_utf8_lossy(&o.stdout).trim()),
    };
    Ok(format!("wipefs --no-act lists {wipefs}; blkid -p {blkid}"))
}

fn sync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path)?.sync_all()?;
    Ok(())
}

/// Benchmarks each mode on a `size_mb` MiB file in `dir` against the tool doing the same
/// job, then the fast wipe of ten 1 GiB sparse disks at once. Returns the report.
pub fn bench(dir: &Path, size_mb: u64) -> anyhow::Result<String> {
    if size_mb < 64 {
        bail!("size_mb must be at least 64 (fast mode zeroes 16 MiB at each end)");
    }
    fs::create_dir_all(dir)?;
    let size = size_mb * MIB;
    let path = dir.join("bench-disk");
    let path_s = path.to_string_lossy().into_owned();
    let mut r = String::new();
    writeln!(
        r,
        "wipe benchmark: {size_mb} MiB image files in {}, median of {RUNS} runs",
        dir.display()
    )?;
    writeln!(
        r,
        "{:<8} {:>10} {:>10} {:>10}   {:<34} {:>10} {:>10} {:>8}",
        "mode", "wipe s", "verify s", "MiB/s", "tool", "tool s", "MiB/s", "speedup"
    )?;

    let cases: [(Mode, &str, Vec<String>); 3] = [
        (
            Mode::Zero,
            "dd",
            vec![
                "if=/dev/zero".into(),
                format!("of={path_s}"),
                "bs=4M".into(),
                "conv=notrunc,fsync".into(),
                format!("count={}", size / (4 * MIB)),
                "status=none".into(),
            ],
        ),
        (
            Mode::Discard,
            "fallocate",
            vec![
                "--punch-hole".into(),
                "--offset".into(),
                "0".into(),
                "--length".into(),
                size.to_string(),
                path_s.clone(),
            ],
        ),
        (Mode::Fast, "wipefs", vec!["-a".into(), path_s.clone()]),
    ];
    let mut crosscheck = String::new();
    for (mode, cmd, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Ours and the tool take turns, RUNS times each; the medians are reported.
        let (mut wipe_t, mut verify_t, mut tool_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut missing = false;
        for run in 0..RUNS {
            make_disk(&path, size, true)?;
            if *mode == Mode::Fast && run == 0 {
                writeln!(crosscheck, "before: {}", tools_see(&path_s)?)?;
            }
            let mut disk = FileDisk::open(&path, 512)?;
            let opts = WipeOptions::new(*mode, "bench");
            let s = wipe_disk(&mut disk, &opts, &no_progress(), &AtomicBool::new(false))
                .map_err(|e| anyhow::anyhow!(e.reason()))?;
            drop(disk);
            wipe_t.push(s.wipe_time);
            verify_t.push(s.verify_time);
            if *mode == Mode::Fast && run == 0 {
                writeln!(crosscheck, "after our fast wipe: {}", tools_see(&path_s)?)?;
            }
            make_disk(&path, size, true)?;
            sync_file(&path)?;
            match tool(cmd, &args)? {
                Some((t, _)) => tool_t.push(t),
                None => missing = true,
            }
        }
        let (w, v) = (median(&mut wipe_t), median(&mut verify_t));
        let tool_run = (!missing).then(|| median(&mut tool_t));
        let label = format!(
            "{cmd} {}",
            if *mode == Mode::Zero {
                "bs=4M fsync"
            } else {
                args[0]
            }
        );
        match tool_run {
            Some(t) => writeln!(
                r,
                "{:<8} {:>10.3} {:>10.3} {:>10.0}   {:<34} {:>10.3} {:>10.0} {:>7.2}x",
                mode.as_str(),
                w.as_secs_f64(),
                v.as_secs_f64(),
                mbps(size, w),
                label,
                t.as_secs_f64(),
                mbps(size, t),
                t.as_secs_f64() / w.as_secs_f64().max(1e-9),
            )?,
            None => writeln!(
                r,
                "{:<8} {:>10.3} {:>10.3} {:>10.0}   {:<34} missing (util-linux/coreutils)",
                mode.as_str(),
                w.as_secs_f64(),
                v.as_secs_f64(),
                mbps(size, w),
                label,
            )?,
        }
    }
    writeln!(
        r,
        "secure   refused on files: \"secure erase not supported on <disk> (file transport: \
         image files have no secure erase)\""
    )?;
    writeln!(
        r,
        "MiB/s is the disk size over the wipe time; speedup is the tool's time over ours \
         (above 1: we are faster). Our discard includes an fsync, the tool's does not. fast mode writes 32 MiB plus 2 MiB per partition, wipefs \
         a few bytes, and neither writes the rest. blkdiscard needs a block device: on files \
         the discard is `fallocate --punch-hole`."
    )?;
    r.push_str(&crosscheck);
    fs::remove_file(&path)?;

    // Ten 1 GiB disks at once, the way an accepted server's disks are wiped.
    let names: Vec<String> = (0..10).map(|i| format!("par{i}")).collect();
    for n in &names {
        make_disk(&dir.join(n), 1 << 30, false)?;
    }
    let opener = FileOpener::new(dir);
    let reqs: Vec<DiskRequest> = names.iter().map(|n| DiskRequest::named(n)).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // On a thread of its own: the caller may be inside a runtime already.
    let (took, results) = std::thread::scope(|s| {
        s.spawn(|| {
            runtime.block_on(async {
                let start = Instant::now();
                let results = wipe(
                    reqs,
                    WipeOptions::new(Mode::Fast, "bench-parallel"),
                    &opener,
                    no_progress(),
                    std::future::pending(),
                )
                .await;
                (start.elapsed(), results)
            })
        })
        .join()
        .expect("benchmark thread")
    });
    let mut failed = Vec::new();
    let mut written = 0;
    for res in &results {
        match &res.outcome {
            Ok(s) => written += s.bytes_written,
            Err(e) => failed.push(e.reason()),
        }
    }
    let clean = names
        .iter()
        .filter(|n| {
            tool("wipefs", &["--no-act", &dir.join(n).to_string_lossy()])
                .ok()
                .flatten()
                .is_some_and(|(_, out)| out.trim().is_empty())
        })
        .count();
    writeln!(
        r,
        "fast wipe of 10 x 1 GiB sparse disks in parallel: {:.3} s (target < 5 s), {} MiB \
         written and verified, {} failed, {clean}/10 clean for wipefs",
        took.as_secs_f64(),
        written / MIB,
        failed.len()
    )?;
    for f in failed {
        writeln!(r, "  {f}")?;
    }
    for n in &names {
        fs::remove_file(dir.join(n))?;
    }
    Ok(r)
}
