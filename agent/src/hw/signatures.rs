//! What is written on a disk: partition tables and filesystem, RAID, LVM and swap signatures,
//! found by their magic bytes at their standard offsets (the ones blkid and wipefs look at).
//!
//! [`probe`] reads through [`ReadAt`], so the same code runs on a block device, a file or a
//! buffer in memory; the wipe code uses it to prove a wipe left nothing behind.
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Random-access reads from something with a fixed size.
pub trait ReadAt {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

/// A block device or image file opened read-only.
pub struct DeviceFile {
    file: File,
    size: u64,
}

impl DeviceFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        // A block device's metadata says 0 bytes; seeking to its end gives the real size.
        let size = (&file).seek(SeekFrom::End(0))?;
        Ok(DeviceFile { file, size })
    }
}

impl ReadAt for DeviceFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// One signature: what it is and where its magic sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// gpt, pmbr, dos, ext2, ext3, ext4, xfs, lvm2, linux_raid, swap, btrfs, vfat, iso9660,
    /// ntfs, luks, bluestore.
    pub name: &'static str,
    /// Byte offset of the magic on the device.
    pub offset: u64,
}

/// Everything [`probe`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// "gpt", "dos", or `None`.
    pub partition_table: Option<&'static str>,
    /// In the order found; a name may repeat (primary and backup GPT header).
    pub signatures: Vec<Signature>,
}

impl Probe {
    /// Signature names, each once, in the order found.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.signatures {
            if !names.iter().any(|n| n == s.name) {
                names.push(s.name.to_string());
            }
        }
        names
    }

    /// True when nothing at all was found (a wiped disk).
    pub fn is_clean(&self) -> bool {
        self.signatures.is_empty()
    }
}

/// `len` bytes at `offset`, or `None` when the device ends before them.
fn bytes_at(dev: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > dev.size())
    {
        return Ok(None);
    }
    let mut buf = vec![0; len];
    let n = dev.read_at(offset, &mut buf)?;
    Ok((n == len).then_some(buf))
}

fn has_magic(dev: &dyn ReadAt, offset: u64, magic: &[u8]) -> io::Result<bool> {
    Ok(bytes_at(dev, offset, magic.len())?.is_some_and(|b| b == magic))
}

const GPT_MAGIC: &[u8] = b"EFI PART";
const MD_MAGIC: [u8; 4] = 0xa92b_4efc_u32.to_le_bytes();
const KIB: u64 = 1024;

