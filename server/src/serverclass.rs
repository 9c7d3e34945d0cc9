//! The `ServerClass` resource: a named set of servers, chosen by selectors over the
//! hardware a server's agent reported (the `Hardware` message) and the Server's labels.
//! A server is in the class when every selector matches it; [`ServerClass::explain`]
//! says, for a server that is not, which selectors failed and what the server has.
//!
//! Semantics, the same for every field (`docs/serverclass.md` has the operator's view):
//! - a field yields zero or more values for a server: none when the agent did not report
//!   it (proto3 sends an empty string or a zero for "unknown"), one for a server-wide
//!   field, one per non-removable disk for `disk.*`, one per physical NIC for `nic.*`,
//!   one per flag for `cpu.flags`;
//! - `In`, `Gt`, `Lt`, `Glob` and `Exists` hold when ANY value satisfies them;
//! - `NotIn` is exactly "not `In`" and `DoesNotExist` exactly "not `Exists`": for
//!   `disk.*` that reads "no disk has", and a server that does not report a field is
//!   `NotIn` any list (as with Kubernetes label selectors).
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use siderite::proto::agent::v1::{Baseboard, BlockDevice, Cpu, Hardware, Nic, System};

use crate::environment::{self, EnvironmentError, Metadata};
use crate::model::API_VERSION;

pub const KIND: &str = "ServerClass";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerClass {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ServerClassSpec,
    /// Computed by the server when the class is read; accepted and not checked on apply,
    /// so that `get -o yaml` output can be applied again.
    #[serde(default, skip_serializing_if = "ServerClassStatus::is_empty")]
    pub status: ServerClassStatus,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerClassStatus {
    /// Servers the class matches.
    #[serde(default)]
    pub matching: usize,
    /// Of those, the ones that could be allocated now.
    #[serde(default)]
    pub free: usize,
}

impl ServerClassStatus {
    pub fn is_empty(&self) -> bool {
        *self == ServerClassStatus::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerClassSpec {
    /// All must match (AND); an empty list matches every server.
    #[serde(default)]
    pub selectors: Vec<Selector>,
}

/// One condition on one field, e.g. `{field: memory.bytes, op: Gt, values: [32GiB]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    pub field: String,
    pub op: Op,
    /// Written as strings or numbers (`[8]` and `["8"]` are the same); kept as text.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "scalar_strings"
    )]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    In,
    NotIn,
    Gt,
    Lt,
    Exists,
    DoesNotExist,
    Glob,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::In => "In",
            Op::NotIn => "NotIn",
            Op::Gt => "Gt",
            Op::Lt => "Lt",
            Op::Exists => "Exists",
            Op::DoesNotExist => "DoesNotExist",
            Op::Glob => "Glob",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ServerClass that cannot be read or breaks a rule; the message names the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerClassError {
    /// Not YAML/JSON, or not the shape of a ServerClass (unknown field, unknown op...).
    #[error("{0}")]
    Parse(String),
    #[error("apiVersion {0:?}: expected {API_VERSION:?}")]
    ApiVersion(String),
    #[error("kind {0:?}: expected {KIND:?}")]
    Kind(String),
    #[error("name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("selector {index} (field {field:?}): {why}")]
    Selector {
        index: usize,
        field: String,
        why: String,
    },
}

impl ServerClass {
    /// A fresh resource with `apiVersion` and `kind` set.
    pub fn new(name: impl Into<String>, spec: ServerClassSpec) -> Self {
        ServerClass {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec,
            status: ServerClassStatus::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Reads a ServerClass from YAML or JSON text and validates it.
    pub fn parse(text: &str) -> Result<ServerClass, ServerClassError> {
        let class: ServerClass = parse_resource(text).map_err(ServerClassError::Parse)?;
        class.validate()?;
        Ok(class)
    }

    /// Every rule a stored ServerClass keeps: shape, name, each selector.
    pub fn validate(&self) -> Result<(), ServerClassError> {
        if self.api_version != API_VERSION {
            return Err(ServerClassError::ApiVersion(self.api_version.clone()));
        }
        if self.kind != KIND {
            return Err(ServerClassError::Kind(self.kind.clone()));
        }
        if let Err(EnvironmentError::Name { name, why }) =
            environment::validate_name(&self.metadata.name)
        {
            return Err(ServerClassError::Name { name, why });
        }
        for (index, selector) in self.spec.selectors.iter().enumerate() {
            selector
                .compile()
                .map_err(|why| ServerClassError::Selector {
                    index,
                    field: selector.field.clone(),
                    why,
                })?;
        }
        Ok(())
    }

    /// True when every selector matches. A selector that does not validate matches
    /// nothing, so an invalid class selects no server.
    pub fn matches(&self, hw: &Hardware, labels: &BTreeMap<String, String>) -> bool {
        self.spec.selectors.iter().all(|s| s.matches(hw, labels))
    }

    /// One line per selector the server fails, saying what it has instead; empty when
    /// the server is in the class.
    pub fn explain(&self, hw: &Hardware, labels: &BTreeMap<String, String>) -> Vec<String> {
        self.spec
            .selectors
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                s.explain(hw, labels)
                    .map(|why| format!("selector {index} ({s}): {why}"))
            })
            .collect()
    }
}

/// YAML or JSON text into a resource type. JSON goes through serde_json for its error
/// positions; YAML 1.2 would read it too.
pub(crate) fn parse_resource<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))
    }
}

impl Selector {
    pub fn new(field: impl Into<String>, op: Op, values: &[&str]) -> Self {
        Selector {
            field: field.into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Whether the server satisfies this selector; false when the selector is invalid.
    pub fn matches(&self, hw: &Hardware, labels: &BTreeMap<String, String>) -> bool {
        match self.compile() {
            Ok(c) => c.holds(&c.field.observe(hw, labels)),
            Err(_) => false,
        }
    }

    /// Why the server fails this selector, or `None` when it matches.
    pub fn explain(&self, hw: &Hardware, labels: &BTreeMap<String, String>) -> Option<String> {
        let c = match self.compile() {
            Ok(c) => c,
            Err(why) => return Some(format!("invalid selector: {why}")),
        };
        let observed = c.field.observe(hw, labels);
        if c.holds(&observed) {
            return None;
        }
        Some(c.why_not(&observed, hw))
    }

    fn compile(&self) -> Result<Compiled, String> {
        let field = Field::parse(&self.field)?;
        let kind = field.kind();
        let values = &self.values;
        let want = match self.op {
            Op::Exists | Op::DoesNotExist => {
                if !values.is_empty() {
                    return Err(format!("{} takes no values", self.op));
                }
                Want::Nothing
            }
            Op::Gt | Op::Lt => {
                if kind == Kind::Text {
                    return Err(format!(
                        "{} compares numbers; {} is a text field (use In, NotIn or Glob)",
                        self.op, field
                    ));
                }
                let [value] = values.as_slice() else {
                    return Err(format!(
                        "{} takes exactly one value, got {}",
                        self.op,
                        values.len()
                    ));
                };
                Want::Number(kind.parse_number(value)?)
            }
            Op::In | Op::NotIn => {
                if values.is_empty() {
                    return Err(format!("{} needs at least one value", self.op));
                }
                if kind == Kind::Text {
                    let texts = values
                        .iter()
                        .map(|v| field.check_text_value(v))
                        .collect::<Result<_, _>>()?;
                    Want::Texts(texts)
                } else {
                    let numbers = values
                        .iter()
                        .map(|v| kind.parse_number(v))
                        .collect::<Result<_, _>>()?;
                    Want::Numbers(numbers)
                }
            }
            Op::Glob => {
                if kind != Kind::Text {
                    return Err(format!(
                        "Glob matches text; {field} is a number (use In, Gt or Lt)"
                    ));
                }
                if values.is_empty() {
                    return Err("Glob needs at least one pattern".into());
                }
                let globs = values
                    .iter()
                    .map(|v| Glob::new(v).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                Want::Globs(globs)
            }
        };
        Ok(Compiled {
            field,
            op: self.op,
            want,
        })
    }
}

/// `memory.bytes Gt 32GiB`, `disk.type In [nvme, ssd]`, `labels.rack Exists`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.op)?;
        match (self.op, self.values.as_slice()) {
            (_, []) => Ok(()),
            (Op::Gt | Op::Lt, [one]) => write!(f, " {one}"),
            (_, values) => write!(f, " [{}]", values.join(", ")),
        }
    }
}

/// Accepts a list of strings, numbers or booleans, as YAML authors write them.
fn scalar_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Scalars;
    impl<'de> Visitor<'de> for Scalars {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or numbers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(ScalarString(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Scalars)
}

struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---- fields ---------------------------------------------------------------------------

/// A field a selector can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Hardware(HwField),
    /// `labels.<key>`: the Server resource's label.
    Label(String),
}

/// The fields read from the `Hardware` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HwField {
    CpuThreads,
    CpuCores,
    CpuSockets,
    CpuModel,
    CpuVendor,
    CpuMaxSpeedMhz,
    CpuFlags,
    MemoryBytes,
    DisksCount,
    DisksTotalBytes,
    DiskSize,
    DiskType,
    DiskModel,
    DiskVendor,
    DiskBus,
    DiskSerial,
    DiskName,
    NicsCount,
    NicSpeedMbps,
    NicDriver,
    NicMac,
    SystemManufacturer,
    SystemProduct,
    SystemSerial,
    SystemFamily,
    SystemSku,
    SystemVersion,
    SystemUuid,
    BaseboardManufacturer,
    BaseboardProduct,
    FirmwareBootMode,
    Arch,
}

