//! The network boot services as one unit inside `siderite serve`: ProxyDHCP (or full
//! DHCP), TFTP for the iPXE binaries, and HTTP for the iPXE scripts and the verified
//! Environment assets. The per-machine decision comes from the store.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use siderite::SmbiosUuid;

use super::dhcp::{self, DhcpConfig, ModeConfig};
use super::ipxe::{self, BootDecider, BootDecision, BootHttpConfig, BootHttpState};
use super::tftp::{self, DirSource, TftpConfig};
use crate::environment::{Arch, Environment, Environments, LocalFileFetcher, AGENT_ENVIRONMENT};
use crate::guard::{ConnGuard, ConnLimits, GuardedListener};
use crate::model::{self, mac_index_key, uuid_index_key};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The agent boot image: `vmlinuz` and `initramfs.cpio.zst` (siderite-image build).
    pub image_dir: PathBuf,
    /// HTTP for `/boot.ipxe`, `/ipxe` and `/assets`.
    pub http_listen: SocketAddr,
    /// Where machines reach the HTTP server when a request has no usable Host header.
    pub advertise: String,
    /// TFTP (port 69) serving `ipxe_dir`; none to skip.
    pub tftp_listen: Option<SocketAddr>,
    /// Debian's `ipxe` package puts undionly.kpxe and ipxe.efi here.
    pub ipxe_dir: PathBuf,
    /// ProxyDHCP (or full DHCP); none to skip.
    pub dhcp: Option<ModeConfig>,
    /// Only answer DHCP on these interfaces (all when empty).
    pub interfaces: Vec<String>,
    /// Extra kernel arguments for the agent (e.g. `siderite.insecure`).
    pub agent_args: Vec<String>,
    /// The iPXE binary for arm64 UEFI clients (option 93 = 11), when there is one under
    /// `ipxe_dir`; without it those clients get no answer (and a log line).
    pub arm64_boot_file: Option<String>,
}

/// Connection caps for the boot HTTP server. It serves kernels and initrds to a whole
/// rack booting at once, each machine from its own address and with a few connections at
/// most (iPXE, then the agent's metadata calls): the total is sized for a rack, the
/// per-source cap only stops one host from taking all of it. (No handshake: the timeout
/// is unused.)
pub const BOOT_HTTP_LIMITS: ConnLimits = ConnLimits {
    max_connections: 4096,
    max_per_source: 32,
    handshake_timeout: Duration::from_secs(10),
};

/// Decides per machine from what the store knows: installed machines boot their disk,
/// everything else (new, discovered, wiping...) boots the agent.
pub struct StoreDecider {
    pub store: Arc<dyn Store>,
}

impl StoreDecider {
    async fn phase_of(&self, index_key: String) -> Option<String> {
        let stored = model::load_indexed(self.store.as_ref(), &index_key)
            .await
            .ok()??;
        Some(stored.server.status.unwrap_or_default().phase)
    }
}

#[async_trait::async_trait]
impl BootDecider for StoreDecider {
    async fn decide(
        &self,
        uuid: Option<SmbiosUuid>,
        mac: Option<ipxe::MacAddr>,
        _arch: Option<Arch>,
    ) -> BootDecision {
        let mut phase = None;
        if let Some(u) = uuid.filter(|u| u.verdict() == siderite::UuidVerdict::Usable) {
            phase = self.phase_of(uuid_index_key(&u.to_string())).await;
        }
        if phase.is_none() {
            if let Some(m) = mac {
                phase = self.phase_of(mac_index_key(&m.to_string())).await;
            }
        }
        match phase.as_deref() {
            None => BootDecision::Unknown,
            Some("installed") => BootDecision::LocalDisk,
            Some(_) => BootDecision::Agent {
                env: AGENT_ENVIRONMENT.into(),
                args: Vec::new(),
            },
        }
    }
}

/// What the boot services need from the rest of `serve`.
pub struct Serving {
    /// The agent API's port, for `siderite.server=`.
    pub agent_api_port: u16,
    /// The CA pin and the join tokens, for `siderite.ca=` and `siderite.token=`.
    pub agent_trust: Option<Arc<ipxe::AgentTrust>>,
    /// Connections to the boot HTTP port.
    pub http_limits: ConnLimits,
}

