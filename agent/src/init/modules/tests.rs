use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/modules/cloud")
}

const VIRTIO_NET_PCI: &str = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00";
const VIRTIO_BLK_PCI: &str = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00";
const CPU: &str = "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0094,00C0";

/// Stands in for the kernel: records loads, marks modules loaded in `<sys>/module`, and
/// makes the devices a driver would expose appear.
struct FakeKernel {
    sys: PathBuf,
    loads: Vec<(String, String)>,
    /// module -> (device directory under sys/devices, its modalias)
    exposes: HashMap<&'static str, Vec<(&'static str, &'static str)>>,
    missing: Vec<&'static str>,
    refuse: Vec<&'static str>,
}

impl FakeKernel {
    fn new(sys: &Path) -> Self {
        let mut exposes = HashMap::new();
        exposes.insert(
            "virtio_pci",
            vec![
                (
                    "pci0000:00/0000:00:02.0/virtio0",
                    "virtio:d00000001v00001AF4",
                ),
                (
                    "pci0000:00/0000:00:03.0/virtio1",
                    "virtio:d00000002v00001AF4",
                ),
            ],
        );
        FakeKernel {
            sys: sys.to_path_buf(),
            loads: Vec::new(),
            exposes,
            missing: Vec::new(),
            refuse: Vec::new(),
        }
    }

    fn loaded(&self) -> Vec<&str> {
        self.loads.iter().map(|(m, _)| m.as_str()).collect()
    }
}

impl ModuleLoader for FakeKernel {
    fn load(&mut self, path: &Path, params: &str) -> Result<(), LoadError> {
        assert!(path.starts_with(fixture()), "{}", path.display());
        let name = module_name(path.to_str().unwrap());
        if self.missing.contains(&name.as_str()) {
            return Err(LoadError::Missing(path.into()));
        }
        if self.refuse.contains(&name.as_str()) {
            return Err(LoadError::Kernel {
                path: path.into(),
                errno: nix::Error::ENODEV,
            });
        }
        assert!(
            !self.sys.join("module").join(&name).exists(),
            "{name} loaded twice"
        );
        std::fs::create_dir_all(self.sys.join("module").join(&name)).unwrap();
        for (dir, alias) in self.exposes.get(name.as_str()).into_iter().flatten() {
            device(&self.sys, dir, alias);
        }
        self.loads.push((name, params.to_string()));
        Ok(())
    }
}

fn device(sys: &Path, dir: &str, alias: &str) {
    let dir = sys.join("devices").join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modalias"), format!("{alias}\n")).unwrap();
}

fn qemu_sysfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path();
    device(sys, "pci0000:00/0000:00:02.0", VIRTIO_NET_PCI);
    device(sys, "pci0000:00/0000:00:03.0", VIRTIO_BLK_PCI);
    device(sys, "system/cpu", CPU);
    device(sys, "platform/serial8250", "platform:serial8250");
    device(
        sys,
        "pci0000:00/0000:00:1f.0",
        "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00",
    );
    std::fs::create_dir_all(sys.join("module")).unwrap();
    dir
}

fn no_wait() -> Settle {
    Settle {
        poll: Duration::ZERO,
        quiet: Duration::ZERO,
        max: Duration::ZERO,
    }
}

fn tables() -> ModuleTables {
    ModuleTables::read(&fixture()).unwrap()
}

#[test]
fn real_tables_parse() {
    let t = tables();
    assert_eq!(t.aliases.len(), 30);
    assert_eq!(t.deps.len(), 16);
    assert!(t.builtin.contains("nvme_core") && t.builtin.contains("af_packet"));
    assert_eq!(t.aliases.lookup(VIRTIO_NET_PCI), ["virtio_pci"]);
    assert_eq!(t.aliases.lookup("scsi:t-0x00"), ["sd_mod"]);
    assert_eq!(t.aliases.lookup(CPU), ["crc32c_intel"]);
    assert_eq!(
        t.deps.load_order("virtio_pci").unwrap(),
        [
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio",
            "virtio_pci"
        ]
    );
}

#[test]
fn loads_in_rounds_as_devices_appear() {
    let dir = qemu_sysfs();
    let sys = dir.path();
    // A UEFI boot: efivarfs is wanted too.
    std::fs::create_dir_all(sys.join("firmware/efi")).unwrap();
    let mut kernel = FakeKernel::new(sys);
    let report = load_with(
        &tables(),
        &fixture(),
        sys,
        &ModuleOptions::default(),
        &mut kernel,
        no_wait(),
    );
    let expected = [
        // ALWAYS_LOAD (af_packet is built in)
        "scsi_common",
        "scsi_mod",
        "sd_mod",
        "efivarfs",
        // round 1, devices in modalias order: the CPU, then virtio-pci
        "crc32c_intel",
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_pci",
        // round 2: the virtio devices virtio_pci exposed
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_blk",
    ];
    assert_eq!(kernel.loaded(), expected);
    assert_eq!(
        report,
        ModuleReport {
            kernel_release: String::new(),
            loaded: expected.map(String::from).to_vec(),
            present: vec!["af_packet".into()],
            missing: vec![],
            blacklisted: vec![],
            failed: vec![],
            rounds: 3,
            devices: 7,
            error: None,
        }
    );
    assert!(kernel.loads.iter().all(|(_, params)| params.is_empty()));

    // Again: everything is in, nothing is loaded twice.
    let report = load_with(
        &tables(),
        &fixture(),
        sys,
        &ModuleOptions::default(),
        &mut kernel,
        no_wait(),
    );
    assert_eq!(report.loaded, Vec::<String>::new());
    assert_eq!(report.rounds, 1);
    assert!(report.present.contains(&"virtio_net".to_string()));
    assert!(report.failed.is_empty() && report.missing.is_empty());
}

