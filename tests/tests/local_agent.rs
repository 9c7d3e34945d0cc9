//! As a new user tries it: `siderite serve`, `siderite-agent run` on the same box, and
//! `siderite get servers` shows the box with its disks and NICs.
use std::process::{Command, Stdio};
use std::time::Duration;

use siderite_tests::{list_servers, workspace_bin, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_box_registers_and_the_cli_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[])
        .await
        .unwrap();

    let inventory = Command::new(workspace_bin("siderite-agent"))
        .arg("inventory")
        .output()
        .unwrap();
    assert!(
        inventory.status.success(),
        "{}",
        String::from_utf8_lossy(&inventory.stderr)
    );
    let inv: serde_json::Value = serde_json::from_slice(&inventory.stdout).unwrap();

    let mut agent = Command::new(workspace_bin("siderite-agent"))
        .args(["run", "--server", &server.addr, "--ca"])
        .arg(siderite_tests::access(&server.addr).pin.to_string())
        .env(
            "SIDERITE_TOKEN",
            siderite_tests::access(&server.addr).join_token,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..200 {
        servers = list_servers(&server.addr).await.unwrap();
        if servers
            .iter()
            .any(|s| s.status.as_ref().is_some_and(|st| st.connected))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(servers.len(), 1, "this box registered");
    let name = servers[0].metadata.clone().unwrap().name;

    let cli = |args: &[&str]| {
        let out = Command::new(workspace_bin("siderite"))
            .arg("--siderite-config")
            .arg(siderite_tests::cli_config(
                &server.addr,
                &std::env::temp_dir(),
            ))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["get", "servers"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&name), "{table}");
    let disks: Vec<String> = inv["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    let nics: Vec<String> = inv["nics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["virtual"].as_bool().unwrap_or(false))
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    // The table shows up to four of each; describe shows all.
    for d in disks.iter().take(4) {
        assert!(table.contains(&format!("{d}:")), "disk {d} in {table}");
    }
    for n in nics.iter().take(4) {
        assert!(table.contains(&format!("{n}:")), "nic {n} in {table}");
    }
    let described = cli(&["describe", "server", &name]);
    for d in &disks {
        assert!(
            described.contains(d.as_str()),
            "disk {d} in describe:\n{described}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&cli(&["get", "servers", &name, "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["name"], name.as_str());
    assert_eq!(
        json["status"]["hardware"]["disks"]
            .as_array()
            .unwrap()
            .len(),
        disks.len()
    );
    let yaml = cli(&["get", "servers", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: List") && yaml.contains(&name),
        "{yaml}"
    );

    // Accepting starts the first wipe; an agent run without --allow-disk-writes refuses
    // every disk, so the server goes dirty with the reason and this box keeps its disks.
    cli(&["accept", &name]);
    let mut described = String::new();
    for _ in 0..200 {
        described = cli(&["describe", "server", &name]);
        if described.contains("Phase:            dirty") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        described.contains("Phase:            dirty")
            && described.contains("without --allow-disk-writes"),
        "{described}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn cli_reports_an_unreachable_server_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    siderite_server::clientconfig::ClientConfig::new(
        "127.0.0.1:1",
        siderite::tls::CaPin([7; 32]),
        "",
        &[("admin".into(), "admin.x".into())],
    )
    .save(&config)
    .unwrap();
    let out = Command::new(workspace_bin("siderite"))
        .arg("--siderite-config")
        .arg(&config)
        .args(["get", "servers"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to the siderite server at 127.0.0.1:1"),
        "{err}"
    );
}
