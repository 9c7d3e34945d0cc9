//! The `MachineConfig` resource: a base Talos machine config and the patches that
//! make it one cluster's, rendered per machine by [`MachineConfig::render`]:
//! 1. every patch, in order, on the base's `v1alpha1` document (an RFC 6902 JSON Patch
//!    through [`configpatch::Patch`], or a strategic merge through
//!    [`configpatch::strategic_merge`]);
//! 2. `machine.network.hostname` from the hostname template;
//! 3. `machine.install.disk` from the install disk selector and the server's disks.
//!
//! Only step 1 is independent of the machine, so [`MachineConfig::validate`] runs it:
//! a patch that does not apply to the base is refused when the resource is applied, not
//! when a machine first asks for its config. `docs/machineconfig.md` is the operator's
//! view.
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_yaml_ng::Value as Yaml;
use siderite::proto::agent::v1::{BlockDevice, Hardware};

use crate::configpatch::{self, MergeError, Patch, PatchError, Pointer};
use crate::environment::{self, EnvironmentError, Metadata};
use crate::model::API_VERSION;
use crate::serverclass::{self, format_bytes, natural_disk_order, parse_bytes, Glob};

pub const KIND: &str = "MachineConfig";
/// The Talos config document patches apply to, by its `version`.
pub const TALOS_VERSION: &str = "v1alpha1";
/// The hostname template when the spec has none.
pub const DEFAULT_HOSTNAME: &str = "{id}";
/// `installDisk.type` values: Talos' disk types, as the agent reports them.
pub const DISK_TYPES: [&str; 4] = ["ssd", "hdd", "nvme", "sd"];
/// A size without a comparison matches disks within this many percent of it: disks
/// sold as the same size differ by a few sectors, and `8GiB` should find an 8 GiB disk.
pub const SIZE_TOLERANCE_PERCENT: u64 = 1;
const MAX_HOSTNAME_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MachineConfigSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfigSpec {
    /// YAML text of the Talos config; may hold several `---` documents.
    pub base: String,
    /// Each one an RFC 6902 JSON Patch (a list of operations), a map to merge
    /// strategically, or YAML/JSON text of either; applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Value>,
    /// `{id}`, `{serial}` and `{uuid}` are replaced; [`DEFAULT_HOSTNAME`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_disk: Option<DiskSelector>,
}

/// Talos-like install disk selector; every field given must match. Only non-removable,
/// writable disks are candidates; the first match in kernel name order wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSelector {
    /// `>= 10GB`, `<= 1TB`, `> 100GiB`, `< 2TB`, or `8GiB` / `== 8GiB`: within
    /// [`SIZE_TOLERANCE_PERCENT`] of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// ssd, hdd, nvme or sd.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<String>,
    /// A glob over the disk's model (`Samsung SSD 9*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The kernel name, `vda` (or `/dev/vda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The transport: nvme, sata, scsi, sas, virtio, usb, mmc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
}

/// A MachineConfig that cannot be read or breaks a rule; the message names the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    /// Not YAML/JSON, or not the shape of a MachineConfig (unknown field...).
    #[error("{0}")]
    Parse(String),
    #[error("apiVersion {0:?}: expected {API_VERSION:?}")]
    ApiVersion(String),
    #[error("kind {0:?}: expected {KIND:?}")]
    Kind(String),
    #[error("name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("base: {0}")]
    Base(String),
    /// Index from 0, in `spec.patches`.
    #[error("patch {index}: {why}")]
    Patch { index: usize, why: String },
    #[error("hostname {template:?}: {why}")]
    Hostname { template: String, why: String },
    #[error("installDisk.{field} {value:?}: {why}")]
    InstallDisk {
        field: &'static str,
        value: String,
        why: String,
    },
}

/// Why a config could not be rendered for one machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Invalid(#[from] MachineConfigError),
    /// A JSON Patch failed on the document (a `test` that did not hold, a missing path).
    #[error("patch {index}: {error}")]
    Patch { index: usize, error: PatchError },
    #[error("patch {index} (strategic merge): {error}")]
    Merge { index: usize, error: MergeError },
    /// Where siderite writes the hostname or the install disk, the patched config has
    /// something that is not a map.
    #[error("{path} in the patched config is {found}, not a map")]
    NotAMap { path: String, found: &'static str },
    #[error("hostname {hostname:?} (from template {template:?}): {why}")]
    Hostname {
        template: String,
        hostname: String,
        why: String,
    },
    /// No candidate disk; `disks` says, per disk, why it was passed over.
    #[error("no disk matches installDisk {selector}: {}", list_or_none(.disks))]
    NoInstallDisk {
        selector: String,
        disks: Vec<String>,
    },
    #[error("cannot write the rendered config as YAML: {0}")]
    Output(String),
}

fn list_or_none(disks: &[String]) -> String {
    if disks.is_empty() {
        "the server reports no disks".into()
    } else {
        disks.join("; ")
    }
}