/// Every hardware field by its name in a selector.
pub const HW_FIELDS: &[(&str, HwField)] = &[
    ("cpu.threads", HwField::CpuThreads),
    ("cpu.cores", HwField::CpuCores),
    ("cpu.sockets", HwField::CpuSockets),
    ("cpu.model", HwField::CpuModel),
    ("cpu.vendor", HwField::CpuVendor),
    ("cpu.maxSpeedMhz", HwField::CpuMaxSpeedMhz),
    ("cpu.flags", HwField::CpuFlags),
    ("memory.bytes", HwField::MemoryBytes),
    ("disks.count", HwField::DisksCount),
    ("disks.totalBytes", HwField::DisksTotalBytes),
    ("disk.size", HwField::DiskSize),
    ("disk.type", HwField::DiskType),
    ("disk.model", HwField::DiskModel),
    ("disk.vendor", HwField::DiskVendor),
    ("disk.bus", HwField::DiskBus),
    ("disk.serial", HwField::DiskSerial),
    ("disk.name", HwField::DiskName),
    ("nics.count", HwField::NicsCount),
    ("nic.speedMbps", HwField::NicSpeedMbps),
    ("nic.driver", HwField::NicDriver),
    ("nic.mac", HwField::NicMac),
    ("system.manufacturer", HwField::SystemManufacturer),
    ("system.product", HwField::SystemProduct),
    ("system.serial", HwField::SystemSerial),
    ("system.family", HwField::SystemFamily),
    ("system.sku", HwField::SystemSku),
    ("system.version", HwField::SystemVersion),
    ("system.uuid", HwField::SystemUuid),
    ("baseboard.manufacturer", HwField::BaseboardManufacturer),
    ("baseboard.product", HwField::BaseboardProduct),
    ("firmware.bootMode", HwField::FirmwareBootMode),
    ("arch", HwField::Arch),
];

pub const LABEL_PREFIX: &str = "labels.";
/// Kubernetes' longest label key: a 253-character DNS prefix, `/`, a 63-character name.
const MAX_LABEL_KEY_LEN: usize = 253 + 1 + 63;

/// The values a text field can take, where the agent reports from a fixed set; `None`
/// for free text.
pub fn closed_set(field: HwField) -> Option<&'static [&'static str]> {
    match field {
        HwField::DiskType => Some(&["ssd", "hdd", "nvme", "sd"]),
        HwField::DiskBus => Some(&[
            "nvme", "sata", "scsi", "sas", "virtio", "usb", "mmc", "unknown",
        ]),
        HwField::FirmwareBootMode => Some(&["bios", "uefi"]),
        _ => None,
    }
}

/// How a field's values are read and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// A plain non-negative integer: counts, MHz, Mbps.
    Integer,
    /// Bytes; selector values may carry units (`16GiB`, `512MB`).
    Bytes,
}

/// Which values of the server a field reads; says how [`ServerClass::explain`] words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Server,
    AnyDisk,
    AnyNic,
    AnyFlag,
}

