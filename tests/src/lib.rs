//! Shared helpers of siderite's end-to-end tests: servers in-process and as processes,
//! simulated agents, raw gRPC calls for hostile input, network labs for QEMU machines.
pub mod boot;
pub mod etcd;
pub mod fleet;
pub mod fuzzing;
pub mod netlab;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use siderite::proto::admin::v1::{CreateJoinTokenRequest, ListServersRequest, Server};
use siderite::proto::agent::v1::{
    agent_service_client::AgentServiceClient, Hardware, RegisterRequest, RegisterResponse,
};
use siderite_server::accept::AutoAccept;
use siderite_server::serve::{self, Deps, ServeConfig};
use tonic::transport::Channel;

/// A server running inside the test process.
pub struct InProcess {
    pub addr: String,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    pub async fn start(auto_accept: AutoAccept) -> anyhow::Result<Self> {
        Self::start_with(auto_accept, |_, _| Ok(())).await
    }

    /// Starts with `edit` applied to the config first (given the server's scratch dir).
    pub async fn start_with(
        auto_accept: AutoAccept,
        edit: impl FnOnce(&mut ServeConfig, &std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr_file = dir.path().join("addr");
        let mut config = ServeConfig {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse()?,
            http_listen: Some("127.0.0.1:0".parse()?),
            auto_accept,
            addr_file: Some(addr_file.clone()),
            boot: None,
            lifecycle: Default::default(),
            security: loopback_security(),
        };
        edit(&mut config, dir.path())?;
        let data_dir = config.data_dir.clone();
        let deps = Deps::embedded(&config)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve::run(config, deps, async move {
            let _ = rx.await;
        }));
        let addr = wait_for_file(&addr_file, Duration::from_secs(10)).await?;
        learn(&addr, &data_dir, None).await?;
        Ok(Self {
            addr,
            dir,
            stop: Some(tx),
            task: Some(task),
        })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

pub async fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every test agent and client comes from 127.0.0.1: the per-source limits are lifted
/// (the security tests set their own).
pub fn loopback_security() -> serve::SecurityConfig {
    serve::SecurityConfig {
        conn_limits: siderite_server::guard::ConnLimits {
            max_connections: 1_000_000,
            max_per_source: 1_000_000,
            ..Default::default()
        },
        boot_http_limits: siderite_server::guard::ConnLimits {
            max_connections: 1_000_000,
            max_per_source: 1_000_000,
            ..Default::default()
        },
        max_sessions_per_source: 1_000_000,
        ..Default::default()
    }
}

/// The same for `siderite serve` processes.
pub use siderite_server::bench::LOOPBACK_LIMITS;

/// What a test needs to talk to one server: the CA pin, the operator tokens its first
/// start wrote, and a join token made for the tests.
#[derive(Clone)]
pub struct Access {
    pub pin: siderite::tls::CaPin,
    pub admin_token: String,
    pub viewer_token: String,
    pub join_token: String,
    /// The store the server runs on (`--store` value), to share access between replicas.
    pub store: Option<String>,
}

static ACCESS: std::sync::Mutex<Vec<(String, Access)>> = std::sync::Mutex::new(Vec::new());

/// The access learned for the server at `addr` (started by this process's helpers).
pub fn access(addr: &str) -> Access {
    ACCESS
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(a, _)| a == addr)
        .map(|(_, x)| x.clone())
        .unwrap_or_else(|| {
            panic!("no credentials known for {addr}: start servers with the siderite_tests helpers")
        })
}

/// Reads the operator config a server wrote into `data_dir` on its first start (or, for
/// another replica of the same store, reuses what the first one wrote) and makes a join
/// token for the test's agents.
pub async fn learn(addr: &str, data_dir: &Path, store: Option<&str>) -> anyhow::Result<Access> {
    let path = data_dir.join("siderite-config.yaml");
    let known = store.and_then(|st| {
        ACCESS
            .lock()
            .unwrap()
            .iter()
            .find(|(_, x)| x.store.as_deref() == Some(st))
            .map(|(_, x)| x.clone())
    });
    let mut access = match (
        siderite_server::clientconfig::ClientConfig::load(&path),
        known,
    ) {
        (Ok(config), _) => {
            let admin = config.resolve(Some("admin")).map_err(anyhow::Error::msg)?;
            let viewer = config.resolve(Some("viewer")).map_err(anyhow::Error::msg)?;
            Access {
                pin: admin.pin,
                admin_token: admin.token,
                viewer_token: viewer.token,
                join_token: String::new(),
                store: store.map(str::to_string),
            }
        }
        (Err(_), Some(known)) => known,
        (Err(e), None) => anyhow::bail!("the server at {addr} wrote no operator config: {e}"),
    };
    let ch = siderite::tls::channel(addr, access.pin, Duration::from_secs(10)).await?;
    access.join_token = siderite_server::cli::admin_client(ch, &access.admin_token)?
        .create_join_token(CreateJoinTokenRequest {
            description: "tests".into(),
            ttl_seconds: 0,
            no_boot: true,
        })
        .await?
        .into_inner()
        .token;
    ACCESS
        .lock()
        .unwrap()
        .push((addr.to_string(), access.clone()));
    Ok(access)
}

/// A TLS channel to a server started by these helpers.
pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(siderite::tls::channel(addr, access(addr).pin, Duration::from_secs(5)).await?)
}

