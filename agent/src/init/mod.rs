//! PID 1 duties, and only those: the API filesystems and the console, kernel modules for
//! the hardware, zombie reaping, the panic hook, and the loop that never lets init exit.
//! The rest of the agent does not know whether it runs as PID 1.
//!
//! As PID 1, `main` does, in order:
//!
//! 1. [`early_setup`] (before logging: it may be what makes the console work);
//! 2. set up logging, then [`EarlyReport::log`];
//! 3. [`Supervisor::install_panic_hook`];
//! 4. [`load_modules`] with `Path::new("/")` and [`kernel_release`], then
//!    [`ModuleReport::log`]; then [`mount_efivars`] (efivarfs is a module on Debian);
//! 5. read the configuration ([`crate::config::from_kernel`]) and log its problems;
//! 6. [`Supervisor::run`] with the agent's main future; it never returns.
mod console;
pub mod modules;
mod mounts;
mod reap;
mod supervise;

use std::path::Path;

pub use console::ConsoleOutcome;
pub use modules::{load_modules, ModuleFailure, ModuleReport, ALWAYS_LOAD};
pub use mounts::{MountOutcome, MountSpec, EARLY_MOUNTS, EFIVARS};
pub use reap::{reap, reap_forever};
pub use supervise::{
    supervise, Next, PanicReport, PanicSink, RestartPolicy, Supervisor, FAILURES_ENV,
};

/// Whether this process is init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The running kernel's release (`uname -r`): names the module directory.
pub fn kernel_release() -> Result<String, nix::Error> {
    Ok(nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned())
}

/// What [`early_setup`] did; log it once logging works, send it to the server later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EarlyReport {
    pub mounts: Vec<MountOutcome>,
    pub console: ConsoleOutcome,
}

impl EarlyReport {
    /// Whether a required filesystem is missing; the agent carries on regardless and
    /// reports it.
    pub fn degraded(&self) -> bool {
        self.mounts
            .iter()
            .any(|m| matches!(m, MountOutcome::Failed { required: true, .. }))
    }

    pub fn log(&self) {
        for m in &self.mounts {
            m.log();
        }
        match &self.console {
            ConsoleOutcome::Kept => {}
            ConsoleOutcome::Reopened { fds } => {
                tracing::info!(?fds, "standard streams reopened on /dev/console")
            }
            ConsoleOutcome::Failed { error } => tracing::error!("console: {error}"),
        }
    }
}

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/run` and `/tmp` where they
/// are not mounted yet, adds the `/dev/fd` and `/dev/std*` links, and puts stdin, stdout
/// and stderr on `/dev/console` if they are closed or on `/dev/null`. Safe to call again
/// (after a re-exec, say). Never fails: see the report.
pub fn early_setup() -> EarlyReport {
    let mut outcomes = Vec::new();
    let mut mounted = mounts::mounted_now();
    for spec in EARLY_MOUNTS {
        let outcome = mounts::mount_one(spec, &mounted);
        if spec.target == "/proc" {
            // Only now can the rest be checked against what is mounted.
            mounted = mounts::mounted_now();
        }
        outcomes.push(outcome);
    }
    mounts::dev_links();
    EarlyReport {
        mounts: outcomes,
        console: console::attach(Path::new("/dev/console")),
    }
}

/// Mounts efivarfs on UEFI machines. Call after [`load_modules`].
pub fn mount_efivars() -> MountOutcome {
    mounts::mount_one(&EFIVARS, &mounts::mounted_now())
}