impl Field {
    pub fn parse(name: &str) -> Result<Field, String> {
        if let Some(key) = name.strip_prefix(LABEL_PREFIX) {
            check_label_key(key)?;
            return Ok(Field::Label(key.to_string()));
        }
        HW_FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| Field::Hardware(*f))
            .ok_or_else(|| {
                let known: Vec<&str> = HW_FIELDS.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown field; known fields are {} and labels.<key>",
                    known.join(", ")
                )
            })
    }

    pub fn kind(&self) -> Kind {
        let Field::Hardware(f) = self else {
            return Kind::Text;
        };
        match f {
            HwField::CpuThreads
            | HwField::CpuCores
            | HwField::CpuSockets
            | HwField::CpuMaxSpeedMhz
            | HwField::DisksCount
            | HwField::NicsCount
            | HwField::NicSpeedMbps => Kind::Integer,
            HwField::MemoryBytes | HwField::DisksTotalBytes | HwField::DiskSize => Kind::Bytes,
            _ => Kind::Text,
        }
    }

    fn scope(&self) -> Scope {
        match self {
            Field::Hardware(
                HwField::DiskSize
                | HwField::DiskType
                | HwField::DiskModel
                | HwField::DiskVendor
                | HwField::DiskBus
                | HwField::DiskSerial
                | HwField::DiskName,
            ) => Scope::AnyDisk,
            Field::Hardware(HwField::NicSpeedMbps | HwField::NicDriver | HwField::NicMac) => {
                Scope::AnyNic
            }
            Field::Hardware(HwField::CpuFlags) => Scope::AnyFlag,
            _ => Scope::Server,
        }
    }

    /// A value of `In`/`NotIn` on a text field, normalised the way the field is.
    fn check_text_value(&self, value: &str) -> Result<String, String> {
        let Field::Hardware(f) = self else {
            // Label values may be empty.
            return Ok(value.to_string());
        };
        if value.is_empty() {
            return Err(format!(
                "an empty value never matches {self} (an unreported field has no value); use DoesNotExist"
            ));
        }
        if let Some(set) = closed_set(*f) {
            if !set.contains(&value) {
                return Err(format!(
                    "{value:?} is not a value of {self}; expected one of {}",
                    set.join(", ")
                ));
            }
        }
        Ok(match f {
            HwField::Arch => normalize_arch(value).to_string(),
            HwField::NicMac => value.to_ascii_lowercase(),
            _ => value.to_string(),
        })
    }

    /// The values this field has on a server; empty when it does not report it.
    fn observe(&self, hw: &Hardware, labels: &BTreeMap<String, String>) -> Vec<Observed> {
        let f = match self {
            Field::Label(key) => {
                return labels
                    .get(key)
                    .map(|v| Observed::server(Val::Text(v.clone())))
                    .into_iter()
                    .collect()
            }
            Field::Hardware(f) => *f,
        };
        let text = |s: &str| -> Vec<Observed> {
            if s.is_empty() {
                Vec::new()
            } else {
                vec![Observed::server(Val::Text(s.to_string()))]
            }
        };
        let number = |n: u64| -> Vec<Observed> {
            if n == 0 {
                Vec::new()
            } else {
                vec![Observed::server(Val::Num(n))]
            }
        };
        let (no_cpu, no_system, no_baseboard) = Default::default();
        let cpu: &Cpu = hw.cpu.as_ref().unwrap_or(&no_cpu);
        let system: &System = hw.system.as_ref().unwrap_or(&no_system);
        let baseboard: &Baseboard = hw.baseboard.as_ref().unwrap_or(&no_baseboard);
        let disk_text = |get: fn(&BlockDevice) -> &str| -> Vec<Observed> {
            eligible_disks(hw)
                .filter(|d| !get(d).is_empty())
                .map(|d| Observed::of(&d.name, Val::Text(get(d).to_string())))
                .collect()
        };
        let nic_text = |get: fn(&Nic) -> String| -> Vec<Observed> {
            physical_nics(hw)
                .map(|n| (n, get(n)))
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| Observed::of(&n.name, Val::Text(v)))
                .collect()
        };
        match f {
            HwField::CpuThreads => number(cpu.threads.into()),
            HwField::CpuCores => number(cpu.cores.into()),
            HwField::CpuSockets => number(cpu.sockets.into()),
            HwField::CpuModel => text(&cpu.model),
            HwField::CpuVendor => text(&cpu.vendor),
            HwField::CpuMaxSpeedMhz => number(cpu.max_speed_mhz.into()),
            HwField::CpuFlags => cpu
                .flags
                .iter()
                .filter(|f| !f.is_empty())
                .map(|f| Observed::server(Val::Text(f.clone())))
                .collect(),
            HwField::MemoryBytes => number(hw.memory.as_ref().map_or(0, |m| m.total_bytes)),
            // A count is always known, zero included.
            HwField::DisksCount => {
                vec![Observed::server(
                    Val::Num(eligible_disks(hw).count() as u64),
                )]
            }
            HwField::DisksTotalBytes => vec![Observed::server(Val::Num(
                eligible_disks(hw)
                    .map(|d| d.size_bytes)
                    .fold(0u64, u64::saturating_add),
            ))],
            HwField::DiskSize => eligible_disks(hw)
                .filter(|d| d.size_bytes > 0)
                .map(|d| Observed::of(&d.name, Val::Num(d.size_bytes)))
                .collect(),
            HwField::DiskType => disk_text(|d| &d.disk_type),
            HwField::DiskModel => disk_text(|d| &d.model),
            HwField::DiskVendor => disk_text(|d| &d.vendor),
            HwField::DiskBus => disk_text(|d| &d.bus),
            HwField::DiskSerial => disk_text(|d| &d.serial),
            HwField::DiskName => disk_text(|d| &d.name),
            HwField::NicsCount => {
                vec![Observed::server(Val::Num(physical_nics(hw).count() as u64))]
            }
            HwField::NicSpeedMbps => physical_nics(hw)
                .filter(|n| n.speed_mbps > 0)
                .map(|n| Observed::of(&n.name, Val::Num(n.speed_mbps.into())))
                .collect(),
            HwField::NicDriver => nic_text(|n| n.driver.clone()),
            HwField::NicMac => nic_text(|n| n.mac.to_ascii_lowercase()),
            HwField::SystemManufacturer => text(&system.manufacturer),
            HwField::SystemProduct => text(&system.product),
            HwField::SystemSerial => text(&system.serial),
            HwField::SystemFamily => text(&system.family),
            HwField::SystemSku => text(&system.sku),
            HwField::SystemVersion => text(&system.version),
            HwField::SystemUuid => text(&system.uuid),
            HwField::BaseboardManufacturer => text(&baseboard.manufacturer),
            HwField::BaseboardProduct => text(&baseboard.product),
            HwField::FirmwareBootMode => text(hw.firmware.as_ref().map_or("", |f| &f.boot_mode)),
            HwField::Arch => text(normalize_arch(&hw.arch)),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Label(key) => write!(f, "{LABEL_PREFIX}{key}"),
            Field::Hardware(hw) => {
                let name = HW_FIELDS
                    .iter()
                    .find(|(_, x)| x == hw)
                    .map_or("?", |(n, _)| n);
                f.write_str(name)
            }
        }
    }
}

/// The disks `disk.*` and `disks.*` look at: the machine's own, not USB sticks or cards
/// in a reader.
fn eligible_disks(hw: &Hardware) -> impl Iterator<Item = &BlockDevice> {
    hw.disks.iter().filter(|d| !d.removable)
}

/// The NICs `nic.*` and `nics.count` look at: not bridges, veth or tun.
fn physical_nics(hw: &Hardware) -> impl Iterator<Item = &Nic> {
    hw.nics.iter().filter(|n| !n.r#virtual)
}

/// The agent reports the kernel's name (`x86_64`); Environments and operators say `amd64`.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "label key {key:?} must be 1 to {MAX_LABEL_KEY_LEN} characters"
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(format!(
            "label key {key:?}: only letters, digits, '-', '_', '.' and '/' are allowed"
        ));
    }
    Ok(())
}

impl Kind {
    fn parse_number(self, value: &str) -> Result<u64, String> {
        match self {
            Kind::Bytes => parse_bytes(value),
            Kind::Integer => value.trim().parse::<u64>().map_err(|_| {
                format!("{value:?} is not a whole number (this field takes no units)")
            }),
            Kind::Text => Err(format!("{value:?}: a text field has no numbers")),
        }
    }
}

/// One value of a field on a server, and the disk or NIC it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    subject: Option<String>,
    value: Val,
}

impl Observed {
    fn server(value: Val) -> Self {
        Observed {
            subject: None,
            value,
        }
    }
    fn of(subject: &str, value: Val) -> Self {
        Observed {
            subject: Some(subject.to_string()),
            value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Text(String),
    Num(u64),
}

/// A selector whose values were checked and parsed.
#[derive(Debug)]
struct Compiled {
    field: Field,
    op: Op,
    want: Want,
}

#[derive(Debug)]
enum Want {
    Nothing,
    Texts(Vec<String>),
    Numbers(Vec<u64>),
    Number(u64),
    Globs(Vec<Glob>),
}

impl Compiled {
    fn holds(&self, observed: &[Observed]) -> bool {
        match self.op {
            Op::Exists => !observed.is_empty(),
            Op::DoesNotExist => observed.is_empty(),
            Op::NotIn => !observed.iter().any(|o| self.is_in(&o.value)),
            Op::In | Op::Gt | Op::Lt | Op::Glob => {
                observed.iter().any(|o| self.satisfies(&o.value))
            }
        }
    }

    fn is_in(&self, value: &Val) -> bool {
        match (&self.want, value) {
            (Want::Texts(set), Val::Text(v)) => set.iter().any(|s| s == v),
            (Want::Numbers(set), Val::Num(v)) => set.contains(v),
            _ => false,
        }
    }

    /// For the ops that hold when any one value satisfies them.
    fn satisfies(&self, value: &Val) -> bool {
        match (self.op, &self.want, value) {
            (Op::In, _, _) => self.is_in(value),
            (Op::Gt, Want::Number(n), Val::Num(v)) => v > n,
            (Op::Lt, Want::Number(n), Val::Num(v)) => v < n,
            (Op::Glob, Want::Globs(globs), Val::Text(v)) => globs.iter().any(|g| g.matches(v)),
            _ => false,
        }
    }

    /// What the server has, for a selector it fails.
    fn why_not(&self, observed: &[Observed], hw: &Hardware) -> String {
        if observed.is_empty() {
            return self.not_reported(hw);
        }
        match self.op {
            // Only the values that are in the list are the reason.
            Op::NotIn => {
                let hits: Vec<&Observed> =
                    observed.iter().filter(|o| self.is_in(&o.value)).collect();
                self.describe(&hits, "has")
            }
            _ if self.field.scope() == Scope::AnyFlag => {
                format!(
                    "none of the {} CPU flags the server reports matches",
                    observed.len()
                )
            }
            _ => {
                let all: Vec<&Observed> = observed.iter().collect();
                self.describe(&all, "is")
            }
        }
    }

    fn not_reported(&self, hw: &Hardware) -> String {
        match (&self.field, self.field.scope()) {
            (Field::Label(key), _) => format!("the server has no label {key:?}"),
            (_, Scope::AnyDisk) if eligible_disks(hw).next().is_none() => {
                "the server reports no non-removable disk".into()
            }
            (_, Scope::AnyDisk) => {
                format!("no non-removable disk reports {}", self.field)
            }
            (_, Scope::AnyNic) if physical_nics(hw).next().is_none() => {
                "the server reports no physical NIC".into()
            }
            (_, Scope::AnyNic) => format!("no physical NIC reports {}", self.field),
            (_, Scope::AnyFlag) => "the server reports no CPU flags".into(),
            (_, Scope::Server) => format!("the server does not report {}", self.field),
        }
    }

    /// `memory.bytes is 17179869184 (16 GiB)`, or `sda has "ssd", sdb has "hdd"`.
    fn describe(&self, items: &[&Observed], verb: &str) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|o| {
                let value = self.show(&o.value);
                match &o.subject {
                    Some(subject) => format!("{subject} has {value}"),
                    None => format!("{} {verb} {value}", self.field),
                }
            })
            .collect();
        parts.join(", ")
    }

