//! Canned implementations of every capability, for tests of the code above `hw`.
//! `Host::fake()` is an empty BIOS machine with no SMBIOS; set the public fields to taste.
use siderite::proto::agent::v1::{BlockDevice, Nic, PciDevice};

use super::block::{BlockDevices, BlockError, DiskReport};
use super::cpu::{CpuError, CpuInfo, CpuMemory};
use super::firmware::{BootMode, FirmwareError, FirmwareInfo};
use super::net::{NetError, NetInterfaces, NicListing};
use super::os::{OsError, OsInfo};
use super::pci::{PciBus, PciError};
use super::smbios::{RawSmbios, SmbiosError, SmbiosSource};
use super::Host;

/// SMBIOS tables held in memory; `None` is a machine without SMBIOS.
#[derive(Debug, Clone, Default)]
pub struct FakeSmbios(pub Option<RawSmbios>);

impl SmbiosSource for FakeSmbios {
    fn read(&self) -> Result<RawSmbios, SmbiosError> {
        self.0.clone().ok_or_else(|| SmbiosError::NotPresent {
            path: "fake".into(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct FakeCpuMemory {
    pub cpu: CpuInfo,
    pub total_memory_bytes: u64,
}

impl CpuMemory for FakeCpuMemory {
    fn cpu(&self) -> Result<CpuInfo, CpuError> {
        Ok(self.cpu.clone())
    }
    fn total_memory_bytes(&self) -> Result<u64, CpuError> {
        Ok(self.total_memory_bytes)
    }
}

/// Disks as given; `include_virtual` is ignored.
#[derive(Debug, Clone, Default)]
pub struct FakeBlockDevices(pub Vec<BlockDevice>);

impl BlockDevices for FakeBlockDevices {
    fn disks(&self, _include_virtual: bool) -> Result<Vec<DiskReport>, BlockError> {
        Ok(self
            .0
            .iter()
            .map(|d| DiskReport {
                disk: d.clone(),
                problems: Vec::new(),
            })
            .collect())
    }
}

#[derive(Debug, Clone, Default)]
pub struct FakeNetInterfaces(pub Vec<Nic>);

impl NetInterfaces for FakeNetInterfaces {
    fn interfaces(&self) -> Result<NicListing, NetError> {
        Ok(NicListing {
            nics: self.0.clone(),
            problems: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct FakePciBus(pub Vec<PciDevice>);

impl PciBus for FakePciBus {
    fn devices(&self) -> Result<Vec<PciDevice>, PciError> {
        Ok(self.0.clone())
    }
}

#[derive(Debug, Clone)]
pub struct FakeFirmware {
    pub boot_mode: BootMode,
    pub secure_boot: bool,
}

impl FirmwareInfo for FakeFirmware {
    fn boot_mode(&self) -> BootMode {
        self.boot_mode
    }
    fn secure_boot(&self) -> Result<bool, FirmwareError> {
        Ok(self.secure_boot)
    }
}

#[derive(Debug, Clone, Default)]
pub struct FakeOs {
    pub hostname: String,
    pub kernel: String,
}

impl OsInfo for FakeOs {
    fn hostname(&self) -> Result<String, OsError> {
        Ok(self.hostname.clone())
    }
    fn kernel(&self) -> Result<String, OsError> {
        Ok(self.kernel.clone())
    }
}

impl Host {
    /// A machine with nothing in it: no SMBIOS, no disks, no NICs, BIOS boot.
    pub fn fake() -> Host {
        Host {
            smbios: Box::new(FakeSmbios(None)),
            cpu_memory: Box::new(FakeCpuMemory::default()),
            block: Box::new(FakeBlockDevices::default()),
            net: Box::new(FakeNetInterfaces::default()),
            pci: Box::new(FakePciBus::default()),
            firmware: Box::new(FakeFirmware {
                boot_mode: BootMode::Bios,
                secure_boot: false,
            }),
            os: Box::new(FakeOs::default()),
        }
    }
}