impl MachineConfig {
    /// A fresh resource with `apiVersion` and `kind` set.
    pub fn new(name: impl Into<String>, spec: MachineConfigSpec) -> Self {
        MachineConfig {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Reads a MachineConfig from YAML or JSON text and validates it.
    pub fn parse(text: &str) -> Result<MachineConfig, MachineConfigError> {
        let config: MachineConfig =
            serverclass::parse_resource(text).map_err(MachineConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Shape and name; the base parses as YAML and has a map to patch; each patch is a
    /// JSON Patch or a map and applies to the base; the hostname template and the
    /// install disk selector are well-formed.
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        if self.api_version != API_VERSION {
            return Err(MachineConfigError::ApiVersion(self.api_version.clone()));
        }
        if self.kind != KIND {
            return Err(MachineConfigError::Kind(self.kind.clone()));
        }
        if let Err(EnvironmentError::Name { name, why }) =
            environment::validate_name(&self.metadata.name)
        {
            return Err(MachineConfigError::Name { name, why });
        }
        let plan = self.compile()?;
        plan.patched().map_err(|e| match e {
            RenderError::Patch { index, error } => MachineConfigError::Patch {
                index,
                why: format!("does not apply to the base: {error}"),
            },
            RenderError::Merge { index, error } => MachineConfigError::Patch {
                index,
                why: format!("does not apply to the base: {error}"),
            },
            other => MachineConfigError::Base(other.to_string()),
        })?;
        Ok(())
    }

    /// The Talos config for one machine, as YAML: the base with every patch applied,
    /// `machine.network.hostname` and `machine.install.disk` set (see the module doc).
    pub fn render(&self, server_id: &str, hw: &Hardware) -> Result<String, RenderError> {
        let plan = self.compile()?;
        let mut doc = plan.patched()?;

        let hostname = plan.hostname.render(server_id, hw)?;
        map_at(&mut doc, &["machine", "network"])?.insert("hostname".into(), hostname.into());

        let install = map_at(&mut doc, &["machine", "install"])?;
        let chosen = match &plan.disk {
            Some(selector) => Some(selector.select(hw)?),
            // The base (or a patch) already says where to install: leave it.
            None if has_value(install.get("disk")) || has_value(install.get("diskSelector")) => {
                None
            }
            None => Some(CompiledSelector::default().select(hw)?),
        };
        if let Some(disk) = chosen {
            install.insert("disk".into(), format!("/dev/{}", disk.name).into());
            // Talos would prefer its own selector over `disk`; siderite has chosen.
            install.remove("diskSelector");
        }

        let mut out = String::new();
        for (index, original) in plan.docs.iter().enumerate() {
            let yaml = if index == plan.target {
                json_to_yaml(&doc, Some(original))
            } else {
                original.clone()
            };
            if index > 0 {
                out.push_str("---\n");
            }
            let text =
                serde_yaml_ng::to_string(&yaml).map_err(|e| RenderError::Output(e.to_string()))?;
            out.push_str(&text);
        }
        Ok(out)
    }

    fn compile(&self) -> Result<Plan, MachineConfigError> {
        let docs = parse_documents(&self.spec.base).map_err(MachineConfigError::Base)?;
        let target = docs
            .iter()
            .position(|d| d.get("version").and_then(Yaml::as_str) == Some(TALOS_VERSION))
            .unwrap_or(0);
        if !docs[target].is_mapping() {
            return Err(MachineConfigError::Base(format!(
                "document {target}, the one patches apply to, is {}, not a map",
                yaml_kind(&docs[target])
            )));
        }
        let base = yaml_to_json(&docs[target], &mut Vec::new())
            .map_err(|why| MachineConfigError::Base(format!("document {target}: {why}")))?;
        let patches = self
            .spec
            .patches
            .iter()
            .enumerate()
            .map(|(index, p)| {
                compile_patch(p).map_err(|why| MachineConfigError::Patch { index, why })
            })
            .collect::<Result<_, _>>()?;
        let template = self.spec.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
        let hostname = Template::parse(template).map_err(|why| MachineConfigError::Hostname {
            template: template.to_string(),
            why,
        })?;
        let disk = self
            .spec
            .install_disk
            .as_ref()
            .map(DiskSelector::compile)
            .transpose()?;
        Ok(Plan {
            docs,
            target,
            base,
            patches,
            hostname,
            disk,
        })
    }
}

/// A MachineConfig with everything parsed and checked.
struct Plan {
    docs: Vec<Yaml>,
    /// Index in `docs` of the document patches apply to.
    target: usize,
    /// That document, as JSON.
    base: Value,
    patches: Vec<PatchKind>,
    hostname: Template,
    disk: Option<CompiledSelector>,
}

enum PatchKind {
    Json(Patch),
    Merge(Value),
}

impl Plan {
    /// The target document with every patch applied, in order.
    fn patched(&self) -> Result<Value, RenderError> {
        let mut doc = self.base.clone();
        for (index, patch) in self.patches.iter().enumerate() {
            match patch {
                PatchKind::Json(p) => p
                    .apply(&mut doc)
                    .map_err(|error| RenderError::Patch { index, error })?,
                PatchKind::Merge(p) => configpatch::strategic_merge(&mut doc, p)
                    .map_err(|error| RenderError::Merge { index, error })?,
            }
        }
        Ok(doc)
    }
}

fn compile_patch(patch: &Value) -> Result<PatchKind, String> {
    match patch {
        Value::String(text) => {
            let parsed: Value = serde_yaml_ng::from_str(text)
                .map_err(|e| format!("the patch text is not YAML or JSON: {e}"))?;
            if parsed.is_string() {
                return Err(
                    "the patch text holds a string; expected a list of JSON Patch operations or a map to merge"
                        .into(),
                );
            }
            compile_patch(&parsed)
        }
        Value::Array(_) => serde_json::from_value::<Patch>(patch.clone())
            .map(PatchKind::Json)
            .map_err(|e| format!("not a valid JSON Patch: {e}")),
        Value::Object(members) => {
            if members.contains_key("op") && members.contains_key("path") {
                return Err(
                    "this map looks like one JSON Patch operation; a JSON Patch is a list of operations (wrap it in [ ])"
                        .into(),
                );
            }
            Ok(PatchKind::Merge(patch.clone()))
        }
        other => Err(format!(
            "is {}; expected a JSON Patch (a list of operations) or a map to merge",
            json_kind(other)
        )),
    }
}

// ---- YAML documents -------------------------------------------------------------------

/// Every non-empty document of a `---` separated YAML stream.
fn parse_documents(text: &str) -> Result<Vec<Yaml>, String> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = Yaml::deserialize(de).map_err(|e| format!("document {index}: {e}"))?;
        // `---` at the end, or twice in a row, makes an empty document: it says nothing.
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    if docs.is_empty() {
        return Err("holds no YAML document".into());
    }
    Ok(docs)
}

/// JSON can hold what a Talos config holds: string keys, finite numbers, no tags.
fn yaml_to_json(value: &Yaml, at: &mut Vec<String>) -> Result<Value, String> {
    Ok(match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(i) = n.as_i64() {
                i.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("at {:?}: {n} is not a finite number", pointer(at)))?
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                at.push(index.to_string());
                out.push(yaml_to_json(item, at)?);
                at.pop();
            }
            Value::Array(out)
        }
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                let Some(key) = key.as_str() else {
                    return Err(format!(
                        "at {:?}: the key {} is not a string",
                        pointer(at),
                        serde_yaml_ng::to_string(key).unwrap_or_default().trim_end()
                    ));
                };
                at.push(key.to_string());
                out.insert(key.to_string(), yaml_to_json(item, at)?);
                at.pop();
            }
            Value::Object(out)
        }
        Yaml::Tagged(t) => {
            return Err(format!(
                "at {:?}: YAML tags ({}) are not supported",
                pointer(at),
                t.tag
            ))
        }
    })
}

fn pointer(at: &[String]) -> String {
    Pointer::from_tokens(at.iter().cloned()).to_string()
}

