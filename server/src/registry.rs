//! Registration: validate what an agent reports, decide which Server it is, write it.
//!
//! Identity rules:
//! - A usable SMBIOS UUID (not zero, not all ones, not a known placeholder) becomes the
//!   server's name the first time it is seen.
//! - The same UUID again is the same machine when it comes from the same boot, or when the
//!   holder is not connected from another boot and the hardware matches (a shared MAC or
//!   the same real serial). A changed disk or NIC then updates the hardware.
//! - Otherwise it is a duplicate: the newcomer gets an identity issued by the server, both
//!   servers get a `DuplicateUUID` condition and an event. Nothing is ever merged.
//! - Without a usable UUID the server issues the identity and finds the machine again by
//!   its MAC addresses.
use std::collections::BTreeSet;
use std::sync::Arc;

use siderite::proto::agent::v1::{Hardware, RegisterRequest};
use siderite::{ServerId, SmbiosUuid, UuidVerdict};

use crate::accept::AutoAccept;
use crate::model::{self, mac_index_key, server_key, session_key, uuid_index_key};
use crate::sessions::Sessions;
use crate::store::{Precondition, Store, StoreError, Txn, TxnOutcome};

/// Bounds on what one registration may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_disks: usize,
    pub max_nics: usize,
    pub max_pci: usize,
    pub max_errors: usize,
    pub max_text: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_disks: 1024,
            max_nics: 512,
            max_pci: 4096,
            max_errors: 256,
            max_text: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("invalid registration: {0}")]
    Invalid(String),
    #[error("registration kept conflicting with concurrent writes; retry")]
    Contention,
    #[error("stored server {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<model::LoadError> for RegisterError {
    fn from(e: model::LoadError) -> Self {
        match e {
            model::LoadError::Store(s) => RegisterError::Store(s),
            model::LoadError::Corrupt(id, why) => RegisterError::Corrupt(id, why),
        }
    }
}

/// A registration that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub boot_id: String,
    pub agent_version: String,
    pub hardware: Hardware,
    pub smbios: Option<SmbiosUuid>,
    pub claimed: Option<ServerId>,
    /// Normalised MACs of the machine's physical NICs.
    pub macs: BTreeSet<String>,
}

fn invalid(msg: impl Into<String>) -> RegisterError {
    RegisterError::Invalid(msg.into())
}

fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Checks a register request and turns it into typed values. Changes nothing.
pub fn validate(req: RegisterRequest, limits: &Limits) -> Result<Validated, RegisterError> {
    let boot_id = req.boot_id.trim().to_string();
    if boot_id.is_empty() {
        return Err(invalid("boot_id is empty"));
    }
    if boot_id.len() > 128 || !boot_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "boot_id must be at most 128 printable ASCII characters",
        ));
    }
    if req.agent_version.len() > 64 {
        return Err(invalid("agent_version is longer than 64 characters"));
    }
    let claimed = match req.server_id.trim() {
        "" => None,
        s => Some(
            s.parse::<ServerId>()
                .map_err(|e| invalid(format!("server_id: {e}")))?,
        ),
    };
    let hardware = req.hardware.ok_or_else(|| invalid("hardware is missing"))?;
    let smbios = match &hardware.system {
        None => None,
        Some(sys) if sys.uuid.trim().is_empty() => return Err(invalid(
            "hardware.system.uuid is empty (omit hardware.system when the machine has no SMBIOS)",
        )),
        Some(sys) => Some(
            sys.uuid
                .parse::<SmbiosUuid>()
                .map_err(|e| invalid(format!("hardware.system.uuid: {e}")))?,
        ),
    };
    let counts = [
        ("disks", hardware.disks.len(), limits.max_disks),
        ("nics", hardware.nics.len(), limits.max_nics),
        ("pci", hardware.pci.len(), limits.max_pci),
        ("errors", hardware.errors.len(), limits.max_errors),
    ];
    for (what, n, max) in counts {
        if n > max {
            return Err(invalid(format!(
                "hardware.{what} has {n} entries, more than {max}"
            )));
        }
    }
    let texts = hardware
        .disks
        .iter()
        .flat_map(|d| [&d.name, &d.model, &d.serial, &d.wwn])
        .chain(hardware.nics.iter().flat_map(|n| [&n.name, &n.driver]))
        .chain(hardware.errors.iter())
        .chain(
            hardware
                .system
                .iter()
                .flat_map(|s| [&s.manufacturer, &s.product, &s.serial]),
        );
    for t in texts {
        if t.len() > limits.max_text {
            return Err(invalid(format!(
                "a text field is longer than {} bytes",
                limits.max_text
            )));
        }
    }
    let mut macs = BTreeSet::new();
    for nic in &hardware.nics {
        if nic.mac.is_empty() {
            continue;
        }
        let mac = normalize_mac(&nic.mac).ok_or_else(|| {
            invalid(format!(
                "nic {:?}: invalid MAC address {:?}",
                nic.name, nic.mac
            ))
        })?;
        if !nic.r#virtual && mac != "00:00:00:00:00:00" {
            macs.insert(mac);
        }
    }
    Ok(Validated {
        boot_id,
        agent_version: req.agent_version,
        hardware,
        smbios,
        claimed,
        macs,
    })
}

