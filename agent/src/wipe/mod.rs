//! Wiping the disks the server names, each in its own thread, every wipe verified.
//!
//! Modes (see [`Mode`]):
//! - `fast`: removes every signature wipefs/blkid would find, and those inside every
//!   partition the tables list (so a new table with the same layout cannot bring an old
//!   filesystem back), then zeroes the first and last 16 MiB of the disk and the first and
//!   last 1 MiB of every partition. Not a full erase: data between those areas stays.
//!   Verified by reading back every zeroed byte and probing the disk and the old partitions.
//! - `discard`: BLKSECDISCARD where the device has it, else BLKDISCARD, over the whole disk;
//!   verified by reading back zeros. Discard does not promise zeros (and Linux no longer
//!   reports `discard_zeroes_data`), so when the samples are not zero the disk is zeroed
//!   instead and the summary says so.
//! - `zero`: the whole disk, by BLKZEROOUT (WRITE ZEROES/WRITE SAME offload, or the kernel
//!   writing) where the transport has it, else 4 MiB aligned writes.
//! - `secure`: the drive's own secure erase: NVMe Format NVM with a cryptographic (else user
//!   data) erase, keeping the LBA format ([`nvme`]); refused with the reason elsewhere (ATA
//!   security erase is not implemented) and where the format would reach other namespaces.
//!   Verified by the absence of signatures: erased blocks read as whatever the drive says.
//!
//! Verification of `zero` and `discard` reads the first and last MiB in full and evenly
//! spread 64 KiB samples at offsets drawn from a seed derived from the command ID (a replayed
//! command samples the same places). It is sampling: proof that the wipe ran, not that every
//! sector reads zero.
//!
//! Safety: only named disks are opened; read-only, busy (mounted, swap, exclusively held)
//! and shared (holders: dm/multipath/md/LVM) disks are refused by the opener, a disk named
//! twice in one command is refused, and the server may pin the serial and size it saw.
use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod bench;
pub mod blockdev;
pub mod disk;
mod engine;
pub mod fake;
pub mod guard;
pub mod layout;
pub mod nvme;
pub mod progress;
mod verify;

#[cfg(test)]
mod tests;

pub use blockdev::DevOpener;
pub use disk::{Disk, DiskOpener, FileDisk, FileOpener, NoDisks};
pub use engine::wipe_disk;
pub use progress::{no_progress, Phase, Progress, ProgressSink};

/// How to wipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Fast,
    Discard,
    Zero,
    Secure,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Fast, Mode::Discard, Mode::Zero, Mode::Secure];

    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Discard => "discard",
            Mode::Zero => "zero",
            Mode::Secure => "secure",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown wipe mode {0:?} (fast, discard, zero, secure)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// One disk the command names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskRequest {
    /// Kernel name: "sda", "nvme0n1" (an image's file name for the file opener).
    pub name: String,
    /// When set, the disk's serial or WWN must match: names move when disks come and go.
    pub serial: Option<String>,
    /// When set, the disk's size in bytes must match.
    pub size_bytes: Option<u64>,
}

impl DiskRequest {
    pub fn named(name: &str) -> Self {
        DiskRequest {
            name: name.to_string(),
            ..Default::default()
        }
    }
}

/// How one command wipes.
#[derive(Debug, Clone)]
pub struct WipeOptions {
    pub mode: Mode,
    /// Seeds the verification samples.
    pub command_id: String,
    /// 64 KiB samples read back across the disk by `zero` and `discard`.
    pub samples: u32,
    /// Progress reports per disk at most this often.
    pub progress_interval: Duration,
}

