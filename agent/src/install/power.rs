//! Restarting the machine: kexec into another kernel, reboot, power off. Only PID 1 of the
//! boot image may do it; a trait so tests (and `siderite-agent run` on a workstation) never
//! restart anything.
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};

use super::kexec;

/// How the machine restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Into the kernel loaded by [`Power::kexec_load`].
    Kexec,
    Reboot,
    PowerOff,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Kexec => "kexec",
            Restart::Reboot => "reboot",
            Restart::PowerOff => "power off",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("{}", not_pid1(*.0))]
    NotPid1(Restart),
    #[error("kexec_file_load: {errno}: {}", kexec::hint(*errno))]
    KexecLoad { errno: Errno },
    #[error("{how}: {errno}")]
    Restart { how: Restart, errno: Errno },
}

fn not_pid1(how: Restart) -> &'static str {
    match how {
        Restart::Kexec => "kexec needs the agent to run as PID 1 of the boot image",
        Restart::Reboot => "not PID 1: only the agent of the boot image reboots the machine",
        Restart::PowerOff => "not PID 1: only the agent of the boot image powers the machine off",
    }
}

/// The machine's power and kexec.
pub trait Power: Send + Sync {
    /// Whether this process may restart the machine `how`; asked before any work starts.
    fn check(&self, how: Restart) -> Result<(), PowerError>;
    /// Stages `kernel` and `initrd` (read from offset 0) with `cmdline` for [`Restart::Kexec`].
    fn kexec_load(
        &self,
        kernel: &File,
        initrd: Option<&File>,
        cmdline: &str,
    ) -> Result<(), PowerError>;
    /// Syncs the filesystems and restarts. The real one returns only when that failed.
    fn restart(&self, how: Restart) -> Result<(), PowerError>;
}

/// The real thing, for PID 1; any other process is refused.
pub struct LinuxPower;

impl Power for LinuxPower {
    fn check(&self, how: Restart) -> Result<(), PowerError> {
        if crate::init::is_pid1() {
            Ok(())
        } else {
            Err(PowerError::NotPid1(how))
        }
    }

    fn kexec_load(
        &self,
        kernel: &File,
        initrd: Option<&File>,
        cmdline: &str,
    ) -> Result<(), PowerError> {
        self.check(Restart::Kexec)?;
        kexec::kexec_file_load(kernel, initrd, cmdline)
            .map_err(|errno| PowerError::KexecLoad { errno })
    }

    fn restart(&self, how: Restart) -> Result<(), PowerError> {
        self.check(how)?;
        nix::unistd::sync();
        let mode = match how {
            Restart::Kexec => RebootMode::RB_KEXEC,
            Restart::Reboot => RebootMode::RB_AUTOBOOT,
            Restart::PowerOff => RebootMode::RB_POWER_OFF,
        };
        match reboot(mode) {
            Ok(never) => match never {},
            Err(errno) => Err(PowerError::Restart { how, errno }),
        }
    }
}

/// What a [`FakePower`] was asked to kexec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexecCall {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
}

/// Records instead of restarting. PID 1 unless told otherwise.
#[derive(Debug, Default)]
pub struct FakePower {
    pub not_pid1: bool,
    /// kexec_file_load fails with this.
    pub kexec_errno: Option<Errno>,
    pub loaded: Mutex<Vec<KexecCall>>,
    pub restarts: Mutex<Vec<Restart>>,
}

impl FakePower {
    pub fn loaded(&self) -> Vec<KexecCall> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn restarts(&self) -> Vec<Restart> {
        self.restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn read_all(f: &File) -> Vec<u8> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let mut buf = vec![0u8; len];
    match f.read_exact_at(&mut buf, 0) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

impl Power for FakePower {
    fn check(&self, how: Restart) -> Result<(), PowerError> {
        if self.not_pid1 {
            Err(PowerError::NotPid1(how))
        } else {
            Ok(())
        }
    }

    fn kexec_load(
        &self,
        kernel: &File,
        initrd: Option<&File>,
        cmdline: &str,
    ) -> Result<(), PowerError> {
        self.check(Restart::Kexec)?;
        if let Some(errno) = self.kexec_errno {
            return Err(PowerError::KexecLoad { errno });
        }
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KexecCall {
                kernel: read_all(kernel),
                initrd: initrd.map(read_all),
                cmdline: cmdline.to_string(),
            });
        Ok(())
    }

    fn restart(&self, how: Restart) -> Result<(), PowerError> {
        self.check(how)?;
        self.restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(how);
        Ok(())
    }
}
