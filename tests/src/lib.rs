//! Shared helpers of siderite's end-to-end tests: servers in-process and as processes,
//! simulated agents, raw gRPC calls for hostile input, network labs for QEMU machines.
pub mod boot;
pub mod etcd;
pub mod fleet;
pub mod netlab;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use siderite::proto::admin::v1::{
    admin_service_client::AdminServiceClient, ListServersRequest, Server,
};
use siderite::proto::agent::v1::{
    agent_service_client::AgentServiceClient, Hardware, RegisterRequest, RegisterResponse,
};
use siderite_server::accept::AutoAccept;
use siderite_server::serve::{self, Deps, ServeConfig};
use tonic::transport::{Channel, Endpoint};

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
        };
        edit(&mut config, dir.path())?;
        let deps = Deps::embedded(&config)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve::run(config, deps, async move {
            let _ = rx.await;
        }));
        let addr = wait_for_file(&addr_file, Duration::from_secs(10)).await?;
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

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
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
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn list_servers(addr: &str) -> anyhow::Result<Vec<Server>> {
    let ch = channel(addr).await?;
    Ok(AdminServiceClient::new(ch)
        .list_servers(ListServersRequest {})
        .await?
        .into_inner()
        .servers)
}

/// A binary built from this workspace, next to the test executable's `deps/` folder.
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
        let addr_file = data_dir.with_extension("addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = std::process::Command::new(workspace_bin("siderite"))
            .args(["serve", "--listen", listen, "--no-http", "--data-dir"])
            .arg(data_dir)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("spawning siderite serve")?;
        let addr = wait_for_file(&addr_file, Duration::from_secs(20)).await?;
        Ok(Self { child, addr })
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
    pub async fn unary(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
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