/// An admin client of a server started by these helpers.
pub async fn admin(addr: &str) -> anyhow::Result<siderite_server::cli::Admin> {
    siderite_server::cli::admin_client(channel(addr).await?, &access(addr).admin_token)
}

/// The CLI's target for a server started by these helpers (`--siderite-config` file written).
pub fn cli_config(addr: &str, dir: &Path) -> PathBuf {
    let a = access(addr);
    let path = dir.join(format!(
        "cli-{}.yaml",
        addr.replace([':', '.', '[', ']'], "-")
    ));
    siderite_server::clientconfig::ClientConfig::new(
        &format!("https://{addr}"),
        a.pin,
        "",
        &[
            ("admin".into(), a.admin_token),
            ("viewer".into(), a.viewer_token),
        ],
    )
    .save(&path)
    .expect("writing a CLI config");
    path
}

/// A session config for a real agent: the server's CA pinned, the join token set.
pub fn agent_config(servers: Vec<String>, boot_id: String) -> siderite_agent::session::Config {
    let a = access(&servers[0]);
    let mut c = siderite_agent::session::Config::new(servers, boot_id);
    c.ca = Some(a.pin);
    c.join_token = siderite_agent::session::Secret(a.join_token);
    c
}

/// A GET over TLS pinned to the CA of the server at `addr` (the metadata service):
/// status and body.
pub async fn https_get(addr: &str, url: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port) = siderite::tls::host_port(url).map_err(anyhow::Error::msg)?;
    let target = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .find('/')
        .map(|i| &url.split_once("://").map(|(_, r)| r).unwrap_or(url)[i..])
        .unwrap_or("/")
        .to_string();
    let tls = siderite::tls::client_config(access(addr).pin, &[b"http/1.1"]);
    let mut s = siderite::tls::connect(&host, port, tls, Duration::from_secs(5)).await?;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    // A server that closes without close_notify still gave the whole response.
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {url}: {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

pub async fn register(
    addr: &str,
    boot_id: &str,
    hw: Hardware,
) -> Result<RegisterResponse, tonic::Status> {
    let ch = channel(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AgentServiceClient::new(ch)
        .register(RegisterRequest {
            boot_id: boot_id.into(),
            agent_version: "test".into(),
            hardware: Some(hw),
            server_id: String::new(),
            join_token: access(addr).join_token,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn list_servers(addr: &str) -> anyhow::Result<Vec<Server>> {
    Ok(admin(addr)
        .await?
        .list_servers(ListServersRequest {})
        .await?
        .into_inner()
        .servers)
}

pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        path.display()
    );
    path
}

/// A `siderite serve` child process on `data_dir`, listening on a loopback port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
}

impl ServerProcess {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_at(data_dir, "127.0.0.1:0", extra).await
    }

    /// Listening on `listen` (a fixed port survives a restart: agents find it again).
    pub async fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_logged(data_dir, listen, extra, None).await
    }

    /// [`ServerProcess::start_at`] with its log (RUST_LOG=debug) in `log` when given.
    pub async fn start_logged(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let addr_file = data_dir.with_extension("addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = std::process::Command::new(workspace_bin("siderite"))
            .args(["serve", "--listen", listen, "--no-http", "--data-dir"])
            .arg(data_dir)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(LOOPBACK_LIMITS)
            .args(extra)
            .env("RUST_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdin(std::process::Stdio::null())
            .stderr(match log {
                Some(path) => std::process::Stdio::from(std::fs::File::create(path)?),
                None => std::process::Stdio::inherit(),
            })
            .spawn()
            .context("spawning siderite serve")?;
        let addr = wait_for_file(&addr_file, Duration::from_secs(20)).await?;
        let store = extra
            .iter()
            .position(|a| *a == "--store")
            .and_then(|i| extra.get(i + 1))
            .copied();
        let mut this = Self { child, addr };
        if let Err(e) = learn(&this.addr, data_dir, store).await {
            this.kill9();
            return Err(e);
        }
        Ok(this)
    }

    pub fn kill9(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gRPC with raw bytes on the wire, to send what a well-behaved client never would.
pub mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default, Clone)]
    pub struct RawCodec;
    pub struct RawEnc;
    pub struct RawDec;

    impl Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let n = src.remaining();
            Ok(Some(src.copy_to_bytes(n).to_vec()))
        }
    }

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }

    /// Calls a unary method with `body` as the encoded request.
    /// A raw call; a register body gets the server's join token appended (field 5: in
    /// protobuf a later field wins, so the bytes under test are otherwise unchanged).
    pub async fn unary(
        addr: &str,
        path: &'static str,
        mut body: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        use prost::Message as _;
        let decodes = siderite::proto::agent::v1::RegisterRequest::decode(body.as_slice()).is_ok();
        if path.ends_with("/Register") && decodes {
            let token = super::access(addr).join_token;
            body.push(0x2a);
            prost::encoding::encode_varint(token.len() as u64, &mut body);
            body.extend_from_slice(token.as_bytes());
        }
        let ch = super::channel(addr)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(
            tonic::Request::new(body),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(|r| r.into_inner())
    }
}
