//! `siderite serve`: build the store, registry and sessions, then serve gRPC (agents and
//! operators) and HTTP (health, readiness, metrics) until shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use siderite::proto::admin::v1::admin_service_server::AdminServiceServer;
use siderite::proto::agent::v1::agent_service_server::AgentServiceServer;

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

/// How long a shutdown waits for connections to finish.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// TLS names, the operator config file, limits.
    pub security: SecurityConfig,
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// More names or addresses for the server certificate (beyond every local address).
    pub tls_san: Vec<String>,
    /// Where the first start writes the operator config (admin and read-only contexts);
    /// none: `<data-dir>/siderite-config.yaml`.
    pub client_config: Option<PathBuf>,
    /// Also serve the metadata service on the plain boot HTTP port, for an installed OS
    /// that cannot pin the CA. Tokens and configs then cross the network in the clear.
    pub insecure_http_metadata: bool,
    /// Connections to the gRPC/HTTPS port: per source, in total, TLS handshake deadline.
    pub conn_limits: crate::guard::ConnLimits,
    /// Connections to the boot HTTP port.
    pub boot_http_limits: crate::guard::ConnLimits,
    /// Agent sessions from one source address.
    pub max_sessions_per_source: usize,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls_san: Vec::new(),
            client_config: None,
            insecure_http_metadata: false,
            conn_limits: crate::guard::ConnLimits::default(),
            boot_http_limits: crate::boot::service::BOOT_HTTP_LIMITS,
            max_sessions_per_source: 8,
        }
    }
}

/// A TLS connection as tonic sees it: the TCP peer is the remote address.
pub struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The operator config a server writes on its first start.
pub fn client_config_path(config: &ServeConfig) -> PathBuf {
    config
        .security
        .client_config
        .clone()
        .unwrap_or_else(|| config.data_dir.join("siderite-config.yaml"))
}

