//! The server's commands, run apart from the session that brought them.
//!
//! A wipe takes minutes and a session may drop meanwhile; the work goes on, and the server
//! learns the outcome when it sends the command again on the next session (it re-sends
//! what it has no final ack for): the [`Executor`] answers every command ID from its table,
//! so a replay never runs anything twice and always tells the truth (a failed wipe stays
//! failed).
//!
//! Per command ID the table holds `Running` or `Finished(final ack)`:
//! - a new ID is checked (a bad one is answered "failed" at once, nothing touched), then
//!   started and answered "accepted";
//! - a running ID is answered "accepted" again;
//! - a finished ID is answered with its stored final ack.
//!
//! One wipe, install, reboot or power-off runs at a time; another while one runs is refused
//! ("busy with command X"). Acks, progress and log lines go to the live session's sender,
//! swapped on each new session ([`Executor::attach`]); progress and logs are dropped while
//! there is none, final acks are kept in the table for the replay.
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use siderite::proto::agent::v1::{
    agent_message, command, AgentMessage, Command, CommandAck, LogLine, Progress,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::install::{self, LinuxPower, Plan, Power, Restart, Stop};
use crate::wipe::{self, DevOpener, DiskOpener, DiskRequest, Mode, WipeOptions};

mod wipe_cmd;

#[cfg(test)]
pub(crate) mod tests;

/// Timings, shorter in tests.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Between the last ack and a restart, so the stream can carry it out.
    pub settle: Duration,
    /// Progress per disk or download at most this often.
    pub progress_interval: Duration,
    /// How long a final ack may wait for room in the session's queue.
    pub send_timeout: Duration,
    /// Read-back samples of `zero` and `discard` wipes.
    pub wipe_samples: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            settle: Duration::from_secs(1),
            progress_interval: Duration::from_millis(500),
            send_timeout: Duration::from_secs(10),
            wipe_samples: 256,
        }
    }
}

/// What the table knows about one command ID.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandState {
    Running,
    Finished(CommandAck),
}

/// Where a submitted command went.
#[derive(Debug)]
pub enum Routed {
    /// Answered (started, replayed, refused or done at once).
    Handled,
    /// Needs the session itself (`ReportInventory` registers again): run it, then hand the
    /// ack to [`Executor::finish`]. Not in the table until then, so a session lost on the
    /// way simply runs it again on the replay; it is idempotent.
    Session(Box<Command>),
}

/// Runs commands by ID, detached from sessions. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

struct Shared {
    opener: Arc<dyn DiskOpener>,
    power: Arc<dyn Power>,
    http: reqwest::Client,
    timing: Timing,
    table: Mutex<Table>,
    out: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    /// Held while deciding on and sending an ack, so that acks of one command leave in the
    /// order of its states ("accepted" never after its final ack).
    acks: tokio::sync::Mutex<()>,
    /// The command running, if any.
    running: watch::Sender<Option<String>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Command IDs and their states, bounded so a long-lived agent does not grow; the oldest
/// finished entries go first, a running one never.
struct Table {
    states: HashMap<String, CommandState>,
    order: VecDeque<String>,
}

impl Table {
    const CAP: usize = 1024;

