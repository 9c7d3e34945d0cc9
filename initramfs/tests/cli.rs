//! The `siderite-image` CLI end to end on a small unpacked kernel tree (no apt needed).
use std::path::Path;
use std::process::Command;

use siderite_initramfs::image::unpack;
use siderite_initramfs::{Manifest, INITRAMFS, MANIFEST, VMLINUZ};

/// The smallest file `/init` accepts: an ELF64 header with no program interpreter.
fn static_elf() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..6].copy_from_slice(b"\x7fELF\x02\x01");
    h
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("lib/modules/6.1.0-9-amd64/kernel")).unwrap();
    std::fs::write(dir.join("boot/vmlinuz-6.1.0-9-amd64"), b"bzImage").unwrap();
}

#[test]
fn builds_an_agent_only_image_from_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    tree(&dir.path().join("tree"));
    std::fs::write(dir.path().join("agent"), static_elf()).unwrap();
    std::fs::write(dir.path().join("motd"), b"hello").unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_siderite-image"))
        .arg("build")
        .arg("--kernel-tree")
        .arg(dir.path().join("tree"))
        .arg("--agent")
        .arg(dir.path().join("agent"))
        .arg("--out")
        .arg(&out)
        .args(["--modules", "none", "--zstd-level", "3"])
        .arg("--add-file")
        .arg(format!("{}:/etc/motd", dir.path().join("motd").display()))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("modules: 0 shipped"), "{stdout}");
    assert!(stdout.contains("build time:"), "{stdout}");
    assert_eq!(std::fs::read(out.join(VMLINUZ)).unwrap(), b"bzImage");
    let m: Manifest = serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(m.kernel_release, "6.1.0-9-amd64");
    assert_eq!(m.mtime, 1_700_000_000);
    let entries = unpack(&std::fs::read(out.join(INITRAMFS)).unwrap()).unwrap();
    let motd = entries.iter().find(|e| e.name == "etc/motd").unwrap();
    assert_eq!(motd.data, b"hello");
    assert!(entries.iter().all(|e| e.mtime == 1_700_000_000));
}

#[test]
fn bad_arguments_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    tree(&dir.path().join("tree"));
    let run = Command::new(env!("CARGO_BIN_EXE_siderite-image"))
        .arg("build")
        .arg("--kernel-tree")
        .arg(dir.path().join("tree"))
        .arg("--agent")
        .arg(dir.path().join("missing-agent"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["--modules", "everything"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("invalid module choice"), "{stderr}");
}