    fn show(&self, value: &Val) -> String {
        match value {
            Val::Text(s) => format!("{s:?}"),
            Val::Num(n) if self.field.kind() == Kind::Bytes => {
                format!("{n} ({})", format_bytes(*n))
            }
            Val::Num(n) => n.to_string(),
        }
    }
}

// ---- sizes ----------------------------------------------------------------------------

/// Bytes from `17179869184`, `16GiB`, `16 GiB`, `512MB`, `1.5TB`, `1T`. Units are not
/// case-sensitive; `k`/`KB`, `M`/`MB`... are powers of 1000, `Ki`/`KiB`, `Mi`/`MiB`...
/// powers of 1024 (as Talos and Kubernetes read them). A fraction of a byte is dropped.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let bad = || format!("{text:?} is not a size (a number with an optional unit, like 16GiB)");
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u128.pow(2),
        "g" | "gb" => 1000u128.pow(3),
        "t" | "tb" => 1000u128.pow(4),
        "p" | "pb" => 1000u128.pow(5),
        "e" | "eb" => 1000u128.pow(6),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "pi" | "pib" => 1 << 50,
        "ei" | "eib" => 1 << 60,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, PB or KiB, MiB, GiB, TiB, PiB)"
            ))
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) {
        return Err(bad());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // 20 digits exceed u64, a fraction past 18 digits says nothing about bytes.
    if whole.len() > 20 || fraction.len() > 18 {
        return Err(format!("{text:?} is too large"));
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let mut bytes = whole * multiplier;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| bad())?;
        bytes += digits * multiplier / 10u128.pow(fraction.len() as u32);
    }
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// `16 GiB`, `1.5 TiB`, `512 B`: binary units, at most one decimal, for people.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

// ---- glob -----------------------------------------------------------------------------

/// A shell-style pattern: `*` any run of characters, `?` one character, `[abc]`,
/// `[a-z]`, `[!a-z]` (or `[^a-z]`) one character of (or not of) a set, `\x` the
/// character `x`. The whole text must match; case matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("glob pattern {pattern:?}: {why}")]
pub struct GlobError {
    pub pattern: String,
    pub why: &'static str,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let bad = |why| GlobError {
            pattern: pattern.to_string(),
            why,
        };
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' => {
                    // Runs of stars are one star.
                    if tokens.last() == Some(&Token::AnyRun) {
                        continue;
                    }
                    Token::AnyRun
                }
                '?' => Token::AnyChar,
                '\\' => Token::Char(chars.next().ok_or_else(|| bad("ends with a lone '\\'"))?),
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = chars.next().ok_or_else(|| bad("'[' without its ']'"))?;
                        let lo = match c {
                            // A ']' first in the set is a member, not the end.
                            ']' if !first => break,
                            '\\' => chars.next().ok_or_else(|| bad("'[' without its ']'"))?,
                            c => c,
                        };
                        first = false;
                        let hi = if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.next() {
                                // `a-]`: the '-' is a member.
                                Some(']') | None => lo,
                                Some(h) => {
                                    chars.next();
                                    chars.next();
                                    let h = if h == '\\' {
                                        chars.next().ok_or_else(|| bad("'[' without its ']'"))?
                                    } else {
                                        h
                                    };
                                    if h < lo {
                                        return Err(bad("a range in [...] runs backwards"));
                                    }
                                    h
                                }
                            }
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Char(c),
            };
            tokens.push(token);
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0, 0);
        // Where the last `*` was and where in the text it started: on a mismatch, let it
        // take one more character and retry. Linear in practice, never exponential.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(token) if token.matches_char(text[t]) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }
}

