//! `siderite-image build`: builds the boot image (vmlinuz + initramfs.cpio.zst +
//! manifest.json). Thin: parse arguments, call [`siderite_initramfs::build`], print.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use siderite_initramfs::{
    build, BuildOptions, KernelSource, ModuleChoice, DEFAULT_AGENT, DEFAULT_CACHE, INITRAMFS,
};

#[derive(Parser)]
#[command(
    name = "siderite-image",
    version,
    about = "Builds siderite's boot image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the kernel package, pick the modules, write vmlinuz, initramfs.cpio.zst and
    /// manifest.json into --out.
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Debian kernel package, a metapackage or pinned NAME=VERSION.
    #[arg(
        long,
        default_value = "linux-image-amd64",
        conflicts_with = "kernel_tree"
    )]
    kernel_package: String,
    /// Use an already unpacked kernel tree (boot/vmlinuz-REL, lib/modules/REL) instead of apt.
    #[arg(long)]
    kernel_tree: Option<PathBuf>,
    /// The static agent to install as /init.
    #[arg(long, default_value = DEFAULT_AGENT)]
    agent: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// default | none | list:NAME,NAME (dependencies always come along).
    #[arg(long, default_value = "default")]
    modules: String,
    /// Extra firmware directory, searched after the kernel package's own (repeatable).
    #[arg(long)]
    firmware_dir: Vec<PathBuf>,
    /// Add a host file to the image as SOURCE:DEST (repeatable; mode from the source).
    #[arg(long, value_name = "SOURCE:DEST")]
    add_file: Vec<String>,
    /// Where downloaded and unpacked kernel packages are kept.
    #[arg(long, default_value = DEFAULT_CACHE)]
    cache: PathBuf,
    /// zstd compression level.
    #[arg(long, default_value_t = 19)]
    zstd_level: i32,
    /// mtime of every archive member (Unix seconds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    mtime: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Build(args) = Cli::parse().command;
    run(args)
}

fn run(args: BuildArgs) -> anyhow::Result<()> {
    let kernel = match args.kernel_tree {
        Some(tree) => KernelSource::Tree(tree),
        None => KernelSource::Apt {
            package: args.kernel_package,
            cache: args.cache,
        },
    };
    let mut opts = BuildOptions::new(kernel, args.agent, args.out);
    opts.modules = args.modules.parse::<ModuleChoice>()?;
    opts.firmware_dirs = args.firmware_dir;
    opts.extra_files = args
        .add_file
        .iter()
        .map(|f| f.parse())
        .collect::<Result<_, _>>()?;
    opts.zstd_level = args.zstd_level;
    opts.mtime = args.mtime;
    let started = Instant::now();
    let m = build(&opts).context("building the image")?;
    let image = m.file(INITRAMFS).context("manifest lists the image")?;
    println!(
        "kernel: {} {} ({}) from {}",
        m.kernel.name, m.kernel.version, m.kernel_release, m.kernel.requested
    );
    println!(
        "image: {} ({} bytes compressed, {} bytes cpio, sha256 {})",
        opts.out_dir.join(INITRAMFS).display(),
        image.size,
        m.cpio_size,
        image.sha256
    );
    println!(
        "modules: {} shipped ({} requested, builtin: [{}], unknown: [{}])",
        m.modules.len(),
        m.modules_requested.len(),
        m.modules_builtin.join(", "),
        m.modules_unknown.join(", ")
    );
    println!(
        "firmware: {} shipped, {} missing{}",
        m.firmware.len(),
        m.firmware_missing.len(),
        if m.firmware_missing.is_empty() {
            String::new()
        } else {
            " (see manifest.json firmware_missing)".into()
        }
    );
    println!("build time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
