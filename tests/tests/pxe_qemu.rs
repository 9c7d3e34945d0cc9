//! PXE end to end: in a network namespace made by the test, dnsmasq (on its own host)
//! hands out addresses only; siderite's ProxyDHCP, TFTP and HTTP do the rest. A SeaBIOS
//! machine (iPXE option ROM) and an OVMF UEFI machine network-boot into the agent and
//! register.
//!
//! Needs root, qemu-system-x86, ovmf, ipxe-qemu, ipxe, dnsmasq-base, iproute2 and the
//! static agent (scripts/build-agent.sh). Fails with the reason when one is missing.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use siderite_tests::boot::{boot_image, lab_servers as servers, nic, qemu, tail, Proc};
use siderite_tests::netlab::{require_tool, NetLab};
use siderite_tests::workspace_bin;

#[test]
fn bios_and_uefi_machines_pxe_boot_into_the_agent_and_register() -> Result<()> {
    let (kernel, _) = boot_image()?;
    let image_dir = kernel.parent().context("image dir")?.to_path_buf();
    let qemu = qemu()?;
    require_tool(&["/usr/lib/ipxe/undionly.kpxe"], "ipxe")?;
    require_tool(&["/usr/lib/ipxe/qemu/pxe-e1000.rom"], "ipxe-qemu")?;
    let ovmf_code = require_tool(
        &[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_CODE.fd",
        ],
        "ovmf",
    )?;
    let ovmf_vars_src = if ovmf_code.to_string_lossy().contains("_4M") {
        "/usr/share/OVMF/OVMF_VARS_4M.fd"
    } else {
        "/usr/share/OVMF/OVMF_VARS.fd"
    };

    let mut lab = NetLab::new("pxe", "10.79.0")?;
    let gw = lab.gateway.clone();
    let log = std::fs::File::create(lab.dir.path().join("server.log"))?;
    let _server = Proc(
        lab.command(workspace_bin("siderite"))
            .args([
                "serve",
                "--no-http",
                "--listen",
                &format!("{gw}:7070"),
                "--data-dir",
            ])
            .arg(lab.dir.path().join("data"))
            .arg("--boot-image")
            .arg(&image_dir)
            .args([
                "--boot-http-listen",
                &format!("{gw}:8080"),
                "--boot-advertise",
                &format!("{gw}:8080"),
                "--tftp-listen",
                &format!("{gw}:69"),
                "--dhcp",
                "proxy",
                "--boot-interface",
                "br0",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()?,
    );

    let (t0, t1) = (lab.tap()?, lab.tap()?);
    let console_bios = lab.dir.path().join("bios.console");
    let console_uefi = lab.dir.path().join("uefi.console");
    let vars = lab.dir.path().join("OVMF_VARS.fd");
    std::fs::copy(ovmf_vars_src, &vars).context("copying OVMF_VARS")?;
    let common = [
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-boot",
        "n",
    ];
    let started = Instant::now();
    let _bios = Proc(
        lab.command(&qemu)
            .args(common)
            .arg("-serial")
            .arg(format!("file:{}", console_bios.display()))
            .args(nic("e1000", &t0, "n0", "52:54:00:79:00:01"))
            .args([
                "-smbios",
                "type=1,uuid=1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081,serial=PXE-BIOS",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let _uefi = Proc(
        lab.command(&qemu)
            .args(common)
            .args(["-machine", "q35"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                ovmf_code.display()
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-serial")
            .arg(format!("file:{}", console_uefi.display()))
            .args(nic("virtio-net-pci", &t1, "n1", "52:54:00:79:00:02"))
            .args([
                "-smbios",
                "type=1,uuid=2c3d4e5f-6071-4829-8b3c-4d5e6f708192,serial=PXE-UEFI",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );

    let want = [
        ("1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081", "bios"),
        ("2c3d4e5f-6071-4829-8b3c-4d5e6f708192", "uefi"),
    ];
    let mut seen: Vec<(String, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while seen.len() < want.len() {
        for s in servers(&lab).unwrap_or_default() {
            let name = s["metadata"]["name"].as_str().unwrap_or("").to_string();
            if s["status"]["connected"] == true && !seen.iter().any(|(n, _)| *n == name) {
                seen.push((name, started.elapsed().as_secs_f64()));
            }
        }
        if Instant::now() > deadline {
            let read = |p: &std::path::Path| {
                String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
            };
            anyhow::bail!(
                "registered so far: {seen:?}\nBIOS console:\n{}\nUEFI console:\n{}\nserver log:\n{}\ndnsmasq:\n{}",
                tail(&read(&console_bios), 30),
                tail(&read(&console_uefi), 30),
                tail(&read(&lab.dir.path().join("server.log")), 40),
                tail(&lab.dnsmasq_log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let list = servers(&lab)?;
    for (uuid, firmware) in want {
        let s = list
            .iter()
            .find(|s| s["metadata"]["name"] == uuid)
            .with_context(|| format!("{firmware} machine {uuid} registered"))?;
        let t = seen
            .iter()
            .find(|(n, _)| n == uuid)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        println!(
            "figure: PXE power-on to registered, {firmware}: {t:.1} s (TCG, both machines at once)"
        );
        assert_eq!(
            s["status"]["hardware"]["firmware"]["bootMode"], firmware,
            "{s}"
        );
    }
    Ok(())
}
