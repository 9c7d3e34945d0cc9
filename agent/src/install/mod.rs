//! Installing what the server names: boot an install environment by kexec, or write a disk
//! image. Everything downloaded is checked against its SHA-512 as it streams in.
//!
//! - `kexec`: kernel and initrd go into memory (memfd: the agent runs in RAM and there is no
//!   disk to spare, and `kexec_file_load` takes file descriptors), are verified, and are
//!   staged with the command line. Restarting into them is the caller's last step.
//! - `image`: the image streams from HTTP through the optional zstd decoder onto the named
//!   disk in 4 MiB writes (never held whole in memory), is flushed, then read back and
//!   checked against the SHA-512 of what was written (and the server's, when given).
//!
//! Only what the server names is touched: the disk is opened through the wipe's
//! [`DiskOpener`], with its refusals (read-only, busy, shared, not a whole disk).
use std::sync::Arc;
use std::time::{Duration, Instant};

use siderite::proto::agent::v1::{Install, Progress};
use tokio::sync::watch;

mod download;
mod image;
pub mod kexec;
pub mod power;

pub use image::ImageSummary;
pub use power::{FakePower, KexecCall, LinuxPower, Power, PowerError, Restart};

use crate::wipe::{DiskOpener, WipeError};

/// Where progress and log lines of one command go (the session, when there is one).
pub trait Report: Send + Sync {
    /// `command_id` is left empty: the implementation knows it.
    fn progress(&self, p: Progress);
    fn log(&self, message: &str);
}

/// The one shutdown signal, as work in progress sees it.
#[derive(Clone)]
pub struct Stop(pub watch::Receiver<bool>);

impl Stop {
    /// Resolves once shutdown was signalled; never when the signal is gone.
    pub async fn stopped(&mut self) {
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// "kernel", "initrd", "image": names it in progress and errors.
    pub what: &'static str,
    pub url: reqwest::Url,
    /// Lowercase hex SHA-512 of the downloaded bytes.
    pub sha512: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexecPlan {
    pub kernel: Artifact,
    pub initrd: Option<Artifact>,
    pub cmdline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Raw,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    pub image: Artifact,
    pub compression: Compression,
    /// Lowercase hex SHA-512 of the unpacked image, as it must read back from the disk.
    pub unpacked_sha512: Option<String>,
    /// Kernel name of the target disk.
    pub disk: String,
}

/// A checked `Install` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Kexec(KexecPlan),
    Image(ImagePlan),
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error("downloading the {what} from {url}")]
    Download {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading the {what} from {url}: HTTP {status}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
    },
    #[error("{what} sha512 mismatch: expected {expected} got {got}")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },
    #[error("holding the {what} in memory")]
    Memory {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] WipeError),
    #[error("the image does not fit on {disk} ({size} bytes)")]
    TooLarge { disk: String, size: u64 },
    #[error("writing the image to {disk} at offset {offset}")]
    Write {
        disk: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("flushing {disk}")]
    Flush {
        disk: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the image back from {disk} at offset {offset}")]
    ReadBack {
        disk: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking the image")]
    Unpack(#[source] std::io::Error),
    #[error("the image writer stopped unexpectedly")]
    Died,
    #[error("install cancelled by shutdown")]
    Cancelled,
}

impl InstallError {
    /// The message with its causes, for the server and the console.
    pub fn reason(&self) -> String {
        if let InstallError::Disk(e) = self {
            // The guard is the wipe's; say what was refused here.
            return e
                .reason()
                .replacen("refusing to wipe", "refusing to write the image to", 1);
        }
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

fn invalid(msg: impl Into<String>) -> InstallError {
    InstallError::Invalid(msg.into())
}

impl Plan {
    /// Checks an `Install` command; nothing is downloaded or touched yet.
    pub fn parse(cmd: &Install) -> Result<Plan, InstallError> {
        match cmd.mode.as_str() {
            "kexec" => {
                let kernel = artifact("kernel", cmd.kernel.as_ref(), true)?
                    .ok_or_else(|| invalid("kexec install without a kernel URL"))?;
                let initrd = artifact("initrd", cmd.initrd.as_ref(), true)?;
                if cmd.cmdline.contains('\0') {
                    return Err(invalid("kernel command line contains a NUL byte"));
                }
                Ok(Plan::Kexec(KexecPlan {
                    kernel,
                    initrd,
                    cmdline: cmd.cmdline.clone(),
                }))
            }
            "image" => {
                let image = artifact("image", cmd.image.as_ref(), false)?
                    .ok_or_else(|| invalid("image install without an image URL"))?;
                let a = cmd.image.clone().unwrap_or_default();
                let compression = match a.compression.as_str() {
                    "" | "raw" => Compression::Raw,
                    "zstd" => Compression::Zstd,
                    other => {
                        return Err(invalid(format!(
                            "unknown image compression {other:?} (raw, zstd)"
                        )))
                    }
                };
                let unpacked_sha512 = sha512_field("unpacked image", &a.unpacked_sha512)?;
                if cmd.disk.is_empty() {
                    return Err(invalid("image install without a disk"));
                }
                crate::wipe::check_name(&cmd.disk)?;
                Ok(Plan::Image(ImagePlan {
                    image,
                    compression,
                    unpacked_sha512,
                    disk: cmd.disk.clone(),
                }))
            }
            other => Err(invalid(format!(
                "unknown install mode {other:?} (kexec, image)"
            ))),
        }
    }
}

/// The artifact when it has a URL; `sha_required`: no boot of an unverified kernel.
fn artifact(
    what: &'static str,
    a: Option<&siderite::proto::agent::v1::Artifact>,
    sha_required: bool,
) -> Result<Option<Artifact>, InstallError> {
    let Some(a) = a.filter(|a| !a.url.is_empty()) else {
        return Ok(None);
    };
    let url =
        reqwest::Url::parse(&a.url).map_err(|e| invalid(format!("{what} URL {:?}: {e}", a.url)))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(format!(
                "{what} URL {url}: https is not supported by this agent yet"
            )))
        }
        s => return Err(invalid(format!("{what} URL {url}: unsupported scheme {s}"))),
    }
    let sha512 = sha512_field(what, &a.sha512)?;
    if sha_required && sha512.is_none() {
        return Err(invalid(format!(
            "{what} without a sha512: refusing to boot what cannot be verified"
        )));
    }
    Ok(Some(Artifact { what, url, sha512 }))
}

fn sha512_field(what: &str, s: &str) -> Result<Option<String>, InstallError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() != 128 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "{what} sha512 {s:?} is not 128 hex digits"
        )));
    }
    Ok(Some(s.to_ascii_lowercase()))
}

