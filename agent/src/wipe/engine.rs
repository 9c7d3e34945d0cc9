//! One disk's wipe, start to verified end, on the calling thread.
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::disk::{AlignedBuf, Disk, DiskReader, Window};
use super::layout::{read_layout, Extent};
use super::progress::{Meter, Phase, ProgressSink};
use super::verify::{self, check_clean, check_zero, merge, sample_extents};
use super::{Mode, Op, WipeError, WipeOptions, WipeSummary};
use crate::hw::signatures::probe;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Zeroed at each end of the disk by `fast`. 1 MiB would cover the GPT copies, the MBR, LVM,
/// every md superblock version, ZFS' four labels (two 256 KiB labels at each end) and the
/// Windows LDM database; 16 MiB also covers the start of a first partition aligned anywhere
/// up to 16 MiB (its filesystem superblock), bootloader gaps, and labels of tools that keep
/// metadata past the first MiB, for 32 MiB of writes per disk: a fraction of a second on
/// anything but a USB stick.
pub const EDGE: u64 = 16 * MIB;
/// Zeroed at each end of every partition by `fast`: superblocks at the start (ext, xfs,
/// btrfs, vfat, swap, LUKS, LVM PV, md 1.1/1.2, bcache), md 0.90/1.0 and ZFS labels at the end.
pub const PART_EDGE: u64 = MIB;
/// Around each signature `probe` reports: its magic and the structure around it.
const SIG_AREA: u64 = 8 * KIB;
/// btrfs keeps superblock mirrors at 64 MiB and 256 GiB that blkid does not look at but
/// `btrfs rescue` does.
const BTRFS_MIRRORS: [u64; 2] = [64 * MIB, 256 * GIB];
/// Size of each write of zeros.
const WRITE_CHUNK: u64 = 4 * MIB;
/// Size of each BLKZEROOUT / BLKDISCARD, so that progress moves and cancel is heard.
const OFFLOAD_CHUNK: u64 = GIB;

struct Ctx<'a> {
    name: String,
    opts: &'a WipeOptions,
    sink: &'a ProgressSink,
    cancel: &'a AtomicBool,
    summary: WipeSummary,
}

impl Ctx<'_> {
    fn cancelled(&self) -> Result<(), WipeError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(WipeError::Cancelled {
                disk: self.name.clone(),
            })
        } else {
            Ok(())
        }
    }
    fn io(&self, op: Op, offset: u64, len: u64) -> impl FnOnce(io::Error) -> WipeError + '_ {
        move |source| WipeError::Io {
            disk: self.name.clone(),
            op,
            offset,
            len,
            source,
        }
    }
    fn meter(&self, phase: Phase, total: u64) -> Meter {
        Meter::new(
            &self.name,
            phase,
            total,
            self.opts.progress_interval,
            self.sink,
        )
    }
    fn note(&mut self, note: String) {
        tracing::warn!(disk = %self.name, "{note}");
        self.summary.notes.push(note);
    }
}