/// Back to YAML, keeping the key order of `like` (the base document) where the keys are
/// still there; keys the patches added follow, sorted.
fn json_to_yaml(value: &Value, like: Option<&Yaml>) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Yaml::Number(u.into())
            } else if let Some(i) = n.as_i64() {
                Yaml::Number(i.into())
            } else {
                Yaml::Number(n.as_f64().unwrap_or(0.0).into())
            }
        }
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => {
            let like = like.and_then(Yaml::as_sequence);
            Yaml::Sequence(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| json_to_yaml(item, like.and_then(|l| l.get(i))))
                    .collect(),
            )
        }
        Value::Object(members) => {
            let mut out = serde_yaml_ng::Mapping::new();
            if let Some(like) = like.and_then(Yaml::as_mapping) {
                for (key, old) in like {
                    if let Some((key, item)) = key.as_str().and_then(|k| members.get_key_value(k)) {
                        out.insert(Yaml::String(key.clone()), json_to_yaml(item, Some(old)));
                    }
                }
            }
            for (key, item) in members {
                let key = Yaml::String(key.clone());
                if !out.contains_key(&key) {
                    out.insert(key, json_to_yaml(item, None));
                }
            }
            Yaml::Mapping(out)
        }
    }
}

/// The map at `path`, made where missing (or null).
fn map_at<'a>(
    doc: &'a mut Value,
    path: &[&str],
) -> Result<&'a mut Map<String, Value>, RenderError> {
    let mut here = doc;
    for (depth, key) in path.iter().enumerate() {
        let Value::Object(map) = here else {
            return Err(not_a_map(&path[..depth], here));
        };
        let next = map.entry(key.to_string()).or_insert(Value::Null);
        if next.is_null() {
            *next = Value::Object(Map::new());
        }
        here = next;
    }
    match here {
        Value::Object(map) => Ok(map),
        other => Err(not_a_map(path, other)),
    }
}

fn not_a_map(path: &[&str], found: &Value) -> RenderError {
    RenderError::NotAMap {
        path: if path.is_empty() {
            "the document".into()
        } else {
            path.join(".")
        },
        found: json_kind(found),
    }
}

fn has_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn yaml_kind(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a map",
        Yaml::Tagged(_) => "a tagged value",
    }
}

// ---- hostname -------------------------------------------------------------------------

struct Template {
    text: String,
    pieces: Vec<Piece>,
}

enum Piece {
    Literal(String),
    Id,
    Serial,
    Uuid,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("empty; leave hostname out for the server id".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let (name, tail) = after
                    .split_once('}')
                    .ok_or_else(|| "'{' without its '}'".to_string())?;
                pieces.push(match name {
                    "id" => Piece::Id,
                    "serial" => Piece::Serial,
                    "uuid" => Piece::Uuid,
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}}; use {{id}}, {{serial}} or {{uuid}}"
                        ))
                    }
                });
                rest = tail;
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let (literal, tail) = rest.split_at(end);
                if let Some(c) = literal.chars().find(|c| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
                }) {
                    return Err(format!(
                        "{c:?} cannot be in a hostname (a-z, 0-9, '-' and '.' can)"
                    ));
                }
                pieces.push(Piece::Literal(literal.to_string()));
                rest = tail;
            }
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    /// Placeholders are filled in lowercase; the result must be a valid hostname.
    fn render(&self, server_id: &str, hw: &Hardware) -> Result<String, RenderError> {
        let system = hw.system.as_ref();
        let mut out = String::new();
        for piece in &self.pieces {
            let (value, what) = match piece {
                Piece::Literal(s) => {
                    out.push_str(s);
                    continue;
                }
                Piece::Id => (server_id, "server id"),
                Piece::Serial => (system.map_or("", |s| s.serial.as_str()), "SMBIOS serial"),
                Piece::Uuid => (system.map_or("", |s| s.uuid.as_str()), "SMBIOS UUID"),
            };
            if value.trim().is_empty() {
                return Err(RenderError::Hostname {
                    template: self.text.clone(),
                    hostname: out,
                    why: format!("the server reports no {what}"),
                });
            }
            out.push_str(&value.trim().to_ascii_lowercase());
        }
        match hostname_problem(&out) {
            None => Ok(out),
            Some(why) => Err(RenderError::Hostname {
                template: self.text.clone(),
                hostname: out,
                why,
            }),
        }
    }
}

/// RFC 1123: dot-separated labels of 1 to 63 of a-z, 0-9 and '-', not at either end.
fn hostname_problem(name: &str) -> Option<String> {
    if name.len() > MAX_HOSTNAME_LEN {
        return Some(format!("longer than {MAX_HOSTNAME_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some(format!("label {label:?} must be 1 to 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Some(format!("{c:?} cannot be in a hostname"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {label:?} starts or ends with '-'"));
        }
    }
    None
}

// ---- install disk ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeOp {
    Ge,
    Le,
    Gt,
    Lt,
    About,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SizeMatch {
    op: SizeOp,
    bytes: u64,
    text: String,
}

impl SizeMatch {
    fn parse(text: &str) -> Result<SizeMatch, String> {
        let s = text.trim();
        let (op, rest) = [
            (">=", SizeOp::Ge),
            ("<=", SizeOp::Le),
            ("==", SizeOp::About),
            (">", SizeOp::Gt),
            ("<", SizeOp::Lt),
        ]
        .iter()
        .find_map(|(prefix, op)| s.strip_prefix(prefix).map(|rest| (*op, rest)))
        .unwrap_or((SizeOp::About, s));
        let bytes = parse_bytes(rest).map_err(|e| {
            format!("{e}; write a size like 10GB, optionally after >=, <=, >, < or ==")
        })?;
        Ok(SizeMatch {
            op,
            bytes,
            text: s.to_string(),
        })
    }

    fn holds(&self, size: u64) -> bool {
        let want = self.bytes;
        match self.op {
            SizeOp::Ge => size >= want,
            SizeOp::Le => size <= want,
            SizeOp::Gt => size > want,
            SizeOp::Lt => size < want,
            SizeOp::About => size.abs_diff(want) <= want / 100 * SIZE_TOLERANCE_PERCENT,
        }
    }
}

impl fmt::Display for SizeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            SizeOp::About => write!(
                f,
                "within {SIZE_TOLERANCE_PERCENT}% of {}",
                self.text.trim_start_matches("==").trim()
            ),
            _ => f.write_str(&self.text),
        }
    }
}

/// A [`DiskSelector`] whose fields were checked.
#[derive(Debug, Clone, Default)]
struct CompiledSelector {
    size: Option<SizeMatch>,
    disk_type: Option<String>,
    model: Option<Glob>,
    serial: Option<String>,
    name: Option<String>,
    bus: Option<String>,
    /// As the operator wrote it, for errors.
    text: String,
}

