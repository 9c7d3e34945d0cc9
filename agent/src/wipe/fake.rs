//! Disks in memory with injectable faults, for tests of the wipe and of the code above it.
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{unsupported, Disk, DiskOpener};
use super::{DiskRequest, WipeError};

/// What a [`MemDisk`] does wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Writes touching this offset fail with an I/O error (a bad sector).
    WriteFailsAt(u64),
    /// Writes succeed but change nothing (a lying controller or a broken cache).
    DropsWrites,
    /// Discards succeed but change nothing (discard without deterministic zeros). Writes
    /// and discards both do nothing under `DropsWrites`.
    DiscardKeepsData,
}

/// A disk in memory. The bytes are shared, so a test keeps a handle and looks at them after
/// the disk was moved into the wipe.
#[derive(Clone)]
pub struct MemDisk {
    pub name: String,
    pub data: Arc<Mutex<Vec<u8>>>,
    pub block_size: u32,
    pub fault: Fault,
    /// Offers zero-out offload (like BLKZEROOUT) when set.
    pub zeroout: bool,
    /// Offers secure erase when set.
    pub secure_erase: bool,
}

impl MemDisk {
    pub fn new(name: &str, data: Vec<u8>) -> Self {
        MemDisk {
            name: name.to_string(),
            data: Arc::new(Mutex::new(data)),
            block_size: 512,
            fault: Fault::None,
            zeroout: false,
            secure_erase: false,
        }
    }

    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    pub fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.bytes();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= d.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "past the end"))?;
        d[offset as usize..end as usize].fill(0);
        Ok(())
    }
}

impl Disk for MemDisk {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }
    fn logical_block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| d.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self.fault {
            Fault::WriteFailsAt(bad) if (offset..offset + buf.len() as u64).contains(&bad) => {
                return Err(io::Error::other(format!(
                    "medium error at sector {}",
                    bad / 512
                )));
            }
            Fault::DropsWrites => return Ok(()),
            _ => {}
        }
        let mut d = self.bytes();
        let start = offset as usize;
        let dst = d
            .get_mut(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past the end"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64, secure: bool) -> io::Result<()> {
        if secure {
            return Err(unsupported("no secure discard"));
        }
        if matches!(self.fault, Fault::DiscardKeepsData | Fault::DropsWrites) {
            return Ok(());
        }
        self.fill(offset, len)
    }
    fn zeroout(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if !self.zeroout {
            return Err(unsupported("no zero-out offload"));
        }
        if self.fault == Fault::DropsWrites {
            return Ok(());
        }
        self.fill(offset, len)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn secure_erase(&mut self) -> io::Result<String> {
        if !self.secure_erase {
            return Err(unsupported("fake disk without secure erase"));
        }
        let len = self.size();
        self.fill(0, len)?;
        Ok("fake secure erase".into())
    }
}

/// Hands out [`MemDisk`]s by name; a name it does not know is not found.
#[derive(Default)]
pub struct FakeOpener {
    pub disks: HashMap<String, MemDisk>,
    /// Names refused with this reason, as the real opener refuses busy disks.
    pub busy: HashMap<String, String>,
}

impl FakeOpener {
    pub fn with(disks: impl IntoIterator<Item = MemDisk>) -> Self {
        FakeOpener {
            disks: disks.into_iter().map(|d| (d.name.clone(), d)).collect(),
            busy: HashMap::new(),
        }
    }
}

impl DiskOpener for FakeOpener {
    fn open(&self, req: &DiskRequest) -> Result<Box<dyn Disk>, WipeError> {
        if let Some(reason) = self.busy.get(&req.name) {
            return Err(WipeError::Busy {
                disk: req.name.clone(),
                reason: reason.clone(),
            });
        }
        let disk = self
            .disks
            .get(&req.name)
            .ok_or_else(|| WipeError::NotFound {
                disk: req.name.clone(),
            })?;
        Ok(Box::new(disk.clone()))
    }
}
