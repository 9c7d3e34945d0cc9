//! The machine's inventory: every capability of the [`Host`] asked once and put together
//! into one `Hardware` message. Nothing here fails: what cannot be collected is left empty
//! and described in `Hardware.errors`.
use siderite::proto::agent::v1::{Cpu, Firmware, Hardware, Memory, Nic, PciDevice};

use crate::hw::cpu::CpuInfo;
use crate::hw::smbios::{self, SmbiosInfo};
use crate::hw::{error_chain, pci, Host};

/// Never fails: whatever cannot be collected is described in `Hardware.errors`.
pub fn collect(host: &Host) -> Hardware {
    let mut errors = Errors::default();

    let smbios = errors.take(host.smbios.read().and_then(|raw| smbios::parse(&raw)));
    let smbios = smbios.unwrap_or_default();
    let cpu_info = errors.take(host.cpu_memory.cpu());
    let total_memory = errors.take(host.cpu_memory.total_memory_bytes());

    let mut disks = Vec::new();
    if let Some(reports) = errors.take(host.block.disks(false)) {
        for r in reports {
            r.problems.iter().for_each(|p| errors.push(p));
            disks.push(r.disk);
        }
    }
    let pci = errors.take(host.pci.devices()).unwrap_or_default();
    let mut nics = Vec::new();
    if let Some(listing) = errors.take(host.net.interfaces()) {
        listing.problems.iter().for_each(|p| errors.push(p));
        nics = listing.nics;
    }
    nics.extend(nics_without_netdev(&nics, &pci));

    let secure_boot = errors.take(host.firmware.secure_boot()).unwrap_or(false);
    let firmware = Firmware {
        boot_mode: host.firmware.boot_mode().as_str().to_string(),
        secure_boot,
    };
    let hostname = errors.take(host.os.hostname()).unwrap_or_default();
    let kernel = errors.take(host.os.kernel()).unwrap_or_default();

    Hardware {
        cpu: Some(cpu(cpu_info.as_ref(), &smbios)),
        memory: Some(Memory {
            total_bytes: total_memory.unwrap_or(0),
            modules: smbios.memory_modules,
        }),
        system: smbios.system,
        baseboard: smbios.baseboard,
        chassis: smbios.chassis,
        bios: smbios.bios,
        disks,
        nics,
        pci,
        firmware: Some(firmware),
        hostname,
        kernel,
        arch: host.os.arch(),
        errors: errors.0,
    }
}

#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, err: &dyn std::error::Error) {
        let text = error_chain(err);
        tracing::warn!(error = %text, "inventory incomplete");
        self.0.push(text);
    }

    fn take<T, E: std::error::Error>(&mut self, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.push(&e)).ok()
    }
}

/// Sockets and cores from SMBIOS type 4 when the firmware lists processors, else from the
/// kernel; threads are what the kernel runs.
fn cpu(kernel: Option<&CpuInfo>, smbios: &SmbiosInfo) -> Cpu {
    let kernel = kernel.cloned().unwrap_or_default();
    let procs = &smbios.processors;
    let smbios_cores: u32 = procs.iter().map(|p| p.cores).sum();
    let known_cores = !procs.is_empty() && procs.iter().all(|p| p.cores > 0);
    let first = procs.first();
    Cpu {
        sockets: if procs.is_empty() {
            kernel.sockets
        } else {
            u32::try_from(procs.len()).unwrap_or(u32::MAX)
        },
        cores: if known_cores {
            smbios_cores
        } else {
            kernel.cores
        },
        threads: kernel.threads,
        model: non_empty(&kernel.model, first.map(|p| p.version.as_str())),
        vendor: non_empty(&kernel.vendor, first.map(|p| p.manufacturer.as_str())),
        virtualization: kernel.virtualization(),
        flags: kernel.flags.clone(),
        max_speed_mhz: procs
            .iter()
            .map(|p| p.max_speed_mhz)
            .max()
            .filter(|s| *s > 0)
            .unwrap_or(kernel.max_speed_mhz),
        processors: procs.clone(),
    }
}

