//! The lifecycle controller: feeds events into the pure state machine ([`lifecycle`]),
//! persists the outcome with a compare-and-swap on the Server's revision, and only then
//! carries out the actions (commands down the agent's session).
//!
//! Events come from the operator API (accept, wipe, cordon, allocate, release), the agent
//! API (session opened, new boot, command acks) and the metadata service (config fetched).
//! A reconcile pass over the servers whose agents hold a session here starts what is owed
//! (first wipe, wipe after release, install of an allocated server) and fails installs
//! that never fetched their config. Store watches on `servers/` and `bindings/` start it
//! at once on a change (from any replica, with etcd); the pass is the fallback for what a
//! lossy watch missed. Each replica acts only on the agents connected to it, so nothing is
//! sent twice.
use std::sync::Arc;
use std::time::Duration;

use siderite::proto::admin::v1::Server;
use siderite::proto::agent::v1::{
    command, server_message, Artifact, Command, CommandAck, Install, PowerOff, Reboot,
    ServerMessage, Wipe, WipeDisk,
};
use siderite::ServerId;

use crate::binding::{self, BindingSpec, ServerBinding};
use crate::environment::{AssetKind, Environments};
use crate::lifecycle::{self, Action, Event, Phase, State, TransitionError};
use crate::model::{self, server_key, Stored};
use crate::sessions::Sessions;
use crate::store::{Precondition, Store, StoreError, Txn, TxnOutcome};

pub const WIPE_MODES: [&str; 4] = ["fast", "discard", "zero", "secure"];

/// Install timeouts are checked every this many reconcile ticks.
const EXPIRY_EVERY_TICKS: u64 = 15;

#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The site's default wipe mode.
    pub wipe_mode: String,
    /// How long an install may take before it counts as failed.
    pub install_timeout: Duration,
    /// How often the reconcile pass runs (install timeouts: every 15th pass).
    pub reconcile_every: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            wipe_mode: "fast".into(),
            install_timeout: Duration::from_secs(30 * 60),
            reconcile_every: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("server {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] model::LoadError),
    #[error("server {id}: {source}")]
    Refused {
        id: String,
        #[source]
        source: TransitionError,
    },
    #[error("server {0}: stored phase {1:?} is not a lifecycle phase")]
    BadPhase(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("server {0} kept changing; retry")]
    Contention(String),
}

/// The lifecycle state kept in a Server resource.
pub fn state_of(s: &Server) -> Result<State, ControlError> {
    let st = s.status.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let phase = if st.phase.is_empty() {
        Phase::Discovered
    } else {
        st.phase
            .parse()
            .map_err(|_| ControlError::BadPhase(model::name(s).to_string(), st.phase.clone()))?
    };
    let some = |v: String| (!v.is_empty()).then_some(v);
    Ok(State {
        phase,
        cordoned: spec.cordoned,
        reason: some(st.reason),
        binding: some(st.binding),
        pending_command: some(st.pending_command),
    })
}

fn put_state(s: &mut Server, state: &State) {
    let spec = s.spec.get_or_insert_with(Default::default);
    spec.cordoned = state.cordoned;
    let st = s.status.get_or_insert_with(Default::default);
    if st.pending_command != state.pending_command.clone().unwrap_or_default() {
        st.pending_accepted = false;
        st.pending_since = if state.pending_command.is_some() {
            model::now_rfc3339()
        } else {
            String::new()
        };
    }
    st.phase = state.phase.as_str().to_string();
    st.reason = state.reason.clone().unwrap_or_default();
    st.binding = state.binding.clone().unwrap_or_default();
    st.pending_command = state.pending_command.clone().unwrap_or_default();
}

fn new_command_id(kind: &str) -> String {
    format!("{kind}-{}", uuid::Uuid::new_v4().simple())
}

fn message(id: String, kind: command::Kind) -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::Command(Command {
            id,
            kind: Some(kind),
        })),
    }
}

