//! Standard input, output and error on the system console.
//!
//! The kernel opens `/dev/console` as fds 0-2 for init when the image has that node. When
//! it does not, the fds start closed and Rust's runtime points them at `/dev/null` (or
//! aborts if it cannot), so logs would vanish: once devtmpfs is up, those fds are pointed
//! at `/dev/console` again.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::{Mode, SFlag};

/// What was done about fds 0-2.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ConsoleOutcome {
    /// All three already lead somewhere other than `/dev/null`.
    Kept,
    /// These fds were closed or on `/dev/null` and now are on the console.
    Reopened {
        fds: Vec<i32>,
    },
    Failed {
        error: String,
    },
}

/// Whether `fd` needs the console: closed, or the null device (char 1:3).
fn needs_console(fd: BorrowedFd<'_>) -> bool {
    if nix::fcntl::fcntl(fd, FcntlArg::F_GETFD).is_err() {
        return true;
    }
    match nix::sys::stat::fstat(fd) {
        Ok(st) => {
            let chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
            chr && nix::sys::stat::major(st.st_rdev) == 1 && nix::sys::stat::minor(st.st_rdev) == 3
        }
        Err(_) => true,
    }
}

pub(crate) fn attach(console: &Path) -> ConsoleOutcome {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let wanted: Vec<i32> = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]
        .into_iter()
        .filter(|fd| needs_console(*fd))
        .map(|fd| fd.as_raw_fd())
        .collect();
    if wanted.is_empty() {
        return ConsoleOutcome::Kept;
    }
    let fd = match nix::fcntl::open(
        console,
        // No O_CLOEXEC: if this lands on fd 0-2 itself, dup2 keeps the flag and exec would
        // close it.
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(errno) => {
            return ConsoleOutcome::Failed {
                error: format!("opening {}: {errno}", console.display()),
            }
        }
    };
    for &n in &wanted {
        let done = match n {
            0 => nix::unistd::dup2_stdin(&fd),
            1 => nix::unistd::dup2_stdout(&fd),
            _ => nix::unistd::dup2_stderr(&fd),
        };
        if let Err(errno) = done {
            return ConsoleOutcome::Failed {
                error: format!("dup2 onto fd {n}: {errno}"),
            };
        }
    }
    if (0..=2).contains(&fd.as_raw_fd()) {
        // open() took a closed std fd itself; dropping it would close that fd again.
        let _ = fd.into_raw_fd();
    }
    ConsoleOutcome::Reopened { fds: wanted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_needs_the_console_a_file_does_not() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(needs_console(null.as_fd()));
        let file = tempfile::tempfile().unwrap();
        assert!(!needs_console(file.as_fd()));
    }
}