    fn new() -> Self {
        Table {
            states: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &str) -> Option<&CommandState> {
        self.states.get(id)
    }

    fn set(&mut self, id: &str, state: CommandState) {
        if !self.states.contains_key(id) {
            if self.order.len() >= Self::CAP {
                let oldest = self.order.iter().position(|old| {
                    matches!(self.states.get(old), Some(CommandState::Finished(_)))
                });
                if let Some(old) = oldest.and_then(|i| self.order.remove(i)) {
                    self.states.remove(&old);
                }
            }
            self.order.push_back(id.to_string());
        }
        self.states.insert(id.to_string(), state);
    }
}

/// Work that runs detached.
enum Job {
    Wipe { mode: Mode, disks: Vec<DiskRequest> },
    Install(Box<Plan>),
    Restart(Restart),
}

enum Prepared {
    Answer(CommandAck),
    Session,
    Job(Job),
}

fn ack(id: &str, state: &str, message: impl Into<String>) -> CommandAck {
    CommandAck {
        command_id: id.to_string(),
        state: state.to_string(),
        message: message.into(),
        disks: Vec::new(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Detaches the session's sender when the session ends (dropped).
pub struct Attachment {
    shared: Arc<Shared>,
    tx: mpsc::Sender<AgentMessage>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut out = lock(&self.shared.out);
        if out.as_ref().is_some_and(|cur| cur.same_channel(&self.tx)) {
            *out = None;
        }
    }
}

impl Executor {
    pub fn new(opener: Arc<dyn DiskOpener>, power: Arc<dyn Power>, timing: Timing) -> Self {
        // No proxy from the environment: the agent talks to its own server directly.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Executor {
            shared: Arc::new(Shared {
                opener,
                power,
                http,
                timing,
                table: Mutex::new(Table::new()),
                out: Mutex::new(None),
                acks: tokio::sync::Mutex::new(()),
                running: watch::channel(None).0,
                stop: watch::channel(false).0,
                task: Mutex::new(None),
            }),
        }
    }

    /// The machine's own disks below `root` (`/` in production) and its power.
    pub fn linux(root: &Path) -> Self {
        Executor::new(
            Arc::new(DevOpener::new(root)),
            Arc::new(LinuxPower),
            Timing::default(),
        )
    }

    /// Sends from now on through `tx`, the new session's sender, until the returned
    /// attachment is dropped.
    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> Attachment {
        *lock(&self.shared.out) = Some(tx.clone());
        Attachment {
            shared: self.shared.clone(),
            tx,
        }
    }

    /// What the table knows about `id`.
    pub fn state(&self, id: &str) -> Option<CommandState> {
        lock(&self.shared.table).get(id).cloned()
    }

    /// The ID of the command running, if any.
    pub fn running(&self) -> Option<String> {
        self.shared.running.borrow().clone()
    }

    /// Resolves when no command runs.
    pub async fn idle(&self) {
        let mut rx = self.shared.running.subscribe();
        let _ = rx.wait_for(Option::is_none).await;
    }

    /// Stops the running command (a wipe stops at its next chunk, a download at once) and
    /// waits for it, at most 30 s.
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// Takes one command from the server and answers it on the attached session.
    pub async fn submit(&self, cmd: Command) -> Routed {
        let _order = self.shared.acks.lock().await;
        let known = lock(&self.shared.table).get(&cmd.id).cloned();
        match known {
            Some(CommandState::Running) => {
                self.send_ack(ack(&cmd.id, "accepted", "in progress")).await;
                return Routed::Handled;
            }
            Some(CommandState::Finished(done)) => {
                tracing::info!(command = %cmd.id, state = %done.state, "replayed: answering from the table");
                self.send_ack(done).await;
                return Routed::Handled;
            }
            None => {}
        }
        let job = match self.prepare(&cmd) {
            Prepared::Session => return Routed::Session(Box::new(cmd)),
            Prepared::Answer(answer) => {
                self.record(answer).await;
                return Routed::Handled;
            }
            Prepared::Job(job) => job,
        };
        if let Some(other) = self.running() {
            let refused = ack(&cmd.id, "failed", format!("busy with command {other}"));
            self.record(refused).await;
            return Routed::Handled;
        }
        lock(&self.shared.table).set(&cmd.id, CommandState::Running);
        self.shared.running.send_replace(Some(cmd.id.clone()));
        self.send_ack(ack(&cmd.id, "accepted", "")).await;
        let this = self.clone();
        let id = cmd.id.clone();
        let span = tracing::info_span!("command", id = %cmd.id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move { this.run(id, job).await },
            span,
        ));
        *lock(&self.shared.task) = Some(task);
        Routed::Handled
    }

    /// Stores the final ack of a command the session ran itself, and sends it.
    pub async fn finish(&self, id: &str, mut answer: CommandAck) {
        answer.command_id = id.to_string();
        let _order = self.shared.acks.lock().await;
        self.record(answer).await;
    }

    /// Checks a new command; runs nothing.
    fn prepare(&self, cmd: &Command) -> Prepared {
        let id = &cmd.id;
        let failed = |msg: String| Prepared::Answer(ack(id, "failed", msg));
        match &cmd.kind {
            None => failed("command of a kind this agent does not know".into()),
            Some(command::Kind::Wait(w)) => {
                tracing::info!(command = %id, reason = %w.reason, "waiting for work");
                Prepared::Answer(ack(id, "done", ""))
            }
            Some(command::Kind::ReportInventory(_)) => Prepared::Session,
            Some(command::Kind::Wipe(w)) => match wipe_cmd::requests(w) {
                Ok((mode, disks)) => Prepared::Job(Job::Wipe { mode, disks }),
                Err(e) => failed(e),
            },
            Some(command::Kind::Install(i)) => match Plan::parse(i) {
                Err(e) => failed(e.reason()),
                Ok(plan) => {
                    let needs = match &plan {
                        Plan::Kexec(_) => Some(Restart::Kexec),
                        Plan::Image(_) => None,
                    };
                    match needs.map(|how| self.shared.power.check(how)) {
                        Some(Err(e)) => failed(e.to_string()),
                        _ => Prepared::Job(Job::Install(Box::new(plan))),
                    }
                }
            },
            Some(command::Kind::Reboot(_)) => self.restart_job(id, Restart::Reboot),
            Some(command::Kind::PowerOff(_)) => self.restart_job(id, Restart::PowerOff),
        }
    }

    fn restart_job(&self, id: &str, how: Restart) -> Prepared {
        match self.shared.power.check(how) {
            Ok(()) => Prepared::Job(Job::Restart(how)),
            Err(e) => Prepared::Answer(ack(id, "failed", e.to_string())),
        }
    }

    async fn run(self, id: String, job: Job) {
        let _unwind = Unwind {
            shared: self.shared.clone(),
            id: id.clone(),
        };
        match job {
            Job::Wipe { mode, disks } => {
                let answer = self.wipe(&id, mode, disks).await;
                self.complete(answer, true).await;
            }
            Job::Install(plan) => match *plan {
                Plan::Kexec(plan) => self.kexec(&id, plan).await,
                Plan::Image(plan) => self.image(&id, plan).await,
            },
            Job::Restart(how) => self.restart(&id, how, how.to_string()).await,
        }
    }

    async fn kexec(&self, id: &str, plan: install::KexecPlan) {
        let ctx = self.install_ctx(id);
        match install::stage_kexec(&plan, self.shared.power.as_ref(), &ctx).await {
            Ok(()) => {
                let done = format!("kexec into {}", plan.kernel.url);
                self.restart(id, Restart::Kexec, done).await;
            }
            Err(e) => self.complete(ack(id, "failed", e.reason()), true).await,
        }
    }

    async fn image(&self, id: &str, plan: install::ImagePlan) {
        let ctx = self.install_ctx(id);
        let s = match install::write_image(&plan, self.shared.opener.clone(), &ctx).await {
            Ok(s) => s,
            Err(e) => return self.complete(ack(id, "failed", e.reason()), true).await,
        };
        let done = format!(
            "wrote {} bytes ({} downloaded) to {} in {:.1} s, read back and verified in \
             {:.1} s (sha512 {})",
            s.written,
            s.downloaded,
            s.disk,
            s.write_time.as_secs_f64(),
            s.verify_time.as_secs_f64(),
            s.sha512
        );
        match self.shared.power.check(Restart::Reboot) {
            Ok(()) => self.restart(id, Restart::Reboot, done).await,
            Err(e) => {
                let msg = format!("{done}; not rebooting: {e}");
                self.complete(ack(id, "done", msg), true).await;
            }
        }
    }

    async fn wipe(&self, id: &str, mode: Mode, disks: Vec<DiskRequest>) -> CommandAck {
        let mut opts = WipeOptions::new(mode, id);
        opts.samples = self.shared.timing.wipe_samples;
        opts.progress_interval = self.shared.timing.progress_interval;
        let shared = self.shared.clone();
        let command_id = id.to_string();
        let progress: wipe::ProgressSink = Arc::new(move |p: &wipe::Progress| {
            shared.progress(Progress {
                command_id: command_id.clone(),
                subject: p.disk.clone(),
                done_bytes: p.bytes_done,
                total_bytes: p.bytes_total,
                rate_bytes_per_sec: p.rate,
                eta_seconds: p.eta.map_or(0, |d| d.as_secs()),
            })
        });
        let mut stop = self.stop();
        let results = wipe::wipe(
            disks,
            opts,
            self.shared.opener.as_ref(),
            progress,
            async move { stop.stopped().await },
        )
        .await;
        wipe_cmd::ack(id, mode, &results)
    }

    /// Acks "done" with `message`, gives the stream time to carry it, then restarts the
    /// machine. Still "running" until then, so nothing else starts. When the restart fails
    /// (or a fake returns), the command ends with what happened.
    async fn restart(&self, id: &str, how: Restart, message: String) {
        self.complete(ack(id, "done", message.clone()), false).await;
        let mut stop = self.stop();
        tokio::select! {
            () = tokio::time::sleep(self.shared.timing.settle) => {}
            () = stop.stopped() => {
                let msg = format!("{message}; not done: the agent is shutting down");
                self.complete(ack(id, "failed", msg), true).await;
                return;
            }
        }
        tracing::warn!(command = %id, "{how} now");
        self.shared.log(&format!("{how} now"));
        let power = self.shared.power.clone();
        let outcome = tokio::task::spawn_blocking(move || power.restart(how)).await;
        match outcome {
            Ok(Ok(())) => self.release(),
            Ok(Err(e)) => {
                let msg = format!("{message}; failed: {e}");
                self.complete(ack(id, "failed", msg), true).await;
            }
            Err(_) => {
                let msg = format!("{message}; failed: the restart thread died");
                self.complete(ack(id, "failed", msg), true).await;
            }
        }
    }

    /// Stores and sends the final ack of the running command; `release`: no longer running.
    async fn complete(&self, answer: CommandAck, release: bool) {
        let _order = self.shared.acks.lock().await;
        self.record(answer).await;
        if release {
            self.release();
        }
    }

    fn release(&self) {
        self.shared.running.send_replace(None);
    }

    /// Stores a final ack and sends it. The caller holds `acks`.
    async fn record(&self, answer: CommandAck) {
        tracing::info!(command = %answer.command_id, state = %answer.state, message = %answer.message, "command finished");
        lock(&self.shared.table).set(&answer.command_id, CommandState::Finished(answer.clone()));
        self.send_ack(answer).await;
    }

    /// Sends on the attached session, if any; waits for room at most `send_timeout` (the
    /// table keeps the ack for the replay anyway).
    async fn send_ack(&self, answer: CommandAck) {
        let Some(tx) = lock(&self.shared.out).clone() else {
            tracing::info!(command = %answer.command_id, "no session: the ack waits for the replay");
            return;
        };
        let msg = AgentMessage {
            msg: Some(agent_message::Msg::Ack(answer)),
        };
        if let Err(e) = tx.send_timeout(msg, self.shared.timing.send_timeout).await {
            tracing::warn!(error = %e, "ack not sent: the session is gone or stuck");
        }
    }

    fn stop(&self) -> Stop {
        Stop(self.shared.stop.subscribe())
    }

    fn install_ctx(&self, id: &str) -> install::Ctx {
        install::Ctx {
            http: self.shared.http.clone(),
            report: Arc::new(CommandReport {
                shared: self.shared.clone(),
                id: id.to_string(),
            }),
            stop: self.stop(),
            progress_interval: self.shared.timing.progress_interval,
        }
    }
}

impl Shared {
    /// Progress is best effort: dropped without a session or when the queue is full.
    fn progress(&self, p: Progress) {
        self.try_send(agent_message::Msg::Progress(p));
    }