/// Wipes and verifies one disk that is already open. [`super::wipe`] runs this on one
/// thread per disk; the benchmark and tests call it directly.
pub fn wipe_disk(
    disk: &mut dyn Disk,
    opts: &WipeOptions,
    sink: &ProgressSink,
    cancel: &AtomicBool,
) -> Result<WipeSummary, WipeError> {
    let name = disk.name().to_string();
    let size = disk.size();
    let mut ctx = Ctx {
        name: name.clone(),
        opts,
        sink,
        cancel,
        summary: WipeSummary {
            disk: name.clone(),
            mode: opts.mode,
            size,
            methods: Vec::new(),
            bytes_written: 0,
            bytes_offloaded: 0,
            signatures_removed: Vec::new(),
            partitions: 0,
            wipe_time: Default::default(),
            verify_time: Default::default(),
            verified_bytes: 0,
            verified_regions: 0,
            notes: Vec::new(),
        },
    };
    if size == 0 {
        return Err(WipeError::Refused {
            disk: name,
            reason: "no medium (size 0)".into(),
        });
    }
    let lbs = u64::from(disk.logical_block_size().max(512));
    if !size.is_multiple_of(lbs) {
        return Err(WipeError::Refused {
            disk: name,
            reason: format!("size {size} is not a multiple of the {lbs}-byte block"),
        });
    }
    tracing::info!(size, block = lbs, "wiping");

    // What is on the disk now, for the summary and for fast mode's plan.
    let before = probe(&DiskReader(disk), lbs as u32).map_err(ctx.io(Op::Read, 0, 0))?;
    ctx.summary.signatures_removed = before
        .signatures
        .iter()
        .map(|s| format!("{}@{}", s.name, s.offset))
        .collect();
    let layout = read_layout(&DiskReader(disk), lbs as u32).map_err(ctx.io(Op::Read, 0, 0))?;
    ctx.summary.partitions = layout.partitions.len();

    let start = Instant::now();
    match opts.mode {
        Mode::Fast => {
            let plan = fast_plan(disk, &before.signatures, &layout)?;
            let total = plan.iter().map(|e| e.len).sum();
            let mut meter = ctx.meter(Phase::Wiping, total);
            write_zeros(&mut ctx, disk, &plan, &mut meter)?;
            meter.finish();
            ctx.summary.methods.push("write".into());
            flush(&ctx, disk)?;
            ctx.summary.wipe_time = start.elapsed();

            let vstart = Instant::now();
            let mut meter = ctx.meter(Phase::Verifying, total);
            ctx.summary.verified_bytes = check_zero(disk, &plan, &mut meter, cancel)?;
            ctx.summary.verified_regions = plan.len() as u32;
            check_clean(disk, &layout.partitions)?;
            meter.finish();
            ctx.summary.verify_time = vstart.elapsed();
            ctx.summary.notes.push(
                "fast wipe: signatures, tables and the disk's and partitions' edges are zero; \
                 data elsewhere is not erased"
                    .into(),
            );
        }
        Mode::Zero => {
            zero_whole(&mut ctx, disk)?;
            flush(&ctx, disk)?;
            ctx.summary.wipe_time = start.elapsed();
            verify_zero(&mut ctx, disk, &layout.partitions)?;
        }
        Mode::Discard => {
            discard_whole(&mut ctx, disk)?;
            flush(&ctx, disk)?;
            ctx.summary.wipe_time = start.elapsed();
            match verify_zero(&mut ctx, disk, &layout.partitions) {
                Ok(()) => ctx.summary.notes.push(format!(
                    "discard: zeros verified in {} sampled regions; between them the disk \
                     is trusted to read back what it returned there",
                    ctx.summary.verified_regions
                )),
                Err(WipeError::NotZero { offset, .. }) => {
                    ctx.note(format!(
                        "the disk did not read back zeros after discard (offset {offset}): \
                         zeroing it instead"
                    ));
                    let again = Instant::now();
                    zero_whole(&mut ctx, disk)?;
                    flush(&ctx, disk)?;
                    ctx.summary.wipe_time += again.elapsed();
                    verify_zero(&mut ctx, disk, &layout.partitions)?;
                }
                Err(e) => return Err(e),
            }
        }
        Mode::Secure => {
            ctx.cancelled()?;
            let mut meter = ctx.meter(Phase::Wiping, size);
            let method = disk.secure_erase().map_err(|e| {
                if e.kind() == io::ErrorKind::Unsupported {
                    WipeError::SecureEraseUnsupported {
                        disk: name.clone(),
                        reason: e.to_string(),
                    }
                } else {
                    ctx.io(Op::SecureErase, 0, size)(e)
                }
            })?;
            meter.finish();
            ctx.summary.methods.push(method);
            ctx.summary.bytes_offloaded = size;
            ctx.summary.wipe_time = start.elapsed();
            // After a secure erase the data is "indeterminate" (zeros, ones or a vendor
            // pattern): only the absence of signatures is checked.
            let vstart = Instant::now();
            check_clean(disk, &layout.partitions)?;
            ctx.summary.verify_time = vstart.elapsed();
            ctx.summary.notes.push(
                "secure erase: verified that no signature is left; the drive decides what \
                 erased blocks read as"
                    .into(),
            );
        }
    }
    if let Err(e) = disk.reread_partitions() {
        ctx.note(format!("the kernel kept its old partition list ({e})"));
    }
    Ok(ctx.summary)
}

