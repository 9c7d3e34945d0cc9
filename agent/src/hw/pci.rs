//! PCI devices from root/sys/bus/pci/devices.
use std::path::{Path, PathBuf};

use siderite::proto::agent::v1::PciDevice;

use super::{hex_id, link_name, read_attr};

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("listing PCI devices in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The machine's PCI devices.
pub trait PciBus: Send + Sync {
    /// Every PCI function, sorted by address.
    fn devices(&self) -> Result<Vec<PciDevice>, PciError>;
}

/// Reads root/sys/bus/pci/devices.
pub struct LinuxPciBus {
    dir: PathBuf,
}

impl LinuxPciBus {
    pub fn new(root: &Path) -> Self {
        LinuxPciBus {
            dir: root.join("sys/bus/pci/devices"),
        }
    }
}

impl PciBus for LinuxPciBus {
    fn devices(&self) -> Result<Vec<PciDevice>, PciError> {
        let list = |source| PciError::List {
            path: self.dir.clone(),
            source,
        };
        if !self.dir.exists() {
            // No PCI bus at all (some ARM boards, containers): nothing to list.
            return Ok(Vec::new());
        }
        let mut devices: Vec<PciDevice> = super::block::list_dir(&self.dir)
            .map_err(list)?
            .into_iter()
            .map(|address| read_pci_device(&self.dir.join(&address), &address))
            .collect();
        devices.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(devices)
    }
}

/// Describes one PCI function from its sysfs directory.
pub fn read_pci_device(dir: &Path, address: &str) -> PciDevice {
    let id = |name: &str| {
        read_attr(&dir.join(name))
            .map(|s| hex_id(&s))
            .unwrap_or_default()
    };
    PciDevice {
        address: address.to_string(),
        vendor_id: id("vendor"),
        device_id: id("device"),
        class: id("class"),
        subsystem_vendor_id: id("subsystem_vendor"),
        subsystem_device_id: id("subsystem_device"),
        driver: link_name(&dir.join("driver")).unwrap_or_default(),
    }
}

/// PCI class 02xxxx: network controllers.
pub fn is_network_class(class: &str) -> bool {
    class.len() == 6 && class.starts_with("02")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_pci_devices() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab");
        let devices = LinuxPciBus::new(&root).devices().unwrap();
        let addresses: Vec<&str> = devices.iter().map(|d| d.address.as_str()).collect();
        assert_eq!(
            addresses,
            [
                "0000:00:02.0",
                "0000:00:05.0",
                "0000:00:14.0",
                "0000:00:1f.2",
                "0000:00:1f.6",
                "0000:01:00.0",
                "0000:03:00.0",
                "0000:04:00.0"
            ]
        );
        assert_eq!(
            devices[4],
            PciDevice {
                address: "0000:00:1f.6".into(),
                vendor_id: "8086".into(),
                device_id: "15bc".into(),
                class: "020000".into(),
                subsystem_vendor_id: "17aa".into(),
                subsystem_device_id: "2292".into(),
                driver: "e1000e".into(),
            }
        );
        let undriven = &devices[7];
        assert_eq!(
            (undriven.vendor_id.as_str(), undriven.device_id.as_str()),
            ("8086", "10d3")
        );
        assert_eq!(undriven.driver, "");
        assert!(is_network_class(&undriven.class));
    }

    #[test]
    fn no_pci_bus_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LinuxPciBus::new(dir.path()).devices().unwrap().is_empty());
    }

    #[test]
    fn network_class() {
        assert!(is_network_class("020000"));
        assert!(is_network_class("028000"));
        assert!(!is_network_class("010601"));
        assert!(!is_network_class(""));
    }
}
