//! A server's lifecycle as a pure state machine: no I/O, no clock, no async.
//!
//! ```text
//! discovered -accept-> accepted -wipe-> wiping -ok-> clean -allocate-> allocated
//!     -install-> installing -config fetched-> installed -release-> released -wipe-> wiping
//! wiping -failed/agent rebooted-> dirty -operator retry-> wiping
//! installing -failed/agent rebooted-> dirty        (a half-written disk is never reused)
//! ```
//!
//! The server feeds every event into [`transition`], persists the returned [`State`] and
//! only then carries out the returned [`Action`]s. Persisting first means every ack can be
//! matched against the command recorded as pending; an ack naming any other command is
//! rejected, so a replayed or late ack never moves a server twice. A rejected event changes
//! nothing: [`transition`] only reads the state it is given.
//!
//! Invariants, checked by the tests below:
//! - only a clean, uncordoned server is allocated, and only clean servers are ever
//!   allocatable;
//! - clean is only ever entered from wiping, on the success of the pending wipe, so a
//!   released, failed or interrupted server goes through a whole wipe before reuse;
//! - a failed wipe or install leaves the server dirty, with the reason, until a later
//!   wipe succeeds; only an operator starts that wipe, so nothing loops by itself;
//! - `binding` is set exactly in allocated/installing/installed, `pending_command` exactly
//!   in wiping/installing, `reason` exactly in dirty.
use std::fmt;
use std::str::FromStr;

/// Where a server is in its life. The names are what `status.phase` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Phase {
    /// Registered, not yet accepted by an operator or an auto-accept rule.
    #[default]
    Discovered,
    /// Accepted; waits for its first wipe.
    Accepted,
    /// A wipe command is pending.
    Wiping,
    /// Wiped and verified; allocatable unless cordoned.
    Clean,
    /// Bound to a machine/claim; not yet installing.
    Allocated,
    /// An install command is pending.
    Installing,
    /// The installed system fetched its config.
    Installed,
    /// Unbound; must be wiped before it is clean again.
    Released,
    /// A wipe or install failed or was interrupted; the disks may hold anything.
    Dirty,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Discovered,
        Phase::Accepted,
        Phase::Wiping,
        Phase::Clean,
        Phase::Allocated,
        Phase::Installing,
        Phase::Installed,
        Phase::Released,
        Phase::Dirty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Discovered => "discovered",
            Phase::Accepted => "accepted",
            Phase::Wiping => "wiping",
            Phase::Clean => "clean",
            Phase::Allocated => "allocated",
            Phase::Installing => "installing",
            Phase::Installed => "installed",
            Phase::Released => "released",
            Phase::Dirty => "dirty",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown server phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

/// Everything the lifecycle decides on. The server stores it in the Server's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub phase: Phase,
    /// Keeps a clean server out of allocation; a flag, not a phase, so that cordoning
    /// never interrupts a wipe or an install.
    pub cordoned: bool,
    /// Why the server is dirty.
    pub reason: Option<String>,
    /// The ServerBinding holding the server.
    pub binding: Option<String>,
    /// The ID of the wipe or install command whose result the server waits for.
    pub pending_command: Option<String>,
}

/// Something that happened to a server: an operator request, a controller decision, an
/// agent ack, a metadata fetch, a session change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An operator or an auto-accept rule accepted the server.
    Accept,
    /// The server decided to wipe (first use, after release, or an operator's re-wipe
    /// of a clean server) under this new command ID.
    WipeStarted {
        command_id: String,
    },
    /// The agent reports the wipe done and verified.
    WipeSucceeded {
        command_id: String,
    },
    WipeFailed {
        command_id: String,
        reason: String,
    },
    /// An operator asks to wipe a dirty server again. Dirty servers are never wiped
    /// automatically: a wipe that fails every time must not loop.
    RetryWipe {
        command_id: String,
    },
    Allocate {
        binding: String,
    },
    InstallStarted {
        command_id: String,
    },
    /// The installed system fetched its config with the URL issued for this install.
    InstallSucceeded {
        command_id: String,
    },
    /// The agent or a server timeout reports the install failed.
    InstallFailed {
        command_id: String,
        reason: String,
    },
    Release,
    Cordon,
    Uncordon,
    /// The agent's session came back within the same boot: resend what is pending (the
    /// agent ignores a command ID it already ran).
    AgentReconnected,
    /// The agent registered from a new boot: a command it was running was cut short.
    AgentRebooted,
}

