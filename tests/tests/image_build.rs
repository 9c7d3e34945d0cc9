//! The boot image built from Debian's real kernel package (fetched with apt-get into
//! target/siderite-kernels, reused after the first run): byte-for-byte reproducible,
//! within its size budgets, with /init, /dev/console and the drivers QEMU and real
//! servers need. Needs apt-get, apt-cache and dpkg-deb, and the static agent from
//! scripts/build-agent.sh (or SIDERITE_TEST_AGENT pointing at another static binary);
//! without them it fails and says why.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use siderite_initramfs::cpio::ReadEntry;
use siderite_initramfs::image::unpack;
use siderite_initramfs::{
    build, BuildOptions, KernelSource, Manifest, ModuleChoice, DEFAULT_AGENT, DEFAULT_CACHE,
    INITRAMFS, MANIFEST, VMLINUZ,
};

const FULL_BUDGET: u64 = 8 * 1024 * 1024;
const AGENT_ONLY_BUDGET: u64 = 2 * 1024 * 1024;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_tools() {
    for (tool, package) in [
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` (Debian package {package}) is needed to fetch the kernel package"
        );
    }
}

fn agent() -> PathBuf {
    let agent = std::env::var_os("SIDERITE_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(DEFAULT_AGENT));
    assert!(
        agent.is_file(),
        "{} is missing: run scripts/build-agent.sh (scripts/test.sh does)",
        agent.display()
    );
    agent
}

fn opts(out: &Path, modules: ModuleChoice) -> BuildOptions {
    let kernel = KernelSource::Apt {
        package: "linux-image-amd64".into(),
        cache: root().join(DEFAULT_CACHE),
    };
    let mut o = BuildOptions::new(kernel, agent(), out.to_path_buf());
    o.modules = modules;
    o
}

fn timed_build(o: &BuildOptions) -> (Manifest, f64) {
    let t = Instant::now();
    let m = build(o).unwrap_or_else(|e| panic!("image build failed: {}", error_chain(&e)));
    (m, t.elapsed().as_secs_f64())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn entries(dir: &Path) -> Vec<ReadEntry> {
    unpack(&std::fs::read(dir.join(INITRAMFS)).unwrap()).unwrap()
}

#[test]
fn boot_image_from_debian_kernel_is_reproducible_and_small() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, min) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("min"),
    );

    let (ma, ta) = timed_build(&opts(&a, ModuleChoice::Default));
    let (mb, tb) = timed_build(&opts(&b, ModuleChoice::Default));
    let (mm, tm) = timed_build(&opts(&min, ModuleChoice::None));

    // Two builds, same bytes.
    for f in [VMLINUZ, INITRAMFS, MANIFEST] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two builds of the same inputs");
    }
    assert_eq!(ma, mb);
    let full = ma.file(INITRAMFS).unwrap();
    assert_eq!(full.sha256, mb.file(INITRAMFS).unwrap().sha256);
    assert_eq!(
        full.sha256,
        siderite_initramfs::sha256_hex(&std::fs::read(a.join(INITRAMFS)).unwrap())
    );

    // The pinned kernel behind the metapackage is recorded.
    assert_eq!(ma.kernel.requested, "linux-image-amd64");
    assert!(
        ma.kernel.name.starts_with("linux-image-") && ma.kernel.name != "linux-image-amd64",
        "{:?}",
        ma.kernel
    );
    assert!(
        ma.kernel_release.ends_with("-amd64"),
        "{}",
        ma.kernel_release
    );
    let written: Manifest =
        serde_json::from_slice(&std::fs::read(a.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(written, ma);

    let agent_only = mm.file(INITRAMFS).unwrap();
    println!(
        "kernel package: {} {} (release {}, from {})",
        ma.kernel.name, ma.kernel.version, ma.kernel_release, ma.kernel.requested
    );
    println!("agent: {} bytes", ma.agent.size);
    println!(
        "full image: {} bytes compressed ({} bytes cpio), {} modules, built in {ta:.1} s and {tb:.1} s, sha256 {}",
        full.size,
        ma.cpio_size,
        ma.modules.len(),
        full.sha256
    );
    println!(
        "agent-only image: {} bytes compressed ({} bytes cpio), built in {tm:.1} s",
        agent_only.size, mm.cpio_size
    );
    println!(
        "builtin: {:?}; unknown: {:?}; firmware shipped: {}, missing: {}",
        ma.modules_builtin,
        ma.modules_unknown,
        ma.firmware.len(),
        ma.firmware_missing.len()
    );
    assert!(
        full.size <= FULL_BUDGET,
        "full image is {} bytes, over the 8 MB budget",
        full.size
    );
    assert!(
        agent_only.size < AGENT_ONLY_BUDGET,
        "agent-only image is {} bytes, over the 2 MB budget",
        agent_only.size
    );
    assert!(ma.modules_unknown.is_empty(), "{:?}", ma.modules_unknown);

    // What the kernel and the agent need is in the archive.
    let list = entries(&a);
    let find = |name: &str| list.iter().find(|e| e.name == name);
    let init = find("init").expect("/init");
    assert!(init.is_file() && init.mode & 0o777 == 0o755);
    assert_eq!(init.data, std::fs::read(agent()).unwrap());
    let console = find("dev/console").expect("/dev/console");
    assert!(console.is_char_device());
    assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
    let base = format!("lib/modules/{}", ma.kernel_release);
    for f in ["modules.dep", "modules.alias"] {
        assert!(find(&format!("{base}/{f}")).is_some(), "{f}");
    }
    let alias =
        String::from_utf8_lossy(&find(&format!("{base}/modules.alias")).unwrap().data).into_owned();
    let dep =
        String::from_utf8_lossy(&find(&format!("{base}/modules.dep")).unwrap().data).into_owned();
    for m in [
        "e1000",
        "e1000e",
        "virtio_net",
        "virtio_pci",
        "nvme",
        "ahci",
        "sd_mod",
        "igb",
        "ixgbe",
        "mlx5_core",
    ] {
        let ko = list
            .iter()
            .find(|e| e.name.starts_with(&base) && e.name.ends_with(&format!("/{m}.ko")))
            .unwrap_or_else(|| panic!("{m}.ko is not in the image"));
        assert!(ko.data.starts_with(b"\x7fELF"), "{}", ko.name);
        let rel = ko.name.strip_prefix(&format!("{base}/")).unwrap();
        assert!(
            dep.lines().any(|l| l.starts_with(&format!("{rel}:"))),
            "{m} not in modules.dep"
        );
        assert!(
            alias.lines().any(|l| l.ends_with(&format!(" {m}"))),
            "{m} not in modules.alias"
        );
    }
    // Every dependency a shipped module names is shipped too.
    for line in dep.lines() {
        let (_, deps) = line.split_once(':').unwrap();
        for d in deps.split_whitespace() {
            assert!(
                find(&format!("{base}/{d}")).is_some(),
                "{d} (needed by {line}) missing"
            );
        }
    }
    // No shell, no busybox: the agent is the only program.
    for e in &list {
        let name = e.name.rsplit('/').next().unwrap();
        assert!(
            !["sh", "bash", "busybox", "ash"].contains(&name) && !e.name.contains("bin/"),
            "{} in the image",
            e.name
        );
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
    }

    // The agent-only image is the agent and the bare layout.
    let min_list = entries(&min);
    assert!(mm.modules.is_empty());
    assert!(!min_list.iter().any(|e| e.name.ends_with(".ko")));
    assert!(min_list.iter().any(|e| e.name == "init"));
    assert!(min_list.iter().any(|e| e.name == "dev/console"));
}
