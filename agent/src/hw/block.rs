//! Block devices: every whole disk under root/sys/block, described with the fields Talos'
//! install disk selector uses, plus the partition table and signatures found on it.
use std::path::{Path, PathBuf};

use siderite::proto::agent::v1::BlockDevice;

use super::signatures::{self, DeviceFile};
use super::{device_path_below, read_attr, read_num};

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("listing block devices in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {path} to look for signatures")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} to look for signatures")]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A disk and what went wrong while describing it (the disk is listed either way).
#[derive(Debug)]
pub struct DiskReport {
    pub disk: BlockDevice,
    pub problems: Vec<BlockError>,
}

/// The machine's disks.
pub trait BlockDevices: Send + Sync {
    /// Whole disks sorted by name. Loop, RAM, optical, zram, device-mapper and md devices are
    /// left out unless `include_virtual`.
    fn disks(&self, include_virtual: bool) -> Result<Vec<DiskReport>, BlockError>;
}

/// Reads root/sys/block and the device nodes under root/dev.
pub struct LinuxBlockDevices {
    root: PathBuf,
}

impl LinuxBlockDevices {
    pub fn new(root: &Path) -> Self {
        LinuxBlockDevices {
            root: root.to_path_buf(),
        }
    }
}

impl BlockDevices for LinuxBlockDevices {
    fn disks(&self, include_virtual: bool) -> Result<Vec<DiskReport>, BlockError> {
        let sys_block = self.root.join("sys/block");
        let mut names = list_dir(&sys_block).map_err(|source| BlockError::List {
            path: sys_block.clone(),
            source,
        })?;
        names.retain(|n| include_virtual || !is_virtual(n));
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let mut disk = read_sysfs_disk(&self.root.join("sys"), &name);
                let mut problems = Vec::new();
                let node = self.root.join("dev").join(&name);
                if let Err(e) = add_signatures(&mut disk, &node) {
                    problems.push(e);
                }
                DiskReport { disk, problems }
            })
            .collect())
    }
}

