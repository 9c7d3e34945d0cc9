//! The agent as PID 1 of the real boot image, booted by Debian's generic kernel in QEMU
//! (TCG), on a bridge in a network namespace made by the test, with dnsmasq as the site's
//! DHCP and the siderite server listening on the bridge.
//!
//! Needs root, qemu-system-x86, dnsmasq-base, iproute2, apt (for the kernel package) and
//! the static agent (scripts/build-agent.sh). Fails with the reason when one is missing.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use siderite_tests::boot::{
    boot_image, disk, init_server, lab_cli, lab_servers as servers, nic, tail, Machine, Proc,
};
use siderite_tests::netlab::NetLab;
use siderite_tests::workspace_bin;

const GIB: u64 = 1 << 30;

fn start_server(lab: &NetLab) -> Result<Proc> {
    let data = lab.dir.path().join("server-data");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.dir.path().join("server.log"))?;
    let child = lab
        .command(workspace_bin("siderite"))
        .args([
            "serve",
            "--no-http",
            "--listen",
            &format!("{}:7070", lab.gateway),
            "--data-dir",
        ])
        .arg(&data)
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the server in the lab")?;
    Ok(Proc(child))
}

/// Polls until one connected server is listed; returns it and when it appeared.
fn wait_registered(lab: &NetLab, m: &mut Machine, timeout: Duration) -> Result<(Value, Duration)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(list) = servers(lab) {
            if let Some(s) = list.iter().find(|s| s["status"]["connected"] == true) {
                return Ok((s.clone(), m.started.elapsed()));
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "no registration within {timeout:?}; console:\n{}\nserver log:\n{}\ndnsmasq:\n{}",
                tail(&m.console_text(), 60),
                std::fs::read_to_string(lab.dir.path().join("server.log")).unwrap_or_default(),
                tail(&lab.dnsmasq_log(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_from_console(console: &str) -> Option<u64> {
    let line = console
        .lines()
        .find(|l| l.contains("registered server_id"))?;
    line.split("rss_kib=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn disk_args(lab: &NetLab) -> Result<Vec<String>> {
    let dir = lab.dir.path();
    let (a, b, c) = (
        disk(dir, "virtio.img", GIB)?,
        disk(dir, "nvme.img", 2 * GIB)?,
        disk(dir, "sata.img", 3 * GIB)?,
    );
    Ok(vec![
        "-drive".into(),
        format!("file={},if=none,id=d1,format=raw", a.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d1,serial=VIRTIO-1".into(),
        "-drive".into(),
        format!("file={},if=none,id=d2,format=raw", b.display()),
        "-device".into(),
        "nvme,drive=d2,serial=NVME-0001".into(),
        "-drive".into(),
        format!("file={},if=none,id=d3,format=raw", c.display()),
        "-device".into(),
        "ahci,id=ahci".into(),
        "-device".into(),
        "ide-hd,drive=d3,bus=ahci.0,serial=SATA-0001".into(),
    ])
}

#[test]
fn generic_kernel_boots_the_agent_which_registers_its_exact_hardware() -> Result<()> {
    let (kernel, initrd) = boot_image()?;
    let mut lab = NetLab::new("boot", "10.77.0")?;
    let init = init_server(&lab.dir.path().join("server-data"))?;
    let _server = start_server(&lab)?;
    let (t0, t1) = (lab.tap()?, lab.tap()?);
    let mut devices = Vec::new();
    devices.extend(nic("e1000", &t0, "n0", "52:54:00:77:00:01"));
    devices.extend(nic("virtio-net-pci", &t1, "n1", "52:54:00:77:00:02"));
    devices.extend(disk_args(&lab)?);
    devices.extend([
        "-smbios".to_string(),
        "type=1,uuid=6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b,serial=RACK1-U07,manufacturer=Siderite Labs,product=Test Sled".into(),
    ]);
    let append = format!(
        "console=ttyS0 siderite.server={}:7070 {}",
        lab.gateway,
        init.agent_args()
    );
    let mut m = Machine::start(&lab, "boot", &append, &kernel, &initrd, &devices)?;
    let (s, took) = wait_registered(&lab, &mut m, Duration::from_secs(120))?;
    println!(
        "figure: QEMU start to registered (TCG): {:.1} s",
        took.as_secs_f64()
    );
    if let Some(rss) = rss_from_console(&m.console_text()) {
        println!("figure: agent RSS after registration: {rss} KiB");
    }

    assert_eq!(
        s["metadata"]["name"],
        "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    );
    let hw = &s["status"]["hardware"];
    assert_eq!(hw["system"]["uuid"], "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b");
    // describe shows what happened during boot (modules, network) next to the hardware.
    let mut described = String::new();
    for _ in 0..50 {
        let mut args = lab_cli(&lab)?;
        args.extend(
            ["describe", "server", "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"].map(String::from),
        );
        described = lab.exec(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if described.contains("network:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(described.contains("Recent agent logs:"), "{described}");
    assert!(
        described.contains("modules (") && described.contains("network: "),
        "{described}"
    );
    assert_eq!(hw["system"]["serial"], "RACK1-U07");
    assert_eq!(hw["system"]["manufacturer"], "Siderite Labs");
    assert_eq!(hw["system"]["product"], "Test Sled");

    let disks: Vec<(String, u64, String)> = hw["disks"]
        .as_array()
        .context("disks")?
        .iter()
        .map(|d| {
            (
                d["serial"].as_str().unwrap_or("").to_string(),
                d["sizeBytes"].as_u64().unwrap_or(0),
                d["bus"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut want = vec![
        ("NVME-0001".to_string(), 2 * GIB, "nvme".to_string()),
        ("SATA-0001".to_string(), 3 * GIB, "sata".to_string()),
        ("VIRTIO-1".to_string(), GIB, "virtio".to_string()),
    ];
    let mut got = disks.clone();
    got.sort();
    want.sort();
    assert_eq!(
        got,
        want,
        "the three disks with their sizes and buses; console:\n{}",
        tail(&m.console_text(), 30)
    );

    let nics: Vec<(String, String, bool)> = hw["nics"]
        .as_array()
        .context("nics")?
        .iter()
        .filter(|n| n["virtual"] != true)
        .map(|n| {
            (
                n["mac"].as_str().unwrap_or("").to_string(),
                n["driver"].as_str().unwrap_or("").to_string(),
                n["driverBound"] == true,
            )
        })
        .collect();
    for (mac, driver) in [
        ("52:54:00:77:00:01", "e1000"),
        ("52:54:00:77:00:02", "virtio_net"),
    ] {
        assert!(
            nics.contains(&(mac.to_string(), driver.to_string(), true)),
            "{mac} with {driver} in {nics:?}"
        );
    }
    Ok(())
}

#[test]
fn undriven_nic_garbled_command_line_and_a_late_server_still_register() -> Result<()> {
    let (kernel, initrd) = boot_image()?;
    let mut lab = NetLab::new("late", "10.78.0")?;
    let init = init_server(&lab.dir.path().join("server-data"))?;
    let (t0, t1) = (lab.tap()?, lab.tap()?);
    let mut devices = Vec::new();
    // rtl8139's driver (8139too) is not in the image: the NIC stays undriven.
    devices.extend(nic("rtl8139", &t0, "n0", "52:54:00:78:00:01"));
    devices.extend(nic("virtio-net-pci", &t1, "n1", "52:54:00:78:00:02"));
    devices.extend([
        "-smbios".to_string(),
        "type=1,uuid=00000000-0000-0000-0000-000000000000,serial=ZERO-UUID".into(),
    ]);
    let append = format!(
        "console=ttyS0 {} siderite.colour=blue siderite.server=[::1 siderite.debug=maybe siderite.server={}:7070 ==x \"siderite.token",
        init.agent_args(),
        lab.gateway
    );
    let mut m = Machine::start(&lab, "late", &append, &kernel, &initrd, &devices)?;
    // No server yet: the agent keeps running and says why.
    m.wait_console("no session", Duration::from_secs(120))?;
    let console = m.console_text();
    assert!(
        console.contains("siderite.colour"),
        "unknown key reported:\n{}",
        tail(&console, 40)
    );
    let server = start_server(&lab)?;
    let (s, took) = wait_registered(&lab, &mut m, Duration::from_secs(90))?;
    println!(
        "registered {:.1} s after QEMU start, once the server came up",
        took.as_secs_f64()
    );

    // The server goes away and comes back: the agent notices, retries, registers again
    // as the same machine (found by its MACs, since its identity was issued).
    drop(server);
    m.wait_console("session ended; reconnecting", Duration::from_secs(60))?;
    let _server = start_server(&lab)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = servers(&lab).unwrap_or_default();
        if let Some(again) = list.iter().find(|x| x["status"]["connected"] == true) {
            assert_eq!(
                again["metadata"]["name"], s["metadata"]["name"],
                "same machine, same server"
            );
            assert!(again["status"]["registrations"].as_u64() >= Some(2));
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no re-registration after the server came back:\n{}",
            tail(&m.console_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let st = &s["status"];
    assert_eq!(
        st["identityIssued"], true,
        "an all-zero UUID gets an issued identity"
    );
    assert_ne!(
        s["metadata"]["name"],
        "00000000-0000-0000-0000-000000000000"
    );
    let nics = st["hardware"]["nics"].as_array().context("nics")?;
    let undriven = nics
        .iter()
        .find(|n| n["pciVendor"] == "10ec" && n["pciDevice"] == "8139")
        .with_context(|| format!("the rtl8139 by its PCI IDs in {nics:?}"))?;
    assert_ne!(undriven["driverBound"], true);
    assert!(
        nics.iter()
            .any(|n| n["mac"] == "52:54:00:78:00:02" && n["driver"] == "virtio_net"),
        "{nics:?}"
    );
    Ok(())
}