/// An [`Event`] without its data, to name it in errors and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Accept,
    WipeStarted,
    WipeSucceeded,
    WipeFailed,
    RetryWipe,
    Allocate,
    InstallStarted,
    InstallSucceeded,
    InstallFailed,
    Release,
    Cordon,
    Uncordon,
    AgentReconnected,
    AgentRebooted,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::Accept,
        EventKind::WipeStarted,
        EventKind::WipeSucceeded,
        EventKind::WipeFailed,
        EventKind::RetryWipe,
        EventKind::Allocate,
        EventKind::InstallStarted,
        EventKind::InstallSucceeded,
        EventKind::InstallFailed,
        EventKind::Release,
        EventKind::Cordon,
        EventKind::Uncordon,
        EventKind::AgentReconnected,
        EventKind::AgentRebooted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accept => "accept",
            EventKind::WipeStarted => "wipe-started",
            EventKind::WipeSucceeded => "wipe-succeeded",
            EventKind::WipeFailed => "wipe-failed",
            EventKind::RetryWipe => "retry-wipe",
            EventKind::Allocate => "allocate",
            EventKind::InstallStarted => "install-started",
            EventKind::InstallSucceeded => "install-succeeded",
            EventKind::InstallFailed => "install-failed",
            EventKind::Release => "release",
            EventKind::Cordon => "cordon",
            EventKind::Uncordon => "uncordon",
            EventKind::AgentReconnected => "agent-reconnected",
            EventKind::AgentRebooted => "agent-rebooted",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Accept => EventKind::Accept,
            Event::WipeStarted { .. } => EventKind::WipeStarted,
            Event::WipeSucceeded { .. } => EventKind::WipeSucceeded,
            Event::WipeFailed { .. } => EventKind::WipeFailed,
            Event::RetryWipe { .. } => EventKind::RetryWipe,
            Event::Allocate { .. } => EventKind::Allocate,
            Event::InstallStarted { .. } => EventKind::InstallStarted,
            Event::InstallSucceeded { .. } => EventKind::InstallSucceeded,
            Event::InstallFailed { .. } => EventKind::InstallFailed,
            Event::Release => EventKind::Release,
            Event::Cordon => EventKind::Cordon,
            Event::Uncordon => EventKind::Uncordon,
            Event::AgentReconnected => EventKind::AgentReconnected,
            Event::AgentRebooted => EventKind::AgentRebooted,
        }
    }
}

/// What the server must do after persisting the new state, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the agent a Wipe command with this ID; the server picks mode and disks.
    SendWipe { command_id: String },
    /// Send the agent an Install command with this ID for this binding's config.
    SendInstall { command_id: String, binding: String },
    /// Tell the agent to idle.
    SendWait,
    /// The server no longer holds this binding: delete or fail the ServerBinding.
    Unbind { binding: String },
    /// Append to the server's event log (`reason` is a CamelCase word, as in
    /// `model::push_event`).
    RecordEvent {
        reason: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{event} is not allowed in phase {phase}")]
    NotAllowed { phase: Phase, event: EventKind },
    #[error(
        "{event} names command {got:?}, but phase {phase} waits for {}",
        .expected.as_deref().map_or("no command".to_string(), |c| format!("{c:?}"))
    )]
    StaleCommand {
        phase: Phase,
        event: EventKind,
        expected: Option<String>,
        got: String,
    },
    #[error("allocate is not allowed: the server is cordoned")]
    Cordoned,
    #[error("{event} needs a non-empty {field}")]
    Empty {
        event: EventKind,
        field: &'static str,
    },
}

/// Whether the server may be handed out now.
pub fn allocatable(state: &State) -> bool {
    state.phase == Phase::Clean && !state.cordoned
}

/// Whether the server owes a wipe that the controller starts by itself (with
/// [`Event::WipeStarted`]) once the agent is connected. Dirty servers wait for an operator.
pub fn wants_wipe(state: &State) -> bool {
    matches!(state.phase, Phase::Accepted | Phase::Released)
}