/// Everything fast mode zeroes: the areas inside partitions first, then the tables and the
/// disk's edges, so that a wipe cut short leaves the tables that lead to what is left.
fn fast_plan(
    disk: &dyn Disk,
    signatures: &[crate::hw::signatures::Signature],
    layout: &super::layout::Layout,
) -> Result<Vec<Extent>, WipeError> {
    let size = disk.size();
    let lbs = u64::from(disk.logical_block_size().max(512));
    let mut inner = Vec::new();
    let mut outer = vec![
        Extent {
            start: 0,
            len: EDGE.min(size),
        },
        Extent {
            start: size.saturating_sub(EDGE),
            len: EDGE.min(size),
        },
    ];
    outer.extend(layout.tables.iter().copied());
    let around = |at: u64| Extent {
        start: at.saturating_sub(SIG_AREA / 2),
        len: SIG_AREA,
    };
    inner.extend(signatures.iter().map(|s| around(s.offset)));
    inner.extend(BTRFS_MIRRORS.iter().map(|&m| around(m)));
    for p in &layout.partitions {
        let window = Window {
            disk,
            start: p.start,
            len: p.len,
        };
        let found = probe(&window, lbs as u32).map_err(|source| WipeError::Io {
            disk: disk.name().to_string(),
            op: Op::Read,
            offset: p.start,
            len: 0,
            source,
        })?;
        inner.extend(found.signatures.iter().map(|s| around(p.start + s.offset)));
        inner.extend(BTRFS_MIRRORS.iter().map(|&m| around(p.start + m)));
        let edge = PART_EDGE.min(p.len);
        inner.push(Extent {
            start: p.start,
            len: edge,
        });
        inner.push(Extent {
            start: p.end() - edge,
            len: edge,
        });
    }
    let outer = align(outer, lbs, size);
    let inner = subtract(align(inner, lbs, size), &outer);
    Ok(inner.into_iter().chain(outer).collect())
}

/// Widens every extent to whole blocks, clamps it to the disk, merges.
fn align(v: Vec<Extent>, block: u64, size: u64) -> Vec<Extent> {
    merge(
        v.into_iter()
            .filter(|e| e.start < size)
            .map(|e| {
                let start = e.start / block * block;
                let end = e.end().min(size).div_ceil(block) * block;
                Extent {
                    start,
                    len: end.min(size) - start,
                }
            })
            .collect(),
    )
}

/// The parts of sorted, merged `v` that no extent of sorted, merged `cut` covers.
fn subtract(v: Vec<Extent>, cut: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::new();
    for e in v {
        let mut pos = e.start;
        for c in cut
            .iter()
            .filter(|c| c.end() > e.start && c.start < e.end())
        {
            if c.start > pos {
                out.push(Extent {
                    start: pos,
                    len: c.start - pos,
                });
            }
            pos = pos.max(c.end());
        }
        if pos < e.end() {
            out.push(Extent {
                start: pos,
                len: e.end() - pos,
            });
        }
    }
    out
}

fn write_zeros(
    ctx: &mut Ctx<'_>,
    disk: &mut dyn Disk,
    extents: &[Extent],
    meter: &mut Meter,
) -> Result<(), WipeError> {
    let zeros = AlignedBuf::zeroed(WRITE_CHUNK as usize);
    for e in extents {
        let mut off = e.start;
        while off < e.end() {
            ctx.cancelled()?;
            let n = (e.end() - off).min(WRITE_CHUNK);
            disk.write_at(off, &zeros.as_slice()[..n as usize])
                .map_err(ctx.io(Op::Write, off, n))?;
            ctx.summary.bytes_written += n;
            meter.add(n);
            off += n;
        }
    }
    Ok(())
}