/// Starts the boot services; they stop when `stop` turns true. `extra` routes (the
/// metadata service, when served over plain HTTP) are served by the same HTTP server.
pub async fn start(
    config: BootConfig,
    store: Arc<dyn Store>,
    environments: Arc<Environments>,
    serving: Serving,
    extra: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let agent = Environment::agent(&config.image_dir, config.agent_args.clone())
        .await
        .with_context(|| format!("the agent boot image in {}", config.image_dir.display()))?;
    let status = environments.apply(agent, &LocalFileFetcher).await;
    anyhow::ensure!(
        status.ready,
        "the agent Environment is not ready: {}",
        status.reason
    );

    let advertise: ipxe::Authority = config
        .advertise
        .parse()
        .with_context(|| format!("--boot-advertise {:?}", config.advertise))?;
    let mut http = BootHttpConfig::new(advertise);
    let Serving {
        agent_api_port,
        agent_trust,
        http_limits,
    } = serving;
    http.agent_api_port = Some(agent_api_port);
    let router = ipxe::router(BootHttpState {
        config: Arc::new(http),
        decider: Arc::new(StoreDecider { store }),
        environments,
        agent_trust,
    })
    .merge(extra);
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding boot HTTP {}", config.http_listen))?;
    let http_port = listener.local_addr()?.port();
    tracing::info!(addr = %listener.local_addr()?, "boot HTTP listening");
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    let rx = stop.clone();
    tasks.push(tokio::spawn(async move {
        let listener = GuardedListener::new(listener, ConnGuard::new(http_limits));
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(wait(rx))
            .await
        {
            tracing::error!(error = %e, "boot HTTP stopped");
        }
    }));
    if let Some(addr) = config.tftp_listen {
        let source = Arc::new(
            DirSource::new(&config.ipxe_dir)
                .with_context(|| format!("TFTP root {}", config.ipxe_dir.display()))?,
        );
        let server = tftp::TftpServer::bind(
            TftpConfig {
                listen: addr,
                ..Default::default()
            },
            source,
        )
        .await
        .with_context(|| format!("binding TFTP {addr}"))?;
        let rx = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.run(wait(rx)).await {
                tracing::error!(error = %e, "TFTP stopped");
            }
        }));
    }
    if let Some(mode) = config.dhcp {
        let dcfg = DhcpConfig {
            listen: Ipv4Addr::UNSPECIFIED,
            interfaces: config.interfaces.clone(),
            http_port,
            tftp: config.tftp_listen.is_some(),
            boot_files: dhcp::BootFiles {
                efi_arm64: config.arm64_boot_file.clone(),
                ..Default::default()
            },
            mode,
            ..Default::default()
        };
        let server = dhcp::DhcpServer::bind(dcfg)
            .await
            .context("binding DHCP (ports 67 and 4011)")?;
        tracing::info!("ProxyDHCP listening on 67 and 4011");
        let rx = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.run(wait(rx)).await {
                tracing::error!(error = %e, "DHCP stopped");
            }
        }));
    }
    Ok(tasks)
}

/// `--dhcp`: `proxy`, `off`, or `full:START-END/PREFIX[,router=IP][,dns=IP]...` for labs
/// and isolated networks where siderite is the only DHCP server.
pub fn parse_dhcp_mode(s: &str) -> anyhow::Result<Option<ModeConfig>> {
    match s {
        "proxy" => return Ok(Some(ModeConfig::Proxy)),
        "off" => return Ok(None),
        _ => {}
    }
    let spec = s.strip_prefix("full:").with_context(|| {
        format!("--dhcp {s:?}: expected proxy, off or full:START-END/PREFIX[,router=IP][,dns=IP]")
    })?;
    let mut parts = spec.split(',');
    let range = parts.next().unwrap_or_default();
    let (range, prefix) = range
        .split_once('/')
        .with_context(|| format!("--dhcp {s:?}: the range needs a /PREFIX"))?;
    let (start, end) = range
        .split_once('-')
        .with_context(|| format!("--dhcp {s:?}: the range is START-END"))?;
    let start: Ipv4Addr = start
        .parse()
        .with_context(|| format!("--dhcp: {start:?} is not an IPv4 address"))?;
    let end: Ipv4Addr = end
        .parse()
        .with_context(|| format!("--dhcp: {end:?} is not an IPv4 address"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .with_context(|| format!("--dhcp: prefix {prefix:?} must be 8-30"))?;
    anyhow::ensure!(
        u32::from(start) <= u32::from(end),
        "--dhcp: {start} comes after {end}"
    );
    let mask = Ipv4Addr::from(u32::MAX << (32 - prefix));
    let net = |a: Ipv4Addr| u32::from(a) & u32::from(mask);
    anyhow::ensure!(
        net(start) == net(end),
        "--dhcp: {start} and {end} are not in one /{prefix}"
    );
    let mut pool = dhcp::PoolConfig {
        start,
        end,
        subnet_mask: mask,
        router: None,
        dns: Vec::new(),
        lease_time: std::time::Duration::from_secs(3600),
    };
    for p in parts {
        match p.split_once('=') {
            Some(("router", ip)) => {
                pool.router = Some(
                    ip.parse()
                        .with_context(|| format!("--dhcp router {ip:?}"))?,
                )
            }
            Some(("dns", ip)) => pool
                .dns
                .push(ip.parse().with_context(|| format!("--dhcp dns {ip:?}"))?),
            _ => anyhow::bail!("--dhcp: unknown option {p:?} (router=IP, dns=IP)"),
        }
    }
    Ok(Some(ModeConfig::Full(pool)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_modes() {
        assert!(matches!(
            parse_dhcp_mode("proxy").unwrap(),
            Some(ModeConfig::Proxy)
        ));
        assert!(parse_dhcp_mode("off").unwrap().is_none());
        let Some(ModeConfig::Full(p)) =
            parse_dhcp_mode("full:10.88.0.100-10.88.0.199/24,router=10.88.0.1,dns=10.88.0.1")
                .unwrap()
        else {
            panic!("full mode")
        };
        assert_eq!(p.subnet_mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(p.router, Some(Ipv4Addr::new(10, 88, 0, 1)));
        for bad in [
            "full",
            "full:10.0.0.9-10.0.0.1/24",
            "full:10.0.0.1-10.0.1.1/24",
            "full:10.0.0.1-10.0.0.9",
            "full:10.0.0.1-10.0.0.9/24,colour=red",
            "dhcp",
        ] {
            assert!(parse_dhcp_mode(bad).is_err(), "{bad}");
        }
    }
}
