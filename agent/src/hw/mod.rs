//! The host, one capability at a time. Only this module touches the operating system.
//!
//! Each capability is a trait with a Linux implementation that reads below an injectable
//! root (`/` on a real machine, a fixture tree in tests). The parsers behind them take bytes,
//! text or a root path, so they are tested against fixtures in `tests/data`. A [`Host`] holds
//! one boxed implementation per capability; tests swap any of them for a fake.
use std::path::{Path, PathBuf};

pub mod block;
pub mod cpu;
pub mod fake;
pub mod firmware;
pub mod net;
pub mod os;
pub mod pci;
pub mod signatures;
pub mod smbios;

pub use block::{BlockDevices, LinuxBlockDevices};
pub use cpu::{CpuMemory, LinuxCpuMemory};
pub use firmware::{FirmwareInfo, LinuxFirmware};
pub use net::{LinuxNetInterfaces, NetInterfaces};
pub use os::{LinuxOs, OsInfo};
pub use pci::{LinuxPciBus, PciBus};
pub use smbios::{LinuxSmbios, SmbiosSource};

/// Everything the agent may ask of the machine it runs on.
pub struct Host {
    pub smbios: Box<dyn SmbiosSource>,
    pub cpu_memory: Box<dyn CpuMemory>,
    pub block: Box<dyn BlockDevices>,
    pub net: Box<dyn NetInterfaces>,
    pub pci: Box<dyn PciBus>,
    pub firmware: Box<dyn FirmwareInfo>,
    pub os: Box<dyn OsInfo>,
}

impl Host {
    /// Linux implementations reading below `root` ("/" normally): root/sys/firmware/dmi/tables,
    /// root/sys/block, root/sys/class/net, root/sys/bus/pci/devices, root/sys/firmware/efi,
    /// root/proc and root/dev.
    pub fn linux(root: &Path) -> Host {
        Host {
            smbios: Box::new(LinuxSmbios::new(root)),
            cpu_memory: Box::new(LinuxCpuMemory::new(root)),
            block: Box::new(LinuxBlockDevices::new(root)),
            net: Box::new(LinuxNetInterfaces::new(root)),
            pci: Box::new(LinuxPciBus::new(root)),
            firmware: Box::new(LinuxFirmware::new(root)),
            os: Box::new(LinuxOs::new(root)),
        }
    }
}

/// True when `root` is the running system's own root, i.e. when facts that cannot be read
/// below a root (interface addresses, sysinfo's view of /proc) belong to it.
pub(crate) fn is_live_root(root: &Path) -> bool {
    root == Path::new("/")
}

/// A sysfs attribute as trimmed text; `None` when missing or unreadable (sysfs attributes
/// come and go with drivers and kernel versions, so absence is normal).
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A sysfs attribute parsed as a number; `None` when missing, unreadable or not a number.
pub(crate) fn read_num<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_attr(path).and_then(|s| s.parse().ok())
}

/// The last component of a symlink's target (a driver's or a device's name).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// A hex sysfs id ("0x8086\n") as bare lowercase hex ("8086").
pub(crate) fn hex_id(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
        .to_ascii_lowercase()
}

/// Where a sysfs device really lives, relative to `sys` (e.g.
/// `devices/pci0000:00/0000:00:02.0/virtio1`), so that path words found in the fixture's
/// own location never count.
pub(crate) fn device_path_below(sys: &Path, link: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(link).ok()?;
    let sys = std::fs::canonicalize(sys).ok()?;
    real.strip_prefix(&sys).ok().map(Path::to_path_buf)
}

/// An error with its causes, "what failed: why", for `Hardware.errors` and logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_lose_prefix_and_case() {
        assert_eq!(hex_id("0x8086\n"), "8086");
        assert_eq!(hex_id("0X10D3"), "10d3");
        assert_eq!(hex_id("1af4"), "1af4");
    }

    #[test]
    fn error_chain_joins_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading /x")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(error_chain(&e), "reading /x: gone");
    }
}