/// Applies `event` to `state`: the next state and what to do, or why the event is refused.
pub fn transition(state: &State, event: &Event) -> Result<(State, Vec<Action>), TransitionError> {
    use Phase::*;

    let kind = event.kind();
    let refuse = || TransitionError::NotAllowed {
        phase: state.phase,
        event: kind,
    };
    let mut next = state.clone();
    let actions = match (state.phase, event) {
        (_, Event::Cordon) => {
            next.cordoned = true;
            // Idempotent: an operator repeating a cordon is not an error.
            if state.cordoned {
                vec![]
            } else {
                vec![record("Cordoned", "cordoned: kept out of allocation")]
            }
        }
        (_, Event::Uncordon) => {
            next.cordoned = false;
            if state.cordoned {
                vec![record("Uncordoned", "uncordoned")]
            } else {
                vec![]
            }
        }

        (Discovered, Event::Accept) => {
            next.phase = Accepted;
            vec![record("Accepted", "accepted: to be wiped before first use")]
        }

        // A clean server may be wiped again on an operator's request; it is not in use.
        (Accepted | Released | Clean, Event::WipeStarted { command_id }) => {
            let id = non_empty(kind, "command ID", command_id)?;
            start_wipe(&mut next, id, "WipeStarted")
        }
        (Dirty, Event::RetryWipe { command_id }) => {
            let id = non_empty(kind, "command ID", command_id)?;
            next.reason = None;
            start_wipe(&mut next, id, "WipeRetried")
        }
        (Wiping, Event::WipeSucceeded { command_id }) => {
            expect_pending(state, kind, command_id)?;
            next.phase = Clean;
            next.pending_command = None;
            vec![record(
                "WipeSucceeded",
                format!("wipe {command_id} succeeded: clean"),
            )]
        }
        (Wiping, Event::WipeFailed { command_id, reason }) => {
            expect_pending(state, kind, command_id)?;
            let reason = reason_or_default(reason);
            let message = format!("wipe {command_id} failed: {reason}");
            make_dirty(&mut next, reason);
            vec![record("WipeFailed", message)]
        }

        (Clean, Event::Allocate { binding }) => {
            if state.cordoned {
                return Err(TransitionError::Cordoned);
            }
            let binding = non_empty(kind, "binding", binding)?;
            next.phase = Allocated;
            next.binding = Some(binding.clone());
            vec![record("Allocated", format!("allocated to {binding}"))]
        }
        (Allocated, Event::InstallStarted { command_id }) => {
            let id = non_empty(kind, "command ID", command_id)?;
            // Allocated always holds a binding; an inconsistent stored state is refused
            // rather than installing a config for nobody.
            let binding = state.binding.clone().ok_or_else(refuse)?;
            next.phase = Installing;
            next.pending_command = Some(id.clone());
            vec![
                record(
                    "InstallStarted",
                    format!("install {id} started for {binding}"),
                ),
                Action::SendInstall {
                    command_id: id,
                    binding,
                },
            ]
        }
        (Installing, Event::InstallSucceeded { command_id }) => {
            expect_pending(state, kind, command_id)?;
            next.phase = Installed;
            next.pending_command = None;
            vec![record(
                "InstallSucceeded",
                format!("install {command_id} succeeded: the installed system fetched its config"),
            )]
        }
        (Installing, Event::InstallFailed { command_id, reason }) => {
            expect_pending(state, kind, command_id)?;
            let reason = reason_or_default(reason);
            let message = format!("install {command_id} failed: {reason}");
            make_dirty(&mut next, reason);
            let mut actions = vec![record("InstallFailed", message)];
            actions.extend(unbind(&mut next));
            actions
        }

        // Releasing mid-install abandons the install; the wipe that follows cleans up
        // whatever it wrote.
        (Allocated | Installing | Installed, Event::Release) => {
            next.phase = Released;
            next.pending_command = None;
            let mut actions = vec![record("Released", "released: to be wiped before reuse")];
            actions.extend(unbind(&mut next));
            actions
        }

        (Wiping, Event::AgentReconnected) => match &state.pending_command {
            Some(id) => vec![Action::SendWipe {
                command_id: id.clone(),
            }],
            None => return Err(refuse()),
        },
        (Installing, Event::AgentReconnected) => match (&state.pending_command, &state.binding) {
            (Some(id), Some(binding)) => vec![Action::SendInstall {
                command_id: id.clone(),
                binding: binding.clone(),
            }],
            _ => return Err(refuse()),
        },
        (_, Event::AgentReconnected) => vec![Action::SendWait],

        // A reboot cut the command short: treat it as failed, never re-run it by itself,
        // which is how a machine that crashes during a wipe avoids a reboot loop.
        (Wiping, Event::AgentRebooted) => {
            let id = state.pending_command.as_deref().unwrap_or("?");
            let reason = format!("the agent rebooted during wipe {id}");
            let actions = vec![record("WipeFailed", reason.clone()), Action::SendWait];
            make_dirty(&mut next, reason);
            actions
        }
        (Installing, Event::AgentRebooted) => {
            let id = state.pending_command.as_deref().unwrap_or("?");
            let reason = format!("the agent booted again during install {id}");
            let mut actions = vec![record("InstallFailed", reason.clone())];
            make_dirty(&mut next, reason);
            actions.extend(unbind(&mut next));
            actions.push(Action::SendWait);
            actions
        }
        (Installed, Event::AgentRebooted) => vec![
            record(
                "AgentBooted",
                "the agent booted on an installed server instead of the installed system",
            ),
            Action::SendWait,
        ],
        (_, Event::AgentRebooted) => vec![Action::SendWait],

        _ => return Err(refuse()),
    };
    Ok((next, actions))
}

