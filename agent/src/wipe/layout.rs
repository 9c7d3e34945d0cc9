//! Where the partition tables and partitions of a disk are, so that a fast wipe also removes
//! the signatures inside each partition: otherwise a new table with the same layout brings
//! the old filesystems back (the "dirty disk" that a wipe of the table alone leaves).
//!
//! Deliberately lenient: a header with the right magic is believed without checking its CRC
//! (wiping a little more is harmless, leaving a corrupt-but-recoverable table is not), and
//! every number is bounded by the disk's size.
use std::io;

use crate::hw::signatures::ReadAt;

/// A byte range on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What the partition tables say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Every partition found (GPT entries, MBR primaries and logicals), clamped to the disk.
    pub partitions: Vec<Extent>,
    /// The tables themselves: GPT headers and entry arrays where the headers say they are
    /// (a backup GPT left in the middle of a disk that was copied to a bigger one included),
    /// the MBR and the extended boot records.
    pub tables: Vec<Extent>,
}

const MAX_PARTITIONS: usize = 256;
const MAX_ENTRY_ARRAY: u64 = 1 << 20;
const MAX_EBRS: usize = 128;

fn read(dev: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|e| e > dev.size())
    {
        return Ok(None);
    }
    let mut buf = vec![0; len];
    let n = dev.read_at(offset, &mut buf)?;
    Ok((n == len).then_some(buf))
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

struct Collector {
    size: u64,
    layout: Layout,
}

impl Collector {
    fn add(list: &mut Vec<Extent>, size: u64, start: u64, len: u64) {
        if start >= size || len == 0 {
            return;
        }
        let e = Extent {
            start,
            len: len.min(size - start),
        };
        if !list.contains(&e) {
            list.push(e);
        }
    }
    fn table(&mut self, start: u64, len: u64) {
        Self::add(&mut self.layout.tables, self.size, start, len);
    }
    fn partition(&mut self, start: u64, len: u64) {
        if self.layout.partitions.len() < MAX_PARTITIONS {
            Self::add(&mut self.layout.partitions, self.size, start, len);
        }
    }
}

/// Reads the GPT (both copies, at the device's sector size or the other common one) and the
/// MBR. Read errors are returned: a disk that cannot be read cannot be wiped safely either.
pub fn read_layout(dev: &dyn ReadAt, logical_block_size: u32) -> io::Result<Layout> {
    let size = dev.size();
    let mut c = Collector {
        size,
        layout: Layout::default(),
    };
    let mut sectors = vec![u64::from(logical_block_size.max(512))];
    for s in [512, 4096] {
        if !sectors.contains(&s) {
            sectors.push(s);
        }
    }
    for sector in sectors {
        let mut headers = vec![sector];
        if size >= 2 * sector {
            headers.push((size / sector - 1) * sector);
        }
        let mut i = 0;
        while i < headers.len() && i < 4 {
            let at = headers[i];
            i += 1;
            let Some(h) = read(dev, at, 92)? else {
                continue;
            };
            if &h[..8] != b"EFI PART" {
                continue;
            }
            c.table(at, sector);
            // The other copy, where this header says it is.
            if let Some(alt) = le64(&h, 32).checked_mul(sector) {
                if alt < size && !headers.contains(&alt) {
                    headers.push(alt);
                }
            }
            gpt_entries(dev, &mut c, &h, sector)?;
        }
    }

    if let Some(mbr) = read(dev, 0, 512)? {
        if mbr[510..512] == [0x55, 0xAA] {
            mbr_entries(dev, &mut c, &mbr, u64::from(logical_block_size.max(512)))?;
        }
    }
    c.layout.partitions.sort();
    c.layout.tables.sort();
    Ok(c.layout)
}