    fn log(&self, message: &str) {
        let unix_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        self.try_send(agent_message::Msg::Log(LogLine {
            unix_millis,
            level: "info".into(),
            message: message.to_string(),
        }));
    }

    fn try_send(&self, msg: agent_message::Msg) {
        if let Some(tx) = lock(&self.out).as_ref() {
            let _ = tx.try_send(AgentMessage { msg: Some(msg) });
        }
    }
}

/// Should a command's task end without a final ack (a panic), it must not stay "running"
/// forever, blocking every later command and answering "accepted" to every replay.
struct Unwind {
    shared: Arc<Shared>,
    id: String,
}

impl Drop for Unwind {
    fn drop(&mut self) {
        if self.shared.running.borrow().as_deref() != Some(self.id.as_str()) {
            return;
        }
        let mut table = lock(&self.shared.table);
        if table.get(&self.id) == Some(&CommandState::Running) {
            let failed = ack(&self.id, "failed", "the command stopped unexpectedly");
            table.set(&self.id, CommandState::Finished(failed));
        }
        drop(table);
        self.shared.running.send_replace(None);
    }
}

/// An install's progress and log lines, as the command's messages.
struct CommandReport {
    shared: Arc<Shared>,
    id: String,
}

impl install::Report for CommandReport {
    fn progress(&self, mut p: Progress) {
        p.command_id = self.id.clone();
        self.shared.progress(p);
    }
    fn log(&self, message: &str) {
        tracing::info!(command = %self.id, "{message}");
        self.shared.log(message);
    }
}
