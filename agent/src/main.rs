//! Thin entry point. As PID 1 of the boot image: the init duties, then the agent under a
//! supervisor that never lets PID 1 exit. As a normal process: `inventory` or `run`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use siderite_agent::config::{self, AgentConfig, Severity};
use siderite_agent::{commands, hw, init, inventory, net, session};

#[derive(Parser)]
#[command(name = "siderite-agent", version, about = "siderite's machine agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print this machine's inventory as JSON.
    Inventory {
        /// Root of the host filesystem to read /sys from (for tests and chroots).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Wipe benchmark on file-backed disks under DIR: every mode side by side with dd,
    /// fallocate --punch-hole and wipefs, and a fast wipe of 10 disks in parallel.
    BenchWipe {
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
    },
    /// Register with the server and hold the session until stopped.
    Run {
        /// Server gRPC address, HOST:PORT. May be given more than once.
        #[arg(long, required = true)]
        server: Vec<String>,
        /// The server's CA: sha256:<hex> (`siderite token`/the operator config's ca-sha256).
        #[arg(long)]
        ca: siderite::tls::CaPin,
        /// The join token, <id>.<secret>.
        #[arg(long, env = "SIDERITE_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Let the server's Wipe and image Install commands write this box's disks.
        /// Without it every disk is refused (the server marks the wipe failed, with why):
        /// a workstation trying the agent must not lose a disk to an accept.
        #[arg(long)]
        allow_disk_writes: bool,
    },
}

fn init_tracing(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    if init::is_pid1() {
        pid1();
    }
    init_tracing(false);
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inventory { root } => {
            let host = hw::Host::linux(&root);
            let hw = inventory::collect(&host);
            println!("{}", serde_json::to_string_pretty(&hw)?);
            Ok(())
        }
        Cmd::BenchWipe { dir, size_mb } => {
            let work = tempfile_dir(&dir)?;
            let report = siderite_agent::wipe::bench::bench(&work, size_mb);
            let _ = std::fs::remove_dir_all(&work);
            print!("{}", report?);
            Ok(())
        }
        Cmd::Run {
            server,
            ca,
            token,
            root,
            allow_disk_writes,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let host = hw::Host::linux(&root);
                let mut config = session::Config::new(server, session::boot_id(&root));
                config.ca = Some(ca);
                config.join_token = session::Secret(token);
                // Wipes and installs act on the disks below the same root, when allowed.
                let executor = if allow_disk_writes {
                    commands::Executor::linux(&root)
                } else {
                    commands::Executor::new(
                        std::sync::Arc::new(siderite_agent::wipe::NoDisks(
                            "siderite-agent run was started without --allow-disk-writes",
                        )),
                        std::sync::Arc::new(siderite_agent::install::LinuxPower),
                        commands::Timing::default(),
                    )
                };
                session::run_with(
                    config,
                    move || inventory::collect(&host),
                    executor,
                    session::shutdown_on_signal(),
                )
                .await
            })
        }
    }
}

/// A fresh scratch directory under `dir` for the benchmark's disk images.
fn tempfile_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let work = dir.join(format!("siderite-wipe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// PID 1: mounts and console first (logging needs them), then the command line, modules,
/// and the agent, supervised. Never returns.
fn pid1() -> ! {
    let early = init::early_setup();
    let (cfg, problems) = config::from_kernel(Path::new("/"));
    init_tracing(cfg.debug);
    tracing::info!(
        version = siderite::VERSION,
        "siderite-agent starting as PID 1"
    );
    early.log();
    for p in &problems {
        match p.severity() {
            Severity::Error => tracing::error!("kernel command line: {p}"),
            Severity::Warning => tracing::warn!("kernel command line: {p}"),
        }
    }
    let supervisor = init::Supervisor::new(init::RestartPolicy::default());
    supervisor.install_panic_hook(None);
    let release = init::kernel_release().unwrap_or_default();
    let modules = init::load_modules(Path::new("/"), &release);
    modules.log();
    init::mount_efivars().log();
    // What the server should show about this boot, next to the machine's hardware.
    let mut boot_log: Vec<String> = problems
        .iter()
        .map(|p| format!("kernel command line: {p}"))
        .collect();
    boot_log.push(format!(
        "kernel {release}: loaded {} modules ({}), {} failed{}",
        modules.loaded.len(),
        modules.loaded.join(" "),
        modules.failed.len(),
        modules
            .failed
            .iter()
            .map(|f| format!("; {}: {}", f.module, f.reason))
            .collect::<String>()
    ));
    supervisor.run(move || agent(cfg.clone(), boot_log.clone()))
}

fn net_options(cfg: &AgentConfig) -> net::NetOptions {
    net::NetOptions {
        boot_mac: cfg.boot_mac,
        static_ips: cfg.static_ips.clone(),
        ..Default::default()
    }
}

/// The agent proper, as the boot image runs it: network, then the session.
async fn agent(cfg: AgentConfig, mut boot_log: Vec<String>) -> anyhow::Result<()> {
    if cfg.servers.is_empty() {
        // Nothing to talk to; stay up and say why, so the console shows it.
        loop {
            tracing::error!(
                "no siderite.server= on the kernel command line: nothing to register with"
            );
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    let network = loop {
        match net::configure(net_options(&cfg), std::future::pending()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::error!("network: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!("network: {}", network.report());
    boot_log.push(format!("network: {}", network.report()));
    let host = hw::Host::linux(Path::new("/"));
    let servers = cfg.servers.iter().map(ToString::to_string).collect();
    let mut config = session::Config::new(servers, session::boot_id(Path::new("/")));
    config.ca = match cfg.trust {
        siderite_agent::config::Trust::Pinned(pin) => Some(siderite::tls::CaPin(pin.0)),
        siderite_agent::config::Trust::Insecure => {
            tracing::error!("siderite.insecure: the agent never talks to an unchecked server; give siderite.ca=");
            None
        }
        siderite_agent::config::Trust::Unspecified => None,
    };
    if let Some(t) = &cfg.token {
        config.join_token = session::Secret(t.expose().to_string());
    }
    config.boot_log = boot_log;
    session::run_with(
        config,
        move || inventory::collect(&host),
        siderite_agent::commands::Executor::linux(Path::new("/")),
        std::future::pending(),
    )
    .await
}