impl Token {
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::AnyChar => true,
            Token::AnyRun => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

// ---- disk names -----------------------------------------------------------------------

/// Kernel names in the order the kernel hands them out: `vda < vdb < vdz < vdaa`,
/// `nvme0n1 < nvme0n2 < nvme0n10`, `sda < sdb`; different families by name (`nvme…` before
/// `sd…` before `vd…`).
pub fn natural_disk_order(a: &str, b: &str) -> Ordering {
    disk_sort_key(a).cmp(&disk_sort_key(b))
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    // Numbers sort before text, so `sd` + number (a letter suffix) before `sdfoo`.
    Num(u128),
    Text(String),
}

fn disk_sort_key(name: &str) -> Vec<Part> {
    // sd, vd, hd and xvd disks count with letters: a..z, then aa.. (bijective base 26).
    for prefix in ["xvd", "sd", "vd", "hd"] {
        if let Some(letters) = name.strip_prefix(prefix) {
            if !letters.is_empty()
                && letters.len() <= 8
                && letters.bytes().all(|b| b.is_ascii_lowercase())
            {
                let n = letters
                    .bytes()
                    .fold(0u128, |n, b| n * 26 + u128::from(b - b'a' + 1));
                return vec![Part::Text(prefix.to_string()), Part::Num(n)];
            }
        }
    }
    let mut parts = Vec::new();
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let digit = c.is_ascii_digit();
        let end = rest
            .find(|x: char| x.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        parts.push(match run.parse::<u128>() {
            Ok(n) if digit => Part::Num(n),
            _ => Part::Text(run.to_string()),
        });
        rest = tail;
    }
    parts
}

#[cfg(test)]
mod tests {
    use siderite::proto::agent::v1::{Firmware, Memory};

    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, size: u64, disk_type: &str, bus: &str) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            dev_path: format!("/dev/{name}"),
            size_bytes: size,
            model: format!("{name}-model"),
            serial: format!("SN-{name}"),
            bus: bus.into(),
            disk_type: disk_type.into(),
            rotational: disk_type == "hdd",
            ..Default::default()
        }
    }

    fn nic(name: &str, driver: &str, speed: u32, virt: bool) -> Nic {
        Nic {
            name: name.into(),
            mac: format!("52:54:00:00:00:{:02X}", name.len()),
            driver: driver.into(),
            driver_bound: !driver.is_empty(),
            speed_mbps: speed,
            r#virtual: virt,
            ..Default::default()
        }
    }

    /// A two-socket server: 64 GiB, an NVMe disk, a SATA HDD and a USB stick; two 25G
    /// NICs and a bridge.
    fn server() -> Hardware {
        let mut usb = disk("sdc", 32 * GIB, "ssd", "usb");
        usb.removable = true;
        usb.model = "Cruzer Blade".into();
        Hardware {
            system: Some(System {
                uuid: "4c4c4544-0042-3510-8051-b7c04f4b5a31".into(),
                manufacturer: "Dell Inc.".into(),
                product: "PowerEdge R650".into(),
                serial: "7B5QZ31".into(),
                family: "PowerEdge".into(),
                sku: "SKU=0A6E".into(),
                version: String::new(),
            }),
            baseboard: Some(Baseboard {
                manufacturer: "Dell Inc.".into(),
                product: "0Y2K8N".into(),
                ..Default::default()
            }),
            cpu: Some(Cpu {
                sockets: 2,
                cores: 32,
                threads: 64,
                model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into(),
                vendor: "GenuineIntel".into(),
                virtualization: true,
                flags: vec!["sse4_2".into(), "avx2".into(), "avx512f".into()],
                max_speed_mhz: 3200,
                processors: Vec::new(),
            }),
            memory: Some(Memory {
                total_bytes: 64 * GIB,
                modules: Vec::new(),
            }),
            disks: vec![
                disk("nvme0n1", 960_197_124_096, "nvme", "nvme"),
                disk("sda", 4_000_787_030_016, "hdd", "sata"),
                usb,
            ],
            nics: vec![
                nic("eno1", "ice", 25_000, false),
                nic("eno2", "ice", 25_000, false),
                nic("br0", "bridge", 0, true),
            ],
            firmware: Some(Firmware {
                boot_mode: "uefi".into(),
                secure_boot: false,
            }),
            arch: "x86_64".into(),
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(field: &str, op: Op, values: &[&str]) -> Selector {
        Selector::new(field, op, values)
    }

    fn class(selectors: Vec<Selector>) -> ServerClass {
        ServerClass::new("test", ServerClassSpec { selectors })
    }

    /// Validates the selector, then matches it against `hw` with `labels`.
    fn check(hw: &Hardware, labels: &BTreeMap<String, String>, s: Selector) -> bool {
        let c = class(vec![s.clone()]);
        c.validate()
            .unwrap_or_else(|e| panic!("{s} does not validate: {e}"));
        let matched = c.matches(hw, labels);
        let why = c.explain(hw, labels);
        assert_eq!(matched, why.is_empty(), "{s}: explain says {why:?}");
        matched
    }

    fn m(s: Selector) -> bool {
        check(&server(), &BTreeMap::new(), s)
    }

    fn invalid(s: Selector) -> String {
        match class(vec![s.clone()]).validate() {
            Err(e @ ServerClassError::Selector { .. }) => e.to_string(),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn empty_selector_list_matches_every_server() {
        let c = class(Vec::new());
        c.validate().unwrap();
        assert!(c.matches(&server(), &BTreeMap::new()));
        assert!(c.matches(&Hardware::default(), &BTreeMap::new()));
        assert!(c.explain(&Hardware::default(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn selectors_are_anded() {
        let both = class(vec![
            sel("cpu.sockets", Op::In, &["2"]),
            sel("memory.bytes", Op::Gt, &["32GiB"]),
        ]);
        assert!(both.matches(&server(), &BTreeMap::new()));
        let one_fails = class(vec![
            sel("cpu.sockets", Op::In, &["2"]),
            sel("memory.bytes", Op::Gt, &["128GiB"]),
        ]);
        assert!(!one_fails.matches(&server(), &BTreeMap::new()));
        assert_eq!(one_fails.explain(&server(), &BTreeMap::new()).len(), 1);
    }

    #[test]
    fn in_and_not_in_on_text_fields() {
        assert!(m(sel(
            "cpu.vendor",
            Op::In,
            &["AuthenticAMD", "GenuineIntel"]
        )));
        assert!(!m(sel("cpu.vendor", Op::In, &["AuthenticAMD"])));
        assert!(m(sel("cpu.vendor", Op::NotIn, &["AuthenticAMD"])));
        assert!(!m(sel("cpu.vendor", Op::NotIn, &["GenuineIntel"])));
        // Exact and case-sensitive.
        assert!(!m(sel("cpu.vendor", Op::In, &["genuineintel"])));
        assert!(!m(sel("system.product", Op::In, &["PowerEdge"])));
        for (field, value) in [
            ("cpu.model", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"),
            ("system.manufacturer", "Dell Inc."),
            ("system.product", "PowerEdge R650"),
            ("system.serial", "7B5QZ31"),
            ("system.family", "PowerEdge"),
            ("system.sku", "SKU=0A6E"),
            ("system.uuid", "4c4c4544-0042-3510-8051-b7c04f4b5a31"),
            ("baseboard.manufacturer", "Dell Inc."),
            ("baseboard.product", "0Y2K8N"),
            ("firmware.bootMode", "uefi"),
        ] {
            assert!(m(sel(field, Op::In, &[value])), "{field}");
            assert!(!m(sel(field, Op::NotIn, &[value])), "{field}");
        }
        assert!(!m(sel("firmware.bootMode", Op::In, &["bios"])));
    }

    #[test]
    fn in_and_not_in_on_numeric_fields() {
        assert!(m(sel("cpu.sockets", Op::In, &["1", "2"])));
        assert!(!m(sel("cpu.sockets", Op::In, &["1"])));
        assert!(m(sel("cpu.sockets", Op::NotIn, &["1"])));
        assert!(m(sel("cpu.cores", Op::In, &["32"])));
        assert!(m(sel("cpu.threads", Op::In, &["64"])));
        assert!(m(sel("cpu.maxSpeedMhz", Op::In, &["3200"])));
        assert!(m(sel("nics.count", Op::In, &["2"])));
        assert!(m(sel("disks.count", Op::In, &["2"])));
        // Numeric comparison, not text: "064" is 64.
        assert!(m(sel("cpu.threads", Op::In, &["064"])));
        // Bytes compare after units.
        assert!(m(sel("memory.bytes", Op::In, &["64GiB"])));
        assert!(m(sel("memory.bytes", Op::In, &["68719476736"])));
        assert!(!m(sel("memory.bytes", Op::In, &["64GB"])));
        assert!(m(sel("memory.bytes", Op::NotIn, &["64GB", "32GiB"])));
    }

    #[test]
    fn gt_and_lt_are_strict() {
        assert!(m(sel("cpu.threads", Op::Gt, &["63"])));
        assert!(!m(sel("cpu.threads", Op::Gt, &["64"])));
        assert!(m(sel("cpu.threads", Op::Lt, &["65"])));
        assert!(!m(sel("cpu.threads", Op::Lt, &["64"])));
        assert!(m(sel("memory.bytes", Op::Gt, &["63GiB"])));
        assert!(!m(sel("memory.bytes", Op::Gt, &["64GiB"])));
        assert!(m(sel("memory.bytes", Op::Gt, &["64GB"])));
        assert!(m(sel("memory.bytes", Op::Lt, &["0.1TB"])));
        assert!(m(sel("nic.speedMbps", Op::Gt, &["10000"])));
        assert!(!m(sel("nic.speedMbps", Op::Gt, &["25000"])));
        assert!(m(sel("cpu.maxSpeedMhz", Op::Lt, &["4000"])));
        // Counts, zero included.
        assert!(m(sel("disks.count", Op::Gt, &["1"])));
        assert!(!m(sel("disks.count", Op::Gt, &["2"])));
        assert!(check(
            &Hardware::default(),
            &BTreeMap::new(),
            sel("disks.count", Op::Lt, &["1"])
        ));
        assert!(m(sel("disks.totalBytes", Op::Gt, &["4.9TB"])));
        assert!(!m(sel("disks.totalBytes", Op::Gt, &["5TB"])));
    }

    #[test]
    fn unreported_numbers_are_absent_not_zero() {
        let hw = Hardware::default();
        let none = BTreeMap::new();
        assert!(!check(&hw, &none, sel("memory.bytes", Op::Lt, &["1GiB"])));
        assert!(!check(&hw, &none, sel("cpu.threads", Op::Lt, &["4"])));
        assert!(!check(&hw, &none, sel("cpu.threads", Op::Exists, &[])));
        assert!(check(&hw, &none, sel("cpu.threads", Op::DoesNotExist, &[])));
        assert!(check(&hw, &none, sel("cpu.threads", Op::NotIn, &["4"])));
        // Counts always exist.
        assert!(check(&hw, &none, sel("disks.count", Op::Exists, &[])));
        assert!(check(&hw, &none, sel("nics.count", Op::In, &["0"])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        assert!(m(sel("system.serial", Op::Exists, &[])));
        assert!(!m(sel("system.serial", Op::DoesNotExist, &[])));
        // Empty strings are unreported.
        assert!(!m(sel("system.version", Op::Exists, &[])));
        assert!(m(sel("system.version", Op::DoesNotExist, &[])));
        assert!(m(sel("memory.bytes", Op::Exists, &[])));
        let mut hw = server();
        hw.system = None;
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("system.serial", Op::DoesNotExist, &[])
        ));
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("system.manufacturer", Op::NotIn, &["Dell Inc."])
        ));
        assert!(!check(
            &hw,
            &BTreeMap::new(),
            sel("system.manufacturer", Op::Glob, &["*"])
        ));
    }

    #[test]
    fn glob_on_text_fields() {
        assert!(m(sel("cpu.model", Op::Glob, &["*Xeon*"])));
        assert!(m(sel("cpu.model", Op::Glob, &["*EPYC*", "*Gold 63??*"])));
        assert!(!m(sel("cpu.model", Op::Glob, &["*EPYC*"])));
        assert!(!m(sel("cpu.model", Op::Glob, &["Xeon"])), "whole text");
        assert!(m(sel("system.product", Op::Glob, &["PowerEdge R[67]*"])));
        assert!(!m(sel("system.product", Op::Glob, &["PowerEdge R[!6]*"])));
        assert!(m(sel("system.serial", Op::Glob, &["7B?QZ[0-9][0-9]"])));
    }

    #[test]
    fn disk_fields_match_any_non_removable_disk() {
        assert!(m(sel("disk.type", Op::In, &["nvme"])));
        assert!(m(sel("disk.type", Op::In, &["hdd"])));
        // The USB stick is an ssd, but removable: it does not count.
        assert!(!m(sel("disk.type", Op::In, &["ssd"])));
        assert!(!m(sel("disk.bus", Op::In, &["usb"])));
        assert!(!m(sel("disk.model", Op::Glob, &["Cruzer*"])));
        assert!(m(sel("disk.bus", Op::In, &["sata"])));
        assert!(m(sel("disk.model", Op::Glob, &["nvme*"])));
        assert!(m(sel("disk.serial", Op::In, &["SN-sda"])));
        assert!(m(sel("disk.name", Op::In, &["nvme0n1"])));
        assert!(m(sel("disk.size", Op::Gt, &["3TB"])), "the HDD");
        assert!(m(sel("disk.size", Op::Lt, &["1TB"])), "the NVMe");
        assert!(m(sel("disk.size", Op::Gt, &["4TB"])), "4.0008 TB");
        assert!(!m(sel("disk.size", Op::Gt, &["4.1TB"])));
        assert!(!m(sel("disk.size", Op::Lt, &["900GB"])));
        assert!(m(sel("disk.size", Op::In, &["960197124096"])));
        assert!(m(sel("disk.type", Op::Exists, &[])));
        assert!(!m(sel("disk.vendor", Op::Exists, &[])));
        assert!(m(sel("disk.vendor", Op::DoesNotExist, &[])));
    }

    #[test]
    fn negated_disk_selectors_mean_no_disk_has() {
        // One disk is an HDD, so "NotIn [hdd]" fails even though the NVMe is not one.
        assert!(!m(sel("disk.type", Op::NotIn, &["hdd"])));
        assert!(m(sel("disk.type", Op::NotIn, &["ssd", "sd"])));
        // The removable USB disk's bus does not count against NotIn either.
        assert!(m(sel("disk.bus", Op::NotIn, &["usb"])));
        assert!(!m(sel("disk.serial", Op::DoesNotExist, &[])));
        let mut hw = server();
        hw.disks.retain(|d| d.removable);
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("disk.serial", Op::DoesNotExist, &[])
        ));
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("disk.type", Op::NotIn, &["ssd"])
        ));
        assert!(!check(
            &hw,
            &BTreeMap::new(),
            sel("disk.type", Op::In, &["ssd"])
        ));
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("disks.count", Op::In, &["0"])
        ));
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("disks.totalBytes", Op::In, &["0"])
        ));
    }

    #[test]
    fn nic_fields_look_at_physical_nics() {
        assert!(m(sel("nic.driver", Op::In, &["ice"])));
        assert!(!m(sel("nic.driver", Op::In, &["bridge"])), "br0 is virtual");
        assert!(m(sel("nic.driver", Op::NotIn, &["bridge", "e1000e"])));
        assert!(m(sel("nic.driver", Op::Glob, &["i*"])));
        assert!(m(sel("nic.speedMbps", Op::In, &["25000"])));
        assert!(m(sel("nics.count", Op::Lt, &["3"])));
        // MACs compare lowercase on both sides.
        assert!(m(sel("nic.mac", Op::In, &["52:54:00:00:00:04"])));
        assert!(m(sel("nic.mac", Op::Glob, &["52:54:00:*"])));
        let mut hw = server();
        hw.nics[0].driver.clear();
        hw.nics[1].driver.clear();
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("nic.driver", Op::DoesNotExist, &[])
        ));
    }

    #[test]
    fn cpu_flags_are_a_list() {
        assert!(m(sel("cpu.flags", Op::In, &["avx512f"])));
        assert!(m(sel("cpu.flags", Op::In, &["sve", "avx2"])));
        assert!(!m(sel("cpu.flags", Op::In, &["sve"])));
        assert!(m(sel("cpu.flags", Op::NotIn, &["sve"])));
        assert!(!m(sel("cpu.flags", Op::NotIn, &["avx2"])));
        assert!(m(sel("cpu.flags", Op::Glob, &["avx512*"])));
        let why =
            class(vec![sel("cpu.flags", Op::In, &["sve"])]).explain(&server(), &BTreeMap::new());
        assert_eq!(
            why,
            ["selector 0 (cpu.flags In [sve]): none of the 3 CPU flags the server reports matches"]
        );
    }

    #[test]
    fn arch_reads_like_environments() {
        assert!(m(sel("arch", Op::In, &["amd64"])));
        assert!(m(sel("arch", Op::In, &["x86_64"])));
        assert!(m(sel("arch", Op::NotIn, &["arm64"])));
        assert!(!m(sel("arch", Op::NotIn, &["x86_64"])));
        assert!(m(sel("arch", Op::NotIn, &["aarch64"])));
        let mut hw = server();
        hw.arch = "aarch64".into();
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("arch", Op::In, &["arm64"])
        ));
        assert!(check(
            &hw,
            &BTreeMap::new(),
            sel("arch", Op::Glob, &["arm*"])
        ));
    }

    #[test]
    fn labels_of_the_server() {
        let l = labels(&[
            ("rack", "r12"),
            ("siderite.dev/pool", "edge"),
            ("empty", ""),
        ]);
        let hw = server();
        assert!(check(&hw, &l, sel("labels.rack", Op::In, &["r11", "r12"])));
        assert!(!check(&hw, &l, sel("labels.rack", Op::In, &["r11"])));
        assert!(check(&hw, &l, sel("labels.rack", Op::NotIn, &["r11"])));
        assert!(check(&hw, &l, sel("labels.rack", Op::Glob, &["r1?"])));
        assert!(check(
            &hw,
            &l,
            sel("labels.siderite.dev/pool", Op::In, &["edge"])
        ));
        assert!(check(&hw, &l, sel("labels.rack", Op::Exists, &[])));
        assert!(check(&hw, &l, sel("labels.zone", Op::DoesNotExist, &[])));
        assert!(check(&hw, &l, sel("labels.zone", Op::NotIn, &["a"])));
        // A label with an empty value exists and can be matched.
        assert!(check(&hw, &l, sel("labels.empty", Op::Exists, &[])));
        assert!(check(&hw, &l, sel("labels.empty", Op::In, &[""])));
        assert!(!check(
            &hw,
            &BTreeMap::new(),
            sel("labels.rack", Op::Exists, &[])
        ));
    }

    #[test]
    fn explain_says_what_the_server_has() {
        let c = class(vec![
            sel("cpu.sockets", Op::In, &["2"]),
            sel("memory.bytes", Op::Gt, &["128GiB"]),
            sel("disk.type", Op::In, &["ssd"]),
            sel("disk.type", Op::NotIn, &["hdd"]),
            sel("labels.rack", Op::Exists, &[]),
            sel("cpu.model", Op::Glob, &["*EPYC*"]),
            sel("system.version", Op::In, &["A01"]),
            sel("system.serial", Op::DoesNotExist, &[]),
            sel("nic.speedMbps", Op::Gt, &["100000"]),
        ]);
        c.validate().unwrap();
        let why = c.explain(&server(), &BTreeMap::new());
        assert_eq!(
            why,
            [
                "selector 1 (memory.bytes Gt 128GiB): memory.bytes is 68719476736 (64 GiB)",
                "selector 2 (disk.type In [ssd]): nvme0n1 has \"nvme\", sda has \"hdd\"",
                "selector 3 (disk.type NotIn [hdd]): sda has \"hdd\"",
                "selector 4 (labels.rack Exists): the server has no label \"rack\"",
                "selector 5 (cpu.model Glob [*EPYC*]): cpu.model is \"Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\"",
                "selector 6 (system.version In [A01]): the server does not report system.version",
                "selector 7 (system.serial DoesNotExist): system.serial is \"7B5QZ31\"",
                "selector 8 (nic.speedMbps Gt 100000): eno1 has 25000, eno2 has 25000",
            ]
        );
        let bare = Hardware::default();
        let c = class(vec![
            sel("disk.size", Op::Gt, &["1TB"]),
            sel("nic.driver", Op::In, &["ice"]),
        ]);
        assert_eq!(
            c.explain(&bare, &BTreeMap::new()),
            [
                "selector 0 (disk.size Gt 1TB): the server reports no non-removable disk",
                "selector 1 (nic.driver In [ice]): the server reports no physical NIC",
            ]
        );
        let c = class(vec![sel("disk.vendor", Op::In, &["ATA"])]);
        assert_eq!(
            c.explain(&server(), &BTreeMap::new()),
            ["selector 0 (disk.vendor In [ATA]): no non-removable disk reports disk.vendor"]
        );
        // An invalid selector matches nothing and says why.
        let c = class(vec![sel("cpu.cores", Op::Gt, &["many"])]);
        assert!(!c.matches(&server(), &BTreeMap::new()));
        assert_eq!(
            c.explain(&server(), &BTreeMap::new()),
            ["selector 0 (cpu.cores Gt many): invalid selector: \"many\" is not a whole number (this field takes no units)"]
        );
    }

    #[test]
    fn validation_errors_name_the_selector() {
        assert_eq!(
            invalid(sel("cpu.speed", Op::Exists, &[])),
            "selector 0 (field \"cpu.speed\"): unknown field; known fields are cpu.threads, cpu.cores, cpu.sockets, cpu.model, cpu.vendor, cpu.maxSpeedMhz, cpu.flags, memory.bytes, disks.count, disks.totalBytes, disk.size, disk.type, disk.model, disk.vendor, disk.bus, disk.serial, disk.name, nics.count, nic.speedMbps, nic.driver, nic.mac, system.manufacturer, system.product, system.serial, system.family, system.sku, system.version, system.uuid, baseboard.manufacturer, baseboard.product, firmware.bootMode, arch and labels.<key>"
        );
        for (s, want) in [
            (sel("Memory.bytes", Op::Exists, &[]), "unknown field"),
            (
                sel("labels.", Op::Exists, &[]),
                "must be 1 to 317 characters",
            ),
            (sel("labels.a b", Op::Exists, &[]), "only letters, digits"),
            (
                sel("cpu.threads", Op::Gt, &[]),
                "Gt takes exactly one value, got 0",
            ),
            (
                sel("cpu.threads", Op::Lt, &["1", "2"]),
                "Lt takes exactly one value, got 2",
            ),
            (sel("cpu.threads", Op::Gt, &["8GiB"]), "not a whole number"),
            (sel("cpu.threads", Op::Gt, &["-1"]), "not a whole number"),
            (sel("memory.bytes", Op::Gt, &["lots"]), "is not a size"),
            (
                sel("memory.bytes", Op::Gt, &["16 GiBs"]),
                "unknown unit \"GiBs\"",
            ),
            (
                sel("cpu.model", Op::Gt, &["1"]),
                "Gt compares numbers; cpu.model is a text field",
            ),
            (sel("labels.rack", Op::Lt, &["1"]), "Lt compares numbers"),
            (
                sel("system.serial", Op::Exists, &["x"]),
                "Exists takes no values",
            ),
            (
                sel("system.serial", Op::DoesNotExist, &["x"]),
                "DoesNotExist takes no values",
            ),
            (
                sel("system.serial", Op::In, &[]),
                "In needs at least one value",
            ),
            (
                sel("system.serial", Op::NotIn, &[]),
                "NotIn needs at least one value",
            ),
            (
                sel("system.serial", Op::Glob, &[]),
                "Glob needs at least one pattern",
            ),
            (
                sel("system.serial", Op::Glob, &["[abc"]),
                "'[' without its ']'",
            ),
            (sel("system.serial", Op::Glob, &["abc\\"]), "lone '\\'"),
            (sel("system.serial", Op::Glob, &["[z-a]"]), "runs backwards"),
            (
                sel("memory.bytes", Op::Glob, &["16*"]),
                "Glob matches text; memory.bytes is a number",
            ),
            (sel("memory.bytes", Op::In, &["16 pounds"]), "unknown unit"),
            (
                sel("disk.type", Op::In, &["SSD"]),
                "\"SSD\" is not a value of disk.type; expected one of ssd, hdd, nvme, sd",
            ),
            (
                sel("disk.bus", Op::NotIn, &["firewire"]),
                "not a value of disk.bus",
            ),
            (
                sel("firmware.bootMode", Op::In, &["UEFI"]),
                "expected one of bios, uefi",
            ),
            (
                sel("system.serial", Op::In, &[""]),
                "an empty value never matches",
            ),
        ] {
            let got = invalid(s.clone());
            assert!(got.contains(want), "{s}: {got}");
        }
        // The index is the selector's place in the list.
        let c = class(vec![
            sel("cpu.threads", Op::Exists, &[]),
            sel("cpu.threads", Op::Exists, &["1"]),
        ]);
        assert!(matches!(
            c.validate(),
            Err(ServerClassError::Selector { index: 1, .. })
        ));
    }

    #[test]
    fn validation_checks_shape_and_name() {
        let mut c = class(Vec::new());
        c.api_version = "v1".into();
        assert_eq!(c.validate(), Err(ServerClassError::ApiVersion("v1".into())));
        let mut c = class(Vec::new());
        c.kind = "Environment".into();
        assert_eq!(
            c.validate(),
            Err(ServerClassError::Kind("Environment".into()))
        );
        for name in ["", "Big", "under_score", "-lead", "trail-", &"a".repeat(64)] {
            let mut c = class(Vec::new());
            c.metadata.name = name.into();
            assert!(
                matches!(c.validate(), Err(ServerClassError::Name { .. })),
                "{name:?}"
            );
        }
        let mut c = class(Vec::new());
        c.metadata.name = "a".repeat(63);
        assert_eq!(c.validate(), Ok(()));
    }

    const YAML: &str = r#"
