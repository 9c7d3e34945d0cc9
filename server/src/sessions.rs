//! Live agent sessions held by this replica: who is connected, from which boot, and the
//! channel to send them commands.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use siderite::proto::agent::v1::{LogLine, Progress, ServerMessage};
use siderite::ServerId;
use tokio::sync::mpsc;

struct Entry {
    conn: u64,
    boot_id: String,
    tx: mpsc::Sender<Result<ServerMessage, tonic::Status>>,
}

/// Log lines kept per server, and the longest line kept.
pub const MAX_LOG_LINES: usize = 32;
pub const MAX_LOG_LINE: usize = 512;

#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<ServerId, Entry>>,
    logs: Mutex<HashMap<ServerId, VecDeque<LogLine>>>,
    /// The latest progress of the pending command, per subject (disk, artifact).
    progress: Mutex<HashMap<ServerId, Vec<Progress>>>,
}

/// Subjects of progress kept per server.
const MAX_PROGRESS_SUBJECTS: usize = 64;

/// Proof of holding a slot; only the holder can remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionHandle {
    pub id: ServerId,
    conn: u64,
}

impl Sessions {
    /// Records a session, replacing (and so closing) an older one of the same server.
    pub fn attach(
        &self,
        id: ServerId,
        boot_id: String,
        tx: mpsc::Sender<Result<ServerMessage, tonic::Status>>,
    ) -> SessionHandle {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut live = self.live.lock().expect("sessions lock");
        live.insert(id, Entry { conn, boot_id, tx });
        SessionHandle { id, conn }
    }

    pub fn detach(&self, h: SessionHandle) {
        let mut live = self.live.lock().expect("sessions lock");
        if live.get(&h.id).is_some_and(|e| e.conn == h.conn) {
            live.remove(&h.id);
        }
    }

    /// Drops a server's session (its stream ends): used when the server is deleted.
    pub fn kick(&self, id: ServerId) {
        self.live.lock().expect("sessions lock").remove(&id);
    }

    /// The boot ID of the agent holding a session for `id`, if any.
    pub fn live_boot(&self, id: ServerId) -> Option<String> {
        self.live
            .lock()
            .expect("sessions lock")
            .get(&id)
            .map(|e| e.boot_id.clone())
    }

    pub fn is_connected(&self, id: ServerId) -> bool {
        self.live.lock().expect("sessions lock").contains_key(&id)
    }

    pub fn count(&self) -> usize {
        self.live.lock().expect("sessions lock").len()
    }

    /// Keeps an agent's log line (bounded in count and length).
    pub fn push_log(&self, id: ServerId, mut line: LogLine) {
        if line.message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !line.message.is_char_boundary(cut) {
                cut -= 1;
            }
            line.message.truncate(cut);
        }
        line.level.truncate(16);
        let mut logs = self.logs.lock().expect("logs lock");
        let ring = logs.entry(id).or_default();
        if ring.len() == MAX_LOG_LINES {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    pub fn recent_logs(&self, id: ServerId) -> Vec<LogLine> {
        self.logs
            .lock()
            .expect("logs lock")
            .get(&id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a deleted server's logs and progress.
    pub fn forget(&self, id: ServerId) {
        self.logs.lock().expect("logs lock").remove(&id);
        self.clear_progress(id);
    }

    /// The servers whose agents hold a session here.
    pub fn connected(&self) -> Vec<ServerId> {
        self.live
            .lock()
            .expect("sessions lock")
            .keys()
            .copied()
            .collect()
    }

    /// Keeps the latest progress report per subject.
    pub fn set_progress(&self, id: ServerId, mut p: Progress) {
        p.subject.truncate(128);
        p.command_id.truncate(128);
        let mut all = self.progress.lock().expect("progress lock");
        let list = all.entry(id).or_default();
        if let Some(old) = list.iter_mut().find(|o| o.subject == p.subject) {
            *old = p;
        } else if list.len() < MAX_PROGRESS_SUBJECTS {
            list.push(p);
        }
    }

    pub fn progress(&self, id: ServerId) -> Vec<Progress> {
        self.progress
            .lock()
            .expect("progress lock")
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn clear_progress(&self, id: ServerId) {
        self.progress.lock().expect("progress lock").remove(&id);
    }

    /// Queues a message to a connected agent; false when it is not connected here.
    pub fn send(&self, id: ServerId, msg: ServerMessage) -> bool {
        let tx = self
            .live
            .lock()
            .expect("sessions lock")
            .get(&id)
            .map(|e| e.tx.clone());
        tx.is_some_and(|tx| tx.try_send(Ok(msg)).is_ok())
    }
}