impl DiskSelector {
    fn compile(&self) -> Result<CompiledSelector, MachineConfigError> {
        let bad = |field: &'static str, value: &str, why: String| MachineConfigError::InstallDisk {
            field,
            value: value.to_string(),
            why,
        };
        let size = self
            .size
            .as_deref()
            .map(|s| SizeMatch::parse(s).map_err(|why| bad("size", s, why)))
            .transpose()?;
        if let Some(t) = &self.disk_type {
            if !DISK_TYPES.contains(&t.as_str()) {
                return Err(bad(
                    "type",
                    t,
                    format!("expected one of {}", DISK_TYPES.join(", ")),
                ));
            }
        }
        if let Some(b) = &self.bus {
            let buses = serverclass::closed_set(serverclass::HwField::DiskBus).unwrap_or(&[]);
            if !buses.contains(&b.as_str()) {
                return Err(bad(
                    "bus",
                    b,
                    format!("expected one of {}", buses.join(", ")),
                ));
            }
        }
        let model = self
            .model
            .as_deref()
            .map(|m| Glob::new(m).map_err(|e| bad("model", m, e.why.to_string())))
            .transpose()?;
        let name = match &self.name {
            None => None,
            Some(n) => {
                let short = n.strip_prefix("/dev/").unwrap_or(n);
                if short.is_empty() || short.contains('/') || short.contains(char::is_whitespace) {
                    return Err(bad(
                        "name",
                        n,
                        "expected a kernel disk name like sda, vda or nvme0n1".into(),
                    ));
                }
                Some(short.to_string())
            }
        };
        for (field, value) in [("serial", &self.serial), ("model", &self.model)] {
            if value.as_deref() == Some("") {
                return Err(bad(
                    field,
                    "",
                    "empty; leave it out to match any disk".into(),
                ));
            }
        }
        Ok(CompiledSelector {
            size,
            disk_type: self.disk_type.clone(),
            model,
            serial: self.serial.clone(),
            name,
            bus: self.bus.clone(),
            text: self.to_string(),
        })
    }

    /// The disk this selector picks on `hw`: the first candidate, in kernel name order.
    pub fn select<'a>(&self, hw: &'a Hardware) -> Result<&'a BlockDevice, RenderError> {
        self.compile()?.select(hw)
    }
}

/// `{size: >= 10GB, type: ssd}`, or `{}` for the empty selector.
impl fmt::Display for DiskSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            ("size", &self.size),
            ("type", &self.disk_type),
            ("model", &self.model),
            ("serial", &self.serial),
            ("name", &self.name),
            ("bus", &self.bus),
        ];
        let set: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}: {v}")))
            .collect();
        write!(f, "{{{}}}", set.join(", "))
    }
}