/// The disks a wipe names: every disk the inventory lists that is neither removable nor
/// read-only, pinned by serial and size so a renamed disk is never wiped by mistake.
pub fn wipe_disks(s: &Server) -> Vec<WipeDisk> {
    let hw = s.status.as_ref().and_then(|st| st.hardware.as_ref());
    hw.map(|hw| {
        hw.disks
            .iter()
            .filter(|d| !d.removable && !d.read_only && d.size_bytes > 0)
            .map(|d| WipeDisk {
                name: d.name.clone(),
                serial: d.serial.clone(),
                size_bytes: d.size_bytes,
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Extra writes that commit with a transition, and checks they depend on.
#[derive(Default)]
pub struct Extra {
    pub require: Vec<Precondition>,
    pub put: Vec<(String, Vec<u8>)>,
    pub delete: Vec<String>,
}

pub struct Controller {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub environments: Arc<Environments>,
    pub config: LifecycleConfig,
    /// `http://HOST:PORT` of the boot HTTP server (assets and metadata), once it listens.
    boot_base: std::sync::OnceLock<String>,
    /// `https://HOST:PORT` of the metadata service and the CA it is pinned by (none when
    /// served over plain HTTP).
    metadata_base: std::sync::OnceLock<(String, Option<siderite::tls::CaPin>)>,
    /// Whether this replica runs the once-per-site work (install timeouts).
    leadership: std::sync::OnceLock<crate::leader::Leadership>,
}

impl Controller {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        environments: Arc<Environments>,
        config: LifecycleConfig,
    ) -> Self {
        Self {
            store,
            sessions,
            environments,
            config,
            boot_base: std::sync::OnceLock::new(),
            metadata_base: std::sync::OnceLock::new(),
            leadership: std::sync::OnceLock::new(),
        }
    }

    /// Follows a leader lease; without one this replica is the only one (and leads).
    pub fn set_leadership(&self, l: crate::leader::Leadership) {
        let _ = self.leadership.set(l);
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.get().is_none_or(|l| l.is_leader())
    }

    pub fn set_boot_base(&self, base: String) {
        let _ = self.boot_base.set(base);
    }

    pub fn set_metadata_base(&self, base: String, ca: Option<siderite::tls::CaPin>) {
        let _ = self.metadata_base.set((base, ca));
    }

    pub fn boot_base(&self) -> Option<&str> {
        self.boot_base.get().map(String::as_str)
    }

    async fn load(&self, id: ServerId) -> Result<Stored, ControlError> {
        model::load(self.store.as_ref(), id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    /// Applies `event` to server `id`: transition, persist (with `edit`'s changes and
    /// `extra` writes in the same transaction), then act. Retries on write conflicts.
    pub async fn apply(
        &self,
        id: ServerId,
        event: Event,
        mut edit: impl FnMut(&mut Server),
        extra: impl Fn(&State) -> Extra,
    ) -> Result<Server, ControlError> {
        for _ in 0..16 {
            let Stored {
                read, mut server, ..
            } = self.load(id).await?;
            let state = state_of(&server)?;
            let (next, actions) =
                lifecycle::transition(&state, &event).map_err(|source| ControlError::Refused {
                    id: id.to_string(),
                    source,
                })?;
            put_state(&mut server, &next);
            edit(&mut server);
            let st = server.status.get_or_insert_with(Default::default);
            for a in &actions {
                if let Action::RecordEvent { reason, message } = a {
                    model::push_event(st, reason, message.clone());
                }
            }
            let key = server_key(&id.to_string());
            let mut txn = Txn::new().require(Precondition::At(key.clone(), read.revision));
            for a in &actions {
                if let Action::Unbind { binding } = a {
                    txn = txn
                        .delete(binding::key(binding))
                        .delete(binding::token_key(&id.to_string()));
                }
            }
            // The free index follows the state in the same transaction.
            let free = model::free_index_key(&id.to_string());
            if lifecycle::allocatable(&next) {
                txn = txn.put(free, Vec::new());
            } else if lifecycle::allocatable(&state) {
                txn = txn.delete(free);
            }
            let more = extra(&next);
            for p in more.require {
                txn = txn.require(p);
            }
            for (k, v) in more.put {
                txn = txn.put(k, v);
            }
            for k in more.delete {
                txn = txn.delete(k);
            }
            txn = txn.put(key, model::encode(&server));
            match self.store.txn(txn).await? {
                TxnOutcome::Committed(rev) => {
                    if let Some(m) = server.metadata.as_mut() {
                        m.resource_version = rev;
                    }
                    tracing::info!(server_id = %id, event = %event.kind(), from = %state.phase, to = %next.phase, "lifecycle");
                    self.act(id, &server, &actions).await;
                    return Ok(server);
                }
                TxnOutcome::Conflict(k) => {
                    tracing::debug!(server_id = %id, key = %k, "lifecycle write conflicted; retrying")
                }
            }
        }
        Err(ControlError::Contention(id.to_string()))
    }

    /// Applies an event with no extra changes.
    pub async fn event(&self, id: ServerId, event: Event) -> Result<Server, ControlError> {
        self.apply(id, event, |_| {}, |_| Extra::default()).await
    }

    /// Carries out what a committed transition asks for.
    async fn act(&self, id: ServerId, server: &Server, actions: &[Action]) {
        for a in actions {
            match a {
                Action::SendWipe { command_id } => {
                    let mode = server
                        .status
                        .as_ref()
                        .map(|s| s.wipe_mode.clone())
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| self.config.wipe_mode.clone());
                    let kind = command::Kind::Wipe(Wipe {
                        mode,
                        disks: wipe_disks(server),
                    });
                    self.sessions.clear_progress(id);
                    self.send(id, message(command_id.clone(), kind));
                }
                Action::SendInstall {
                    command_id,
                    binding,
                } => match self.install_command(id, binding).await {
                    Ok(install) => {
                        self.sessions.clear_progress(id);
                        self.send(
                            id,
                            message(command_id.clone(), command::Kind::Install(install)),
                        );
                    }
                    Err(reason) => {
                        tracing::warn!(server_id = %id, %reason, "install cannot start");
                        let ev = Event::InstallFailed {
                            command_id: command_id.clone(),
                            reason,
                        };
                        // Boxed: `act` runs inside `apply`.
                        let r = Box::pin(self.event(id, ev)).await;
                        if let Err(e) = r {
                            tracing::warn!(server_id = %id, error = %e, "recording the failed install");
                        }
                    }
                },
                Action::SendWait => {
                    self.send(id, crate::api::agent::wait_command("waiting for work"));
                }
                Action::Unbind { .. } | Action::RecordEvent { .. } => {}
            }
        }
    }

    fn send(&self, id: ServerId, msg: ServerMessage) {
        if !self.sessions.send(id, msg) {
            tracing::debug!(server_id = %id, "agent not connected here; the command waits for its session");
        }
    }

    /// The Install command for a server's binding: the Environment's verified kernel and
    /// initrd from the boot HTTP server, and its args with the Talos metadata URL.
    async fn install_command(&self, id: ServerId, binding_name: &str) -> Result<Install, String> {
        let base = self
            .boot_base()
            .ok_or("the boot HTTP server is not running (serve --boot-image)")?
            .to_string();
        let b = self
            .store
            .get(&binding::key(binding_name))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("ServerBinding {binding_name} is gone"))?;
        let b = ServerBinding::decode(&b.value, b.revision).map_err(|e| e.to_string())?;
        let token = self
            .store
            .get(&binding::token_key(&id.to_string()))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the server has no metadata token")?;
        let token = String::from_utf8_lossy(&token.value).to_string();
        let entry = self
            .environments
            .get(&b.spec.environment)
            .ok_or_else(|| format!("Environment {} not found", b.spec.environment))?;
        let verified = entry.verified.as_ref().ok_or_else(|| {
            format!(
                "Environment {} is not ready: {}",
                b.spec.environment, entry.environment.status.reason
            )
        })?;
        let artifact = |kind: AssetKind| Artifact {
            url: format!(
                "{base}{}",
                crate::boot::assets::asset_path(&b.spec.environment, kind)
            ),
            sha512: verified.get(kind).sha512.clone(),
            ..Default::default()
        };
        let mut args = entry.environment.spec.args.clone();
        args.push("talos.platform=metal".into());
        let (meta_base, ca) = self
            .metadata_base
            .get()
            .cloned()
            .unwrap_or_else(|| (base.clone(), None));
        args.push(format!(
            "talos.config={}",
            crate::metadata::config_url(&meta_base, id, &token)
        ));
        if let Some(ca) = ca {
            // What the installed OS pins to fetch its config (the stand-in reads it; Talos
            // ignores it and needs --insecure-http-metadata until it can pin).
            args.push(format!("siderite.ca={ca}"));
        }
        Ok(Install {
            mode: "kexec".into(),
            kernel: Some(artifact(AssetKind::Kernel)),
            initrd: Some(artifact(AssetKind::Initrd)),
            cmdline: args.join(" "),
            ..Default::default()
        })
    }

    /// An agent opened a session here: resend what is pending, or start what is owed.
    pub async fn on_session(&self, id: ServerId) {
        if let Err(e) = self.drive(id, true).await {
            tracing::warn!(server_id = %id, error = %e, "lifecycle on session open");
        }
    }

    /// Starts what a server owes now, when its agent is connected here.
    pub async fn nudge(&self, id: ServerId) {
        if self.sessions.is_connected(id) {
            if let Err(e) = self.drive(id, false).await {
                tracing::debug!(server_id = %id, error = %e, "lifecycle nudge");
            }
        }
    }

    /// Starts what a server owes, if anything; with `reconnected`, resends the pending
    /// command as well.
    async fn drive(&self, id: ServerId, reconnected: bool) -> Result<(), ControlError> {
        let stored = self.load(id).await?;
        let state = state_of(&stored.server)?;
        let r = if lifecycle::wants_wipe(&state) {
            self.start_wipe(id, None).await.map(drop)
        } else if state.phase == Phase::Allocated {
            self.event(
                id,
                Event::InstallStarted {
                    command_id: new_command_id("install"),
                },
            )
            .await
            .map(drop)
        } else if reconnected && matches!(state.phase, Phase::Wiping | Phase::Installing) {
            self.event(id, Event::AgentReconnected).await.map(drop)
        } else {
            Ok(())
        };
        match r {
            // Another drive (a watch, the pass, the session) moved the server on first.
            Err(ControlError::Refused { source, .. }) => {
                tracing::debug!(server_id = %id, reason = %source, "lifecycle: already moved on");
                Ok(())
            }
            r => r,
        }
    }

    /// Starts a wipe (first use, after release, an operator's re-wipe or a dirty
    /// server's retry) with `mode`, or the server's or site's default.
    pub async fn start_wipe(
        &self,
        id: ServerId,
        mode: Option<&str>,
    ) -> Result<Server, ControlError> {
        if let Some(m) = mode {
            if !WIPE_MODES.contains(&m) {
                return Err(ControlError::Invalid(format!(
                    "unknown wipe mode {m:?} (fast, discard, zero, secure)"
                )));
            }
        }
        let stored = self.load(id).await?;
        let state = state_of(&stored.server)?;
        let command_id = new_command_id("wipe");
        let event = if state.phase == Phase::Dirty {
            Event::RetryWipe { command_id }
        } else {
            Event::WipeStarted { command_id }
        };
        let default = self.config.wipe_mode.clone();
        let mode = mode.map(str::to_string);
        self.apply(
            id,
            event,
            move |s| {
                let spec_mode = s
                    .spec
                    .as_ref()
                    .map(|x| x.wipe_mode.clone())
                    .unwrap_or_default();
                let st = s.status.get_or_insert_with(Default::default);
                st.wipe_mode = mode
                    .clone()
                    .or_else(|| (!spec_mode.is_empty()).then(|| spec_mode.clone()))
                    .unwrap_or_else(|| default.clone());
            },
            |_| Extra::default(),
        )
        .await
    }

    /// A new boot registered: whatever the old boot was running was cut short.
    pub async fn on_new_boot(&self, id: ServerId) {
        // A command no agent ever acknowledged as started (sent into a session that was
        // already dead: a kexec'd or powered-off machine's TCP lingers) did not touch the
        // disks: the new boot gets it again instead of the server going dirty.
        if let Ok(stored) = self.load(id).await {
            let st = stored.server.status.clone().unwrap_or_default();
            if !st.pending_command.is_empty() && !st.pending_accepted {
                tracing::info!(server_id = %id, command = %st.pending_command, "new boot: the pending command never started; sending it again");
                if let Err(e) = self.event(id, Event::AgentReconnected).await {
                    tracing::debug!(server_id = %id, error = %e, "lifecycle on new boot");
                }
                return;
            }
        }
        if let Err(e) = self.event(id, Event::AgentRebooted).await {
            tracing::debug!(server_id = %id, error = %e, "lifecycle on new boot");
        }
    }

    /// An acknowledgement from the agent.
    pub async fn on_ack(&self, id: ServerId, ack: CommandAck) {
        if let Err(e) = self.handle_ack(id, ack).await {
            tracing::warn!(server_id = %id, error = %e, "command ack not applied");
        }
    }

    async fn handle_ack(&self, id: ServerId, ack: CommandAck) -> Result<(), ControlError> {
        let stored = self.load(id).await?;
        let state = state_of(&stored.server)?;
        if state.pending_command.as_deref() != Some(ack.command_id.as_str()) {
            tracing::debug!(server_id = %id, command = %ack.command_id, state = %ack.state, "ack for a command nobody waits for");
            return Ok(());
        }
        let cmd = ack.command_id.clone();
        let disks = ack.disks.clone();
        let keep_disks = move |s: &mut Server| {
            if !disks.is_empty() {
                s.status.get_or_insert_with(Default::default).last_wipe = disks.clone();
            }
        };
        match (state.phase, ack.state.as_str()) {
            (Phase::Wiping, done @ ("done" | "failed")) => {
                self.sessions.clear_progress(id);
                let event = if done == "done" {
                    Event::WipeSucceeded { command_id: cmd }
                } else {
                    Event::WipeFailed {
                        command_id: cmd,
                        reason: ack.message,
                    }
                };
                self.apply(id, event, keep_disks, |_| Extra::default())
                    .await?;
            }
            (Phase::Installing, "failed") => {
                self.sessions.clear_progress(id);
                self.event(
                    id,
                    Event::InstallFailed {
                        command_id: cmd,
                        reason: ack.message,
                    },
                )
                .await?;
            }
            (Phase::Installing, "done") => {
                // The agent handed over (kexec) or wrote the image: the install succeeds
                // when the installed system fetches its config. The agent's TCP session
                // may linger until keepalive notices; the registry knows that a new boot
                // sharing a NIC with a live session is this machine restarted.
                self.note(id, "InstallHandedOver", &ack.message).await?;
            }
            (_, "accepted") => {
                if !stored
                    .server
                    .status
                    .as_ref()
                    .is_some_and(|s| s.pending_accepted)
                {
                    self.mark_accepted(id, &cmd).await?;
                }
            }
            (phase, other) => {
                tracing::warn!(server_id = %id, %phase, state = other, "unexpected ack state")
            }
        }
        Ok(())
    }

    /// Changes a server's status without a transition, with a CAS on its revision;
    /// `edit` returns false to leave the server as it is.
    async fn edit_status(
        &self,
        id: ServerId,
        mut edit: impl FnMut(&mut siderite::proto::admin::v1::ServerStatus) -> bool,
    ) -> Result<(), ControlError> {
        for _ in 0..16 {
            let Stored {
                read, mut server, ..
            } = self.load(id).await?;
            if !edit(server.status.get_or_insert_with(Default::default)) {
                return Ok(());
            }
            let key = server_key(&id.to_string());
            let txn = Txn::new()
                .require(Precondition::At(key.clone(), read.revision))
                .put(key, model::encode(&server));
            if let TxnOutcome::Committed(_) = self.store.txn(txn).await? {
                return Ok(());
            }
        }
        Err(ControlError::Contention(id.to_string()))
    }

    /// Records an event on a server without a transition.
    async fn note(&self, id: ServerId, reason: &str, message: &str) -> Result<(), ControlError> {
        self.edit_status(id, |st| {
            model::push_event(st, reason, message);
            true
        })
        .await
    }

    /// Records that the agent started the pending command `cmd`.
    async fn mark_accepted(&self, id: ServerId, cmd: &str) -> Result<(), ControlError> {
        self.edit_status(id, |st| {
            let mine = st.pending_command == cmd;
            if mine {
                st.pending_accepted = true;
            }
            mine
        })
        .await
    }

    /// The installed system fetched its config with the token of the pending install.
    pub async fn on_config_fetched(&self, id: ServerId) -> Result<(), ControlError> {
        let stored = self.load(id).await?;
        let state = state_of(&stored.server)?;
        if let (Phase::Installing, Some(cmd)) = (state.phase, state.pending_command) {
            self.event(id, Event::InstallSucceeded { command_id: cmd })
                .await?;
        }
        Ok(())
    }

    /// Reboot or power off through the agent.
    pub async fn power(&self, id: ServerId, action: &str) -> Result<Server, ControlError> {
        let kind = match action {
            "reboot" => command::Kind::Reboot(Reboot {}),
            "poweroff" | "power-off" => command::Kind::PowerOff(PowerOff {}),
            other => {
                return Err(ControlError::Invalid(format!(
                    "unknown power action {other:?} (reboot, poweroff)"
                )))
            }
        };
        let stored = self.load(id).await?;
        if !self.sessions.is_connected(id) {
            return Err(ControlError::Invalid(format!(
                "server {id} has no agent session here: nothing can {action} it"
            )));
        }
        self.send(id, message(new_command_id(action), kind));
        self.note(id, "PowerRequested", &format!("{action} requested"))
            .await?;
        Ok(stored.server)
    }

    /// One reconcile pass over the servers whose agents are connected here: start what
    /// they owe.
    pub async fn reconcile(&self) {
        for id in self.sessions.connected() {
            if let Err(e) = self.drive(id, false).await {
                tracing::debug!(server_id = %id, error = %e, "reconcile");
            }
        }
    }

    /// Makes the free index agree with every server's state (at start, and now and then
    /// on the leader): an entry is only a hint, the record decides under the CAS.
    pub async fn rebuild_free_index(&self) -> Result<usize, ControlError> {
        let indexed: std::collections::HashSet<String> = self
            .store
            .list(model::FREE_PREFIX)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut fixed = 0;
        let mut want = std::collections::HashSet::new();
        for (_, v) in self.store.list(model::SERVERS_PREFIX).await? {
            let Ok(s) = model::decode(&v.value, v.revision) else {
                continue;
            };
            if state_of(&s).is_ok_and(|st| lifecycle::allocatable(&st)) {
                want.insert(model::free_index_key(model::name(&s)));
            }
        }
        for k in want.difference(&indexed) {
            self.store
                .txn(Txn::new().put(k.clone(), Vec::new()))
                .await?;
            fixed += 1;
        }
        for k in indexed.difference(&want) {
            self.store.txn(Txn::new().delete(k.clone())).await?;
            fixed += 1;
        }
        if fixed > 0 {
            tracing::info!(fixed, "free index rebuilt");
        }
        Ok(fixed)
    }

    /// Fails the installs that did not fetch their config in time. Over every server:
    /// an installing machine runs the install environment, not the agent, so it holds
    /// no session anywhere.
    pub async fn expire_installs(&self) {
        let rows = match self.store.list(model::SERVERS_PREFIX).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "install timeouts: listing servers");
                return;
            }
        };
        for (_, v) in rows {
            let Ok(s) = model::decode(&v.value, v.revision) else {
                continue;
            };
            let st = s.status.clone().unwrap_or_default();
            if st.phase != Phase::Installing.as_str()
                || !expired(&st.pending_since, self.config.install_timeout)
            {
                continue;
            }
            let Ok(id) = model::name(&s).parse::<ServerId>() else {
                continue;
            };
            let ev = Event::InstallFailed {
                command_id: st.pending_command.clone(),
                reason: format!(
                    "the installed system did not fetch its config within {} s",
                    self.config.install_timeout.as_secs()
                ),
            };
            if let Err(e) = self.event(id, ev).await {
                tracing::debug!(server_id = %id, error = %e, "install timeout");
            }
        }
    }

    /// Drives the servers whose record or binding changed, as the store's watches report
    /// them, until `stop` turns true.
    async fn follow_changes(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut servers = self.store.watch(model::SERVERS_PREFIX);
        let mut bindings = self.store.watch(binding::PREFIX);
        loop {
            let id = tokio::select! {
                Some(key) = servers.recv() => key
                    .strip_prefix(model::SERVERS_PREFIX)
                    .and_then(|id| id.parse::<ServerId>().ok()),
                Some(key) = bindings.recv() => self.bound_server(&key).await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                    continue;
                }
                // Both watches closed (they do not, while the store lives): the pass remains.
                else => return,
            };
            if let Some(id) = id {
                self.nudge(id).await;
            }
        }
    }

    /// The server a stored binding names; `None` once the binding is deleted.
    async fn bound_server(&self, key: &str) -> Option<ServerId> {
        let v = self.store.get(key).await.ok()??;
        let b = ServerBinding::decode(&v.value, v.revision).ok()?;
        b.spec.server.parse().ok()
    }

    /// Runs [`Controller::reconcile`], and follows the store's watches, until `stop` turns
    /// true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let follower = tokio::spawn(self.clone().follow_changes(stop.clone()));
        let mut tick = tokio::time::interval(self.config.reconcile_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.reconcile().await;
                    // The full scan is rarer: it reads every server.
                    if n.is_multiple_of(EXPIRY_EVERY_TICKS) && self.is_leader() {
                        self.expire_installs().await;
                        if let Err(e) = self.rebuild_free_index().await {
                            tracing::warn!(error = %e, "free index");
                        }
                    }
                    n += 1;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        // The follower hears the same signal.
                        let _ = follower.await;
                        return;
                    }
                }
            }
        }
    }

    /// Binds one clean, uncordoned server matching `class` to a new ServerBinding.
    /// Concurrent allocations never get the same server: the server's revision and the
    /// binding's absence are both preconditions of one transaction.
    pub async fn allocate(
        &self,
        class: &crate::serverclass::ServerClass,
        spec: BindingSpec,
        name: &str,
    ) -> Result<(ServerBinding, ServerId), ControlError> {
        let bkey = binding::key(name);
        for _round in 0..8 {
            if self.store.get(&bkey).await?.is_some() {
                return Err(ControlError::Invalid(format!(
                    "ServerBinding {name} already exists"
                )));
            }
            let mut candidates = Vec::new();
            for (key, _) in self.store.list(model::FREE_PREFIX).await? {
                if let Ok(id) = key
                    .trim_start_matches(model::FREE_PREFIX)
                    .parse::<ServerId>()
                {
                    candidates.push(id);
                }
            }
            if candidates.is_empty() {
                return Err(ControlError::Invalid(format!(
                    "no clean, uncordoned server matches ServerClass {}",
                    spec.server_class
                )));
            }
            // Concurrent allocators start at different servers, so they rarely collide.
            use rand::seq::SliceRandom;
            candidates.shuffle(&mut rand::rng());
            let mut matched = 0;
            for id in candidates {
                // The index may lag a moment: the server record decides, under the CAS.
                let Ok(Some(stored)) = model::load(self.store.as_ref(), id).await else {
                    continue;
                };
                let (hw, labels) = model::class_inputs(&stored.server);
                let ok = state_of(&stored.server).is_ok_and(|st| lifecycle::allocatable(&st));
                if !ok || !class.matches(&hw, &labels) {
                    continue;
                }
                matched += 1;
                let mut spec = spec.clone();
                spec.server = id.to_string();
                let b = ServerBinding::new(name, spec);
                let token = binding::new_token();
                let (bk, bv) = (bkey.clone(), b.encode());
                let tk = binding::token_key(&id.to_string());
                let r = self
                    .apply(
                        id,
                        Event::Allocate {
                            binding: name.to_string(),
                        },
                        |_| {},
                        |_| Extra {
                            require: vec![Precondition::Absent(bk.clone())],
                            put: vec![
                                (bk.clone(), bv.clone()),
                                (tk.clone(), token.clone().into_bytes()),
                            ],
                            delete: vec![],
                        },
                    )
                    .await;
                match r {
                    Ok(_) => {
                        // Start the install now when the agent is here.
                        if self.sessions.is_connected(id) {
                            let _ = self.drive(id, false).await;
                        }
                        return Ok((b, id));
                    }
                    // Taken or changed since the list: try the next one.
                    Err(ControlError::Refused { .. }) | Err(ControlError::Contention(_)) => {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            }
            if matched == 0 {
                return Err(ControlError::Invalid(format!(
                    "no clean, uncordoned server matches ServerClass {}",
                    spec.server_class
                )));
            }
        }
        Err(ControlError::Contention(format!(
            "allocation for ServerClass {}",
            spec.server_class
        )))
    }
}

/// Whether an RFC 3339 time is more than `after` ago.
fn expired(since: &str, after: Duration) -> bool {
    let Ok(t) = time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
    else {
        return false;
    };
    let age = time::OffsetDateTime::now_utc() - t;
    age.whole_seconds() > after.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        assert!(!expired("", Duration::from_secs(1)));
        assert!(expired("2020-01-01T00:00:00Z", Duration::from_secs(60)));
        assert!(!expired(&model::now_rfc3339(), Duration::from_secs(60)));
    }

    #[test]
    fn state_round_trips_through_the_resource() {
        let mut s = model::new_server(ServerId::issue());
        for phase in Phase::ALL {
            let st = State {
                phase,
                cordoned: phase == Phase::Clean,
                reason: (phase == Phase::Dirty).then(|| "disk vda failed".into()),
                binding: (phase == Phase::Allocated).then(|| "b".into()),
                pending_command: (phase == Phase::Wiping).then(|| "wipe-1".into()),
            };
            put_state(&mut s, &st);
            assert_eq!(state_of(&s).unwrap(), st);
        }
        s.status.as_mut().unwrap().phase = "sleeping".into();
        assert!(matches!(state_of(&s), Err(ControlError::BadPhase(..))));
    }
}