pub(crate) fn list_dir(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Devices that are not disks one would install to or wipe.
pub fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "sr", "zram", "dm-", "md", "nbd", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Describes `sys/block/<name>` (everything but signatures). Missing attributes stay empty.
pub fn read_sysfs_disk(sys: &Path, name: &str) -> BlockDevice {
    let dir = sys.join("block").join(name);
    let dev = dir.join("device");
    let attr = |rel: &str| read_attr(&dir.join(rel)).unwrap_or_default();
    let first = |rels: &[&str]| {
        rels.iter()
            .filter_map(|r| read_attr(&dir.join(r)))
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    let serial = match first(&["device/serial", "serial"]) {
        s if !s.is_empty() => s,
        _ => std::fs::read(dev.join("vpd_pg80"))
            .ok()
            .and_then(|b| parse_vpd_serial(&b))
            .unwrap_or_default(),
    };
    let rotational = attr("queue/rotational") == "1";
    let bus = device_path_below(sys, &dev)
        .map(|p| bus_from_device_path(name, &p))
        .unwrap_or_else(|| bus_from_device_path(name, Path::new("")));
    let disk_type = disk_type(name, &bus, rotational).to_string();
    BlockDevice {
        name: name.to_string(),
        dev_path: format!("/dev/{name}"),
        size_bytes: read_num::<u64>(&dir.join("size")).unwrap_or(0) * 512,
        model: attr("device/model"),
        vendor: attr("device/vendor"),
        serial,
        wwn: first(&["wwid", "device/wwid", "device/wwn"]),
        rotational,
        bus,
        removable: attr("removable") == "1",
        read_only: attr("ro") == "1",
        logical_sector_size: read_num(&dir.join("queue/logical_block_size")).unwrap_or(512),
        physical_sector_size: read_num(&dir.join("queue/physical_block_size")).unwrap_or(512),
        partition_table: String::new(),
        signatures: Vec::new(),
        disk_type,
    }
}

/// SCSI VPD page 0x80 (unit serial number): 4-byte header, byte 3 the length, then ASCII.
pub fn parse_vpd_serial(page: &[u8]) -> Option<String> {
    let len = usize::from(*page.get(3)?);
    let raw = page.get(4..4 + len).or_else(|| page.get(4..))?;
    let s = String::from_utf8_lossy(raw)
        .trim_matches(['\0', ' '])
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// The transport, from where the device sits in the sysfs device tree, e.g.
/// `devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0` is SATA.
pub fn bus_from_device_path(name: &str, device_path: &Path) -> String {
    let parts: Vec<String> = device_path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let has = |pred: &dyn Fn(&str) -> bool| parts.iter().any(|p| pred(p));
    let numbered = |p: &str, prefix: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    let bus = if has(&|p| numbered(p, "usb")) {
        "usb"
    } else if name.starts_with("nvme") || has(&|p| p == "nvme" || numbered(p, "nvme")) {
        "nvme"
    } else if name.starts_with("mmcblk") || has(&|p| numbered(p, "mmc")) {
        "mmc"
    } else if has(&|p| numbered(p, "ata")) {
        "sata"
    } else if has(&|p| numbered(p, "end_device-") || numbered(p, "expander-")) {
        "sas"
    } else if has(&|p| numbered(p, "host") || numbered(p, "target")) {
        "scsi"
    } else if name.starts_with("vd") || has(&|p| numbered(p, "virtio")) {
        "virtio"
    } else {
        "unknown"
    };
    bus.to_string()
}

/// Talos' disk selector type: nvme, sd (SD/MMC cards), hdd or ssd.
pub fn disk_type(name: &str, bus: &str, rotational: bool) -> &'static str {
    if bus == "nvme" {
        "nvme"
    } else if bus == "mmc" || name.starts_with("mmcblk") {
        "sd"
    } else if rotational {
        "hdd"
    } else {
        "ssd"
    }
}

/// Reads the device node and records its partition table and signatures.
fn add_signatures(disk: &mut BlockDevice, node: &Path) -> Result<(), BlockError> {
    if disk.size_bytes == 0 {
        // No medium (empty card reader, ejected disk): nothing to read.
        return Ok(());
    }
    let file = DeviceFile::open(node).map_err(|source| BlockError::Open {
        path: node.to_path_buf(),
        source,
    })?;
    let probe =
        signatures::probe(&file, disk.logical_sector_size).map_err(|source| BlockError::Probe {
            path: node.to_path_buf(),
            source,
        })?;
    disk.partition_table = probe.partition_table.unwrap_or_default().to_string();
    disk.signatures = probe.names();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab")
    }

    fn disk<'a>(disks: &'a [DiskReport], name: &str) -> &'a DiskReport {
        disks
            .iter()
            .find(|d| d.disk.name == name)
            .unwrap_or_else(|| panic!("no disk {name}"))
    }

    #[test]
    fn lab_lists_whole_disks_and_skips_virtual_ones() {
        let disks = LinuxBlockDevices::new(&lab()).disks(false).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.disk.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "vda"]);
        for d in &disks {
            assert!(d.problems.is_empty(), "{}: {:?}", d.disk.name, d.problems);
        }
        let all = LinuxBlockDevices::new(&lab()).disks(true).unwrap();
        assert!(all.iter().any(|d| d.disk.name == "loop0"));
    }

    #[test]
    fn lab_nvme() {
        let disks = LinuxBlockDevices::new(&lab()).disks(false).unwrap();
        assert_eq!(
            disk(&disks, "nvme0n1").disk,
            BlockDevice {
                name: "nvme0n1".into(),
                dev_path: "/dev/nvme0n1".into(),
                size_bytes: 1_000_215_216 * 512,
                model: "Samsung SSD 980 PRO 1TB".into(),
                serial: "S5GXNF0R123456A".into(),
                wwn: "eui.002538b111b2a3c4".into(),
                rotational: false,
                bus: "nvme".into(),
                removable: false,
                read_only: false,
                logical_sector_size: 512,
                physical_sector_size: 512,
                partition_table: "gpt".into(),
                signatures: vec!["gpt".into(), "pmbr".into()],
                disk_type: "nvme".into(),
                vendor: String::new(),
            }
        );
    }

    #[test]
    fn lab_sata_hdd_with_vpd_serial_and_ext4() {
        let disks = LinuxBlockDevices::new(&lab()).disks(false).unwrap();
        let d = &disk(&disks, "sda").disk;
        assert_eq!(d.bus, "sata");
        assert_eq!(d.disk_type, "hdd");
        assert!(d.rotational);
        assert_eq!(d.model, "ST4000NM0035-1V4");
        assert_eq!(d.vendor, "ATA");
        assert_eq!(d.serial, "ZC1A2B3C");
        assert_eq!(d.wwn, "naa.5000c500a1b2c3d4");
        assert_eq!(d.logical_sector_size, 512);
        assert_eq!(d.physical_sector_size, 4096);
        assert_eq!(d.partition_table, "");
        assert_eq!(d.signatures, ["ext4"]);
    }

    #[test]
    fn lab_usb_removable_and_virtio() {
        let disks = LinuxBlockDevices::new(&lab()).disks(false).unwrap();
        let usb = &disk(&disks, "sdb").disk;
        assert_eq!(usb.bus, "usb");
        assert!(usb.removable);
        assert_eq!(usb.disk_type, "ssd");
        assert_eq!(usb.partition_table, "dos");
        assert_eq!(usb.signatures, ["dos"]);
        let vda = &disk(&disks, "vda").disk;
        assert_eq!(vda.bus, "virtio");
        assert_eq!(vda.serial, "siderite-vda");
        assert_eq!(vda.disk_type, "hdd");
        assert_eq!(vda.signatures, ["linux_raid"]);
    }

    #[test]
    fn missing_device_node_is_a_problem_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/block/sdz");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("size"), "2048\n").unwrap();
        let disks = LinuxBlockDevices::new(dir.path()).disks(false).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].disk.size_bytes, 2048 * 512);
        assert_eq!(disks[0].disk.bus, "unknown");
        assert!(matches!(disks[0].problems[..], [BlockError::Open { .. }]));
    }

    #[test]
    fn no_sys_block_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            LinuxBlockDevices::new(dir.path()).disks(false),
            Err(BlockError::List { .. })
        ));
    }

    #[test]
    fn bus_from_real_sysfs_paths() {
        let cases = [
            ("sda", "devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0", "sata"),
            ("sdb", "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0", "usb"),
            ("nvme0n1", "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0", "nvme"),
            ("vda", "devices/pci0000:00/0000:00:02.0/virtio1", "virtio"),
            ("sdc", "devices/pci0000:00/0000:00:03.0/virtio0/host2/target2:0:0/2:0:0:0", "scsi"),
            ("sdd", "devices/pci0000:00/0000:00:01.0/0000:01:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0", "sas"),
            ("mmcblk0", "devices/platform/soc/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa", "mmc"),
            ("xvda", "", "unknown"),
        ];
        for (name, path, bus) in cases {
            assert_eq!(bus_from_device_path(name, Path::new(path)), bus, "{path}");
        }
    }

    #[test]
    fn talos_disk_types() {
        assert_eq!(disk_type("nvme0n1", "nvme", false), "nvme");
        assert_eq!(disk_type("mmcblk0", "mmc", false), "sd");
        assert_eq!(disk_type("sda", "sata", true), "hdd");
        assert_eq!(disk_type("sda", "sata", false), "ssd");
    }

    #[test]
    fn vpd_serials() {
        assert_eq!(
            parse_vpd_serial(b"\0\x80\0\x08ZC1A2B3C").as_deref(),
            Some("ZC1A2B3C")
        );
        assert_eq!(
            parse_vpd_serial(b"\0\x80\0\x0a  ABC     ").as_deref(),
            Some("ABC")
        );
        assert_eq!(parse_vpd_serial(b"\0\x80"), None);
        assert_eq!(parse_vpd_serial(b"\0\x80\0\x00"), None);
    }

    #[test]
    fn virtual_names() {
        for n in ["loop0", "ram1", "sr0", "zram0", "dm-3", "md127", "nbd0"] {
            assert!(is_virtual(n), "{n}");
        }
        for n in ["sda", "nvme0n1", "vda", "mmcblk0", "xvda"] {
            assert!(!is_virtual(n), "{n}");
        }
    }
}
