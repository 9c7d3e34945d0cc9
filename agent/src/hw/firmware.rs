//! Boot mode (BIOS or UEFI) and Secure Boot state.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no EFI variables under {path} (efivarfs not mounted?)")]
    NoEfivars { path: PathBuf },
    #[error("EFI variable {path} is {len} bytes, too short to hold a value")]
    ShortVariable { path: PathBuf, len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Bios,
    Uefi,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Bios => "bios",
            BootMode::Uefi => "uefi",
        }
    }
}

/// How the machine booted.
pub trait FirmwareInfo: Send + Sync {
    fn boot_mode(&self) -> BootMode;
    /// Whether Secure Boot is enforcing; false on BIOS machines.
    fn secure_boot(&self) -> Result<bool, FirmwareError>;
}

/// The EFI global variable GUID, under which SecureBoot lives.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Reads root/sys/firmware/efi.
pub struct LinuxFirmware {
    efi: PathBuf,
}

impl LinuxFirmware {
    pub fn new(root: &Path) -> Self {
        LinuxFirmware {
            efi: root.join("sys/firmware/efi"),
        }
    }
}

impl FirmwareInfo for LinuxFirmware {
    fn boot_mode(&self) -> BootMode {
        if self.efi.is_dir() {
            BootMode::Uefi
        } else {
            BootMode::Bios
        }
    }

    fn secure_boot(&self) -> Result<bool, FirmwareError> {
        if self.boot_mode() == BootMode::Bios {
            return Ok(false);
        }
        let vars = self.efi.join("efivars");
        let path = vars.join(SECURE_BOOT_VAR);
        match std::fs::read(&path) {
            Ok(bytes) => parse_efi_bool(&bytes).ok_or(FirmwareError::ShortVariable {
                len: bytes.len(),
                path,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Firmware without Secure Boot support has no such variable; an empty
                // efivars directory means nobody mounted efivarfs, and we cannot tell.
                let mounted = std::fs::read_dir(&vars).is_ok_and(|mut d| d.next().is_some());
                if mounted {
                    Ok(false)
                } else {
                    Err(FirmwareError::NoEfivars { path: vars })
                }
            }
            Err(source) => Err(FirmwareError::Read { path, source }),
        }
    }
}

/// An efivarfs file holding a one-byte boolean: 4 bytes of attributes, then the value.
pub fn parse_efi_bool(bytes: &[u8]) -> Option<bool> {
    bytes.get(4).map(|v| *v == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_is_uefi_with_secure_boot() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab");
        let fw = LinuxFirmware::new(&root);
        assert_eq!(fw.boot_mode(), BootMode::Uefi);
        assert!(fw.secure_boot().unwrap());
    }

    #[test]
    fn bios_machine() {
        let dir = tempfile::tempdir().unwrap();
        let fw = LinuxFirmware::new(dir.path());
        assert_eq!(fw.boot_mode().as_str(), "bios");
        assert!(!fw.secure_boot().unwrap());
    }

    #[test]
    fn uefi_without_efivarfs_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/firmware/efi/efivars")).unwrap();
        let fw = LinuxFirmware::new(dir.path());
        assert_eq!(fw.boot_mode(), BootMode::Uefi);
        assert!(matches!(
            fw.secure_boot(),
            Err(FirmwareError::NoEfivars { .. })
        ));
    }

    #[test]
    fn uefi_without_secure_boot_support() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("sys/firmware/efi/efivars");
        std::fs::create_dir_all(&vars).unwrap();
        std::fs::write(
            vars.join("BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            [7, 0, 0, 0, 1, 0],
        )
        .unwrap();
        assert!(!LinuxFirmware::new(dir.path()).secure_boot().unwrap());
    }

    #[test]
    fn efi_bools() {
        assert_eq!(parse_efi_bool(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_efi_bool(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_efi_bool(&[6, 0, 0, 0]), None);
    }
}