fn non_empty(first: &str, fallback: Option<&str>) -> String {
    if first.is_empty() {
        fallback.unwrap_or_default().to_string()
    } else {
        first.to_string()
    }
}

/// PCI network controllers that no network interface came from: no driver at all, or a
/// driver that made no netdev (virtio-pci without virtio_net, a failed firmware load). They
/// have no name; `driver` is whatever PCI driver is bound, `driver_bound` is false.
fn nics_without_netdev(nics: &[Nic], pci: &[PciDevice]) -> Vec<Nic> {
    pci.iter()
        .filter(|d| pci::is_network_class(&d.class))
        .filter(|d| !nics.iter().any(|n| n.pci_address == d.address))
        .map(|d| Nic {
            driver: d.driver.clone(),
            driver_bound: false,
            pci_address: d.address.clone(),
            pci_vendor: d.vendor_id.clone(),
            pci_device: d.device_id.clone(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use siderite::proto::agent::v1::Processor;

    use super::*;
    use crate::hw::fake::{FakeCpuMemory, FakeNetInterfaces, FakePciBus, FakeSmbios};
    use crate::hw::smbios::RawSmbios;

    fn data(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(rel)
    }

    #[test]
    fn lab_inventory_is_complete() {
        let hw = collect(&Host::linux(&data("sysfs/lab")));
        assert_eq!(hw.errors, Vec::<String>::new());
        let system = hw.system.unwrap();
        assert_eq!(system.uuid, "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b");
        assert_eq!(system.serial, "SER-OVMF-002");
        assert_eq!(hw.baseboard.unwrap().product, "LB-1");
        assert_eq!(hw.bios.unwrap().vendor, "EFI Development Kit II / OVMF");
        let cpu = hw.cpu.unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 2, 2));
        assert_eq!(cpu.model, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz");
        assert_eq!(cpu.vendor, "GenuineIntel");
        assert!(cpu.virtualization);
        assert_eq!(cpu.max_speed_mhz, 2000);
        assert_eq!(cpu.processors.len(), 1);
        let memory = hw.memory.unwrap();
        assert_eq!(memory.total_bytes, 475_516 * 1024);
        assert_eq!(memory.modules.len(), 1);
        let disks: Vec<&str> = hw.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(disks, ["nvme0n1", "sda", "sdb", "vda"]);
        let nics: Vec<(&str, &str, bool)> = hw
            .nics
            .iter()
            .map(|n| (n.name.as_str(), n.driver.as_str(), n.driver_bound))
            .collect();
        assert_eq!(
            nics,
            [
                ("br0", "", false),
                ("eno1", "e1000e", true),
                ("enp3s0", "igb", true),
                ("eth0", "virtio_net", true),
                ("", "", false),
            ]
        );
        let undriven = hw.nics.last().unwrap();
        assert_eq!(undriven.pci_address, "0000:04:00.0");
        assert_eq!(
            (undriven.pci_vendor.as_str(), undriven.pci_device.as_str()),
            ("8086", "10d3")
        );
        assert_eq!(hw.pci.len(), 8);
        assert_eq!(
            hw.firmware,
            Some(Firmware {
                boot_mode: "uefi".into(),
                secure_boot: true
            })
        );
        assert_eq!(hw.hostname, "lab-1");
        assert_eq!(hw.kernel, "6.1.0-56-cloud-amd64");
        assert_eq!(hw.arch, std::env::consts::ARCH);
    }

    #[test]
    fn empty_root_gives_errors_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let hw = collect(&Host::linux(dir.path()));
        assert_eq!(hw.system, None);
        assert!(hw.disks.is_empty() && hw.nics.is_empty() && hw.pci.is_empty());
        assert_eq!(hw.firmware.unwrap().boot_mode, "bios");
        let has = |needle: &str| hw.errors.iter().any(|e| e.contains(needle));
        assert!(has("no SMBIOS tables at"), "{:?}", hw.errors);
        assert!(has("proc/cpuinfo"), "{:?}", hw.errors);
        assert!(has("listing block devices"), "{:?}", hw.errors);
        assert!(has("listing network interfaces"), "{:?}", hw.errors);
        assert!(has("osrelease"), "{:?}", hw.errors);
    }

    #[test]
    fn broken_smbios_is_an_error_and_no_system() {
        for case in [
            "truncated",
            "bad_length",
            "no_terminator",
            "bad_entry_point",
            "empty",
        ] {
            let dir = data(&format!("smbios/broken/{case}"));
            let raw = RawSmbios {
                entry_point: std::fs::read(dir.join("smbios_entry_point")).unwrap(),
                table: std::fs::read(dir.join("DMI")).unwrap(),
            };
            let mut host = Host::fake();
            host.smbios = Box::new(FakeSmbios(Some(raw)));
            let hw = collect(&host);
            assert_eq!(hw.system, None, "{case}");
            assert_eq!(hw.errors.len(), 1, "{case}: {:?}", hw.errors);
            assert!(
                hw.errors[0].starts_with("SMBIOS"),
                "{case}: {:?}",
                hw.errors
            );
        }
    }

    #[test]
    fn cpu_topology_falls_back_to_the_kernel() {
        let mut host = Host::fake();
        host.cpu_memory = Box::new(FakeCpuMemory {
            cpu: CpuInfo {
                model: "Ampere Altra".into(),
                vendor: "Ampere".into(),
                threads: 80,
                sockets: 1,
                cores: 80,
                flags: vec!["aes".into()],
                max_speed_mhz: 3000,
            },
            total_memory_bytes: 1 << 30,
        });
        let cpu = collect(&host).cpu.unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 80, 80));
        assert_eq!(cpu.max_speed_mhz, 3000);
        assert!(!cpu.virtualization);
    }

    #[test]
    fn cpu_topology_prefers_smbios() {
        let kernel = CpuInfo {
            threads: 32,
            sockets: 1,
            cores: 16,
            ..Default::default()
        };
        let proc = |socket: &str| Processor {
            socket: socket.into(),
            manufacturer: "Intel(R) Corporation".into(),
            version: "Xeon".into(),
            cores: 8,
            threads: 16,
            max_speed_mhz: 4000,
        };
        let smbios = SmbiosInfo {
            processors: vec![proc("CPU1"), proc("CPU2")],
            ..Default::default()
        };
        let cpu = cpu(Some(&kernel), &smbios);
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 16, 32));
        assert_eq!(cpu.model, "Xeon", "SMBIOS fills in what the kernel lacks");
        assert_eq!(cpu.max_speed_mhz, 4000);
    }

    #[test]
    fn pci_nics_without_netdev_are_listed() {
        let mut host = Host::fake();
        host.net = Box::new(FakeNetInterfaces(vec![Nic {
            name: "eth0".into(),
            pci_address: "0000:00:03.0".into(),
            ..Default::default()
        }]));
        let dev = |address: &str, class: &str, driver: &str| PciDevice {
            address: address.into(),
            vendor_id: "1af4".into(),
            device_id: "1041".into(),
            class: class.into(),
            driver: driver.into(),
            ..Default::default()
        };
        host.pci = Box::new(FakePciBus(vec![
            dev("0000:00:03.0", "020000", "virtio-pci"),
            dev("0000:00:04.0", "020000", "virtio-pci"),
            dev("0000:00:05.0", "010000", ""),
        ]));
        let nics = collect(&host).nics;
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[1].pci_address, "0000:00:04.0");
        assert_eq!(nics[1].driver, "virtio-pci");
        assert!(!nics[1].driver_bound);
    }
}
