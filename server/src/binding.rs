//! The `ServerBinding` resource: one server held, exclusively, for one install (an
//! Environment and a MachineConfig). Created only by allocation, in the same store
//! transaction that moves the server to `allocated`; deleted in the one that releases it.
use serde::{Deserialize, Serialize};

use crate::environment::Metadata;

pub const KIND: &str = "ServerBinding";
pub const PREFIX: &str = "bindings/";

pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The per-machine metadata token of a server: written with its binding, deleted on
/// release; never part of a resource.
pub fn token_key(server: &str) -> String {
    format!("secrets/machine/{server}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerBinding {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: BindingSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BindingSpec {
    pub server: String,
    pub server_class: String,
    pub environment: String,
    pub machine_config: String,
}

impl ServerBinding {
    pub fn new(name: &str, spec: BindingSpec) -> Self {
        ServerBinding {
            api_version: crate::model::API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: name.to_string(),
                uid: uuid::Uuid::new_v4().to_string(),
                creation_timestamp: crate::model::now_rfc3339(),
                ..Default::default()
            },
            spec,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8], revision: u64) -> Result<Self, serde_json::Error> {
        let mut b: ServerBinding = serde_json::from_slice(bytes)?;
        b.metadata.resource_version = revision;
        Ok(b)
    }
}

/// A generated binding name: the class and a short random suffix.
pub fn generate_name(class: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{class}-{}", &suffix[..8])
}

/// A fresh per-machine token: 256 random bits, hex.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets without an early exit, so timing does not tell how much matched.
pub fn secret_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_fields() {
        let b = ServerBinding::new(
            "web-1",
            BindingSpec {
                server: "s".into(),
                server_class: "c".into(),
                environment: "e".into(),
                machine_config: "m".into(),
            },
        );
        let back = ServerBinding::decode(&b.encode(), 7).unwrap();
        assert_eq!(back.spec, b.spec);
        assert_eq!(back.metadata.resource_version, 7);
        let mut v: serde_json::Value = serde_json::from_slice(&b.encode()).unwrap();
        v["spec"]["colour"] = "red".into();
        assert!(ServerBinding::decode(&serde_json::to_vec(&v).unwrap(), 1).is_err());
    }

    #[test]
    fn tokens_and_comparison() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(secret_eq(&a, &a.clone()));
        assert!(!secret_eq(&a, &b));
        assert!(!secret_eq(&a, &a[..63]));
        assert!(generate_name("web").starts_with("web-"));
    }
}
