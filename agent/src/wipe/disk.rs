//! The disk transport: every byte the wipe writes goes through [`Disk`], so the same code runs
//! on a block device ([`super::blockdev`]), an image file ([`FileDisk`]) or a fake
//! ([`super::fake`]).
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, FallocateFlags};

use super::{DiskRequest, WipeError};
use crate::hw::signatures::ReadAt;

/// Random-access writes, discards and reads on one disk.
///
/// Offsets and lengths handed to `write_at`, `discard` and `zeroout` by the wipe are multiples
/// of [`Disk::logical_block_size`], and write buffers come from [`AlignedBuf`], so an
/// implementation may use O_DIRECT. Reads may be at any offset.
pub trait Disk: Send {
    /// The name the command used ("sda", "nvme0n1", an image's file name).
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Logical block size in bytes (512 or 4096).
    fn logical_block_size(&self) -> u32;
    /// Fills all of `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Unmaps the range (`secure`: BLKSECDISCARD). `ErrorKind::Unsupported` when the transport
    /// cannot; a successful discard does not promise that the range reads back as zeros.
    fn discard(&mut self, offset: u64, len: u64, secure: bool) -> io::Result<()>;
    /// Zeroes the range without sending the zeros (BLKZEROOUT: WRITE ZEROES/WRITE SAME, or
    /// the kernel writing them). `ErrorKind::Unsupported` by default: the wipe then writes.
    fn zeroout(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(unsupported("no zero-out offload"))
    }
    /// Makes every write durable (fsync: the device's write cache is flushed too).
    fn flush(&mut self) -> io::Result<()>;
    /// Tells the kernel the partition table changed (BLKRRPART), so that the partitions it
    /// still lists go away. Nothing to do by default.
    fn reread_partitions(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Erases the whole disk with the drive's own secure erase and returns what was used.
    /// `ErrorKind::Unsupported`, with the reason as the message, when the drive or the
    /// transport has none.
    fn secure_erase(&mut self) -> io::Result<String> {
        Err(unsupported("the transport has no secure erase"))
    }
}

/// Opens the disks a command names, after the safety checks.
pub trait DiskOpener: Send + Sync {
    /// Opens `req.name` for writing; a disk that must not be wiped (read-only, busy, shared,
    /// not a whole disk, not the disk the server meant) is an error saying why.
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError>;
}

/// Refuses every disk, saying why: the opener of an agent that must not write disks (a
/// workstation running `siderite-agent run` without `--allow-disk-writes`).
pub struct NoDisks(pub &'static str);

impl DiskOpener for NoDisks {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        Err(WipeError::Refused {
            disk: req.name.clone(),
            reason: self.0.to_string(),
        })
    }
}

pub(crate) fn unsupported(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, why.to_string())
}

/// EOPNOTSUPP and ENOTTY (ioctl unknown to the driver) as `ErrorKind::Unsupported`, which std
/// only does for ENOSYS.
pub(crate) fn from_errno(e: nix::errno::Errno, what: &str) -> io::Error {
    use nix::errno::Errno;
    match e {
        Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::ENOSYS => {
            io::Error::new(io::ErrorKind::Unsupported, format!("{what}: {e}"))
        }
        e => io::Error::from(e),
    }
}

/// A zeroed buffer whose start is aligned for O_DIRECT (4 KiB covers every logical block
/// size and DMA alignment), without unsafe code: a slice of a slightly larger Vec.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

pub const BUF_ALIGN: usize = 4096;

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0u8; len + BUF_ALIGN];
        let start = (BUF_ALIGN - raw.as_ptr() as usize % BUF_ALIGN) % BUF_ALIGN;
        AlignedBuf { raw, start, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A disk seen through [`ReadAt`], for [`crate::hw::signatures::probe`].
pub struct DiskReader<'a>(pub &'a dyn Disk);

impl ReadAt for DiskReader<'_> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0.size().saturating_sub(offset) as usize);
        if n > 0 {
            self.0.read_at(offset, &mut buf[..n])?;
        }
        Ok(n)
    }
}

/// A window of a disk (a partition) seen through [`ReadAt`].
pub struct Window<'a> {
    pub disk: &'a dyn Disk,
    pub start: u64,
    pub len: u64,
}

impl ReadAt for Window<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(offset) as usize);
        if n > 0 {
            self.disk.read_at(self.start + offset, &mut buf[..n])?;
        }
        Ok(n)
    }
}

/// An image file as a disk: tests, benchmarks, and VM disk images. Discard punches holes
/// (fallocate PUNCH_HOLE|KEEP_SIZE), which reads back as zeros; there is no zero-out offload,
/// so the zero mode writes zeros like `dd` would.
pub struct FileDisk {
    name: String,
    file: File,
    size: u64,
    block_size: u32,
}

impl FileDisk {
    /// Opens `path` read-write. `block_size` plays the logical block size.
    pub fn open(path: &Path, block_size: u32) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(FileDisk {
            name,
            file,
            size,
            block_size,
        })
    }
}

impl Disk for FileDisk {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn logical_block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            // A disk does not grow; neither does its image.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        self.file.write_all_at(buf, offset)
    }
    fn discard(&mut self, offset: u64, len: u64, secure: bool) -> io::Result<()> {
        if secure {
            return Err(unsupported("files have no secure discard"));
        }
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let (off, len) = (to_off(offset)?, to_off(len)?);
        fallocate(&self.file, flags, off, len).map_err(|e| from_errno(e, "punch hole"))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn secure_erase(&mut self) -> io::Result<String> {
        Err(unsupported(
            "file transport: image files have no secure erase",
        ))
    }
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// Opens image files in one directory by name; a read-only file is refused like a read-only
/// disk (checked on the mode bits, since root could open it for writing anyway).
pub struct FileOpener {
    pub dir: PathBuf,
    pub block_size: u32,
}

impl FileOpener {
    pub fn new(dir: &Path) -> Self {
        FileOpener {
            dir: dir.to_path_buf(),
            block_size: 512,
        }
    }
}

impl DiskOpener for FileOpener {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        super::check_name(&req.name)?;
        let path = self.dir.join(&req.name);
        let meta = std::fs::metadata(&path).map_err(|source| WipeError::Open {
            disk: req.name.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(WipeError::Refused {
                disk: req.name.clone(),
                reason: "not an image file".into(),
            });
        }
        if meta.permissions().readonly() {
            return Err(WipeError::ReadOnly {
                disk: req.name.clone(),
            });
        }
        let disk = FileDisk::open(&path, self.block_size).map_err(|source| WipeError::Open {
            disk: req.name.clone(),
            source,
        })?;
        if let Some(expected) = req.size_bytes {
            if expected != disk.size() {
                return Err(WipeError::Refused {
                    disk: req.name.clone(),
                    reason: format!(
                        "size is {} bytes, the server expected {expected}",
                        disk.size()
                    ),
                });
            }
        }
        Ok(Box::new(disk))
    }
}
