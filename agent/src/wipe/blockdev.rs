//! The real transport: a whole-disk block device, opened O_DIRECT|O_EXCL.
//!
//! The only file of the crate with `unsafe`: the block ioctls (BLKDISCARD, BLKSECDISCARD,
//! BLKZEROOUT, BLKRRPART) and NVMe admin passthrough (NVME_IOCTL_ID, NVME_IOCTL_ADMIN_CMD)
//! have no safe wrapper in nix. Each call passes the fd of the open device and a pointer to
//! a local `[u64; 2]` or a `NvmeAdminCmd` (whose data pointer, when set, is a live 4 KiB
//! buffer), nothing else. Everything that needs no ioctl does without: the size by seeking
//! to the end, the block size and the flags from sysfs. What to format is decided in
//! [`super::nvme`], in safe code.
//!
//! O_EXCL on a block device is the kernel's "in use" check: it fails with EBUSY while the
//! disk or one of its partitions is mounted, used as swap, a member of md/dm/LVM/multipath,
//! or opened exclusively by anyone else; while we hold it, none of those can start.
//! O_DIRECT makes the verification read the device, not the page cache.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;

use super::disk::{from_errno, unsupported, AlignedBuf, Disk, DiskOpener, BUF_ALIGN};
use super::nvme::{self, CNS_ACTIVE_NSIDS, CNS_CONTROLLER, CNS_NAMESPACE, IDENTIFY_LEN};
use super::{guard, DiskRequest, WipeError};

/// `struct nvme_passthru_cmd` of <linux/nvme_ioctl.h> (`nvme_admin_cmd` is the same).
#[repr(C)]
#[derive(Debug, Default)]
pub struct NvmeAdminCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeAdminCmd>() == 72);

/// A user data erase of a large drive takes its time; a crypto erase takes seconds.
const FORMAT_TIMEOUT_MS: u32 = 4 * 3600 * 1000;

mod ioctl {
    nix::ioctl_none!(nvme_ioctl_id, b'N', 0x40);
    nix::ioctl_readwrite!(nvme_admin_cmd, b'N', 0x41, super::NvmeAdminCmd);

    // <linux/fs.h>: each takes a pointer to {offset, length} in bytes.
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blksecdiscard, nix::request_code_none!(0x12, 125), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_none_bad!(blkrrpart, nix::request_code_none!(0x12, 95));
}

type RangeIoctl = unsafe fn(libc::c_int, *const [u64; 2]) -> nix::Result<libc::c_int>;

/// Opens `root/dev/<name>` for the disks that pass [`guard::check`] under `root`.
pub struct DevOpener {
    pub root: PathBuf,
}

impl DevOpener {
    pub fn new(root: &Path) -> Self {
        DevOpener {
            root: root.to_path_buf(),
        }
    }
}

impl DiskOpener for DevOpener {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        let dev = guard::check(&self.root, req)?;
        let path = self.root.join("dev").join(&req.name);
        let bus = dev.bus.clone();
        let disk = BlockDisk::open(&req.name, &path, dev.logical_sector_size, bus)?;
        Ok(Box::new(disk))
    }
}

/// A whole disk, held exclusively while it is open.
pub struct BlockDisk {
    name: String,
    file: File,
    size: u64,
    block_size: u32,
    direct: bool,
    /// From sysfs: nvme, sata, sas, scsi, usb, virtio, mmc...
    bus: String,
}

