//! Reading a wipe back: which regions to read, and checking that they are zero and that no
//! signature or partition table is left.
use std::sync::atomic::{AtomicBool, Ordering};

use super::disk::{AlignedBuf, Disk, DiskReader, Window};
use super::layout::{read_layout, Extent};
use super::progress::Meter;
use super::{Op, WipeError};
use crate::hw::signatures::probe;

const MIB: u64 = 1 << 20;
/// Read back in full at each end of the disk.
pub const EDGE_CHECK: u64 = MIB;
/// One sample.
pub const SAMPLE: u64 = 64 << 10;
const READ_CHUNK: usize = 4 << 20;

/// splitmix64: tiny, and stable across versions of any crate (the same command ID samples
/// the same offsets on every build).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a over the command ID and the disk name: every disk gets its own offsets.
pub fn seed(command_id: &str, disk: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in command_id.bytes().chain([0]).chain(disk.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The first and last [`EDGE_CHECK`] bytes, plus `samples` [`SAMPLE`]-sized regions, one
/// at a random aligned offset inside each of `samples` equal stretches of the rest of the
/// disk (spread like evenly spaced samples, but not predictable without the seed).
/// Sorted, merged, within the disk.
pub fn sample_extents(size: u64, samples: u32, seed: u64) -> Vec<Extent> {
    if size <= 2 * EDGE_CHECK + SAMPLE {
        return vec![Extent {
            start: 0,
            len: size,
        }];
    }
    let mut out = vec![
        Extent {
            start: 0,
            len: EDGE_CHECK,
        },
        Extent {
            start: size - EDGE_CHECK,
            len: EDGE_CHECK,
        },
    ];
    let (lo, hi) = (EDGE_CHECK, size - EDGE_CHECK);
    let slots = (hi - lo) / SAMPLE;
    let n = u64::from(samples).min(slots);
    let mut rng = SplitMix(seed);
    for i in 0..n {
        // Stretch i covers sample slots [a, b).
        let (a, b) = (i * slots / n, (i + 1) * slots / n);
        let slot = a + rng.next() % (b - a).max(1);
        out.push(Extent {
            start: lo + slot * SAMPLE,
            len: SAMPLE,
        });
    }
    merge(out)
}

/// Sorts and merges overlapping or touching extents.
pub fn merge(mut v: Vec<Extent>) -> Vec<Extent> {
    v.retain(|e| e.len > 0);
    v.sort();
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(last) if e.start <= last.end() => {
                let end = last.end().max(e.end());
                last.len = end - last.start;
            }
            _ => out.push(e),
        }
    }
    out
}

/// Reads every extent and fails at the first non-zero byte. Returns the bytes read.
pub(crate) fn check_zero(
    disk: &dyn Disk,
    extents: &[Extent],
    meter: &mut Meter,
    cancel: &AtomicBool,
) -> Result<u64, WipeError> {
    let mut buf = AlignedBuf::zeroed(READ_CHUNK);
    let mut read = 0;
    for e in extents {
        let mut off = e.start;
        while off < e.end() {
            if cancel.load(Ordering::Relaxed) {
                return Err(WipeError::Cancelled {
                    disk: disk.name().to_string(),
                });
            }
            let n = (e.end() - off).min(READ_CHUNK as u64) as usize;
            let chunk = &mut buf.as_mut_slice()[..n];
            disk.read_at(off, chunk).map_err(|source| WipeError::Io {
                disk: disk.name().to_string(),
                op: Op::Read,
                offset: off,
                len: n as u64,
                source,
            })?;
            if let Some(i) = first_non_zero(chunk) {
                return Err(WipeError::NotZero {
                    disk: disk.name().to_string(),
                    offset: off + i as u64,
                });
            }
            off += n as u64;
            read += n as u64;
            meter.add(n as u64);
        }
    }
    Ok(read)
}

fn first_non_zero(b: &[u8]) -> Option<usize> {
    // Whole words first: this runs over every byte read back.
    let words = b.chunks_exact(8);
    let tail = words.remainder().len();
    for (i, w) in words.enumerate() {
        if u64::from_ne_bytes(w.try_into().expect("8 bytes")) != 0 {
            return w.iter().position(|&x| x != 0).map(|j| i * 8 + j);
        }
    }
    let base = b.len() - tail;
    b[base..].iter().position(|&x| x != 0).map(|j| base + j)
}

/// Fails when `probe` still finds a signature on the disk or in one of the partitions it
/// had before, or when a partition table can still be read.
pub(crate) fn check_clean(disk: &dyn Disk, partitions: &[Extent]) -> Result<(), WipeError> {
    let lbs = disk.logical_block_size();
    let io_err = |offset, source| WipeError::Io {
        disk: disk.name().to_string(),
        op: Op::Read,
        offset,
        len: 0,
        source,
    };
    let left = |signature: &str, offset| WipeError::SignatureLeft {
        disk: disk.name().to_string(),
        signature: signature.to_string(),
        offset,
    };
    let found = probe(&DiskReader(disk), lbs).map_err(|e| io_err(0, e))?;
    if let Some(s) = found.signatures.first() {
        return Err(left(s.name, s.offset));
    }
    for p in partitions {
        let w = Window {
            disk,
            start: p.start,
            len: p.len,
        };
        let found = probe(&w, lbs).map_err(|e| io_err(p.start, e))?;
        if let Some(s) = found.signatures.first() {
            return Err(left(s.name, p.start + s.offset));
        }
    }
    let layout = read_layout(&DiskReader(disk), lbs).map_err(|e| io_err(0, e))?;
    if let Some(t) = layout.tables.first() {
        return Err(left("partition table", t.start));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_the_disk_evenly_and_repeat_per_seed() {
        let size = 10 << 30;
        let a = sample_extents(size, 256, seed("cmd-1", "sda"));
        let b = sample_extents(size, 256, seed("cmd-1", "sda"));
        let c = sample_extents(size, 256, seed("cmd-2", "sda"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 258);
        assert_eq!(a[0], Extent { start: 0, len: MIB });
        assert_eq!(a.last().unwrap().end(), size);
        // One sample in each of 256 stretches of the middle.
        let stretch = (size - 2 * MIB) / 256;
        for (i, e) in a[1..257].iter().enumerate() {
            let i = i as u64;
            assert_eq!(e.len, SAMPLE);
            assert_eq!(e.start % SAMPLE, 0);
            assert!(e.start >= MIB + i * stretch - SAMPLE, "{i}");
            assert!(e.end() <= MIB + (i + 1) * stretch + SAMPLE, "{i}");
        }
    }

    #[test]
    fn small_disks_are_read_whole() {
        assert_eq!(sample_extents(MIB, 256, 1), [Extent { start: 0, len: MIB }]);
        let e = sample_extents(3 * MIB, 1000, 1);
        let total: u64 = e.iter().map(|e| e.len).sum();
        assert_eq!(total, 3 * MIB);
    }

    #[test]
    fn merging() {
        let x = |s, l| Extent { start: s, len: l };
        assert_eq!(
            merge(vec![x(10, 5), x(0, 10), x(30, 1), x(12, 10), x(40, 0)]),
            [x(0, 22), x(30, 1)]
        );
    }

    #[test]
    fn non_zero_found_anywhere() {
        for i in 0..40 {
            let mut b = vec![0u8; 37];
            if i < 37 {
                b[i] = 1;
                assert_eq!(first_non_zero(&b), Some(i));
            } else {
                assert_eq!(first_non_zero(&b), None);
            }
        }
    }
}
