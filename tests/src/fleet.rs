//! Many agents in one process: the real agent library (register, session, executor) with
//! disks in memory and fake power, each given every server replica to fail over to.
use std::sync::Arc;
use std::time::Duration;

use siderite::proto::agent::v1::BlockDevice;
use siderite_agent::commands::{Executor, Timing};
use siderite_agent::install::FakePower;
use siderite_agent::wipe::fake::{FakeOpener, MemDisk};

/// Size of each agent's one in-memory disk.
pub const DISK_BYTES: usize = 256 * 1024;

pub struct FleetAgent {
    pub id: String,
    pub power: Arc<FakePower>,
    pub disk: MemDisk,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct Fleet {
    pub agents: Vec<FleetAgent>,
}

impl Fleet {
    /// Starts `n` agents (hardware seeded by `seed`); agent `i` tries the servers starting
    /// at `servers[i % len]`, so the fleet spreads over the replicas.
    pub fn start(servers: &[String], n: u32, seed: u32) -> Fleet {
        let agents = (0..n)
            .map(|i| {
                let mut hw = siderite_server::fake::hardware(seed, i);
                hw.disks = vec![BlockDevice {
                    name: "vda".into(),
                    dev_path: "/dev/vda".into(),
                    size_bytes: DISK_BYTES as u64,
                    serial: format!("FLEET-{seed}-{i}"),
                    bus: "virtio".into(),
                    disk_type: "ssd".into(),
                    logical_sector_size: 512,
                    physical_sector_size: 512,
                    ..Default::default()
                }];
                let id = hw
                    .system
                    .as_ref()
                    .map(|s| s.uuid.clone())
                    .unwrap_or_default();
                let disk = MemDisk::new("vda", vec![0xA5; DISK_BYTES]);
                let power = Arc::new(FakePower::default());
                let executor = Executor::new(
                    Arc::new(FakeOpener::with([disk.clone()])),
                    power.clone(),
                    Timing {
                        settle: Duration::from_millis(10),
                        wipe_samples: 4,
                        ..Default::default()
                    },
                );
                let mut order: Vec<String> = servers.to_vec();
                order.rotate_left(i as usize % servers.len().max(1));
                let mut config = crate::agent_config(order, format!("fleet-{seed}-{i}"));
                config.max_backoff = Duration::from_secs(2);
                config.heartbeat = Duration::from_secs(5);
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(siderite_agent::session::run_with(
                    config,
                    move || hw.clone(),
                    executor,
                    async move {
                        let _ = rx.await;
                    },
                ));
                FleetAgent {
                    id,
                    power,
                    disk,
                    stop: Some(tx),
                    task,
                }
            })
            .collect();
        Fleet { agents }
    }

    pub async fn stop(self) {
        for mut a in self.agents {
            if let Some(s) = a.stop.take() {
                let _ = s.send(());
            }
            let _ = a.task.await;
        }
    }
}