apiVersion: metal.siderite.dev/v1alpha1
kind: ServerClass
metadata:
  name: big-nvme
  labels:
    team: storage
spec:
  selectors:
    - field: memory.bytes
      op: Gt
      values: [32GiB]
    - field: cpu.threads
      op: In
      values: [32, 64]
    - field: disk.type
      op: In
      values: [nvme]
    - field: labels.rack
      op: Exists
"#;

    #[test]
    fn parses_yaml() {
        let c = ServerClass::parse(YAML).unwrap();
        assert_eq!(c.name(), "big-nvme");
        assert_eq!(c.metadata.labels["team"], "storage");
        assert_eq!(c.spec.selectors.len(), 4);
        // Numbers in YAML are read as text.
        assert_eq!(c.spec.selectors[1].values, ["32", "64"]);
        assert_eq!(c.spec.selectors[3].values, Vec::<String>::new());
        assert!(c.matches(&server(), &labels(&[("rack", "r1")])));
        assert!(!c.matches(&server(), &BTreeMap::new()));
        // It serializes back to what it parsed from.
        let again = ServerClass::parse(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn parses_json() {
        let json = r#"{
            "apiVersion": "metal.siderite.dev/v1alpha1",
            "kind": "ServerClass",
            "metadata": {"name": "any", "resourceVersion": 7, "uid": "u-1"},
            "spec": {"selectors": [
                {"field": "arch", "op": "In", "values": ["amd64"]},
                {"field": "cpu.sockets", "op": "Gt", "values": [1]}
            ]}
        }"#;
        let c = ServerClass::parse(json).unwrap();
        assert_eq!(c.metadata.resource_version, 7);
        assert_eq!(c.spec.selectors[1].values, ["1"]);
        assert!(c.matches(&server(), &BTreeMap::new()));
        let again = ServerClass::parse(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        // No spec at all: matches everything.
        let c = ServerClass::parse(
            r#"{"apiVersion": "metal.siderite.dev/v1alpha1", "kind": "ServerClass", "metadata": {"name": "all"}}"#,
        )
        .unwrap();
        assert!(c.matches(&Hardware::default(), &BTreeMap::new()));
    }

    #[test]
    fn parse_rejects_unknown_fields_ops_and_bad_input() {
        let unknown_field = YAML.replace("    - field: memory.bytes", "    - fild: memory.bytes");
        let e = ServerClass::parse(&unknown_field).unwrap_err();
        assert!(
            matches!(&e, ServerClassError::Parse(m) if m.contains("unknown field `fild`")),
            "{e}"
        );
        let e = ServerClass::parse(&YAML.replace("spec:", "spec:\n  extra: 1")).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        let e =
            ServerClass::parse(&YAML.replace("metadata:", "metadata:\n  owner: x")).unwrap_err();
        assert!(e.to_string().contains("unknown field `owner`"), "{e}");
        let e = ServerClass::parse(&YAML.replace("op: Gt", "op: GreaterThan")).unwrap_err();
        assert!(
            e.to_string().contains("unknown variant `GreaterThan`"),
            "{e}"
        );
        let e = ServerClass::parse(&YAML.replace("op: Gt", "op: gt")).unwrap_err();
        assert!(e.to_string().contains("unknown variant `gt`"), "{e}");
        let e = ServerClass::parse(&YAML.replace("values: [nvme]", "values: nvme")).unwrap_err();
        assert!(
            e.to_string().contains("a list of strings or numbers"),
            "{e}"
        );
        let e =
            ServerClass::parse(&YAML.replace("values: [nvme]", "values: [{a: 1}]")).unwrap_err();
        assert!(e.to_string().contains("a string or a number"), "{e}");
        let e = ServerClass::parse("{\"kind\": ").unwrap_err();
        assert!(e.to_string().starts_with("invalid JSON"), "{e}");
        let e = ServerClass::parse("a: [").unwrap_err();
        assert!(e.to_string().starts_with("invalid YAML"), "{e}");
        // parse validates.
        let e = ServerClass::parse(&YAML.replace("values: [nvme]", "values: [NVMe]")).unwrap_err();
        assert!(
            matches!(e, ServerClassError::Selector { index: 2, .. }),
            "{e}"
        );
        let e = ServerClass::parse(&YAML.replace("name: big-nvme", "name: Big")).unwrap_err();
        assert!(matches!(e, ServerClassError::Name { .. }), "{e}");
        let e = ServerClass::parse(&YAML.replace("kind: ServerClass", "kind: Server")).unwrap_err();
        assert_eq!(e, ServerClassError::Kind("Server".into()));
    }

    #[test]
    fn sizes_with_units() {
        for (text, want) in [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("1k", 1000),
            ("1KB", 1000),
            ("1KiB", 1024),
            ("1ki", 1024),
            ("512MB", 512_000_000),
            ("512MiB", 512 << 20),
            ("16GiB", 16 << 30),
            ("16 GiB", 16 << 30),
            (" 16gib ", 16 << 30),
            ("16G", 16_000_000_000),
            ("16Gi", 16 << 30),
            ("1TB", 1_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5TiB", 3 << 39),
            ("0.5GB", 500_000_000),
            ("1.0000000001KB", 1000),
            ("2PB", 2_000_000_000_000_000),
            ("1EiB", 1 << 60),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text:?}");
        }
        for text in [
            "",
            "GiB",
            "-1GB",
            "1..5GB",
            "1.GB",
            ".5GB",
            "1e9",
            "16 G i B",
            "1GBB",
            "1 2GB",
            "16EiB",
            "18446744073709551616",
            "0x10",
        ] {
            assert!(parse_bytes(text).is_err(), "{text:?}");
        }
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1 KiB");
        assert_eq!(format_bytes(16 << 30), "16 GiB");
        assert_eq!(format_bytes(960_197_124_096), "894.3 GiB");
        assert_eq!(format_bytes(3 << 39), "1.5 TiB");
    }

    #[test]
    fn glob_patterns() {
        let g = |p: &str| Glob::new(p).unwrap();
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "a", false),
            ("a*", "a", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbx", false),
            ("*a*b*", "xaxbx", true),
            ("*ab", "aab", true),
            ("**ab", "xab", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "aéc", true),
            ("[abc]x", "bx", true),
            ("[abc]x", "dx", false),
            ("[a-c]", "b", true),
            ("[!a-c]", "b", false),
            ("[^a-c]", "d", true),
            ("[]]", "]", true),
            ("[!]]", "]", false),
            ("[a-]", "-", true),
            ("[-a]", "-", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("[\\]]", "]", true),
            ("ST[0-9]*NM*", "ST4000NM0035", true),
            ("Samsung SSD 9?0*", "Samsung SSD 980 PRO 1TB", true),
            ("Samsung SSD 9?0*", "Samsung SSD 870 EVO", false),
            ("A*", "a", false),
        ] {
            assert_eq!(g(pattern).matches(text), want, "{pattern:?} vs {text:?}");
        }
        // Many stars against a long near-miss finishes quickly.
        let long = "a".repeat(10_000);
        assert!(!g("*a*a*a*a*a*b").matches(&long));
        assert_eq!(g("a[bc]*").as_str(), "a[bc]*");
    }

    #[test]
    fn natural_order_of_disk_names() {
        let mut names = vec![
            "vdaa", "vdb", "vda", "sdb", "nvme0n10", "nvme1n1", "nvme0n2", "nvme0n1", "sda", "sdz",
            "mmcblk0", "vdz",
        ];
        names.sort_by(|a, b| natural_disk_order(a, b));
        assert_eq!(
            names,
            [
                "mmcblk0", "nvme0n1", "nvme0n2", "nvme0n10", "nvme1n1", "sda", "sdb", "sdz", "vda",
                "vdb", "vdz", "vdaa"
            ]
        );
    }
}