impl CompiledSelector {
    fn select<'a>(&self, hw: &'a Hardware) -> Result<&'a BlockDevice, RenderError> {
        let mut disks: Vec<&BlockDevice> = hw.disks.iter().collect();
        disks.sort_by(|a, b| natural_disk_order(&a.name, &b.name));
        let mut rejected = Vec::new();
        for disk in disks {
            let why = self.rejections(disk);
            if why.is_empty() {
                return Ok(disk);
            }
            rejected.push(format!("{}: {}", disk.name, why.join(", ")));
        }
        Err(RenderError::NoInstallDisk {
            selector: if self.text.is_empty() {
                "{}".into()
            } else {
                self.text.clone()
            },
            disks: rejected,
        })
    }

    /// Every reason `disk` is not a candidate; empty when it is one.
    fn rejections(&self, disk: &BlockDevice) -> Vec<String> {
        let mut why = Vec::new();
        if disk.removable {
            why.push("removable".to_string());
        }
        if disk.read_only {
            why.push("read-only".to_string());
        }
        if disk.size_bytes == 0 {
            why.push("no medium (size 0)".to_string());
        } else if let Some(size) = &self.size {
            if !size.holds(disk.size_bytes) {
                why.push(format!(
                    "size {} ({} bytes) is not {size}",
                    format_bytes(disk.size_bytes),
                    disk.size_bytes
                ));
            }
        }
        let mut differs = |field: &str, want: &Option<String>, have: &str| {
            if let Some(want) = want {
                if want != have {
                    why.push(format!("{field} is {have:?}, not {want:?}"));
                }
            }
        };
        differs("type", &self.disk_type, &disk.disk_type);
        differs("serial", &self.serial, &disk.serial);
        differs("name", &self.name, &disk.name);
        differs("bus", &self.bus, &disk.bus);
        if let Some(model) = &self.model {
            if !model.matches(&disk.model) {
                why.push(format!(
                    "model {:?} does not match {:?}",
                    disk.model,
                    model.as_str()
                ));
            }
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use siderite::proto::agent::v1::System;

    use super::*;

    const GB: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;
    const ID: &str = "3f0c8a52-7d1e-4b7a-9a0e-5b2f6c1d8e90";

    /// A worker's config as `talosctl gen config` would shape it; written for these
    /// tests, secrets are placeholders.
    const BASE: &str = "\
version: v1alpha1
debug: false
persist: true
machine:
  type: worker
  token: abcdef.0123456789abcdef
  ca:
    crt: UExBQ0VIT0xERVItQ0E=
    key: ''
  certSANs:
    - 10.20.0.10
  kubelet:
    image: ghcr.io/siderolabs/kubelet:v1.30.3
    defaultRuntimeSeccompProfileEnabled: true
  network: {}
  install:
    image: ghcr.io/siderolabs/installer:v1.7.6
    wipe: false
  features:
    rbac: true
    stableHostname: true
cluster:
  id: UExBQ0VIT0xERVItSUQ=
  secret: UExBQ0VIT0xERVItU0VDUkVU
  controlPlane:
    endpoint: https://10.20.0.10:6443
  clusterName: rack-a
  network:
    dnsDomain: cluster.local
    podSubnets:
      - 10.244.0.0/16
    serviceSubnets:
      - 10.96.0.0/12
  token: wxyz12.0123456789abcdef
";

    fn disk(name: &str, size: u64, disk_type: &str, bus: &str) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            dev_path: format!("/dev/{name}"),
            size_bytes: size,
            model: format!("Model {name}"),
            serial: format!("SN-{name}"),
            bus: bus.into(),
            disk_type: disk_type.into(),
            ..Default::default()
        }
    }

    /// A USB stick (sda), a small SATA SSD (sdb), a big HDD (sdc), in a shuffled list.
    fn hardware() -> Hardware {
        let mut usb = disk("sda", 64 * GB, "ssd", "usb");
        usb.removable = true;
        usb.model = "Cruzer Blade".into();
        Hardware {
            system: Some(System {
                uuid: "4C4C4544-0042-3510-8051-B7C04F4B5A31".into(),
                serial: "7B5QZ31".into(),
                ..Default::default()
            }),
            disks: vec![
                disk("sdc", 4 * 1000 * GB, "hdd", "sata"),
                usb,
                disk("sdb", 8 * GIB, "ssd", "sata"),
            ],
            ..Default::default()
        }
    }

    fn config(patches: Vec<Value>) -> MachineConfig {
        MachineConfig::new(
            "workers",
            MachineConfigSpec {
                base: BASE.into(),
                patches,
                hostname: None,
                install_disk: None,
            },
        )
    }

    fn render(c: &MachineConfig, hw: &Hardware) -> Result<Value, RenderError> {
        let text = c.render(ID, hw)?;
        Ok(serde_yaml_ng::from_str(&text).expect("the rendered config is YAML"))
    }

    fn selector(f: impl FnOnce(&mut DiskSelector)) -> Option<DiskSelector> {
        let mut s = DiskSelector::default();
        f(&mut s);
        Some(s)
    }

    #[test]
    fn renders_patches_hostname_and_disk_keeping_the_base_order() {
        let mut c = config(vec![
            // A JSON Patch.
            json!([
                {"op": "test", "path": "/machine/type", "value": "worker"},
                {"op": "replace", "path": "/machine/install/wipe", "value": true},
                {"op": "add", "path": "/machine/certSANs/-", "value": "10.20.0.11"}
            ]),
            // A strategic merge: maps merge, lists append.
            json!({
                "machine": {
                    "certSANs": ["api.rack-a.example"],
                    "network": {"nameservers": ["10.20.0.1"]},
                    "kubelet": {"extraArgs": {"rotate-server-certificates": "true"}}
                }
            }),
            // YAML text of a strategic merge, as kept in a file.
            json!("cluster:\n  network:\n    dnsDomain: rack-a.local\n"),
        ]);
        c.spec.hostname = Some("node-{serial}".into());
        c.spec.install_disk = selector(|s| s.size = Some(">= 10GB".into()));
        c.validate().unwrap();
        let text = c.render(ID, &hardware()).unwrap();
        let got: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(got["machine"]["install"]["wipe"], json!(true));
        assert_eq!(
            got["machine"]["certSANs"],
            json!(["10.20.0.10", "10.20.0.11", "api.rack-a.example"])
        );
        assert_eq!(
            got["machine"]["network"]["nameservers"],
            json!(["10.20.0.1"])
        );
        assert_eq!(got["machine"]["network"]["hostname"], json!("node-7b5qz31"));
        assert_eq!(
            got["machine"]["kubelet"],
            json!({
                "image": "ghcr.io/siderolabs/kubelet:v1.30.3",
                "defaultRuntimeSeccompProfileEnabled": true,
                "extraArgs": {"rotate-server-certificates": "true"}
            })
        );
        // sda is removable and sdb too small: the HDD.
        assert_eq!(got["machine"]["install"]["disk"], json!("/dev/sdc"));
        assert_eq!(
            got["cluster"]["network"]["dnsDomain"],
            json!("rack-a.local")
        );
        assert_eq!(got["cluster"]["clusterName"], json!("rack-a"));
        // The base's key order survives; what was added comes after.
        assert!(
            text.starts_with(
                "version: v1alpha1\ndebug: false\npersist: true\nmachine:\n  type: worker\n"
            ),
            "{text}"
        );
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
            .take(6)
            .collect();
        assert_eq!(
            keys,
            [
                "  ca:",
                "  certSANs:",
                "  kubelet:",
                "  network:",
                "  install:",
                "  features:"
            ]
        );
        // Both new in an empty map: sorted.
        assert!(
            text.contains(
                "  network:\n    hostname: node-7b5qz31\n    nameservers:\n    - 10.20.0.1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn patches_apply_in_order() {
        // The test in patch 1 sees what patch 0 merged.
        let c = config(vec![
            json!({"machine": {"type": "controlplane"}}),
            json!([{"op": "test", "path": "/machine/type", "value": "controlplane"}]),
            json!([{"op": "replace", "path": "/machine/type", "value": "worker"}]),
        ]);
        c.validate().unwrap();
        assert_eq!(
            render(&c, &hardware()).unwrap()["machine"]["type"],
            json!("worker")
        );
        let swapped = config(vec![
            json!([{"op": "test", "path": "/machine/type", "value": "controlplane"}]),
            json!({"machine": {"type": "controlplane"}}),
        ]);
        assert!(matches!(
            swapped.render(ID, &hardware()),
            Err(RenderError::Patch { index: 0, .. })
        ));
    }

    #[test]
    fn failing_json_patches_name_the_patch() {
        let c = config(vec![
            json!({"machine": {"type": "worker"}}),
            json!([{"op": "test", "path": "/machine/type", "value": "controlplane"}]),
        ]);
        let e = c.render(ID, &hardware()).unwrap_err();
        assert!(matches!(&e, RenderError::Patch { index: 1, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "patch 1: JSON patch operation 0 (test \"/machine/type\"): the value differs from the tested value"
        );
        let c = config(vec![
            json!([{"op": "remove", "path": "/machine/nodeLabels/zone"}]),
        ]);
        assert_eq!(
            c.render(ID, &hardware()).unwrap_err().to_string(),
            "patch 0: JSON patch operation 0 (remove \"/machine/nodeLabels/zone\"): \"/machine/nodeLabels\" does not exist"
        );
        let c = config(vec![json!({"machine": {"x": {"$patch": "merge"}}})]);
        assert_eq!(
            c.render(ID, &hardware()).unwrap_err().to_string(),
            "patch 0 (strategic merge): at \"/machine/x\": unknown \"$patch\" directive \"merge\"; expected \"delete\" or \"replace\""
        );
        // validate applies the patches to the base, so a MachineConfig that can never
        // render is refused when it is applied.
        let c = config(vec![
            json!([]),
            json!([{"op": "replace", "path": "/machine/nope", "value": 1}]),
        ]);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "patch 1: does not apply to the base: JSON patch operation 0 (replace \"/machine/nope\"): \"/machine/nope\" does not exist"
        );
    }

    #[test]
    fn hostname_templates() {
        let hw = hardware();
        for (template, want) in [
            (None, ID.to_string()),
            (Some("{id}"), ID.to_string()),
            (Some("node-{serial}"), "node-7b5qz31".to_string()),
            (
                Some("{uuid}"),
                "4c4c4544-0042-3510-8051-b7c04f4b5a31".to_string(),
            ),
            (
                Some("w-{serial}.rack-a.example"),
                "w-7b5qz31.rack-a.example".to_string(),
            ),
            (Some("static"), "static".to_string()),
        ] {
            let mut c = config(Vec::new());
            c.spec.hostname = template.map(String::from);
            c.validate().unwrap();
            let got = render(&c, &hw).unwrap();
            assert_eq!(
                got["machine"]["network"]["hostname"],
                json!(want),
                "{template:?}"
            );
        }
        // What the server does not report, or what cannot be a hostname, fails the render.
        let mut c = config(Vec::new());
        c.spec.hostname = Some("node-{serial}".into());
        let mut no_smbios = hardware();
        no_smbios.system = None;
        assert_eq!(
            c.render(ID, &no_smbios).unwrap_err().to_string(),
            "hostname \"node-\" (from template \"node-{serial}\"): the server reports no SMBIOS serial"
        );
        let mut oem = hardware();
        oem.system.as_mut().unwrap().serial = "To Be Filled By O.E.M.".into();
        let e = c.render(ID, &oem).unwrap_err();
        assert!(e.to_string().contains("' ' cannot be in a hostname"), "{e}");
        let mut long = hardware();
        long.system.as_mut().unwrap().serial = "x".repeat(60);
        assert!(c
            .render(ID, &long)
            .unwrap_err()
            .to_string()
            .contains("must be 1 to 63"));
    }

    #[test]
    fn hostname_template_validation() {
        for (template, want) in [
            ("", "empty"),
            ("node-{name}", "unknown placeholder {name}"),
            ("node-{id", "'{' without its '}'"),
            ("Node-{id}", "'N' cannot be in a hostname"),
            ("node_{id}", "'_' cannot be in a hostname"),
            ("node}{id}", "'}' cannot be in a hostname"),
        ] {
            let mut c = config(Vec::new());
            c.spec.hostname = Some(template.into());
            match c.validate() {
                Err(e @ MachineConfigError::Hostname { .. }) => {
                    assert!(e.to_string().contains(want), "{template:?}: {e}")
                }
                other => panic!("{template:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn install_disk_selection() {
        let mut hw = hardware();
        hw.disks.extend([
            disk("vdaa", 100 * GB, "hdd", "virtio"),
            disk("vdb", 100 * GB, "hdd", "virtio"),
            disk("nvme0n1", 1000 * GB, "nvme", "nvme"),
        ]);
        let mut ro = disk("vda", 100 * GB, "hdd", "virtio");
        ro.read_only = true;
        hw.disks.push(ro);
        let pick = |s: Option<DiskSelector>| {
            let mut c = config(Vec::new());
            c.spec.install_disk = s;
            c.validate().unwrap();
            render(&c, &hw).map(|v| v["machine"]["install"]["disk"].clone())
        };
        let dev = |name: &str| Ok(json!(format!("/dev/{name}")));
        // No selector: the first candidate in kernel order (sda is removable).
        assert_eq!(pick(None), dev("nvme0n1"));
        assert_eq!(pick(selector(|_| ())), dev("nvme0n1"));
        assert_eq!(
            pick(selector(|s| s.disk_type = Some("ssd".into()))),
            dev("sdb")
        );
        assert_eq!(
            pick(selector(|s| s.disk_type = Some("hdd".into()))),
            dev("sdc")
        );
        // vda is read-only; vdb comes before vdaa.
        assert_eq!(
            pick(selector(|s| s.bus = Some("virtio".into()))),
            dev("vdb")
        );
        assert_eq!(
            pick(selector(|s| s.size = Some("<= 10GB".into()))),
            dev("sdb")
        );
        assert_eq!(
            pick(selector(|s| s.size = Some("> 1TB".into()))),
            dev("sdc")
        );
        assert_eq!(
            pick(selector(|s| s.size = Some("< 8GiB".into()))).ok(),
            None
        );
        // A bare size matches within 1%.
        assert_eq!(pick(selector(|s| s.size = Some("8GiB".into()))), dev("sdb"));
        assert_eq!(
            pick(selector(|s| s.size = Some("== 8.05GiB".into()))),
            dev("sdb")
        );
        assert_eq!(
            pick(selector(|s| s.size = Some("8.2GiB".into()))).ok(),
            None
        );
        assert_eq!(pick(selector(|s| s.size = Some("4TB".into()))), dev("sdc"));
        assert_eq!(
            pick(selector(|s| s.model = Some("Model vd*".into()))),
            dev("vdb")
        );
        assert_eq!(
            pick(selector(|s| s.serial = Some("SN-vdaa".into()))),
            dev("vdaa")
        );
        assert_eq!(pick(selector(|s| s.name = Some("sdc".into()))), dev("sdc"));
        assert_eq!(
            pick(selector(|s| s.name = Some("/dev/vdaa".into()))),
            dev("vdaa")
        );
        assert_eq!(
            pick(selector(|s| {
                s.disk_type = Some("hdd".into());
                s.size = Some(">= 50GB".into());
                s.bus = Some("virtio".into());
            })),
            dev("vdb")
        );
        // Never a removable or read-only disk, even by name.
        assert_eq!(pick(selector(|s| s.name = Some("sda".into()))).ok(), None);
        assert_eq!(pick(selector(|s| s.name = Some("vda".into()))).ok(), None);
    }

    #[test]
    fn no_install_disk_says_why_for_each_disk() {
        let mut c = config(Vec::new());
        c.spec.install_disk = selector(|s| {
            s.size = Some(">= 10GB".into());
            s.disk_type = Some("ssd".into());
        });
        let e = c.render(ID, &hardware()).unwrap_err();
        assert!(matches!(e, RenderError::NoInstallDisk { .. }));
        assert_eq!(
            e.to_string(),
            "no disk matches installDisk {size: >= 10GB, type: ssd}: \
             sda: removable; \
             sdb: size 8 GiB (8589934592 bytes) is not >= 10GB; \
             sdc: type is \"hdd\", not \"ssd\""
        );
        c.spec.install_disk = selector(|s| {
            s.model = Some("Samsung*".into());
            s.size = Some("2TB".into());
        });
        assert_eq!(
            c.render(ID, &hardware()).unwrap_err().to_string(),
            "no disk matches installDisk {size: 2TB, model: Samsung*}: \
             sda: removable, size 59.6 GiB (64000000000 bytes) is not within 1% of 2TB, model \"Cruzer Blade\" does not match \"Samsung*\"; \
             sdb: size 8 GiB (8589934592 bytes) is not within 1% of 2TB, model \"Model sdb\" does not match \"Samsung*\"; \
             sdc: size 3.6 TiB (4000000000000 bytes) is not within 1% of 2TB, model \"Model sdc\" does not match \"Samsung*\""
        );
        let mut empty_reader = disk("sdd", 0, "ssd", "usb");
        empty_reader.removable = false;
        let hw = Hardware {
            disks: vec![empty_reader],
            ..hardware()
        };
        assert_eq!(
            config(Vec::new()).render(ID, &hw).unwrap_err().to_string(),
            "no disk matches installDisk {}: sdd: no medium (size 0)"
        );
        let bare = Hardware::default();
        assert_eq!(
            config(Vec::new())
                .render(ID, &bare)
                .unwrap_err()
                .to_string(),
            "no disk matches installDisk {}: the server reports no disks"
        );
    }

    #[test]
    fn the_base_install_disk_stands_without_a_selector() {
        let base_disk = config(vec![json!({"machine": {"install": {"disk": "/dev/sdb"}}})]);
        let got = render(&base_disk, &hardware()).unwrap();
        assert_eq!(got["machine"]["install"]["disk"], json!("/dev/sdb"));
        // Talos' own selector stands too; with a selector siderite's choice replaces it.
        let mut talos_selector = config(vec![
            json!({"machine": {"install": {"diskSelector": {"size": ">= 1TB"}}}}),
        ]);
        let got = render(&talos_selector, &hardware()).unwrap();
        assert_eq!(
            got["machine"]["install"]["diskSelector"],
            json!({"size": ">= 1TB"})
        );
        assert_eq!(got["machine"]["install"].get("disk"), None);
        talos_selector.spec.install_disk = selector(|s| s.disk_type = Some("ssd".into()));
        let got = render(&talos_selector, &hardware()).unwrap();
        assert_eq!(got["machine"]["install"]["disk"], json!("/dev/sdb"));
        assert_eq!(got["machine"]["install"].get("diskSelector"), None);
        // An explicit selector overrides the base's disk.
        let mut overridden = base_disk;
        overridden.spec.install_disk = selector(|s| s.disk_type = Some("hdd".into()));
        let got = render(&overridden, &hardware()).unwrap();
        assert_eq!(got["machine"]["install"]["disk"], json!("/dev/sdc"));
    }

    #[test]
    fn install_disk_validation() {
        for (f, field, want) in [
            (
                (|s: &mut DiskSelector| s.size = Some(">= ten".into())) as fn(&mut DiskSelector),
                "size",
                "is not a size",
            ),
            (|s| s.size = Some("=> 10GB".into()), "size", "is not a size"),
            (
                |s| s.size = Some(">= 10 GBytes".into()),
                "size",
                "unknown unit",
            ),
            (|s| s.size = Some("".into()), "size", "is not a size"),
            (
                |s| s.disk_type = Some("SSD".into()),
                "type",
                "expected one of ssd, hdd, nvme, sd",
            ),
            (
                |s| s.bus = Some("pcie".into()),
                "bus",
                "expected one of nvme, sata",
            ),
            (
                |s| s.model = Some("[abc".into()),
                "model",
                "'[' without its ']'",
            ),
            (|s| s.model = Some("".into()), "model", "empty"),
            (|s| s.serial = Some("".into()), "serial", "empty"),
            (
                |s| s.name = Some("/dev/disk/by-id/x".into()),
                "name",
                "kernel disk name",
            ),
            (|s| s.name = Some("".into()), "name", "kernel disk name"),
        ] {
            let mut c = config(Vec::new());
            c.spec.install_disk = selector(f);
            match c.validate() {
                Err(e @ MachineConfigError::InstallDisk { .. }) => {
                    let text = e.to_string();
                    assert!(text.starts_with(&format!("installDisk.{field} ")), "{text}");
                    assert!(text.contains(want), "{text}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn multi_document_base_patches_the_v1alpha1_document() {
        let base = format!(
            "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://link.example:8099\n---\n{BASE}---\napiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: nut-client\n---\n"
        );
        let mut c = config(vec![json!({"machine": {"type": "controlplane"}})]);
        c.spec.base = base;
        c.validate().unwrap();
        let text = c.render(ID, &hardware()).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 3, "{text}");
        assert_eq!(
            docs[0],
            json!({"apiVersion": "v1alpha1", "kind": "SideroLinkConfig", "apiUrl": "https://link.example:8099"})
        );
        assert_eq!(docs[1]["machine"]["type"], json!("controlplane"));
        assert_eq!(docs[1]["machine"]["network"]["hostname"], json!(ID));
        assert_eq!(docs[1]["machine"]["install"]["disk"], json!("/dev/sdb"));
        assert_eq!(docs[2]["name"], json!("nut-client"));
        assert!(
            text.starts_with("apiVersion: v1alpha1\nkind: SideroLinkConfig\n"),
            "{text}"
        );

        // Without a v1alpha1 document, the first one is patched.
        let mut c = config(vec![json!({"extra": 1})]);
        c.spec.base = "kind: A\n---\nkind: B\n".into();
        let text = c.render(ID, &hardware()).unwrap();
        assert!(text.starts_with("kind: A\nextra: 1\nmachine:\n"), "{text}");
        assert!(text.ends_with("---\nkind: B\n"), "{text}");
    }

    #[test]
    fn render_refuses_a_config_without_maps_where_it_writes() {
        let c = config(vec![json!({"machine": {"network": "dhcp"}})]);
        assert_eq!(
            c.render(ID, &hardware()).unwrap_err(),
            RenderError::NotAMap {
                path: "machine.network".into(),
                found: "a string"
            }
        );
        let c = config(vec![
            json!([{"op": "replace", "path": "/machine", "value": [1]}]),
        ]);
        assert_eq!(
            c.render(ID, &hardware()).unwrap_err().to_string(),
            "machine in the patched config is a list, not a map"
        );
        // A null is an empty map.
        let c = config(vec![
            json!({"machine": {"network": {"$patch": "delete"}, "install": null}}),
        ]);
        let got = render(&c, &hardware()).unwrap();
        assert_eq!(got["machine"]["network"], json!({"hostname": ID}));
        assert_eq!(got["machine"]["install"], json!({"disk": "/dev/sdb"}));
    }

    #[test]
    fn base_and_patch_validation() {
        for (base, want) in [
            ("", "base: holds no YAML document"),
            ("---\n---\n", "base: holds no YAML document"),
            ("machine: [", "base: document 0: "),
            (
                "- a\n- b\n",
                "base: document 0, the one patches apply to, is a list, not a map",
            ),
            (
                "machine:\n  1: x\n",
                "base: document 0: at \"/machine\": the key 1 is not a string",
            ),
            (
                "machine: !custom x\n",
                "YAML tags (!custom) are not supported",
            ),
            ("a: 1\na: 2\n", "duplicate entry"),
        ] {
            let mut c = config(Vec::new());
            c.spec.base = base.into();
            let e = c.validate().unwrap_err();
            assert!(matches!(e, MachineConfigError::Base(_)), "{base:?}: {e:?}");
            assert!(e.to_string().contains(want), "{base:?}: {e}");
        }
        for (patch, want) in [
            (json!(1), "patch 0: is a number; expected a JSON Patch"),
            (json!(null), "patch 0: is null"),
            (json!(true), "patch 0: is a boolean"),
            (
                json!({"op": "add", "path": "/a", "value": 1}),
                "looks like one JSON Patch operation",
            ),
            (
                json!([{"op": "frobnicate", "path": "/a"}]),
                "not a valid JSON Patch: operation 0: unknown op \"frobnicate\"",
            ),
            (
                json!([{"op": "add", "path": "/a"}]),
                "missing \"value\" member",
            ),
            (
                json!([{"op": "add", "path": "a", "value": 1}]),
                "must be empty or start with \"/\"",
            ),
            (json!("machine: ["), "the patch text is not YAML or JSON"),
            (json!("just text"), "the patch text holds a string"),
            (
                json!("- op: remove\n  path: /nothing\n"),
                "does not apply to the base",
            ),
        ] {
            let c = config(vec![json!({}), patch.clone()]);
            let e = c.validate().unwrap_err();
            assert!(
                matches!(e, MachineConfigError::Patch { index: 1, .. }),
                "{patch}: {e:?}"
            );
            assert!(
                e.to_string().contains(&want.replace("patch 0", "patch 1")),
                "{patch}: {e}"
            );
        }
        // A JSON Patch written as YAML text works like the list itself.
        let c = config(vec![json!(
            "- op: add\n  path: /machine/install/wipe\n  value: true\n"
        )]);
        c.validate().unwrap();
        assert_eq!(
            render(&c, &hardware()).unwrap()["machine"]["install"]["wipe"],
            json!(true)
        );
    }

    #[test]
    fn validation_checks_shape_and_name() {
        let mut c = config(Vec::new());
        c.api_version = "v1".into();
        assert_eq!(
            c.validate(),
            Err(MachineConfigError::ApiVersion("v1".into()))
        );
        let mut c = config(Vec::new());
        c.kind = "ServerClass".into();
        assert_eq!(
            c.validate(),
            Err(MachineConfigError::Kind("ServerClass".into()))
        );
        let mut c = config(Vec::new());
        c.metadata.name = "Workers".into();
        assert!(matches!(c.validate(), Err(MachineConfigError::Name { .. })));
    }

    fn manifest() -> String {
        let base: String = BASE.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: metal.siderite.dev/v1alpha1
kind: MachineConfig
metadata:
  name: workers
spec:
  base: |
{base}  patches:
    - - op: replace
        path: /machine/install/wipe
        value: true
    - machine:
        network:
          nameservers: [10.20.0.1]
    - |
      machine:
        nodeLabels:
          rack: a
  hostname: w-{{serial}}
  installDisk:
    size: '>= 100GB'
    type: hdd
"
        )
    }

    #[test]
    fn parses_yaml() {
        let c = MachineConfig::parse(&manifest()).unwrap();
        assert_eq!(c.name(), "workers");
        assert_eq!(c.spec.base, BASE);
        assert_eq!(c.spec.patches.len(), 3);
        assert_eq!(c.spec.hostname.as_deref(), Some("w-{serial}"));
        assert_eq!(
            c.spec.install_disk,
            selector(|s| {
                s.size = Some(">= 100GB".into());
                s.disk_type = Some("hdd".into());
            })
        );
        let got = render(&c, &hardware()).unwrap();
        assert_eq!(got["machine"]["install"]["wipe"], json!(true));
        assert_eq!(got["machine"]["install"]["disk"], json!("/dev/sdc"));
        assert_eq!(got["machine"]["nodeLabels"], json!({"rack": "a"}));
        assert_eq!(
            got["machine"]["network"],
            json!({"nameservers": ["10.20.0.1"], "hostname": "w-7b5qz31"})
        );
        let again = MachineConfig::parse(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn parses_json() {
        let c = MachineConfig::parse(&manifest()).unwrap();
        let json = serde_json::to_string_pretty(&c).unwrap();
        assert!(json.contains("\"installDisk\""), "{json}");
        assert!(json.contains("\"type\": \"hdd\""), "{json}");
        assert_eq!(MachineConfig::parse(&json).unwrap(), c);
        let minimal = r#"{"apiVersion": "metal.siderite.dev/v1alpha1", "kind": "MachineConfig",
            "metadata": {"name": "m"}, "spec": {"base": "version: v1alpha1\nmachine: {}\n"}}"#;
        let c = MachineConfig::parse(minimal).unwrap();
        assert_eq!(
            c.render(ID, &hardware()).unwrap(),
            format!("version: v1alpha1\nmachine:\n  install:\n    disk: /dev/sdb\n  network:\n    hostname: {ID}\n")
        );
    }

    #[test]
    fn parse_rejects_unknown_fields() {
        let text = manifest();
        for (from, to, want) in [
            (
                "  hostname:",
                "  hostName: x\n  hostname:",
                "unknown field `hostName`",
            ),
            (
                "    type: hdd",
                "    type: hdd\n    wwid: x",
                "unknown field `wwid`",
            ),
            (
                "  name: workers",
                "  name: workers\n  owner: me",
                "unknown field `owner`",
            ),
            (
                "kind: MachineConfig",
                "kind: MachineConfig\nstatus: {}",
                "unknown field `status`",
            ),
        ] {
            let e = MachineConfig::parse(&text.replacen(from, to, 1)).unwrap_err();
            assert!(
                matches!(&e, MachineConfigError::Parse(m) if m.contains(want)),
                "{want}: {e}"
            );
        }
        let e = MachineConfig::parse(&text.replace("  base: |", "  bass: |")).unwrap_err();
        assert!(e.to_string().contains("unknown field `bass`"), "{e}");
        let e = MachineConfig::parse(&text.replace("name: workers", "name: Workers")).unwrap_err();
        assert!(matches!(e, MachineConfigError::Name { .. }), "{e}");
        let e = MachineConfig::parse("{").unwrap_err();
        assert!(e.to_string().starts_with("invalid JSON"), "{e}");
    }

    #[test]
    fn size_matching() {
        let m = |s: &str| SizeMatch::parse(s).unwrap();
        assert!(m(">=10GB").holds(10 * GB));
        assert!(!m(">10GB").holds(10 * GB));
        assert!(m("<= 1TB").holds(1000 * GB));
        assert!(!m("< 1TB").holds(1000 * GB));
        assert!(m("100GB").holds(100 * GB + GB));
        assert!(m("100GB").holds(99 * GB));
        assert!(!m("100GB").holds(102 * GB));
        assert!(!m("== 100GB").holds(98 * GB));
        assert_eq!(m("  >=  10 GiB ").bytes, 10 * GIB);
        assert_eq!(m("== 8GiB").to_string(), "within 1% of 8GiB");
        assert_eq!(m(">= 8GiB").to_string(), ">= 8GiB");
    }
}
