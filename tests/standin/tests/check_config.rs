//! `siderite-standin check-config FILE`: the install disk the stand-in would write to.
use std::process::Command;

fn check(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_siderite-standin"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap()
}

#[test]
fn prints_the_install_disk() {
    let out = check(
        "version: v1alpha1\nmachine:\n  type: controlplane\n  install:\n    disk: /dev/vda\n    wipe: false\ncluster:\n  clusterName: c1\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/dev/vda\n");
}

#[test]
fn fails_without_an_install_disk() {
    let out = check("machine:\n  install:\n    diskSelector:\n      size: '>= 10GB'\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no machine.install.disk"), "{err}");
}

#[test]
fn usage_without_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_siderite-standin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check-config FILE"));
}