impl BlockDisk {
    /// Opens `path` read-write, O_EXCL, and O_DIRECT unless the device refuses it.
    pub fn open(name: &str, path: &Path, block_size: u32, bus: String) -> Result<Self, WipeError> {
        let open = |direct: bool| {
            let flags = libc::O_EXCL | if direct { libc::O_DIRECT } else { 0 };
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let (mut file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(disk = %name, "O_DIRECT refused: buffered I/O");
                (open(false).map_err(|e| open_error(name, e))?, false)
            }
            Err(e) => return Err(open_error(name, e)),
        };
        let meta = file.metadata().map_err(|source| WipeError::Open {
            disk: name.to_string(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            tracing::warn!(disk = %name, path = %path.display(), "not a block device");
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| WipeError::Open {
                disk: name.to_string(),
                source,
            })?;
        Ok(BlockDisk {
            name: name.to_string(),
            file,
            size,
            block_size: block_size.max(512),
            direct,
            bus,
        })
    }

    fn range_ioctl(&self, call: RangeIoctl, offset: u64, len: u64, what: &str) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: the fd is open for as long as `self.file` lives, and the kernel only reads
        // 16 bytes from `range`, a live local.
        let res = unsafe { call(self.file.as_raw_fd(), &range) };
        res.map(drop).map_err(|e| from_errno(e, what))
    }

    /// Sends an admin command; a non-zero NVMe status is an error saying which.
    fn admin(&self, cmd: &mut NvmeAdminCmd) -> io::Result<u32> {
        // SAFETY: the fd is open for as long as `self.file` lives; `cmd` is a live
        // nvme_passthru_cmd, and its `addr`, when set by the callers below, points to a live
        // buffer of `data_len` bytes that outlives the call.
        let res = unsafe { ioctl::nvme_admin_cmd(self.file.as_raw_fd(), cmd) };
        let status = res.map_err(|e| from_errno(e, "NVME_IOCTL_ADMIN_CMD"))?;
        if status != 0 {
            return Err(io::Error::other(nvme::status_text(status as u32)));
        }
        Ok(cmd.result)
    }

    fn identify(&self, cns: u32, nsid: u32) -> io::Result<AlignedBuf> {
        let mut buf = AlignedBuf::zeroed(IDENTIFY_LEN);
        let mut cmd = NvmeAdminCmd {
            opcode: nvme::OPC_IDENTIFY,
            nsid,
            addr: buf.as_mut_slice().as_mut_ptr() as u64,
            data_len: IDENTIFY_LEN as u32,
            cdw10: cns,
            ..Default::default()
        };
        self.admin(&mut cmd)?;
        Ok(buf)
    }

    /// Format NVM with secure erase of this namespace, keeping its LBA format.
    fn nvme_format(&mut self) -> io::Result<String> {
        // SAFETY: the fd is open for as long as `self.file` lives; NVME_IOCTL_ID takes no
        // argument and returns the namespace ID.
        let res = unsafe { ioctl::nvme_ioctl_id(self.file.as_raw_fd()) };
        let nsid = res.map_err(|e| from_errno(e, "NVME_IOCTL_ID"))? as u32;
        let controller = self.identify(CNS_CONTROLLER, 0)?;
        let namespace = self.identify(CNS_NAMESPACE, nsid)?;
        let active = nvme::count_active(self.identify(CNS_ACTIVE_NSIDS, 0)?.as_slice());
        let plan = nvme::plan_format(controller.as_slice(), namespace.as_slice(), active, nsid)
            .map_err(|reason| unsupported(&reason))?;
        tracing::warn!(disk = %self.name, nsid, cdw10 = plan.cdw10, "{}", plan.method);
        let mut cmd = NvmeAdminCmd {
            opcode: nvme::OPC_FORMAT_NVM,
            nsid: plan.nsid,
            cdw10: plan.cdw10,
            timeout_ms: FORMAT_TIMEOUT_MS,
            ..Default::default()
        };
        self.admin(&mut cmd)?;
        Ok(plan.method)
    }

    fn aligned(&self, offset: u64, len: usize) -> bool {
        let b = u64::from(self.block_size);
        offset.is_multiple_of(b) && (len as u64).is_multiple_of(b)
    }
}

fn open_error(name: &str, e: io::Error) -> WipeError {
    let disk = name.to_string();
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EBUSY) => WipeError::Busy {
            disk,
            reason: "held exclusively: mounted, swap, or part of md/dm/LVM/multipath".into(),
        },
        Some(Errno::EROFS) | Some(Errno::EACCES) | Some(Errno::EPERM) => {
            WipeError::ReadOnly { disk }
        }
        Some(Errno::ENOENT) | Some(Errno::ENXIO) => WipeError::NotFound { disk },
        Some(Errno::ENOMEDIUM) => WipeError::Refused {
            disk,
            reason: "no medium".into(),
        },
        _ => WipeError::Open { disk, source: e },
    }
}

impl Disk for BlockDisk {
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
        if offset + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        if !self.direct {
            return self.file.read_exact_at(buf, offset);
        }
        // O_DIRECT reads whole blocks into an aligned buffer; copy out what was asked for.
        let b = u64::from(self.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let start = at / b * b;
            let want = (buf.len() - done).min(4 << 20);
            let end = (at + want as u64).div_ceil(b) * b;
            let mut bounce = AlignedBuf::zeroed((end - start) as usize);
            self.file.read_exact_at(bounce.as_mut_slice(), start)?;
            let skip = (at - start) as usize;
            buf[done..done + want].copy_from_slice(&bounce.as_slice()[skip..skip + want]);
            done += want;
        }
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        if !self.aligned(offset, buf.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "O_DIRECT write not aligned to the logical block size",
            ));
        }
        if (buf.as_ptr() as usize).is_multiple_of(BUF_ALIGN) {
            self.file.write_all_at(buf, offset)
        } else {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            bounce.as_mut_slice().copy_from_slice(buf);
            self.file.write_all_at(bounce.as_slice(), offset)
        }
    }
    fn discard(&mut self, offset: u64, len: u64, secure: bool) -> io::Result<()> {
        if secure {
            self.range_ioctl(ioctl::blksecdiscard, offset, len, "BLKSECDISCARD")
        } else {
            self.range_ioctl(ioctl::blkdiscard, offset, len, "BLKDISCARD")
        }
    }
    fn zeroout(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(ioctl::blkzeroout, offset, len, "BLKZEROOUT")
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn reread_partitions(&mut self) -> io::Result<()> {
        // SAFETY: the fd is open for as long as `self.file` lives; BLKRRPART takes no argument.
        let res = unsafe { ioctl::blkrrpart(self.file.as_raw_fd()) };
        res.map(drop).map_err(|e| from_errno(e, "BLKRRPART"))
    }
    fn secure_erase(&mut self) -> io::Result<String> {
        if self.bus == "nvme" {
            return self.nvme_format();
        }
        Err(unsupported(secure_erase_refusal(&self.bus)))
    }
}

/// Why a disk on `bus` gets no secure erase from this agent (yet).
pub fn secure_erase_refusal(bus: &str) -> &'static str {
    match bus {
        "nvme" => {
            "NVMe Format with Secure Erase Settings is not implemented yet; use zero or discard"
        }
        "sata" | "sas" | "scsi" => {
            "ATA/SCSI security erase is not implemented: it needs ATA passthrough and an \
             unfrozen drive; use zero"
        }
        "mmc" => "eMMC has no secure erase command beyond secure discard; use discard",
        "usb" => "USB bridges do not pass secure erase through",
        "virtio" => "virtio disks have no secure erase",
        _ => "no secure erase command for this transport",
    }
}