fn gpt_entries(dev: &dyn ReadAt, c: &mut Collector, h: &[u8], sector: u64) -> io::Result<()> {
    let entries_lba = le64(h, 72);
    let count = u64::from(le32(h, 80));
    let entry_size = u64::from(le32(h, 84));
    if !(128..=4096).contains(&entry_size) {
        return Ok(());
    }
    let (Some(at), Some(len)) = (
        entries_lba.checked_mul(sector),
        count
            .checked_mul(entry_size)
            .filter(|&l| l <= MAX_ENTRY_ARRAY),
    ) else {
        return Ok(());
    };
    c.table(at, len.div_ceil(sector) * sector);
    let Some(array) = read(dev, at, len as usize)? else {
        return Ok(());
    };
    for e in array.chunks_exact(entry_size as usize) {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            continue;
        }
        if let (Some(start), Some(len)) = (
            first.checked_mul(sector),
            (last - first + 1).checked_mul(sector),
        ) {
            c.partition(start, len);
        }
    }
    Ok(())
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr_entries(dev: &dyn ReadAt, c: &mut Collector, mbr: &[u8], sector: u64) -> io::Result<()> {
    let entries: Vec<&[u8]> = mbr[446..510].chunks(16).collect();
    if !entries.iter().all(|e| e[0] == 0 || e[0] == 0x80) {
        // Not a partition table (a boot sector of something else).
        return Ok(());
    }
    c.table(0, sector);
    for e in entries {
        let kind = e[4];
        let (start, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if kind == 0 || kind == 0xEE || count == 0 {
            continue;
        }
        if is_extended(kind) {
            logical_partitions(dev, c, start * sector, sector)?;
        } else {
            c.partition(start * sector, count * sector);
        }
    }
    Ok(())
}

/// Follows the chain of extended boot records, each holding one logical partition (relative
/// to itself) and the next record (relative to the extended partition).
fn logical_partitions(
    dev: &dyn ReadAt,
    c: &mut Collector,
    extended: u64,
    sector: u64,
) -> io::Result<()> {
    let mut ebr = extended;
    for _ in 0..MAX_EBRS {
        let Some(b) = read(dev, ebr, 512)? else {
            break;
        };
        if b[510..512] != [0x55, 0xAA] {
            break;
        }
        c.table(ebr, sector);
        let (this, next) = (&b[446..462], &b[462..478]);
        if this[4] != 0 && le32(this, 12) != 0 {
            c.partition(
                ebr + u64::from(le32(this, 8)) * sector,
                u64::from(le32(this, 12)) * sector,
            );
        }
        let rel = u64::from(le32(next, 8));
        if next[4] == 0 || rel == 0 {
            break;
        }
        let following = extended + rel * sector;
        if following <= ebr {
            break; // a loop
        }
        ebr = following;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn put(d: &mut [u8], at: usize, b: &[u8]) {
        d[at..at + b.len()].copy_from_slice(b);
    }

    fn mbr_entry(d: &mut [u8], base: usize, i: usize, kind: u8, start: u32, count: u32) {
        let e = base + 446 + 16 * i;
        put(d, e + 4, &[kind]);
        put(d, e + 8, &start.to_le_bytes());
        put(d, e + 12, &count.to_le_bytes());
        put(d, base + 510, &[0x55, 0xAA]);
    }

    #[test]
    fn mbr_primary_and_logical_partitions() {
        let mut d = vec![0u8; 8 * MIB];
        mbr_entry(&mut d, 0, 0, 0x83, 2048, 2048);
        mbr_entry(&mut d, 0, 1, 0x05, 4096, 8192);
        // First EBR at sector 4096: a logical at +2048, next EBR at extended+6144.
        mbr_entry(&mut d, 4096 * 512, 0, 0x83, 2048, 1024);
        mbr_entry(&mut d, 4096 * 512, 1, 0x05, 6144, 2048);
        mbr_entry(&mut d, 10240 * 512, 0, 0x82, 1024, 512);
        let l = read_layout(&d, 512).unwrap();
        let ext = |s: u64, n: u64| Extent {
            start: s * 512,
            len: n * 512,
        };
        assert_eq!(
            l.partitions,
            [ext(2048, 2048), ext(6144, 1024), ext(11264, 512)]
        );
        assert_eq!(l.tables, [ext(0, 1), ext(4096, 1), ext(10240, 1)]);
    }

    #[test]
    fn ebr_loops_end() {
        let mut d = vec![0u8; 4 * MIB];
        mbr_entry(&mut d, 0, 0, 0x0F, 2048, 4096);
        mbr_entry(&mut d, 2048 * 512, 0, 0x83, 64, 64);
        mbr_entry(&mut d, 2048 * 512, 1, 0x05, 0, 64);
        let l = read_layout(&d, 512).unwrap();
        assert_eq!(l.partitions.len(), 1);
    }

    #[test]
    fn gpt_backup_in_the_middle_of_a_grown_disk_is_found() {
        // A 4 MiB image copied to an 8 MiB disk: the primary points at its old backup.
        let mut d = vec![0u8; 8 * MIB];
        let mut h = [0u8; 92];
        put(&mut h, 0, b"EFI PART");
        put(&mut h, 32, &(4 * MIB as u64 / 512 - 1).to_le_bytes());
        put(&mut h, 72, &2u64.to_le_bytes());
        put(&mut h, 80, &128u32.to_le_bytes());
        put(&mut h, 84, &128u32.to_le_bytes());
        put(&mut d, 512, &h);
        let mut e = [0u8; 128];
        e[0] = 1;
        put(&mut e, 32, &2048u64.to_le_bytes());
        put(&mut e, 40, &4095u64.to_le_bytes());
        put(&mut d, 1024, &e);
        let old_backup = 4 * MIB - 512;
        put(&mut d, old_backup, b"EFI PART");
        let l = read_layout(&d, 512).unwrap();
        assert_eq!(
            l.partitions,
            [Extent {
                start: MIB as u64,
                len: MIB as u64
            }]
        );
        assert!(l.tables.contains(&Extent {
            start: old_backup as u64,
            len: 512
        }));
        assert!(l.tables.contains(&Extent {
            start: 1024,
            len: 128 * 128
        }));
    }

    #[test]
    fn absurd_numbers_are_bounded() {
        let mut d = vec![0u8; MIB];
        put(&mut d, 512, b"EFI PART");
        put(&mut d, 512 + 32, &u64::MAX.to_le_bytes());
        put(&mut d, 512 + 72, &u64::MAX.to_le_bytes());
        put(&mut d, 512 + 80, &u32::MAX.to_le_bytes());
        put(&mut d, 512 + 84, &128u32.to_le_bytes());
        mbr_entry(&mut d, 0, 0, 0x83, u32::MAX, u32::MAX);
        let l = read_layout(&d, 512).unwrap();
        assert!(l.partitions.is_empty());
        assert!(l.tables.iter().all(|e| e.end() <= MIB as u64));
    }
}