/// Lowercase hex.
#[test]
fn tokens_are_redacted_from_logged_command_lines() {
    assert_eq!(
        redact("console=ttyS0 talos.config=http://h/c/x?token=abc123&y=1 quiet token="),
        "console=ttyS0 talos.config=http://h/c/x?token=<redacted>&y=1 quiet token="
    );
    assert_eq!(redact("no secrets"), "no secrets");
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn check_sha(what: &str, expected: Option<&str>, got: &str) -> Result<(), InstallError> {
    match expected {
        Some(want) if want != got => Err(InstallError::Mismatch {
            what: what.to_string(),
            expected: want.to_string(),
            got: got.to_string(),
        }),
        _ => Ok(()),
    }
}

/// What an install needs from around it.
#[derive(Clone)]
pub struct Ctx {
    pub http: reqwest::Client,
    pub report: Arc<dyn Report>,
    pub stop: Stop,
    /// Progress per subject at most this often (plus once at the end).
    pub progress_interval: Duration,
}

/// Downloads and verifies kernel and initrd into memory and stages them with the command
/// line. The machine is not restarted: that is the caller's step, after telling the server.
pub async fn stage_kexec(
    plan: &KexecPlan,
    power: &dyn Power,
    ctx: &Ctx,
) -> Result<(), InstallError> {
    power.check(Restart::Kexec)?;
    let kernel = download::to_memory(&plan.kernel, ctx).await?;
    let initrd = match &plan.initrd {
        Some(a) => Some(download::to_memory(a, ctx).await?),
        None => None,
    };
    ctx.report.log(&format!(
        "kexec_file_load: kernel {}, initrd {}, command line {:?}",
        plan.kernel.url,
        plan.initrd
            .as_ref()
            .map_or("none".to_string(), |a| a.url.to_string()),
        redact(&plan.cmdline)
    ));
    power.kexec_load(&kernel, initrd.as_ref(), &plan.cmdline)?;
    Ok(())
}

/// The command line with the value of every `token=` (the per-machine metadata secret in
/// `talos.config=...?token=`) hidden: log lines travel to the server and the console.
pub fn redact(cmdline: &str) -> String {
    let mut out = String::with_capacity(cmdline.len());
    let mut rest = cmdline;
    while let Some(i) = rest.find("token=") {
        out.push_str(&rest[..i + "token=".len()]);
        rest = &rest[i + "token=".len()..];
        let end = rest
            .find(|c: char| c == '&' || c.is_whitespace())
            .unwrap_or(rest.len());
        if end > 0 {
            out.push_str("<redacted>");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Streams the image onto its disk and verifies it by reading it back.
pub async fn write_image(
    plan: &ImagePlan,
    opener: Arc<dyn DiskOpener>,
    ctx: &Ctx,
) -> Result<ImageSummary, InstallError> {
    image::write(plan, opener, ctx).await
}

/// Counts one transfer and reports it at most every interval, plus once at the end.
pub(crate) struct Meter {
    subject: String,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    interval: Duration,
    report: Arc<dyn Report>,
}

impl Meter {
    pub fn new(subject: &str, total: u64, ctx: &Ctx) -> Self {
        let now = Instant::now();
        Meter {
            subject: subject.to_string(),
            total,
            done: 0,
            start: now,
            last: now,
            interval: ctx.progress_interval,
            report: ctx.report.clone(),
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= self.interval {
            self.emit();
        }
    }

    pub fn finish(&mut self) {
        self.total = self.total.max(self.done);
        self.emit();
    }

    fn emit(&mut self) {
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            (self.done as f64 / secs) as u64
        } else {
            0
        };
        let eta = match self.total.checked_sub(self.done) {
            Some(left) if rate > 0 => left.div_ceil(rate),
            _ => 0,
        };
        self.report.progress(Progress {
            command_id: String::new(),
            subject: self.subject.clone(),
            done_bytes: self.done,
            total_bytes: self.total,
            rate_bytes_per_sec: rate,
            eta_seconds: eta,
        });
    }
}