/// The whole disk to zeros: BLKZEROOUT where the transport has it, else writes.
fn zero_whole(ctx: &mut Ctx<'_>, disk: &mut dyn Disk) -> Result<(), WipeError> {
    let size = disk.size();
    let mut meter = ctx.meter(Phase::Wiping, size);
    let mut off = 0;
    while off < size {
        ctx.cancelled()?;
        let n = (size - off).min(OFFLOAD_CHUNK);
        match disk.zeroout(off, n) {
            Ok(()) => {
                ctx.summary.bytes_offloaded += n;
                meter.add(n);
                off += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported && off == 0 => {
                tracing::debug!(reason = %e, "no zero-out offload: writing zeros");
                break;
            }
            Err(e) => return Err(ctx.io(Op::ZeroOut, off, n)(e)),
        }
    }
    if off == size {
        ctx.summary.methods.push("zeroout".into());
    } else {
        write_zeros(
            ctx,
            disk,
            &[Extent {
                start: off,
                len: size - off,
            }],
            &mut meter,
        )?;
        ctx.summary.methods.push("write".into());
    }
    meter.finish();
    Ok(())
}

/// The whole disk discarded, securely where the device can. A device without discard is
/// zeroed instead (said in the notes): a clean disk matters more than the method.
fn discard_whole(ctx: &mut Ctx<'_>, disk: &mut dyn Disk) -> Result<(), WipeError> {
    let size = disk.size();
    let mut meter = ctx.meter(Phase::Wiping, size);
    let mut secure = true;
    let mut off = 0;
    while off < size {
        ctx.cancelled()?;
        let n = (size - off).min(OFFLOAD_CHUNK);
        match disk.discard(off, n, secure) {
            Ok(()) => {
                ctx.summary.bytes_offloaded += n;
                meter.add(n);
                off += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported && off == 0 && secure => {
                tracing::debug!(reason = %e, "no secure discard: plain discard");
                secure = false;
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported && off == 0 => {
                drop(meter);
                ctx.note(format!("discard not supported ({e}): zeroing instead"));
                return zero_whole(ctx, disk);
            }
            Err(e) => return Err(ctx.io(Op::Discard, off, n)(e)),
        }
    }
    meter.finish();
    ctx.summary.methods.push(if secure {
        "secure discard".into()
    } else {
        "discard".into()
    });
    Ok(())
}

fn flush(ctx: &Ctx<'_>, disk: &mut dyn Disk) -> Result<(), WipeError> {
    disk.flush().map_err(ctx.io(Op::Flush, 0, 0))
}

/// The edges and the samples read back as zeros and nothing is left to probe.
fn verify_zero(ctx: &mut Ctx<'_>, disk: &dyn Disk, partitions: &[Extent]) -> Result<(), WipeError> {
    let start = Instant::now();
    let seed = verify::seed(&ctx.opts.command_id, &ctx.name);
    let extents = sample_extents(disk.size(), ctx.opts.samples, seed);
    let total = extents.iter().map(|e| e.len).sum();
    let mut meter = ctx.meter(Phase::Verifying, total);
    let read = check_zero(disk, &extents, &mut meter, ctx.cancel)?;
    check_clean(disk, partitions)?;
    meter.finish();
    ctx.summary.verified_bytes += read;
    ctx.summary.verified_regions += extents.len() as u32;
    ctx.summary.verify_time += start.elapsed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(start: u64, len: u64) -> Extent {
        Extent { start, len }
    }

    #[test]
    fn subtracting() {
        let v = vec![x(0, 10), x(20, 10), x(40, 10)];
        assert_eq!(
            subtract(v, &[x(5, 2), x(8, 14), x(45, 100)]),
            [x(0, 5), x(7, 1), x(22, 8), x(40, 5)]
        );
    }

    #[test]
    fn aligning() {
        assert_eq!(
            align(vec![x(100, 10), x(1000, 100), x(5000, 10)], 512, 4096),
            [x(0, 1536)]
        );
    }
}
