//! Thin entry point: parse the command line, build the host, run.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Register with the server and hold the session until stopped.
    Run {
        /// Server gRPC address, HOST:PORT. May be given more than once.
        #[arg(long, required = true)]
        server: Vec<String>,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inventory { root } => {
            let host = siderite_agent::hw::Host::linux(&root);
            let hw = siderite_agent::inventory::collect(&host);
            println!("{}", serde_json::to_string_pretty(&hw)?);
            Ok(())
        }
        Cmd::Run { server, root } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let host = siderite_agent::hw::Host::linux(&root);
                let config = siderite_agent::session::Config::new(server, siderite_agent::session::boot_id(&root));
                let inventory = move || siderite_agent::inventory::collect(&host);
                let shutdown = siderite_agent::session::shutdown_on_signal();
                siderite_agent::session::run(config, inventory, shutdown).await
            })
        }
    }
}