/// First start against a store: operators `admin` and `viewer` (written to the operator
/// config) and one boot join token. A later start, or another replica, finds them.
pub async fn bootstrap(
    config: &ServeConfig,
    auth: &crate::auth::Auth,
    pki: &crate::pki::Pki,
    url: &str,
) -> anyhow::Result<()> {
    use crate::auth::Role;
    if auth.operators().await?.is_empty() {
        let mut users = Vec::new();
        for (name, role) in [("admin", Role::Admin), ("viewer", Role::ReadOnly)] {
            match auth.create_operator(name, role).await {
                Ok(op) => users.push((name.to_string(), op.text())),
                // Another replica's first start won: its config file has the tokens.
                Err(crate::auth::AuthError::Exists(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        let path = client_config_path(config);
        crate::clientconfig::ClientConfig::new(url, pki.pin, &pki.ca_pem, &users)
            .save(&path)
            .with_context(|| format!("writing the operator config {}", path.display()))?;
        tracing::info!(path = %path.display(), "first start: wrote the operator config (contexts admin and viewer)");
    }
    if auth.join_tokens().await?.is_empty() {
        let t = auth
            .create_join_token("created by the first start", None, true)
            .await?;
        tracing::info!(id = %t.id, "first start: created a boot join token");
    }
    Ok(())
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
    let pki = crate::pki::Pki::load_or_create(deps.store.as_ref())
        .await
        .context("the site CA")?;
    let auth = crate::auth::Auth::new(deps.store.clone());
    let url_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    bootstrap(
        &config,
        &auth,
        &pki,
        &format!("https://{url_host}:{}", local.port()),
    )
    .await?;
    let mut names = crate::pki::local_names(&config.security.tls_san);
    if let Some(boot) = &config.boot {
        if let Ok((host, _)) = siderite::tls::host_port(&boot.advertise) {
            names.push(host);
        }
    }
    let tls = tokio_rustls::TlsAcceptor::from(pki.server_config(&names).context("TLS")?);
    tracing::info!(ca = %pki.pin, "TLS: agents pin siderite.ca={}", pki.pin);
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
        let metadata = if config.security.insecure_http_metadata {
            tracing::warn!("metadata also served over plain HTTP (--insecure-http-metadata): tokens and configs cross the network in the clear");
            (format!("http://{}", boot.advertise), None)
        } else {
            let host = siderite::tls::host_port(&boot.advertise)
                .map(|(h, _)| h)
                .unwrap_or_else(|_| url_host.clone());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            (format!("https://{host}:{}", local.port()), Some(pki.pin))
        };
        controller.set_metadata_base(metadata.0, metadata.1);
    }
    let agent = AgentApi {
        registry,
        sessions: deps.sessions.clone(),
        limits: Limits::default(),
        controller: controller.clone(),
        auth: auth.clone(),
        sources: crate::guard::ConnGuard::new(crate::guard::ConnLimits {
            max_connections: usize::MAX,
            max_per_source: config.security.max_sessions_per_source.max(1),
            handshake_timeout: std::time::Duration::from_secs(10),
        }),
        refusals: Default::default(),
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
        auth: auth.clone(),
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
        let l = crate::guard::GuardedListener::new(
            l,
            crate::guard::ConnGuard::new(crate::guard::ConnLimits::default()),
        );
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
            crate::boot::service::Serving {
                agent_api_port: local.port(),
                agent_trust: Some(Arc::new(crate::boot::ipxe::AgentTrust {
                    ca: pki.pin,
                    auth: auth.clone(),
                })),
                http_limits: config.security.boot_http_limits.clone(),
            },
            if config.security.insecure_http_metadata {
                crate::metadata::router(controller.clone())
            } else {
                axum::Router::new()
            },
            stop_rx.clone(),
        )
        .await?;
    }
    if let Some(path) = &config.addr_file {
        std::fs::write(path, local.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), auto_accept = %config.auto_accept, "siderite serving");
    // One TLS port: gRPC (agents, operators) and, over HTTP/1.1 or h2, the metadata service.
    let routes = tonic::service::Routes::from(crate::metadata::router(controller.clone()))
        .add_service(AgentServiceServer::new(agent).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(crate::auth::AdminAuth::new(
            AdminServiceServer::new(admin).max_decoding_message_size(MAX_MESSAGE_BYTES),
            auth.clone(),
        ));
    let guard = crate::guard::ConnGuard::new(config.security.conn_limits.clone());
    let incoming = crate::guard::incoming(listener, guard, move |tcp| {
        let tls = tls.clone();
        async move {
            let _ = tcp.set_nodelay(true);
            tls.accept(tcp).await.map(TlsIo)
        }
    });
    // On shutdown: end every agent session (agents go to another replica), let calls in
    // flight finish, but never wait more than a few seconds for clients that linger.
    let (down_tx, down_rx) = tokio::sync::watch::channel(false);
    let sessions_at_exit = deps.sessions.clone();
    tokio::spawn(async move {
        shutdown.await;
        for id in sessions_at_exit.connected() {
            sessions_at_exit.kick(id);
        }
        let _ = down_tx.send(true);
    });
    let fired = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(256))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, fired(down_rx.clone()));
    let drain_limit = {
        let down = fired(down_rx.clone());
        async move {
            down.await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        }
    };
    let result = tokio::select! {
        r = grpc => r.context("gRPC server"),
        _ = drain_limit => {
            tracing::warn!("connections still open {SHUTDOWN_DRAIN:?} after shutdown: closing them");
            Ok(())
        }
    };
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

/// `siderite init`: what a first start creates (CA, operators and their config, a boot
/// join token), without serving, so that machines can be given `siderite.ca=` and
/// `siderite.token=` before the server runs. Returns the pin and the boot join token.
pub async fn init(
    config: &ServeConfig,
    deps: &Deps,
    url: &str,
) -> anyhow::Result<(siderite::tls::CaPin, String)> {
    let pki = crate::pki::Pki::load_or_create(deps.store.as_ref())
        .await
        .context("the site CA")?;
    let auth = crate::auth::Auth::new(deps.store.clone());
    bootstrap(config, &auth, &pki, url).await?;
    let token = auth
        .boot_join_token()
        .await?
        .context("no usable boot join token (all revoked or expired): siderite token create")?;
    Ok((pki.pin, token.text()))
}
