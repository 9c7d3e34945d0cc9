//! kexec_file_load(2), the one system call here that nix has no wrapper for.
//!
//! The only file of `install` with `unsafe`: one `syscall` with two open file descriptors, the
//! length of a NUL-terminated command line and a pointer to it, and a flags word.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::libc;

/// <linux/kexec.h>: no initramfs, the initrd fd is ignored.
const KEXEC_FILE_NO_INITRAMFS: libc::c_long = 0x4;

// Not every libc target names it (musl aarch64 does not), so by architecture here.
#[cfg(target_arch = "x86_64")]
const SYS_KEXEC_FILE_LOAD: Option<libc::c_long> = Some(320);
#[cfg(any(
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
const SYS_KEXEC_FILE_LOAD: Option<libc::c_long> = Some(294);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
const SYS_KEXEC_FILE_LOAD: Option<libc::c_long> = None;

/// Loads `kernel` (and `initrd`) to be started by `reboot(RB_KEXEC)` with `cmdline`.
pub fn kexec_file_load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<(), Errno> {
    let nr = SYS_KEXEC_FILE_LOAD.ok_or(Errno::ENOSYS)?;
    let cmdline = CString::new(cmdline).map_err(|_| Errno::EINVAL)?;
    let bytes = cmdline.as_bytes_with_nul();
    let (initrd_fd, flags) = match initrd {
        Some(f) => (libc::c_long::from(f.as_raw_fd()), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: both fds belong to files borrowed for the whole call; the kernel reads
    // `bytes.len()` bytes from `bytes`, a live NUL-terminated buffer; nothing is written back.
    let res = unsafe {
        libc::syscall(
            nr,
            libc::c_long::from(kernel.as_raw_fd()),
            initrd_fd,
            bytes.len() as libc::c_long,
            bytes.as_ptr(),
            flags,
        )
    };
    if res == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// What an operator should check when kexec_file_load refuses.
pub fn hint(e: Errno) -> &'static str {
    match e {
        Errno::EPERM => {
            "not permitted: kernel lockdown (Secure Boot) allows only signed kernels, \
             kexec may be disabled (kernel.kexec_load_disabled), or CAP_SYS_BOOT is missing"
        }
        Errno::ENOEXEC => "not a kernel image this kernel can boot (wrong format or architecture)",
        Errno::EKEYREJECTED | Errno::EBADMSG => {
            "the kernel's signature was rejected (Secure Boot / KEXEC_SIG needs a signed kernel)"
        }
        Errno::ENOKEY => "the kernel is signed with a key this kernel does not trust",
        Errno::ENOSYS => "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE is off)",
        Errno::EBUSY => "another kexec is being loaded or executed",
        Errno::ENOMEM => "not enough memory to stage the new kernel and initrd",
        Errno::EINVAL => "invalid image or command line (too long for this kernel?)",
        Errno::EFBIG => "the kernel or initrd is too large",
        _ => "kexec_file_load failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::Write;

    /// The call reaches the kernel with well-formed arguments: a file that is no kernel is
    /// refused for what it is (or kexec is not allowed here), never EBADF/EFAULT/EINVAL.
    /// Nothing can be loaded: the bytes are no kernel.
    #[test]
    fn a_file_that_is_no_kernel_is_refused() {
        let mut f = File::from(memfd_create("not-a-kernel", MFdFlags::MFD_CLOEXEC).unwrap());
        f.write_all(&[0u8; 4096]).unwrap();
        let e = kexec_file_load(&f, None, "console=ttyS0").unwrap_err();
        assert!(
            matches!(e, Errno::ENOEXEC | Errno::EPERM | Errno::ENOSYS),
            "{e}"
        );
        assert_eq!(
            kexec_file_load(&f, Some(&f), "a\0b").unwrap_err(),
            Errno::EINVAL
        );
    }
}