fn record(reason: &'static str, message: impl Into<String>) -> Action {
    Action::RecordEvent {
        reason,
        message: message.into(),
    }
}

fn non_empty(
    event: EventKind,
    field: &'static str,
    value: &str,
) -> Result<String, TransitionError> {
    if value.trim().is_empty() {
        return Err(TransitionError::Empty { event, field });
    }
    Ok(value.to_string())
}

/// An ack only counts for the command the state waits for.
fn expect_pending(state: &State, event: EventKind, got: &str) -> Result<(), TransitionError> {
    if state.pending_command.as_deref() == Some(got) {
        return Ok(());
    }
    Err(TransitionError::StaleCommand {
        phase: state.phase,
        event,
        expected: state.pending_command.clone(),
        got: got.to_string(),
    })
}

/// A failure report is never refused for lacking words: it must still make the server dirty.
fn reason_or_default(reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        "no reason given".to_string()
    } else {
        reason.to_string()
    }
}

fn start_wipe(next: &mut State, id: String, reason: &'static str) -> Vec<Action> {
    next.phase = Phase::Wiping;
    next.pending_command = Some(id.clone());
    vec![
        record(reason, format!("wipe {id} started")),
        Action::SendWipe { command_id: id },
    ]
}

fn make_dirty(next: &mut State, reason: String) {
    next.phase = Phase::Dirty;
    next.pending_command = None;
    next.reason = Some(reason);
}