impl WipeOptions {
    pub fn new(mode: Mode, command_id: &str) -> Self {
        WipeOptions {
            mode,
            command_id: command_id.to_string(),
            samples: 256,
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// What a finished wipe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeSummary {
    pub disk: String,
    pub mode: Mode,
    pub size: u64,
    /// What ran, in order: "write", "discard", "secure discard", "zeroout", "nvme format"...
    pub methods: Vec<String>,
    /// Bytes written as zeros by us.
    pub bytes_written: u64,
    /// Bytes handed to the device to discard or zero by itself.
    pub bytes_offloaded: u64,
    /// Signatures found before the wipe ("gpt@512", "ext4@1049656" ...).
    pub signatures_removed: Vec<String>,
    /// Partitions whose signature areas were wiped (fast mode).
    pub partitions: usize,
    pub wipe_time: Duration,
    pub verify_time: Duration,
    pub verified_bytes: u64,
    /// Separate regions read back (edges and samples).
    pub verified_regions: u32,
    /// What the operator should know: fallbacks taken, what the verification cannot prove.
    pub notes: Vec<String>,
}

/// One disk's outcome.
#[derive(Debug)]
pub struct DiskResult {
    pub disk: String,
    pub outcome: Result<WipeSummary, WipeError>,
}

/// What the I/O was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Discard,
    ZeroOut,
    Flush,
    SecureErase,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "reading",
            Op::Write => "writing",
            Op::Discard => "discarding",
            Op::ZeroOut => "zeroing out",
            Op::Flush => "flushing",
            Op::SecureErase => "secure-erasing",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error("{disk} not found")]
    NotFound { disk: String },
    #[error("refusing to wipe {disk}: read-only")]
    ReadOnly { disk: String },
    #[error("refusing to wipe {disk}: busy ({reason})")]
    Busy { disk: String, reason: String },
    #[error("refusing to wipe {disk}: shared, held by {holders}")]
    Shared { disk: String, holders: String },
    #[error("refusing to wipe {disk}: {reason}")]
    Refused { disk: String, reason: String },
    #[error("secure erase not supported on {disk} ({reason})")]
    SecureEraseUnsupported { disk: String, reason: String },
    #[error("opening {disk}")]
    Open {
        disk: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} {len} bytes at offset {offset} on {disk}")]
    Io {
        disk: String,
        op: Op,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("verification failed on {disk}: non-zero byte at offset {offset}")]
    NotZero { disk: String, offset: u64 },
    #[error("verification failed on {disk}: {signature} signature still at offset {offset}")]
    SignatureLeft {
        disk: String,
        signature: String,
        offset: u64,
    },
    #[error("wipe of {disk} cancelled")]
    Cancelled { disk: String },
    #[error("wipe of {disk} stopped unexpectedly")]
    Died { disk: String },
}

impl WipeError {
    /// The message with its causes, for the server and the console:
    /// "writing 4194304 bytes at offset 8388608 on sdb: Input/output error (os error 5)".
    pub fn reason(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }
}

/// A kernel disk name or an image file name: one path component, nothing clever.
pub(crate) fn check_name(name: &str) -> Result<(), WipeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(WipeError::Refused {
            disk: name.to_string(),
            reason: "not a disk name".into(),
        })
    }
}

/// Wipes every disk in `disks` with `opts.mode`, each in its own thread, and returns one
/// result per requested disk, in order. Disks are opened (and refused) first, here; the
/// wiping runs on blocking threads. When `shutdown` resolves, the wipes stop at their next
/// chunk and end as [`WipeError::Cancelled`]; this returns once all have stopped.
pub async fn wipe(
    disks: Vec<DiskRequest>,
    opts: WipeOptions,
    opener: &dyn DiskOpener,
    progress: ProgressSink,
    shutdown: impl Future<Output = ()>,
) -> Vec<DiskResult> {
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = Arc::new(opts);
    let mut slots = Vec::with_capacity(disks.len());
    let mut seen: Vec<&str> = Vec::new();
    for req in &disks {
        let opened = if seen.contains(&req.name.as_str()) {
            Err(WipeError::Refused {
                disk: req.name.clone(),
                reason: "named twice in one command".into(),
            })
        } else {
            seen.push(&req.name);
            opener.open(req)
        };
        match opened {
            Err(e) => {
                tracing::warn!(disk = %req.name, error = %e.reason(), "not wiping");
                slots.push((req.name.clone(), Err(e)));
            }
            Ok(mut disk) => {
                let (opts, progress, cancel) = (opts.clone(), progress.clone(), cancel.clone());
                let span = tracing::info_span!("wipe", disk = %req.name, mode = %opts.mode);
                let handle = tokio::task::spawn_blocking(move || {
                    let _enter = span.enter();
                    wipe_disk(disk.as_mut(), &opts, &progress, &cancel)
                });
                slots.push((req.name.clone(), Ok(handle)));
            }
        }
    }

    let collect = async {
        let mut results = Vec::with_capacity(slots.len());
        for (disk, slot) in slots {
            let outcome = match slot {
                Err(e) => Err(e),
                Ok(handle) => match handle.await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::error!(disk = %disk, error = %e, "wipe thread failed");
                        Err(WipeError::Died { disk: disk.clone() })
                    }
                },
            };
            match &outcome {
                Ok(s) => tracing::info!(
                    disk = %disk,
                    mode = %s.mode,
                    written = s.bytes_written,
                    offloaded = s.bytes_offloaded,
                    secs = s.wipe_time.as_secs_f64(),
                    verified = s.verified_bytes,
                    "wiped and verified"
                ),
                Err(e) => tracing::error!(disk = %disk, error = %e.reason(), "wipe failed"),
            }
            results.push(DiskResult { disk, outcome });
        }
        results
    };
    let stop = async {
        shutdown.await;
        tracing::warn!("shutdown: cancelling wipes");
        cancel.store(true, Ordering::Relaxed);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        results = collect => results,
        () = stop => unreachable!("pending never resolves"),
    }
}