#[test]
fn settles_before_rescanning() {
    let dir = qemu_sysfs();
    let sys = dir.path();
    let mut kernel = FakeKernel::new(sys);
    // virtio_pci's devices show up only later, as after an asynchronous probe.
    kernel.exposes.clear();
    let late = sys.to_path_buf();
    let spawner = std::thread::spawn(move || {
        while !late.join("module/virtio_pci").exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(60));
        device(
            &late,
            "pci0000:00/0000:00:02.0/virtio0",
            "virtio:d00000001v00001AF4",
        );
    });
    let settle = Settle {
        poll: Duration::from_millis(10),
        quiet: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    let report = load_with(
        &tables(),
        &fixture(),
        sys,
        &ModuleOptions::default(),
        &mut kernel,
        settle,
    );
    spawner.join().unwrap();
    assert!(
        report.loaded.contains(&"virtio_net".to_string()),
        "{report:#?}"
    );
}

#[test]
fn failures_missing_files_and_blacklists_are_reported() {
    let dir = qemu_sysfs();
    let sys = dir.path();
    std::fs::create_dir_all(sys.join("firmware/efi")).unwrap();
    let mut kernel = FakeKernel::new(sys);
    kernel.missing = vec!["failover", "efivarfs"];
    kernel.refuse = vec!["crc32c_intel"];
    // Loaded before us (by a previous run, say).
    std::fs::create_dir_all(sys.join("module/scsi_mod")).unwrap();
    // A device whose driver is not in the tables at all.
    device(
        sys,
        "pci0000:00/0000:00:04.0",
        "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
    );
    let mut tables = tables();
    tables.aliases = AliasTable::parse(&format!(
        "{}alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n",
        std::fs::read_to_string(fixture().join("modules.alias")).unwrap()
    ));
    let options = ModuleOptions::from_cmdline(
        "console=ttyS0 modprobe.blacklist=virtio_blk,foo virtio_net.napi_tx=0 \
         virtio-pci.force_legacy=1 sd_mod.x=\"a b\" siderite.debug",
    );
    let report = load_with(&tables, &fixture(), sys, &options, &mut kernel, no_wait());
    assert_eq!(
        kernel.loaded(),
        [
            "scsi_common",
            "sd_mod",
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio",
            "virtio_pci"
        ]
    );
    let params: HashMap<&str, &str> = kernel
        .loads
        .iter()
        .map(|(m, p)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(params["virtio_pci"], "force_legacy=1");
    assert_eq!(params["sd_mod"], "x=\"a b\"");
    assert_eq!(params["virtio"], "");
    assert_eq!(report.present, ["af_packet", "scsi_mod"]);
    assert_eq!(report.missing, ["efivarfs", "e1000e", "failover"]);
    assert_eq!(report.blacklisted, ["virtio_blk"]);
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|f| (f.module.as_str(), f.reason.as_str()))
        .collect();
    let crc = fixture().join("kernel/arch/x86/crypto/crc32c-intel.ko");
    assert_eq!(
        failed,
        [
            (
                "crc32c_intel",
                format!(
                    "the kernel refused {}: ENODEV: No such device",
                    crc.display()
                )
                .as_str()
            ),
            ("virtio_net", "needs failover, which is not in the image"),
        ]
    );
    assert_eq!(report.rounds, 2);
}

#[test]
fn options_from_the_command_line() {
    let o = ModuleOptions::from_cmdline(
        "BOOT_IMAGE=/vmlinuz quiet ixgbe.allow_unsupported_sfp=1 nvme-core.multipath=N \
         nvme_core.io_timeout=60 e1000e.debug module_blacklist=a-b,c modprobe.blacklist=d \
         siderite.server=x:1 .x=1 y.=2",
    );
    assert_eq!(o.params("ixgbe"), "allow_unsupported_sfp=1");
    assert_eq!(o.params("nvme_core"), "multipath=N io_timeout=60");
    assert_eq!(o.params("e1000e"), "debug");
    assert_eq!(o.params("siderite"), "");
    assert_eq!(o.params("quiet"), "");
    assert_eq!(
        o.blacklist,
        HashSet::from(["a_b".into(), "c".into(), "d".into()])
    );
}

#[test]
fn no_tables_is_an_error_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = load_modules(dir.path(), "6.1.0-99-amd64");
    assert_eq!(report.kernel_release, "6.1.0-99-amd64");
    assert!(report.loaded.is_empty());
    let error = report.error.unwrap();
    assert!(
        error.contains("lib/modules/6.1.0-99-amd64/modules.alias"),
        "{error}"
    );
}

#[test]
fn finit_module_refuses_compressed_and_absent_files_before_the_syscall() {
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("e1000e.ko.zst");
    std::fs::write(&zst, b"(zstd)").unwrap();
    assert_eq!(
        FinitModule.load(&zst, ""),
        Err(LoadError::Compressed(zst.clone()))
    );
    let absent = dir.path().join("absent.ko");
    assert_eq!(
        FinitModule.load(&absent, ""),
        Err(LoadError::Missing(absent.clone()))
    );
    assert_eq!(
        LoadError::Compressed(zst.clone()).to_string(),
        format!("{}: compressed modules are not supported", zst.display())
    );
}
