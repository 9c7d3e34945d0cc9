//! Deterministic fake hardware for simulated agents (benchmarks and tests).
use siderite::proto::agent::v1::{BlockDevice, Cpu, Firmware, Hardware, Memory, Nic, System};

/// Machine `i` of a run: a UUID, serial and MACs derived from `seed` and `i`.
pub fn hardware(seed: u32, i: u32) -> Hardware {
    let uuid =
        uuid::Uuid::from_u128(((seed as u128) << 64) | (0x5151_0000_0000_0000u128 + i as u128));
    let mac = |n: u8| {
        let b = i.to_be_bytes();
        format!(
            "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
            (seed as u8) ^ n,
            b[1],
            b[2],
            b[3]
        )
    };
    Hardware {
        system: Some(System {
            uuid: uuid.to_string(),
            manufacturer: "Siderite Sim".into(),
            product: "Simulated Server".into(),
            serial: format!("SIM-{seed:x}-{i:06}"),
            ..Default::default()
        }),
        cpu: Some(Cpu {
            sockets: 1,
            cores: 4,
            threads: 8,
            model: "Simulated CPU".into(),
            ..Default::default()
        }),
        memory: Some(Memory {
            total_bytes: 16 << 30,
            modules: vec![],
        }),
        disks: vec![
            BlockDevice {
                name: "nvme0n1".into(),
                dev_path: "/dev/nvme0n1".into(),
                size_bytes: 512 << 30,
                bus: "nvme".into(),
                disk_type: "nvme".into(),
                serial: format!("NVME-{i}"),
                ..Default::default()
            },
            BlockDevice {
                name: "sda".into(),
                dev_path: "/dev/sda".into(),
                size_bytes: 2 << 40,
                bus: "sata".into(),
                disk_type: "hdd".into(),
                rotational: true,
                serial: format!("SATA-{i}"),
                ..Default::default()
            },
        ],
        nics: vec![
            Nic {
                name: "eth0".into(),
                mac: mac(0),
                driver: "e1000e".into(),
                driver_bound: true,
                operstate: "up".into(),
                carrier: true,
                speed_mbps: 1000,
                ..Default::default()
            },
            Nic {
                name: "eth1".into(),
                mac: mac(1),
                driver: "virtio_net".into(),
                driver_bound: true,
                operstate: "up".into(),
                carrier: true,
                ..Default::default()
            },
        ],
        firmware: Some(Firmware {
            boot_mode: "uefi".into(),
            secure_boot: false,
        }),
        hostname: format!("sim-{i}"),
        arch: "x86_64".into(),
        ..Default::default()
    }
}
