//! Environments through the CLI and the admin API: assets are sha512-checked before an
//! Environment is ready, bad manifests change nothing, and they survive a restart.
use std::process::Command;

use sha2::{Digest, Sha512};
use siderite_tests::{workspace_bin, ServerProcess};

fn cli(addr: &str, args: &[&str]) -> (bool, String, String) {
    let config = siderite_tests::cli_config(addr, &std::env::temp_dir());
    let out = Command::new(workspace_bin("siderite"))
        .arg("--siderite-config")
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest(
    name: &str,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    kernel_sha: &str,
    initrd_sha: &str,
) -> String {
    format!(
        "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  kernel:\n    path: {}\n    sha512: {kernel_sha}\n  initrd:\n    path: {}\n    sha512: {initrd_sha}\n  args: [talos.platform=metal, console=ttyS0]\n  arch: amd64\n",
        kernel.display(),
        initrd.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_verified_refused_when_bad_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, initrd) = (dir.path().join("vmlinuz"), dir.path().join("initramfs.xz"));
    std::fs::write(&kernel, b"kernel bytes").unwrap();
    std::fs::write(&initrd, b"initrd bytes").unwrap();
    let sha = |b: &[u8]| format!("{:x}", Sha512::digest(b));
    let (ks, is) = (sha(b"kernel bytes"), sha(b"initrd bytes"));
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]).await.unwrap();
    let addr = server.addr.clone();

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, manifest("talos-1-8", &kernel, &initrd, &ks, &is)).unwrap();
    let (ok, out, err) = cli(&addr, &["apply", "-f", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "environment/talos-1-8 applied, assets verified\n");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, manifest("tampered", &kernel, &initrd, &is, &is)).unwrap();
    let (ok, out, err) = cli(&addr, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("NOT ready: kernel sha512 mismatch"), "{out}");

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        manifest("x", &kernel, &initrd, &ks, &is) + "colour: blue\n",
    )
    .unwrap();
    let (ok, _, err) = cli(&addr, &["apply", "-f", unknown.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field"), "{err}");
    let builtin = dir.path().join("agent.yaml");
    std::fs::write(&builtin, manifest("agent", &kernel, &initrd, &ks, &is)).unwrap();
    let (ok, _, err) = cli(&addr, &["apply", "-f", builtin.to_str().unwrap()]);
    assert!(!ok && err.contains("built in"), "{err}");

    let (ok, table, _) = cli(&addr, &["get", "environments"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("talos-1-8") && lines[1].contains("true"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("tampered") && lines[2].contains("false"),
        "{table}"
    );

    // A restart verifies the stored Environments again.
    server.kill9();
    let server = ServerProcess::start(&data, &[]).await.unwrap();
    let (ok, json, _) = cli(&server.addr, &["get", "environments", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["status"]["ready"], true);
    assert_eq!(items[0]["spec"]["args"][0], "talos.platform=metal");

    let (ok, out, _) = cli(&server.addr, &["delete", "environment", "tampered"]);
    assert!(ok, "{out}");
    let (ok, _, err) = cli(&server.addr, &["delete", "environment", "tampered"]);
    assert!(!ok && err.contains("not found"), "{err}");
}
