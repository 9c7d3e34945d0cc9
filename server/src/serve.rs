//! `siderite serve`: build the store, registry and sessions, then serve gRPC (agents and
//! operators) and HTTP (health, readiness, metrics) until shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use siderite::proto::admin::v1::admin_service_server::AdminServiceServer;
use siderite::proto::agent::v1::agent_service_server::AgentServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

use crate::accept::AutoAccept;
use crate::api::environments::EnvironmentsApi;
use crate::api::resources::ResourcesApi;
use crate::api::{admin::AdminApi, agent::AgentApi};
use crate::controller::Controller;
use crate::environment::Environments;
use crate::registry::{Limits, Registry};
use crate::sessions::Sessions;
use crate::store::{EmbeddedStore, Store, StoreUrl};

/// Largest message an agent or operator may send (a register with thousands of disks fits).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where to serve /healthz, /readyz and /metrics; none to skip.
    pub http_listen: Option<SocketAddr>,
    pub auto_accept: AutoAccept,
    /// Written with the bound gRPC address once listening (useful with port 0).
    pub addr_file: Option<PathBuf>,
    /// Network boot services (ProxyDHCP, TFTP, HTTP iPXE); none to run without them.
    pub boot: Option<crate::boot::service::BootConfig>,
    /// Wipe mode, install timeout, reconcile period.
    pub lifecycle: crate::controller::LifecycleConfig,
}

/// The parts a running server is made of, for tests that embed one.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    /// Verified Environments, shared by the admin API and the boot services.
    pub environments: Arc<Environments>,
    pub fetcher: Arc<crate::fetch::HttpFetcher>,
}

impl Deps {
    pub fn embedded(config: &ServeConfig) -> anyhow::Result<Self> {
        let store = EmbeddedStore::open(&config.data_dir)
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        Self::with_store(config, Arc::new(store))
    }

    /// The store `url` names (`embedded`: the redb file under `--data-dir`; `etcd://...`);
    /// the rest as [`Deps::embedded`].
    pub async fn from_store_url(config: &ServeConfig, url: &StoreUrl) -> anyhow::Result<Self> {
        // The store's errors name it (its path or its endpoints).
        let store = crate::store::open(url, &config.data_dir).await?;
        Self::with_store(config, store)
    }

    pub fn with_store(config: &ServeConfig, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            sessions: Arc::new(Sessions::default()),
            environments: Arc::new(Environments::new()),
            fetcher: Arc::new(
                crate::fetch::HttpFetcher::new(config.data_dir.join("asset-cache"))
                    .context("the HTTP asset fetcher")?,
            ),
        })
    }
}

pub async fn run(
    config: ServeConfig,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    let registry = Arc::new(Registry::new(
        deps.store.clone(),
        deps.sessions.clone(),
        config.auto_accept.clone(),
    ));
    let controller = Arc::new(Controller::new(
        deps.store.clone(),
        deps.sessions.clone(),
        deps.environments.clone(),
        config.lifecycle.clone(),
    ));
    if let Some(boot) = &config.boot {
        controller.set_boot_base(format!("http://{}", boot.advertise));
    }
    let agent = AgentApi {
        registry,
        sessions: deps.sessions.clone(),
        limits: Limits::default(),
        controller: controller.clone(),
    };
    let environments = EnvironmentsApi {
        store: deps.store.clone(),
        catalog: deps.environments.clone(),
        loaded: Default::default(),
        fetcher: deps.fetcher.clone(),
    };
    let loaded = environments
        .load()
        .await
        .context("loading stored environments")?;
    if loaded > 0 {
        tracing::info!(count = loaded, "environments loaded");
    }
    let environments_sync = environments.clone();
    let admin = AdminApi {
        store: deps.store.clone(),
        sessions: deps.sessions.clone(),
        environments,
        resources: ResourcesApi {
            store: deps.store.clone(),
        },
        controller: controller.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let replica = format!(
        "{}@{local}",
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "siderite".into())
    );
    controller.set_leadership(
        crate::leader::Lease {
            store: deps.store.clone(),
            name: replica,
            ttl: std::time::Duration::from_secs(10),
        }
        .spawn(stop_rx.clone()),
    );
    let reconcile = tokio::spawn(controller.clone().run(stop_rx.clone()));
    // Environments applied through another replica reach this one's catalog.
    let env_sync = {
        let envs = environments_sync;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = envs.sync().await {
                            tracing::warn!(error = %e, "environments: syncing with the store");
                        }
                    }
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut http_task = None;
    if let Some(addr) = config.http_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "HTTP listening");
        let app = crate::http::router(deps.store.clone(), deps.sessions.clone());
        let mut rx = stop_rx.clone();
        http_task = Some(tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    let mut boot_tasks = Vec::new();
    if let Some(boot) = config.boot.clone() {
        boot_tasks = crate::boot::service::start(
            boot,
            deps.store.clone(),
            deps.environments.clone(),
            local.port(),
            crate::metadata::router(controller.clone()),
            stop_rx.clone(),
        )
        .await?;
    }
    if let Some(path) = &config.addr_file {
        std::fs::write(path, local.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), auto_accept = %config.auto_accept, "siderite serving");
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(AgentServiceServer::new(agent).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(AdminServiceServer::new(admin).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    let result = grpc.await.context("gRPC server");
    let _ = stop_tx.send(true);
    let _ = reconcile.await;
    let _ = env_sync.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    for t in boot_tasks {
        let _ = t.await;
    }
    result
}