/// Serials that firmware ships unset; they say nothing about identity.
fn meaningful_serial(s: &str) -> bool {
    let s = s.trim().to_ascii_lowercase();
    !(s.is_empty()
        || s.contains("o.e.m")
        || s == "default string"
        || s == "not specified"
        || s == "system serial number"
        || s == "0123456789"
        || s.chars().all(|c| c == '0'))
}

fn physical_macs(hw: &Hardware) -> BTreeSet<String> {
    hw.nics
        .iter()
        .filter(|n| !n.r#virtual)
        .filter_map(|n| normalize_mac(&n.mac))
        .collect()
}

/// Whether two inventories come from the same physical machine.
pub fn same_machine(a: &Hardware, b: &Hardware) -> bool {
    if !physical_macs(a).is_disjoint(&physical_macs(b)) {
        return true;
    }
    let serial = |h: &Hardware| {
        h.system
            .as_ref()
            .map(|s| s.serial.clone())
            .unwrap_or_default()
    };
    let (sa, sb) = (serial(a), serial(b));
    meaningful_serial(&sa) && sa == sb
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub server_id: ServerId,
    pub identity_issued: bool,
    pub identity_reason: String,
    pub accepted: bool,
    pub created: bool,
    pub session_token: String,
    /// A known server registered from a different boot than last time.
    pub new_boot: bool,
}

pub struct Registry {
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    auto_accept: AutoAccept,
}

use model::Stored as Record;

impl Registry {
    pub fn new(store: Arc<dyn Store>, sessions: Arc<Sessions>, auto_accept: AutoAccept) -> Self {
        Self {
            store,
            sessions,
            auto_accept,
        }
    }

    async fn load(&self, id: ServerId) -> Result<Option<Record>, RegisterError> {
        Ok(model::load(self.store.as_ref(), id).await?)
    }

    async fn load_indexed(&self, key: &str) -> Result<Option<Record>, RegisterError> {
        Ok(model::load_indexed(self.store.as_ref(), key).await?)
    }

    /// Is `rec` this machine: same boot, or not held by another live boot and same hardware.
    fn is_same(&self, rec: &Record, v: &Validated) -> bool {
        let status = rec.server.status.clone().unwrap_or_default();
        if status.boot_id == v.boot_id {
            return true;
        }
        let old = status
            .hardware
            .as_ref()
            .unwrap_or(&Hardware::default())
            .clone();
        let live_elsewhere = self
            .sessions
            .live_boot(rec.id)
            .is_some_and(|b| b != v.boot_id);
        if live_elsewhere {
            // A machine runs one boot at a time: a new boot that shares a NIC with the
            // live one is this machine after an abrupt restart (power cut, kexec, crash)
            // whose old TCP session has not timed out yet. Without a shared NIC it is a
            // clone reporting the same UUID.
            return !physical_macs(&old).is_disjoint(&physical_macs(&v.hardware));
        }
        same_machine(&old, &v.hardware)
    }

    /// Registers a validated machine; retries on write conflicts.
    pub async fn register(
        &self,
        v: &Validated,
        peer: Option<String>,
    ) -> Result<Registered, RegisterError> {
        for _ in 0..16 {
            if let Some(done) = self.try_register(v, peer.clone()).await? {
                return Ok(done);
            }
        }
        Err(RegisterError::Contention)
    }

    async fn try_register(
        &self,
        v: &Validated,
        peer: Option<String>,
    ) -> Result<Option<Registered>, RegisterError> {
        let mut txn = Txn::new();
        let mut target: Option<Record> = None;
        let mut new_id: Option<ServerId> = None;
        let mut issued_reason: Option<String> = None;
        let mut duplicate_of: Option<Record> = None;

        if let Some(id) = v.claimed {
            if let Some(rec) = self.load(id).await? {
                let same_boot = rec
                    .server
                    .status
                    .as_ref()
                    .is_some_and(|s| s.boot_id == v.boot_id);
                if same_boot {
                    target = Some(rec);
                }
            }
        }
        if target.is_none() {
            match v.smbios.map(|u| (u, u.verdict())) {
                Some((u, UuidVerdict::Usable)) => {
                    let key = uuid_index_key(&u.to_string());
                    let ix = self.store.get(&key).await?;
                    let holder = match &ix {
                        Some(_) => self.load_indexed(&key).await?,
                        None => None,
                    };
                    match holder {
                        Some(h) if self.is_same(&h, v) => target = Some(h),
                        Some(h) => {
                            issued_reason = Some(format!(
                                "SMBIOS UUID {u} is already held by server {}, a different machine",
                                h.id
                            ));
                            duplicate_of = Some(h);
                        }
                        None => {
                            let id = ServerId::from_smbios(u);
                            txn = txn
                                .require(Precondition::unchanged(key.clone(), ix.as_ref()))
                                .put(key, id.to_string().into_bytes());
                            new_id = Some(id);
                        }
                    }
                }
                Some((_, verdict)) => issued_reason = Some(verdict.reason().to_string()),
                None => issued_reason = Some("no SMBIOS system information".to_string()),
            }
        }
        if target.is_none() && issued_reason.is_some() {
            // A machine whose identity was issued before is found again by its NICs.
            let smbios_text = v.smbios.map(|u| u.to_string()).unwrap_or_default();
            for mac in &v.macs {
                if let Some(rec) = self.load_indexed(&mac_index_key(mac)).await? {
                    let st = rec.server.status.clone().unwrap_or_default();
                    if st.identity_issued && st.smbios_uuid == smbios_text && self.is_same(&rec, v)
                    {
                        target = Some(rec);
                        break;
                    }
                }
            }
        }

        let now = model::now_rfc3339();
        let created = target.is_none();
        let (id, mut server, read) = match target {
            Some(rec) => (rec.id, rec.server, Some(rec.read)),
            None => {
                let id = new_id.unwrap_or_else(ServerId::issue);
                (id, model::new_server(id), None)
            }
        };
        let key = server_key(&id.to_string());
        txn = txn.require(Precondition::unchanged(key.clone(), read.as_ref()));

        let mut spec = server.spec.take().unwrap_or_default();
        let mut status = server.status.take().unwrap_or_default();
        let new_boot = !created && status.boot_id != v.boot_id;
        let old_macs = status
            .hardware
            .as_ref()
            .map(physical_macs)
            .unwrap_or_default();
        if created {
            status.first_seen = now.clone();
            status.phase = "discovered".into();
            status.identity_issued = issued_reason.is_some();
            status.identity_reason = issued_reason.clone().unwrap_or_default();
            status.smbios_uuid = v.smbios.map(|u| u.to_string()).unwrap_or_default();
            model::push_event(
                &mut status,
                "Discovered",
                format!("registered from {}", peer.as_deref().unwrap_or("unknown")),
            );
            if let Some(reason) = &issued_reason {
                model::push_event(&mut status, "IdentityIssued", reason.clone());
            }
            if self.auto_accept.matches(&v.hardware) {
                spec.accepted = true;
                status.phase = "accepted".into();
                model::push_event(
                    &mut status,
                    "Accepted",
                    format!("auto-accept rule {}", self.auto_accept),
                );
            }
        } else if status.hardware.as_ref() != Some(&v.hardware) {
            let change = describe_change(status.hardware.as_ref(), &v.hardware);
            model::push_event(&mut status, "HardwareChanged", change);
        }
        if let Some(holder) = &duplicate_of {
            let msg = format!(
                "SMBIOS UUID {} is also reported by server {}",
                v.smbios.map(|u| u.to_string()).unwrap_or_default(),
                holder.id
            );
            model::set_condition(&mut status, "DuplicateUUID", true, "DuplicateUUID", &msg);
            let mut hs = holder.server.clone();
            let mut hst = hs.status.take().unwrap_or_default();
            let hmsg = format!(
                "SMBIOS UUID {} is also reported by a different machine, server {id}",
                holder.id
            );
            model::set_condition(&mut hst, "DuplicateUUID", true, "DuplicateUUID", &hmsg);
            model::push_event(&mut hst, "DuplicateUUID", hmsg);
            hs.status = Some(hst);
            let hkey = server_key(&holder.id.to_string());
            txn = txn
                .require(Precondition::At(hkey.clone(), holder.read.revision))
                .put(hkey, model::encode(&hs));
            tracing::warn!(server = %id, holder = %holder.id, "duplicate SMBIOS UUID; identity issued");
        }
        status.hardware = Some(v.hardware.clone());
        status.boot_id = v.boot_id.clone();
        status.agent_version = v.agent_version.clone();
        status.peer_address = peer.unwrap_or_default();
        status.last_seen = now;
        status.registrations += 1;
        status.connected = false;
        let accepted = spec.accepted;
        server.spec = Some(spec);
        server.status = Some(status);
        txn = txn.put(key, model::encode(&server));

        for mac in &v.macs {
            txn = txn.put(mac_index_key(mac), id.to_string().into_bytes());
        }
        for gone in old_macs.difference(&v.macs) {
            let k = mac_index_key(gone);
            if let Some(ix) = self.store.get(&k).await? {
                if ix.value == id.to_string().as_bytes() {
                    txn = txn
                        .require(Precondition::At(k.clone(), ix.revision))
                        .delete(k);
                }
            }
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        txn = txn.put(
            session_key(&id.to_string()),
            format!("{}\n{token}", v.boot_id).into_bytes(),
        );

        match self.store.txn(txn).await? {
            TxnOutcome::Committed(_) => Ok(Some(Registered {
                server_id: id,
                identity_issued: server.status.as_ref().is_some_and(|s| s.identity_issued),
                identity_reason: server
                    .status
                    .as_ref()
                    .map(|s| s.identity_reason.clone())
                    .unwrap_or_default(),
                accepted,
                created,
                session_token: token,
                new_boot,
            })),
            TxnOutcome::Conflict(key) => {
                tracing::debug!(%key, "registration conflicted; retrying");
                Ok(None)
            }
        }
    }

    /// Checks a session's hello against the secret written at registration.
    pub async fn check_session(
        &self,
        id: ServerId,
        boot_id: &str,
        token: &str,
    ) -> Result<bool, RegisterError> {
        let Some(v) = self.store.get(&session_key(&id.to_string())).await? else {
            return Ok(false);
        };
        let text = String::from_utf8_lossy(&v.value);
        let mut lines = text.lines();
        Ok(lines.next() == Some(boot_id) && lines.next() == Some(token) && !token.is_empty())
    }
}

/// A short human description of what changed between two inventories.
fn describe_change(old: Option<&Hardware>, new: &Hardware) -> String {
    let Some(old) = old else {
        return "hardware reported".into();
    };
    let mut parts = Vec::new();
    let disks = |h: &Hardware| {
        h.disks
            .iter()
            .map(|d| format!("{} ({})", d.name, d.size_bytes))
            .collect::<BTreeSet<_>>()
    };
    let (od, nd) = (disks(old), disks(new));
    for d in nd.difference(&od) {
        parts.push(format!("disk added: {d}"));
    }
    for d in od.difference(&nd) {
        parts.push(format!("disk removed: {d}"));
    }
    let (om, nm) = (physical_macs(old), physical_macs(new));
    for m in nm.difference(&om) {
        parts.push(format!("nic added: {m}"));
    }
    for m in om.difference(&nm) {
        parts.push(format!("nic removed: {m}"));
    }
    if parts.is_empty() {
        "hardware details changed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siderite::proto::agent::v1::{Nic, System};

    fn req(uuid: Option<&str>, macs: &[&str]) -> RegisterRequest {
        RegisterRequest {
            boot_id: "boot-1".into(),
            agent_version: "t".into(),
            server_id: String::new(),
            join_token: String::new(),
            hardware: Some(Hardware {
                system: uuid.map(|u| System {
                    uuid: u.into(),
                    serial: "S1".into(),
                    ..Default::default()
                }),
                nics: macs
                    .iter()
                    .map(|m| Nic {
                        name: "eth0".into(),
                        mac: m.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn validation_errors_are_clear() {
        let l = Limits::default();
        let mut r = req(Some(""), &[]);
        assert!(validate(r.clone(), &l)
            .unwrap_err()
            .to_string()
            .contains("hardware.system.uuid is empty"));
        r = req(Some("zzz"), &[]);
        assert!(validate(r.clone(), &l)
            .unwrap_err()
            .to_string()
            .contains("invalid UUID"));
        r = req(None, &["nonsense"]);
        assert!(validate(r.clone(), &l)
            .unwrap_err()
            .to_string()
            .contains("invalid MAC"));
        r = req(None, &[]);
        r.boot_id = String::new();
        assert!(validate(r.clone(), &l)
            .unwrap_err()
            .to_string()
            .contains("boot_id is empty"));
        r = req(None, &[]);
        r.hardware = None;
        assert!(validate(r, &l)
            .unwrap_err()
            .to_string()
            .contains("hardware is missing"));
        let ok = validate(req(None, &["AA-BB-CC-DD-EE-FF"]), &l).unwrap();
        assert!(ok.macs.contains("aa:bb:cc:dd:ee:ff"));
    }

    #[test]
    fn same_machine_by_mac_or_real_serial() {
        let a = req(
            Some("5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e"),
            &["aa:bb:cc:dd:ee:01"],
        )
        .hardware
        .unwrap();
        let mut b = req(
            Some("5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e"),
            &["aa:bb:cc:dd:ee:02"],
        )
        .hardware
        .unwrap();
        assert!(same_machine(&a, &b), "same serial S1");
        b.system.as_mut().unwrap().serial = "To Be Filled By O.E.M.".into();
        let mut a2 = a.clone();
        a2.system.as_mut().unwrap().serial = "To Be Filled By O.E.M.".into();
        assert!(
            !same_machine(&a2, &b),
            "placeholder serials and no shared MAC"
        );
        b.nics[0].mac = "AA:BB:CC:DD:EE:01".into();
        assert!(same_machine(&a2, &b), "shared MAC");
    }
}
