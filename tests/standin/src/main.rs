//! A Talos stand-in for end-to-end tests. Booted (or kexec'd into) with
//! `talos.platform=metal talos.config=URL`, it does the part of Talos' first boot that
//! siderite relies on: fetch the machine config from URL and install to the config's
//! `machine.install.disk`. "Installing" writes the config itself, behind a header with
//! its length and sha256, at offset 0 of that disk; then the machine powers off. Every
//! step is logged on the console.
//!
//! As PID 1 it reuses the agent's init duties (mounts, console, modules) and network
//! (DHCP). As an ordinary process it only offers `check-config FILE`, which prints the
//! disk it would install to.
#![forbid(unsafe_code)]

mod cmdline;
mod http;
mod install;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use siderite_agent::{init, net};

fn main() -> ExitCode {
    if init::is_pid1() {
        pid1();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, file] if cmd == "check-config" => check_config(Path::new(file)),
        _ => {
            eprintln!(
                "usage: siderite-standin check-config FILE\n\
                 (as PID 1 of a boot image it installs from talos.config= instead)"
            );
            ExitCode::from(2)
        }
    }
}

/// Prints the install disk the config at `file` names.
fn check_config(file: &Path) -> ExitCode {
    let disk = std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))
        .and_then(|bytes| {
            install::install_disk(&bytes).with_context(|| file.display().to_string())
        });
    match disk {
        Ok(disk) => {
            println!("{disk}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("siderite-standin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes: "what: why: why".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// PID 1: the agent's init duties, the install, power-off. Never returns.
fn pid1() -> ! {
    let early = init::early_setup();
    init_tracing();
    tracing::info!(
        "siderite-standin {} starting as PID 1 (a Talos stand-in for tests)",
        env!("CARGO_PKG_VERSION")
    );
    early.log();
    // The boot profile aborts on panic, and a dead PID 1 hangs the machine: say why and
    // power off instead, so a test sees the machine stop.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("standin: panic: {info}");
        power_off()
    }));
    let release = init::kernel_release().unwrap_or_default();
    init::load_modules(Path::new("/"), &release).log();
    if let Err(e) = install() {
        tracing::error!("standin: {e:#}");
    }
    power_off()
}

/// Config URL from the command line, network, config, disk.
fn install() -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let args = cmdline::parse(&cmdline);
    tracing::info!(
        "standin: talos.platform={}",
        args.platform.as_deref().unwrap_or("(not set)")
    );
    let url = args
        .config
        .context("no talos.config= on the kernel command line")?;
    tracing::info!("standin: talos.config={url}");
    let url = http::Url::parse(&url)?;

    // One worker keeps DHCP renewals going while the fetch blocks this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let network = rt.block_on(network())?;

    let ca = match &args.ca {
        Some(pin) => Some(
            pin.parse::<siderite::tls::CaPin>()
                .map_err(anyhow::Error::msg)
                .context("siderite.ca=")?,
        ),
        None => None,
    };
    let config = http::fetch(&url, &http::Retry::default(), ca).context("config fetch failed")?;
    tracing::info!(
        "standin: fetched {} bytes of config from {}:{}{}",
        config.len(),
        url.host,
        url.port,
        url.target
    );
    let disk = install::install_disk(&config).context("config refused")?;
    tracing::info!("standin: machine.install.disk is {disk}");
    let path = Path::new(&disk);
    ensure!(
        install::wait_for(path, Duration::from_secs(30)),
        "{disk} did not appear within 30 s"
    );
    install::write_config(path, &config)
        .with_context(|| format!("writing the config to {disk}"))?;
    tracing::info!("standin: wrote {} bytes of config to {disk}", config.len());
    drop(network);
    rt.shutdown_background();
    Ok(())
}

async fn network() -> anyhow::Result<net::Network> {
    const ATTEMPTS: u32 = 2;
    for attempt in 1..=ATTEMPTS {
        match net::configure(net::NetOptions::default(), std::future::pending()).await {
            Ok(n) => {
                tracing::info!("standin: network: {}", n.report());
                return Ok(n);
            }
            Err(e) => tracing::error!(
                "standin: network: {} (attempt {attempt} of {ATTEMPTS})",
                chain(&e)
            ),
        }
    }
    bail!("no network")
}

/// Flushes the console and the disks, then powers off. As PID 1 only.
fn power_off() -> ! {
    tracing::info!("standin: powering off");
    // The serial port drains slower than the machine powers off.
    let _ = nix::sys::termios::tcdrain(std::io::stderr());
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    eprintln!("standin: power-off failed: {e}; halting here");
    loop {
        std::thread::park();
    }
}