/// Looks for every known signature. `logical_sector_size` is the device's (512 or 4096);
/// GPT is looked for at both sizes anyway, since images get copied between disks.
/// Read errors are returned, never taken for "nothing there".
pub fn probe(dev: &dyn ReadAt, logical_sector_size: u32) -> io::Result<Probe> {
    let size = dev.size();
    let mut found = Vec::new();
    let mut add = |name, offset| found.push(Signature { name, offset });

    // GPT: primary header at LBA 1, backup at the last LBA.
    let mut sectors = vec![u64::from(logical_sector_size.max(512))];
    for s in [512, 4096] {
        if !sectors.contains(&s) {
            sectors.push(s);
        }
    }
    let mut gpt = false;
    for &sector in &sectors {
        if has_magic(dev, sector, GPT_MAGIC)? {
            add("gpt", sector);
            gpt = true;
        }
        if size >= 2 * sector && has_magic(dev, size - sector, GPT_MAGIC)? {
            add("gpt", size - sector);
            gpt = true;
        }
        if gpt {
            break;
        }
    }

    // Filesystems and volume signatures. Those that own sector 0 (FAT, NTFS) carry 0x55AA
    // there too, which must not be read as an MBR.
    let mut owns_sector0 = false;
    if let Some(sb) = bytes_at(dev, 1024, 0x68)? {
        if sb[0x38..0x3A] == [0x53, 0xEF] {
            let le = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
            let (compat, incompat) = (le(0x5C), le(0x60));
            // extents, 64bit or flex_bg make ext4; a journal alone makes ext3.
            let name = if incompat & (0x40 | 0x80 | 0x200) != 0 {
                "ext4"
            } else if compat & 0x4 != 0 {
                "ext3"
            } else {
                "ext2"
            };
            add(name, 1024 + 0x38);
        }
    }
    if has_magic(dev, 0, b"XFSB")? {
        add("xfs", 0);
        owns_sector0 = true;
    }
    for sector in 0..4u64 {
        if has_magic(dev, sector * 512, b"LABELONE")?
            && has_magic(dev, sector * 512 + 24, b"LVM2 001")?
        {
            add("lvm2", sector * 512);
        }
    }
    // md superblocks: 1.1 at 0, 1.2 at 4 KiB, 1.0 at 8-12 KiB from the end, 0.90 in the
    // last 64 KiB-aligned 64 KiB.
    let mut md_offsets = vec![0, 4 * KIB];
    let sectors_512 = size / 512;
    if sectors_512 >= 16 {
        md_offsets.push(((sectors_512 - 16) & !7) * 512);
    }
    if size >= 128 * KIB {
        md_offsets.push((size & !(64 * KIB - 1)) - 64 * KIB);
    }
    md_offsets.dedup();
    for offset in md_offsets {
        if has_magic(dev, offset, &MD_MAGIC)? {
            add("linux_raid", offset);
        }
    }
    for page in [4096u64, 8192, 16384, 65536] {
        for magic in [&b"SWAPSPACE2"[..], b"SWAP-SPACE"] {
            if has_magic(dev, page - 10, magic)? {
                add("swap", page - 10);
            }
        }
    }
    if has_magic(dev, 64 * KIB + 0x40, b"_BHRfS_M")? {
        add("btrfs", 64 * KIB + 0x40);
    }
    if let Some(boot) = bytes_at(dev, 0, 512)? {
        let signed = boot[510..512] == [0x55, 0xAA];
        let fat16 = boot[0x36..0x3B] == *b"FAT12" || boot[0x36..0x3B] == *b"FAT16";
        let fat32 = boot[0x52..0x57] == *b"FAT32";
        if signed && (fat16 || fat32) {
            add("vfat", 0);
            owns_sector0 = true;
        }
        if boot[3..11] == *b"NTFS    " {
            add("ntfs", 3);
            owns_sector0 = true;
        }
        if boot.starts_with(b"LUKS\xba\xbe") {
            add("luks", 0);
            owns_sector0 = true;
        }
        if boot.starts_with(b"bluestore block device") {
            add("bluestore", 0);
            owns_sector0 = true;
        }
        if signed && !owns_sector0 {
            // Four 16-byte partition entries at 446; boot flag 0x00 or 0x80, type at +4.
            let entries: Vec<&[u8]> = boot[446..510].chunks(16).collect();
            let sane = entries.iter().all(|e| e[0] == 0 || e[0] == 0x80);
            let protective = entries.iter().any(|e| e[4] == 0xEE);
            let used = entries.iter().any(|e| e[4] != 0);
            if sane && protective {
                add("pmbr", 510);
            } else if sane && used {
                add("dos", 510);
            }
        }
    }
    if has_magic(dev, 32 * KIB + 1, b"CD001")? {
        add("iso9660", 32 * KIB + 1);
    }

    let partition_table = if gpt {
        Some("gpt")
    } else if found.iter().any(|s| s.name == "dos") {
        Some("dos")
    } else {
        None
    };
    Ok(Probe {
        partition_table,
        signatures: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn disk(size: usize) -> Vec<u8> {
        vec![0; size]
    }

    fn put(d: &mut [u8], offset: usize, bytes: &[u8]) {
        d[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn names(d: &dyn ReadAt, sector: u32) -> Vec<String> {
        probe(d, sector).unwrap().names()
    }

    #[test]
    fn blank_disk_is_clean() {
        let p = probe(&disk(MIB), 512).unwrap();
        assert!(p.is_clean());
        assert_eq!(p.partition_table, None);
    }

    #[test]
    fn gpt_with_protective_mbr_512() {
        let mut d = disk(MIB);
        put(&mut d, 446 + 4, &[0xEE]);
        put(&mut d, 510, &[0x55, 0xAA]);
        put(&mut d, 512, GPT_MAGIC);
        put(&mut d, MIB - 512, GPT_MAGIC);
        let p = probe(&d, 512).unwrap();
        assert_eq!(p.partition_table, Some("gpt"));
        assert_eq!(
            p.signatures,
            vec![
                Signature {
                    name: "gpt",
                    offset: 512
                },
                Signature {
                    name: "gpt",
                    offset: (MIB - 512) as u64
                },
                Signature {
                    name: "pmbr",
                    offset: 510
                },
            ]
        );
        assert_eq!(p.names(), ["gpt", "pmbr"]);
    }

    #[test]
    fn gpt_on_4k_sectors_even_when_told_512() {
        let mut d = disk(MIB);
        put(&mut d, 4096, GPT_MAGIC);
        assert_eq!(probe(&d, 4096).unwrap().partition_table, Some("gpt"));
        assert_eq!(probe(&d, 512).unwrap().partition_table, Some("gpt"));
    }

    #[test]
    fn backup_gpt_alone_still_counts() {
        let mut d = disk(MIB);
        put(&mut d, MIB - 512, GPT_MAGIC);
        assert_eq!(names(&d, 512), ["gpt"]);
    }

    #[test]
    fn dos_mbr() {
        let mut d = disk(MIB);
        put(&mut d, 446, &[0x80, 0, 0, 0, 0x83]);
        put(&mut d, 510, &[0x55, 0xAA]);
        let p = probe(&d, 512).unwrap();
        assert_eq!(p.partition_table, Some("dos"));
        assert_eq!(p.names(), ["dos"]);
    }

    #[test]
    fn mbr_with_garbage_boot_flags_is_not_a_table() {
        let mut d = disk(MIB);
        put(&mut d, 446, &[0x12, 0, 0, 0, 0x83]);
        put(&mut d, 510, &[0x55, 0xAA]);
        assert!(probe(&d, 512).unwrap().is_clean());
    }

    #[test]
    fn ext_family() {
        let mut d = disk(MIB);
        put(&mut d, 1024 + 0x38, &[0x53, 0xEF]);
        assert_eq!(names(&d, 512), ["ext2"]);
        put(&mut d, 1024 + 0x5C, &[0x04]);
        assert_eq!(names(&d, 512), ["ext3"]);
        put(&mut d, 1024 + 0x60, &[0x40, 0x02]);
        assert_eq!(names(&d, 512), ["ext4"]);
    }

    #[test]
    fn xfs_btrfs_lvm_luks_bluestore_iso() {
        let cases: [(&str, usize, &[u8]); 6] = [
            ("xfs", 0, b"XFSB"),
            ("btrfs", 64 * 1024 + 0x40, b"_BHRfS_M"),
            ("luks", 0, b"LUKS\xba\xbe"),
            ("bluestore", 0, b"bluestore block device"),
            ("iso9660", 32 * 1024 + 1, b"CD001"),
            ("ntfs", 3, b"NTFS    "),
        ];
        for (name, offset, magic) in cases {
            let mut d = disk(MIB);
            put(&mut d, offset, magic);
            assert_eq!(names(&d, 512), [name], "{name}");
        }
        let mut d = disk(MIB);
        put(&mut d, 512, b"LABELONE");
        put(&mut d, 512 + 24, b"LVM2 001");
        assert_eq!(
            probe(&d, 512).unwrap().signatures,
            [Signature {
                name: "lvm2",
                offset: 512
            }]
        );
    }

    #[test]
    fn md_superblocks_at_every_version_offset() {
        let size = 10 * MIB + 12345;
        let v10 = ((size / 512 - 16) & !7) * 512;
        let v090 = (size & !(64 * 1024 - 1)) - 64 * 1024;
        for offset in [0, 4096, v10, v090] {
            let mut d = disk(size);
            put(&mut d, offset, &MD_MAGIC);
            let p = probe(&d, 512).unwrap();
            assert_eq!(
                p.signatures,
                [Signature {
                    name: "linux_raid",
                    offset: offset as u64
                }],
                "offset {offset}"
            );
        }
    }

    #[test]
    fn swap_on_4k_and_64k_pages() {
        for page in [4096, 65536] {
            let mut d = disk(MIB);
            put(&mut d, page - 10, b"SWAPSPACE2");
            assert_eq!(names(&d, 512), ["swap"], "page {page}");
        }
    }

    #[test]
    fn vfat_is_not_mistaken_for_mbr() {
        let mut d = disk(MIB);
        put(&mut d, 0x52, b"FAT32   ");
        put(&mut d, 446, &[0x12, 0x34]);
        put(&mut d, 510, &[0x55, 0xAA]);
        let p = probe(&d, 512).unwrap();
        assert_eq!(p.names(), ["vfat"]);
        assert_eq!(p.partition_table, None);
    }

    #[test]
    fn tiny_devices_do_not_trip_the_probe() {
        for size in [0, 1, 9, 511, 512, 1100, 4095] {
            assert!(probe(&disk(size), 512).unwrap().is_clean(), "size {size}");
        }
    }

    #[test]
    fn read_errors_are_not_clean() {
        struct Failing;
        impl ReadAt for Failing {
            fn size(&self) -> u64 {
                1 << 20
            }
            fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("medium error"))
            }
        }
        assert!(probe(&Failing, 512).is_err());
    }

    #[test]
    fn device_file_reads_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut d = disk(MIB);
        put(&mut d, 0, b"XFSB");
        std::fs::write(&path, &d).unwrap();
        let f = DeviceFile::open(&path).unwrap();
        assert_eq!(f.size(), MIB as u64);
        assert_eq!(probe(&f, 512).unwrap().names(), ["xfs"]);
    }
}
