//! `siderite`: the server daemon and the operator CLI. Thin: parse, build, run.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use siderite_server::accept::AutoAccept;
use siderite_server::boot::service::BootConfig;
use siderite_server::cli::{self, Output};
use siderite_server::serve::{self, Deps, ServeConfig};
use siderite_server::store::{self, backup, StoreUrl};

#[derive(Parser)]
#[command(
    name = "siderite",
    version,
    about = "Bare-metal provisioning: server and CLI"
)]
struct Cli {
    /// The operator config (kubeconfig-like; `serve` writes <data-dir>/siderite-config.yaml
    /// on its first start). Default: ~/.siderite/config, then
    /// /var/lib/siderite/siderite-config.yaml.
    #[arg(long, global = true, env = "SIDERITE_CONFIG")]
    siderite_config: Option<PathBuf>,
    /// A context of the config other than its current one (e.g. viewer).
    #[arg(long, global = true, env = "SIDERITE_CONTEXT")]
    context: Option<String>,
    /// HOST:PORT of a replica, instead of the config's.
    #[arg(long, global = true, env = "SIDERITE_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        #[arg(long, default_value = "/var/lib/siderite")]
        data_dir: PathBuf,
        /// embedded (the redb file under --data-dir) or
        /// etcd://host:port[,host:port...][/namespace] (namespace default /siderite).
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        #[arg(long, default_value = "0.0.0.0:7070")]
        listen: SocketAddr,
        /// Health, readiness and metrics endpoint.
        #[arg(long, default_value = "127.0.0.1:7071")]
        http_listen: Option<SocketAddr>,
        /// none, all, or field=glob[,field=glob] over manufacturer/product/serial/sku/family/uuid.
        #[arg(long, default_value = "none")]
        auto_accept: AutoAccept,
        /// Write the bound gRPC address here once listening.
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Do not serve HTTP.
        #[arg(long)]
        no_http: bool,
        /// Run the network boot services, booting machines into this agent image
        /// (the directory `siderite-image build --out` wrote).
        #[arg(long)]
        boot_image: Option<PathBuf>,
        /// Boot HTTP (iPXE scripts and Environment assets).
        #[arg(long, default_value = "0.0.0.0:8080")]
        boot_http_listen: SocketAddr,
        /// HOST:PORT machines use for boot HTTP when their request has no Host header.
        #[arg(long)]
        boot_advertise: Option<String>,
        /// TFTP for the iPXE binaries; "off" to skip.
        #[arg(long, default_value = "0.0.0.0:69")]
        tftp_listen: String,
        /// Where undionly.kpxe and ipxe.efi are (Debian's ipxe package).
        #[arg(long, default_value = "/usr/lib/ipxe")]
        ipxe_dir: PathBuf,
        /// proxy: answer only PXE clients, next to the site's DHCP server; off: no DHCP;
        /// full:START-END/PREFIX[,router=IP][,dns=IP]: also hand out addresses (labs).
        #[arg(long, default_value = "proxy")]
        dhcp: String,
        /// Answer DHCP only on this interface (repeatable; all when absent).
        #[arg(long)]
        boot_interface: Vec<String>,
        /// iPXE binary (under --ipxe-dir) for arm64 UEFI clients.
        #[arg(long)]
        arm64_boot_file: Option<String>,
        /// Extra kernel argument for the agent (repeatable).
        #[arg(long)]
        agent_arg: Vec<String>,
        /// The site's wipe mode: fast, discard, zero or secure (a server's spec may differ).
        #[arg(long, default_value = "fast", value_parser = ["fast", "discard", "zero", "secure"])]
        wipe_mode: String,
        /// Seconds an install may take before the server counts as dirty.
        #[arg(long, default_value_t = 1800)]
        install_timeout: u64,
        /// Another name or address for the server certificate (repeatable; every local
        /// address is in it already).
        #[arg(long)]
        tls_san: Vec<String>,
        /// Where the first start writes the operator config (default:
        /// <data-dir>/siderite-config.yaml).
        #[arg(long)]
        client_config: Option<PathBuf>,
        /// Also serve the metadata service over plain HTTP on the boot port, for an
        /// installed OS that cannot pin the CA: tokens and configs cross the wire in the clear.
        #[arg(long)]
        insecure_http_metadata: bool,
        /// Open connections to the gRPC/HTTPS port from one address.
        #[arg(long, default_value_t = 64)]
        max_connections_per_source: usize,
        /// Open connections to the gRPC/HTTPS port in total.
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        /// Seconds a client has to finish its TLS handshake (slow clients are dropped).
        #[arg(long, default_value_t = 10)]
        tls_handshake_timeout: u64,
        /// Open connections to the boot HTTP port from one address.
        #[arg(long, default_value_t = 32)]
        max_boot_connections_per_source: usize,
        /// Agent sessions from one address.
        #[arg(long, default_value_t = 8)]
        max_sessions_per_source: usize,
    },
    /// Create what a first `serve` creates (the site CA, the operator config with admin and
    /// viewer contexts, a boot join token) and print the CA pin and the join token, for
    /// machines booted with siderite.ca= and siderite.token= before the server runs.
    Init {
        #[arg(long, default_value = "/var/lib/siderite")]
        data_dir: PathBuf,
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        /// The address written into the operator config.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        #[arg(long)]
        client_config: Option<PathBuf>,
    },
    /// Wipe a clean server again, or retry a dirty one.
    Wipe {
        name: String,
        /// fast, discard, zero or secure; default: the server's or the site's.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Keep a server out of allocation.
    Cordon {
        name: String,
    },
    Uncordon {
        name: String,
    },
    /// Reboot a server through its agent (no BMC needed).
    Reboot {
        name: String,
    },
    /// Power a server off through its agent.
    Poweroff {
        name: String,
    },
    /// Bind a clean server of a class to an Environment and a MachineConfig; it installs.
    Allocate {
        #[arg(long)]
        class: String,
        #[arg(long)]
        environment: String,
        #[arg(long)]
        config: String,
        /// The ServerBinding's name (default: generated from the class).
        #[arg(long)]
        name: Option<String>,
    },
    /// Release a server (by server or ServerBinding name): it is wiped, then clean again.
    Release {
        name: String,
    },
    /// Join tokens: what machines present to register (siderite.token=).
    Token {
        #[command(subcommand)]
        what: TokenWhat,
    },
    /// Operators of the admin API and their roles.
    Operator {
        #[command(subcommand)]
        what: OperatorWhat,
    },
    /// Kill a server's machine credential: its session closes, metadata is refused.
    Revoke {
        name: String,
    },
    /// Who the configured token is, and its role.
    Whoami,
    /// List resources.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one resource in full.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Accept a discovered server so it can be wiped and used.
    Accept {
        name: String,
    },
    /// Create or replace a resource from a manifest (Environment, ServerClass,
    /// MachineConfig).
    Apply {
        /// YAML or JSON file; - for standard input.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a resource.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// A lab on this box: QEMU machines that PXE-boot into the agent and register.
    Lab {
        #[command(subcommand)]
        what: LabWhat,
    },
    /// Write every key of a store (secrets included) to a file. Offline: for the embedded
    /// store, stop the server first (the store allows one process at a time).
    Backup {
        /// embedded or etcd://host:port[,host:port...][/namespace].
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        /// Where the embedded store is.
        #[arg(long, default_value = "/var/lib/siderite")]
        data_dir: PathBuf,
        /// The backup file (JSON lines, mode 0600; written to FILE.tmp, then renamed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a backup file's keys into a store. Refuses a corrupt or truncated file, and a
    /// store that is not empty unless --force.
    Restore {
        /// embedded or etcd://host:port[,host:port...][/namespace].
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        /// Where the embedded store is.
        #[arg(long, default_value = "/var/lib/siderite")]
        data_dir: PathBuf,
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Replace a non-empty store's contents: keys the backup lacks are deleted.
        #[arg(long)]
        force: bool,
    },
    /// Benchmarks with simulated agents over loopback.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum GetWhat {
    #[command(alias = "environment")]
    Environments {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    #[command(alias = "server")]
    Servers {
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// ServerClasses, with how many servers each matches and how many are free.
    #[command(alias = "serverclass")]
    Serverclasses {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    #[command(alias = "machineconfig")]
    Machineconfigs {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Show base configs and patches (admin role only).
        #[arg(long)]
        show_secrets: bool,
    },
    #[command(alias = "binding", alias = "serverbindings", alias = "serverbinding")]
    Bindings {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum TokenWhat {
    /// Create a join token; the newest boot token is the one iPXE hands out (rotation:
    /// create, then revoke the old one).
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// Seconds until it expires; 0: never.
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Not handed to network-booting machines.
        #[arg(long)]
        no_boot: bool,
    },
    List {
        /// Show the token text (admin role only).
        #[arg(long)]
        show_secrets: bool,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum OperatorWhat {
    Create {
        name: String,
        /// admin or read-only.
        #[arg(long, default_value = "read-only")]
        role: String,
    },
    List,
    Revoke {
        name: String,
    },
}

#[derive(Subcommand)]
enum DescribeWhat {
    Server { name: String },
}

#[derive(Subcommand)]
enum DeleteWhat {
    Environment { name: String },
    Server { name: String },
    Serverclass { name: String },
    Machineconfig { name: String },
}

#[derive(Subcommand)]
enum LabWhat {
    /// Create the lab network, start the server and N machines, wait until they register.
    Up {
        #[arg(long, default_value_t = 2)]
        machines: usize,
        #[arg(long, value_enum, default_value = "bios")]
        firmware: siderite_server::lab::Firmware,
        /// The boot image (siderite-image build --out).
        #[arg(long, default_value = "lab/image")]
        image: PathBuf,
        /// Where the lab keeps its state, disks, consoles and logs.
        #[arg(long, default_value = "lab/run")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1024)]
        memory_mib: u32,
        /// Seconds to wait for every machine to register.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Stop everything the lab started and remove what it made.
    Down {
        #[arg(long, default_value = "lab/run")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Legitimate agents register before and during a slow-loris and flood attack on
    /// loopback (each client its own 127.x address); their latency both ways.
    Flood {
        #[arg(long, default_value_t = 300)]
        agents: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 8)]
        loris_sources: u32,
        #[arg(long, default_value_t = 80)]
        loris_per_source: u32,
        #[arg(long, default_value_t = 8)]
        flood_sources: u32,
        #[arg(long, default_value_t = 4)]
        flood_loops: u32,
    },
    /// Store transactions: CAS writes (1 precondition + 1 put, like a Server update) per
    /// second against plain puts of the same size, on the store given.
    Store {
        /// embedded (a fresh temporary store) or etcd://host:port[,...][/namespace]; on
        /// etcd the bench writes under <namespace>bench-<random>/ and deletes it after.
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        #[arg(long, default_value_t = 10_000)]
        ops: u32,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Bytes per value (a registered Server is about 2 KiB).
        #[arg(long, default_value_t = 2048)]
        value_bytes: usize,
    },
    /// Registrations per second and latency.
    Register {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// embedded or etcd://host:port[,...][/namespace]
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        /// Server processes sharing the store (etcd only for more than one).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Allocations per second: N thin agents become clean, then N concurrent allocations.
    Allocate {
        #[arg(long, default_value_t = 1000)]
        servers: u32,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// A boot storm: simulated PXE machines doing DHCP + TFTP + HTTP for the agent image.
    BootStorm {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// The boot image (siderite-image build --out).
        #[arg(long, default_value = "target/test-boot-image")]
        image: PathBuf,
        #[arg(long, default_value = "/usr/lib/ipxe")]
        ipxe_dir: PathBuf,
    },
    /// TFTP throughput of a file to K concurrent clients, ours against dnsmasq's.
    Tftp {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        file_mb: usize,
    },
    /// Server memory with many agents holding sessions.
    Sessions {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        #[arg(long, default_value = "embedded")]
        store: StoreUrl,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (config, context, server) = (cli.siderite_config, cli.context, cli.server);
        let addr = || cli::target(config.as_deref(), context.as_deref(), server.as_deref());
        let out = match cli.cmd {
            Cmd::Serve {
                data_dir,
                store,
                listen,
                http_listen,
                auto_accept,
                addr_file,
                no_http,
                boot_image,
                boot_http_listen,
                boot_advertise,
                tftp_listen,
                ipxe_dir,
                dhcp,
                boot_interface,
                agent_arg,
                arm64_boot_file,
                wipe_mode,
                install_timeout,
                tls_san,
                client_config,
                insecure_http_metadata,
                max_connections_per_source,
                max_connections,
                max_boot_connections_per_source,
                tls_handshake_timeout,
                max_sessions_per_source,
            } => {
                let boot = match boot_image {
                    None => None,
                    Some(image_dir) => Some(BootConfig {
                        image_dir,
                        http_listen: boot_http_listen,
                        advertise: boot_advertise.unwrap_or_else(|| boot_http_listen.to_string()),
                        tftp_listen: match tftp_listen.as_str() {
                            "off" => None,
                            a => Some(a.parse().map_err(|_| {
                                anyhow::anyhow!("--tftp-listen {a:?}: expected ADDR:PORT or off")
                            })?),
                        },
                        ipxe_dir,
                        dhcp: siderite_server::boot::service::parse_dhcp_mode(&dhcp)?,
                        interfaces: boot_interface,
                        agent_args: agent_arg,
                        arm64_boot_file,
                    }),
                };
                let config = ServeConfig {
                    data_dir,
                    listen,
                    http_listen: if no_http { None } else { http_listen },
                    auto_accept,
                    addr_file,
                    boot,
                    lifecycle: siderite_server::controller::LifecycleConfig {
                        wipe_mode,
                        install_timeout: std::time::Duration::from_secs(install_timeout),
                        ..Default::default()
                    },
                    security: serve::SecurityConfig {
                        tls_san,
                        client_config,
                        insecure_http_metadata,
                        conn_limits: siderite_server::guard::ConnLimits {
                            max_connections,
                            max_per_source: max_connections_per_source,
                            handshake_timeout: std::time::Duration::from_secs(
                                tls_handshake_timeout.max(1),
                            ),
                        },
                        boot_http_limits: siderite_server::guard::ConnLimits {
                            max_per_source: max_boot_connections_per_source,
                            ..siderite_server::boot::service::BOOT_HTTP_LIMITS
                        },
                        max_sessions_per_source,
                    },
                };
                tracing::info!(%store, "opening the store");
                let deps = Deps::from_store_url(&config, &store).await?;
                serve::run(config, deps, shutdown_signal()).await?;
                return Ok(());
            }
            Cmd::Init {
                data_dir,
                store,
                listen,
                client_config,
            } => {
                let config = ServeConfig {
                    data_dir,
                    listen,
                    http_listen: None,
                    auto_accept: AutoAccept::None,
                    addr_file: None,
                    boot: None,
                    lifecycle: Default::default(),
                    security: serve::SecurityConfig {
                        client_config,
                        ..Default::default()
                    },
                };
                let deps = Deps::from_store_url(&config, &store).await?;
                let (pin, token) =
                    serve::init(&config, &deps, &format!("https://{listen}")).await?;
                format!(
                    "ca: {pin}
join-token: {token}
config: {}
# agents: siderite.ca={pin} siderite.token=<join-token>
",
                    serve::client_config_path(&config).display()
                )
            }
            Cmd::Get {
                what:
                    GetWhat::Servers {
                        name: Some(n),
                        output,
                    },
            } => cli::get_server(&addr()?, &n, output).await?,
            Cmd::Get {
                what: GetWhat::Servers { name: None, output },
            } => cli::get_servers(&addr()?, output).await?,
            Cmd::Describe {
                what: DescribeWhat::Server { name },
            } => cli::describe_server(&addr()?, &name).await?,
            Cmd::Accept { name } => cli::accept(&addr()?, &name).await?,
            Cmd::Apply { file } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
                };
                cli::lifecycle::apply(&addr()?, &text).await?
            }
            Cmd::Get {
                what: GetWhat::Serverclasses { output },
            } => cli::lifecycle::get(&addr()?, "ServerClass", output, false).await?,
            Cmd::Get {
                what:
                    GetWhat::Machineconfigs {
                        output,
                        show_secrets,
                    },
            } => cli::lifecycle::get(&addr()?, "MachineConfig", output, show_secrets).await?,
            Cmd::Get {
                what: GetWhat::Bindings { output },
            } => cli::lifecycle::get(&addr()?, "ServerBinding", output, false).await?,
            Cmd::Delete {
                what: DeleteWhat::Serverclass { name },
            } => cli::lifecycle::delete(&addr()?, "ServerClass", &name).await?,
            Cmd::Delete {
                what: DeleteWhat::Machineconfig { name },
            } => cli::lifecycle::delete(&addr()?, "MachineConfig", &name).await?,
            Cmd::Wipe { name, mode } => cli::lifecycle::wipe(&addr()?, &name, mode).await?,
            Cmd::Cordon { name } => cli::lifecycle::cordon(&addr()?, &name, true).await?,
            Cmd::Uncordon { name } => cli::lifecycle::cordon(&addr()?, &name, false).await?,
            Cmd::Reboot { name } => cli::lifecycle::power(&addr()?, &name, "reboot").await?,
            Cmd::Poweroff { name } => cli::lifecycle::power(&addr()?, &name, "poweroff").await?,
            Cmd::Allocate {
                class,
                environment,
                config,
                name,
            } => cli::lifecycle::allocate(&addr()?, &class, &environment, &config, name).await?,
            Cmd::Release { name } => cli::lifecycle::release(&addr()?, &name).await?,
            Cmd::Token {
                what:
                    TokenWhat::Create {
                        description,
                        ttl,
                        no_boot,
                    },
            } => cli::security::token_create(&addr()?, &description, ttl, no_boot).await?,
            Cmd::Token {
                what: TokenWhat::List { show_secrets },
            } => cli::security::token_list(&addr()?, show_secrets).await?,
            Cmd::Token {
                what: TokenWhat::Revoke { id },
            } => cli::security::token_revoke(&addr()?, &id).await?,
            Cmd::Operator {
                what: OperatorWhat::Create { name, role },
            } => cli::security::operator_create(&addr()?, &name, &role).await?,
            Cmd::Operator {
                what: OperatorWhat::List,
            } => cli::security::operator_list(&addr()?).await?,
            Cmd::Operator {
                what: OperatorWhat::Revoke { name },
            } => cli::security::operator_revoke(&addr()?, &name).await?,
            Cmd::Revoke { name } => cli::security::revoke_server(&addr()?, &name).await?,
            Cmd::Whoami => cli::security::whoami(&addr()?).await?,
            Cmd::Get {
                what: GetWhat::Environments { output },
            } => cli::get_environments(&addr()?, output).await?,
            Cmd::Delete {
                what: DeleteWhat::Environment { name },
            } => cli::delete_environment(&addr()?, &name).await?,
            Cmd::Delete {
                what: DeleteWhat::Server { name },
            } => cli::delete_server(&addr()?, &name).await?,
            Cmd::Lab {
                what:
                    LabWhat::Up {
                        machines,
                        firmware,
                        image,
                        dir,
                        memory_mib,
                        wait,
                    },
            } => {
                siderite_server::lab::up(siderite_server::lab::LabConfig {
                    dir,
                    image,
                    machines,
                    firmware,
                    memory_mib,
                    wait: std::time::Duration::from_secs(wait),
                })
                .await?
            }
            Cmd::Lab {
                what: LabWhat::Down { dir },
            } => siderite_server::lab::down(&dir)?,
            Cmd::Bench {
                what:
                    BenchWhat::Flood {
                        agents,
                        concurrency,
                        loris_sources,
                        loris_per_source,
                        flood_sources,
                        flood_loops,
                    },
            } => {
                let report = siderite_server::flood::run(
                    std::env::current_exe()?,
                    siderite_server::flood::FloodConfig {
                        agents,
                        concurrency,
                        loris_sources,
                        loris_per_source,
                        flood_sources,
                        flood_loops,
                        serve_args: Vec::new(),
                    },
                )
                .await?;
                format!("bench flood:\n{report}")
            }
            Cmd::Bench {
                what:
                    BenchWhat::Register {
                        agents,
                        concurrency,
                        connections,
                        store,
                        replicas,
                    },
            } => {
                siderite_server::bench::register(
                    agents,
                    concurrency,
                    connections,
                    &store.to_string(),
                    replicas,
                )
                .await?
            }
            Cmd::Bench {
                what:
                    BenchWhat::Allocate {
                        servers,
                        concurrency,
                        store,
                        replicas,
                    },
            } => {
                siderite_server::bench::allocate(servers, concurrency, &store.to_string(), replicas)
                    .await?
            }
            Cmd::Bench {
                what:
                    BenchWhat::Sessions {
                        agents,
                        concurrency,
                        store,
                        replicas,
                    },
            } => {
                siderite_server::bench::sessions(agents, concurrency, &store.to_string(), replicas)
                    .await?
            }
            Cmd::Bench {
                what:
                    BenchWhat::BootStorm {
                        clients,
                        concurrency,
                        image,
                        ipxe_dir,
                    },
            } => {
                siderite_server::boot::storm::storm(clients, &image, &ipxe_dir, concurrency).await?
            }
            Cmd::Bench {
                what: BenchWhat::Tftp { clients, file_mb },
            } => siderite_server::boot::tftp_bench::bench(clients, file_mb).await?,
            Cmd::Bench {
                what:
                    BenchWhat::Store {
                        store,
                        ops,
                        concurrency,
                        value_bytes,
                    },
            } => siderite_server::bench::store(&store, ops, concurrency, value_bytes).await?,
            Cmd::Backup {
                store,
                data_dir,
                out,
            } => {
                let s = store::open(&store, &data_dir).await?;
                let done = backup::backup(&*s, &out).await?;
                format!(
                    "backup: {} keys of {store} written to {} ({} bytes)\n",
                    done.keys,
                    out.display(),
                    done.bytes
                )
            }
            Cmd::Restore {
                store,
                data_dir,
                input,
                force,
            } => {
                let s = store::open(&store, &data_dir).await?;
                let done = backup::restore(&*s, &input, force).await?;
                format!(
                    "restore: {} keys from {} written to {store}, {} deleted\n",
                    done.written,
                    input.display(),
                    done.deleted
                )
            }
        };
        print!("{out}");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate names, a global arg shadowing a
    /// subcommand's, defaults that do not parse).
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