fn unbind(next: &mut State) -> Option<Action> {
    next.binding
        .take()
        .map(|binding| Action::Unbind { binding })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const PENDING: &str = "cmd-1";
    const NEW: &str = "cmd-2";
    const BINDING: &str = "binding-1";

    /// A well-formed state in `phase`, uncordoned.
    fn state_in(phase: Phase) -> State {
        use Phase::*;
        State {
            phase,
            cordoned: false,
            reason: (phase == Dirty).then(|| "disk sda: verify failed".to_string()),
            binding: matches!(phase, Allocated | Installing | Installed)
                .then(|| BINDING.to_string()),
            pending_command: matches!(phase, Wiping | Installing).then(|| PENDING.to_string()),
        }
    }

    /// An event of `kind` that matches `state_in`'s pending command where it names one.
    fn event(kind: EventKind) -> Event {
        let id = |s: &str| s.to_string();
        match kind {
            EventKind::Accept => Event::Accept,
            EventKind::WipeStarted => Event::WipeStarted {
                command_id: id(NEW),
            },
            EventKind::WipeSucceeded => Event::WipeSucceeded {
                command_id: id(PENDING),
            },
            EventKind::WipeFailed => Event::WipeFailed {
                command_id: id(PENDING),
                reason: id("disk sda: read-back not zero"),
            },
            EventKind::RetryWipe => Event::RetryWipe {
                command_id: id(NEW),
            },
            EventKind::Allocate => Event::Allocate {
                binding: id(BINDING),
            },
            EventKind::InstallStarted => Event::InstallStarted {
                command_id: id(NEW),
            },
            EventKind::InstallSucceeded => Event::InstallSucceeded {
                command_id: id(PENDING),
            },
            EventKind::InstallFailed => Event::InstallFailed {
                command_id: id(PENDING),
                reason: id("sha512 mismatch"),
            },
            EventKind::Release => Event::Release,
            EventKind::Cordon => Event::Cordon,
            EventKind::Uncordon => Event::Uncordon,
            EventKind::AgentReconnected => Event::AgentReconnected,
            EventKind::AgentRebooted => Event::AgentRebooted,
        }
    }

    /// Every allowed (phase, event) pair of an uncordoned server and the phase it leads
    /// to, written out by hand. Every pair not listed must be refused.
    fn expected_table() -> BTreeMap<(Phase, EventKind), Phase> {
        use EventKind as E;
        use Phase::*;
        let mut t = BTreeMap::new();
        for p in Phase::ALL {
            // Flags and session events are allowed everywhere and keep the phase...
            t.insert((p, E::Cordon), p);
            t.insert((p, E::Uncordon), p);
            t.insert((p, E::AgentReconnected), p);
            t.insert((p, E::AgentRebooted), p);
        }
        // ...except a reboot in the middle of a command.
        t.insert((Wiping, E::AgentRebooted), Dirty);
        t.insert((Installing, E::AgentRebooted), Dirty);

        t.insert((Discovered, E::Accept), Accepted);
        t.insert((Accepted, E::WipeStarted), Wiping);
        t.insert((Released, E::WipeStarted), Wiping);
        t.insert((Clean, E::WipeStarted), Wiping);
        t.insert((Dirty, E::RetryWipe), Wiping);
        t.insert((Wiping, E::WipeSucceeded), Clean);
        t.insert((Wiping, E::WipeFailed), Dirty);
        t.insert((Clean, E::Allocate), Allocated);
        t.insert((Allocated, E::InstallStarted), Installing);
        t.insert((Installing, E::InstallSucceeded), Installed);
        t.insert((Installing, E::InstallFailed), Dirty);
        t.insert((Allocated, E::Release), Released);
        t.insert((Installing, E::Release), Released);
        t.insert((Installed, E::Release), Released);
        t
    }

    #[test]
    fn every_phase_event_pair_matches_the_table() {
        let table = expected_table();
        let mut allowed = 0;
        for phase in Phase::ALL {
            for kind in EventKind::ALL {
                let state = state_in(phase);
                let got = transition(&state, &event(kind));
                match (table.get(&(phase, kind)), got) {
                    (Some(want), Ok((next, _))) => {
                        assert_eq!(next.phase, *want, "{phase} + {kind}");
                        check_shape(&next);
                        allowed += 1;
                    }
                    (None, Err(e)) => assert_eq!(
                        e,
                        TransitionError::NotAllowed { phase, event: kind },
                        "{phase} + {kind}"
                    ),
                    (Some(want), Err(e)) => panic!("{phase} + {kind}: want {want}, got error {e}"),
                    (None, Ok((next, _))) => {
                        panic!("{phase} + {kind}: want an error, got {}", next.phase)
                    }
                }
            }
        }
        assert_eq!(allowed, table.len());
        assert_eq!(allowed, 4 * 9 + 14);
    }

    #[test]
    fn a_cordoned_server_has_the_same_table_except_allocation() {
        let table = expected_table();
        for phase in Phase::ALL {
            for kind in EventKind::ALL {
                let state = State {
                    cordoned: true,
                    ..state_in(phase)
                };
                let got = transition(&state, &event(kind));
                match (phase, kind) {
                    (Phase::Clean, EventKind::Allocate) => {
                        assert_eq!(got, Err(TransitionError::Cordoned))
                    }
                    _ => assert_eq!(
                        got.is_ok(),
                        table.contains_key(&(phase, kind)),
                        "{phase} + {kind}"
                    ),
                }
                if let Ok((next, _)) = got {
                    assert_eq!(next.cordoned, kind != EventKind::Uncordon);
                }
            }
        }
    }

    #[test]
    fn the_whole_happy_path() {
        let steps = [
            (Event::Accept, Phase::Accepted),
            (
                Event::WipeStarted {
                    command_id: "w1".into(),
                },
                Phase::Wiping,
            ),
            (
                Event::WipeSucceeded {
                    command_id: "w1".into(),
                },
                Phase::Clean,
            ),
            (
                Event::Allocate {
                    binding: "b1".into(),
                },
                Phase::Allocated,
            ),
            (
                Event::InstallStarted {
                    command_id: "i1".into(),
                },
                Phase::Installing,
            ),
            (
                Event::InstallSucceeded {
                    command_id: "i1".into(),
                },
                Phase::Installed,
            ),
            (Event::Release, Phase::Released),
            (
                Event::WipeStarted {
                    command_id: "w2".into(),
                },
                Phase::Wiping,
            ),
            (
                Event::WipeSucceeded {
                    command_id: "w2".into(),
                },
                Phase::Clean,
            ),
        ];
        let mut state = State::default();
        assert_eq!(state.phase, Phase::Discovered);
        for (event, want) in steps {
            let (next, _) = transition(&state, &event).unwrap();
            assert_eq!(next.phase, want, "{event:?}");
            check_shape(&next);
            state = next;
        }
        assert!(allocatable(&state));
    }

    #[test]
    fn actions_say_what_to_send() {
        let (s, a) =
            transition(&state_in(Phase::Accepted), &event(EventKind::WipeStarted)).unwrap();
        assert_eq!(s.pending_command.as_deref(), Some(NEW));
        assert_eq!(
            a.last(),
            Some(&Action::SendWipe {
                command_id: NEW.into()
            })
        );

        let (s, a) = transition(
            &state_in(Phase::Allocated),
            &event(EventKind::InstallStarted),
        )
        .unwrap();
        assert_eq!(s.pending_command.as_deref(), Some(NEW));
        assert_eq!(
            a.last(),
            Some(&Action::SendInstall {
                command_id: NEW.into(),
                binding: BINDING.into()
            })
        );

        // A reconnect within the same boot resends the pending command under its own ID.
        let (s, a) = transition(&state_in(Phase::Wiping), &Event::AgentReconnected).unwrap();
        assert_eq!(s, state_in(Phase::Wiping));
        assert_eq!(
            a,
            vec![Action::SendWipe {
                command_id: PENDING.into()
            }]
        );
        let (_, a) = transition(&state_in(Phase::Installing), &Event::AgentReconnected).unwrap();
        assert_eq!(
            a,
            vec![Action::SendInstall {
                command_id: PENDING.into(),
                binding: BINDING.into()
            }]
        );
        let (_, a) = transition(&state_in(Phase::Clean), &Event::AgentReconnected).unwrap();
        assert_eq!(a, vec![Action::SendWait]);

        // Dropping a binding tells the server to unbind.
        for phase in [Phase::Allocated, Phase::Installing, Phase::Installed] {
            let (s, a) = transition(&state_in(phase), &Event::Release).unwrap();
            assert_eq!(s.binding, None);
            assert!(
                a.contains(&Action::Unbind {
                    binding: BINDING.into()
                }),
                "{phase}"
            );
        }
        let (_, a) = transition(
            &state_in(Phase::Installing),
            &event(EventKind::InstallFailed),
        )
        .unwrap();
        assert!(a.contains(&Action::Unbind {
            binding: BINDING.into()
        }));
        let (_, a) = transition(&state_in(Phase::Installing), &Event::AgentRebooted).unwrap();
        assert!(a.contains(&Action::Unbind {
            binding: BINDING.into()
        }));
    }

    #[test]
    fn failures_leave_the_server_dirty_with_the_reason() {
        let (s, _) = transition(&state_in(Phase::Wiping), &event(EventKind::WipeFailed)).unwrap();
        assert_eq!(s.phase, Phase::Dirty);
        assert_eq!(s.reason.as_deref(), Some("disk sda: read-back not zero"));
        assert!(!allocatable(&s));

        let (s, _) = transition(
            &state_in(Phase::Installing),
            &event(EventKind::InstallFailed),
        )
        .unwrap();
        assert_eq!(s.phase, Phase::Dirty);
        assert_eq!(s.reason.as_deref(), Some("sha512 mismatch"));

        let (s, _) = transition(&state_in(Phase::Wiping), &Event::AgentRebooted).unwrap();
        assert_eq!(
            s.reason.as_deref(),
            Some("the agent rebooted during wipe cmd-1")
        );

        // A blank reason still makes the server dirty.
        let blank = Event::WipeFailed {
            command_id: PENDING.into(),
            reason: "  ".into(),
        };
        let (s, _) = transition(&state_in(Phase::Wiping), &blank).unwrap();
        assert_eq!(s.reason.as_deref(), Some("no reason given"));

        // Only an operator's retry leaves dirty, and the retry clears the reason.
        assert!(!wants_wipe(&s));
        let (s, _) = transition(
            &s,
            &Event::RetryWipe {
                command_id: "w9".into(),
            },
        )
        .unwrap();
        assert_eq!((s.phase, s.reason), (Phase::Wiping, None));
    }

    #[test]
    fn stale_and_replayed_acks_change_nothing() {
        let wiping = state_in(Phase::Wiping);
        for stale in [
            Event::WipeSucceeded {
                command_id: "old".into(),
            },
            Event::WipeFailed {
                command_id: "old".into(),
                reason: "late".into(),
            },
        ] {
            assert_eq!(
                transition(&wiping, &stale),
                Err(TransitionError::StaleCommand {
                    phase: Phase::Wiping,
                    event: stale.kind(),
                    expected: Some(PENDING.into()),
                    got: "old".into(),
                })
            );
        }
        let installing = state_in(Phase::Installing);
        for stale in [
            Event::InstallSucceeded {
                command_id: "old".into(),
            },
            Event::InstallFailed {
                command_id: "old".into(),
                reason: "late".into(),
            },
        ] {
            assert!(matches!(
                transition(&installing, &stale),
                Err(TransitionError::StaleCommand { .. })
            ));
        }
        // A wipe ack is not an install ack, even with the right ID.
        assert!(transition(
            &installing,
            &Event::WipeSucceeded {
                command_id: PENDING.into()
            }
        )
        .is_err());

        // The same ack twice moves the server once.
        let ack = event(EventKind::WipeSucceeded);
        let (clean, _) = transition(&wiping, &ack).unwrap();
        assert_eq!(
            transition(&clean, &ack),
            Err(TransitionError::NotAllowed {
                phase: Phase::Clean,
                event: EventKind::WipeSucceeded
            })
        );
    }

    #[test]
    fn ids_and_bindings_must_not_be_empty() {
        let empty = Event::WipeStarted {
            command_id: "".into(),
        };
        assert_eq!(
            transition(&state_in(Phase::Accepted), &empty),
            Err(TransitionError::Empty {
                event: EventKind::WipeStarted,
                field: "command ID"
            })
        );
        let empty = Event::Allocate {
            binding: " ".into(),
        };
        assert!(matches!(
            transition(&state_in(Phase::Clean), &empty),
            Err(TransitionError::Empty { .. })
        ));
    }

    #[test]
    fn phases_round_trip_through_their_names() {
        for p in Phase::ALL {
            assert_eq!(p.to_string().parse::<Phase>(), Ok(p));
        }
        // The names the server already stores.
        assert_eq!("discovered".parse(), Ok(Phase::Discovered));
        assert_eq!("accepted".parse(), Ok(Phase::Accepted));
        assert_eq!("Clean".parse::<Phase>(), Err(UnknownPhase("Clean".into())));
        assert_eq!("".parse::<Phase>(), Err(UnknownPhase("".into())));
    }

    #[test]
    fn error_messages_name_the_phase_and_the_event() {
        let e = transition(&state_in(Phase::Discovered), &Event::Release).unwrap_err();
        assert_eq!(e.to_string(), "release is not allowed in phase discovered");
        let e = transition(
            &state_in(Phase::Wiping),
            &Event::WipeSucceeded {
                command_id: "x".into(),
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "wipe-succeeded names command \"x\", but phase wiping waits for \"cmd-1\""
        );
    }

    #[test]
    fn cordon_is_idempotent_and_only_blocks_allocation() {
        let (c, a) = transition(&state_in(Phase::Clean), &Event::Cordon).unwrap();
        assert!(c.cordoned && !allocatable(&c) && a.len() == 1);
        let (again, a) = transition(&c, &Event::Cordon).unwrap();
        assert_eq!((again, a), (c.clone(), vec![]));
        // A cordoned server still gets wiped and installed.
        let (w, _) = transition(
            &c,
            &Event::WipeStarted {
                command_id: "w".into(),
            },
        )
        .unwrap();
        assert_eq!(w.phase, Phase::Wiping);
        let (u, _) = transition(&c, &Event::Uncordon).unwrap();
        assert!(allocatable(&u));
    }

    /// The shape every reachable state has.
    fn check_shape(s: &State) {
        use Phase::*;
        let bound = matches!(s.phase, Allocated | Installing | Installed);
        let busy = matches!(s.phase, Wiping | Installing);
        assert_eq!(s.binding.is_some(), bound, "binding in {s:?}");
        assert_eq!(
            s.pending_command.is_some(),
            busy,
            "pending command in {s:?}"
        );
        assert_eq!(s.reason.is_some(), s.phase == Dirty, "reason in {s:?}");
        assert!(!allocatable(s) || (s.phase == Clean && !s.cordoned));
    }

    /// SplitMix64: a tiny deterministic PRNG, so a failing sequence replays exactly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A random event; acks name the pending command most of the time so that the
    /// sequences get somewhere, and an old or unknown one otherwise.
    fn random_event(rng: &mut Rng, state: &State, history: &[String], counter: &mut u64) -> Event {
        let ack_id = |rng: &mut Rng| match (rng.below(4), &state.pending_command) {
            (0..=2, Some(id)) => id.clone(),
            _ if !history.is_empty() && rng.below(2) == 0 => {
                history[rng.below(history.len())].clone()
            }
            _ => format!("unknown-{}", rng.next() % 7),
        };
        let mut fresh = || {
            *counter += 1;
            format!("c{counter}")
        };
        match EventKind::ALL[rng.below(EventKind::ALL.len())] {
            EventKind::Accept => Event::Accept,
            EventKind::WipeStarted => Event::WipeStarted {
                command_id: fresh(),
            },
            EventKind::WipeSucceeded => Event::WipeSucceeded {
                command_id: ack_id(rng),
            },
            EventKind::WipeFailed => Event::WipeFailed {
                command_id: ack_id(rng),
                reason: "boom".into(),
            },
            EventKind::RetryWipe => Event::RetryWipe {
                command_id: fresh(),
            },
            EventKind::Allocate => Event::Allocate {
                binding: format!("b{}", rng.below(3)),
            },
            EventKind::InstallStarted => Event::InstallStarted {
                command_id: fresh(),
            },
            EventKind::InstallSucceeded => Event::InstallSucceeded {
                command_id: ack_id(rng),
            },
            EventKind::InstallFailed => Event::InstallFailed {
                command_id: ack_id(rng),
                reason: "boom".into(),
            },
            EventKind::Release => Event::Release,
            EventKind::Cordon => Event::Cordon,
            EventKind::Uncordon => Event::Uncordon,
            EventKind::AgentReconnected => Event::AgentReconnected,
            EventKind::AgentRebooted => Event::AgentRebooted,
        }
    }

    #[test]
    fn invariants_hold_over_random_event_sequences() {
        let mut rng = Rng(0x5EED_CAFE);
        let mut moves: BTreeMap<(Phase, Phase), usize> = BTreeMap::new();
        for run in 0..2000 {
            let mut state = State::default();
            let mut history: Vec<String> = Vec::new();
            let mut counter = 0;
            // Set by a failure or a release; cleared only by a successful wipe.
            let mut tainted = false;
            let mut released = false;
            for step in 0..60 {
                let event = random_event(&mut rng, &state, &history, &mut counter);
                let ctx = format!("run {run} step {step}: {state:?} + {event:?}");
                let Ok((next, actions)) = transition(&state, &event) else {
                    // Refused: the caller keeps `state`, which `transition` cannot touch.
                    continue;
                };
                check_shape(&next);
                *moves.entry((state.phase, next.phase)).or_default() += 1;

                if next.phase == Phase::Allocated && state.phase != Phase::Allocated {
                    assert_eq!(state.phase, Phase::Clean, "allocated not from clean: {ctx}");
                    assert!(
                        allocatable(&state),
                        "allocated while not allocatable: {ctx}"
                    );
                }
                if next.phase == Phase::Clean && state.phase != Phase::Clean {
                    assert_eq!(state.phase, Phase::Wiping, "{ctx}");
                    assert_eq!(event.kind(), EventKind::WipeSucceeded, "{ctx}");
                }
                if next.cordoned {
                    assert!(!allocatable(&next), "{ctx}");
                }
                if let Event::Allocate { .. } = event {
                    assert!(!state.cordoned, "{ctx}");
                }

                if next.phase == Phase::Dirty && state.phase != Phase::Dirty {
                    tainted = true;
                }
                if event.kind() == EventKind::Release {
                    released = true;
                    assert_eq!(next.phase, Phase::Released, "{ctx}");
                }
                if event.kind() == EventKind::WipeSucceeded {
                    tainted = false;
                    released = false;
                }
                if tainted {
                    assert!(
                        matches!(next.phase, Phase::Dirty | Phase::Wiping),
                        "not dirty after a failure, before a successful wipe: {ctx}"
                    );
                }
                if released {
                    assert!(
                        matches!(next.phase, Phase::Released | Phase::Wiping | Phase::Dirty),
                        "a release must lead to a wipe before clean: {ctx}"
                    );
                }

                // An ack that moved the server never moves it again.
                if matches!(
                    event.kind(),
                    EventKind::WipeSucceeded
                        | EventKind::WipeFailed
                        | EventKind::InstallSucceeded
                        | EventKind::InstallFailed
                ) {
                    assert!(
                        transition(&next, &event).is_err(),
                        "replayed ack accepted: {ctx}"
                    );
                }
                for a in &actions {
                    if let Action::SendWipe { command_id }
                    | Action::SendInstall { command_id, .. } = a
                    {
                        assert_eq!(next.pending_command.as_ref(), Some(command_id), "{ctx}");
                        if !history.contains(command_id) {
                            history.push(command_id.clone());
                        }
                    }
                }
                state = next;
            }
        }
        // The random walk reached every phase, so the invariants were really exercised.
        for p in Phase::ALL {
            assert!(moves.keys().any(|(_, to)| *to == p), "never reached {p}");
        }
    }
}
