//! The operator's client config: a kubeconfig-like YAML file naming servers (address and
//! CA), users (bearer tokens) and contexts pairing them. `siderite serve` writes one with
//! an admin and a read-only context on its first start; the CLI reads it with `--siderite-config`
//! (or `$SIDERITE_CONFIG`).
use std::path::Path;

use serde::{Deserialize, Serialize};
use siderite::tls::CaPin;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    pub api_version: String,
    pub kind: String,
    pub current_context: String,
    pub clusters: Vec<Cluster>,
    pub users: Vec<User>,
    pub contexts: Vec<Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    pub name: String,
    /// `https://host:port` of one replica (gRPC and the metadata service).
    pub server: String,
    /// `sha256:<hex>` of the CA certificate: what clients pin.
    pub ca_sha256: String,
    /// The CA certificate, PEM, for tools that want the certificate itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority_data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub name: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    pub name: String,
    pub cluster: String,
    pub user: String,
}

/// What one context resolves to: where, whom to trust, which token.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    pub server: String,
    pub pin: CaPin,
    pub token: String,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("server", &self.server)
            .field("pin", &self.pin)
            .field("token", &"<redacted>")
            .finish()
    }
}

pub const API_VERSION: &str = "siderite.dev/v1";
pub const KIND: &str = "Config";

impl ClientConfig {
    /// One cluster with one context per (user name, token).
    pub fn new(server: &str, pin: CaPin, ca_pem: &str, users: &[(String, String)]) -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            current_context: users.first().map(|u| u.0.clone()).unwrap_or_default(),
            clusters: vec![Cluster {
                name: "siderite".into(),
                server: server.into(),
                ca_sha256: pin.to_string(),
                certificate_authority_data: ca_pem.into(),
            }],
            users: users
                .iter()
                .map(|(n, t)| User {
                    name: n.clone(),
                    token: t.clone(),
                })
                .collect(),
            contexts: users
                .iter()
                .map(|(n, _)| Context {
                    name: n.clone(),
                    cluster: "siderite".into(),
                    user: n.clone(),
                })
                .collect(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Self = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if c.api_version != API_VERSION || c.kind != KIND {
            return Err(format!(
                "apiVersion/kind must be {API_VERSION}/{KIND}, not {}/{}",
                c.api_version, c.kind
            ));
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file readable by its owner only (it holds bearer tokens).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_yaml_ng::to_string(self).expect("a config serializes");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The named context, or the current one.
    pub fn resolve(&self, context: Option<&str>) -> Result<Resolved, String> {
        let name = context.unwrap_or(&self.current_context);
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no context {name:?} in the config"))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .ok_or_else(|| format!("context {name:?} names unknown cluster {:?}", ctx.cluster))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == ctx.user)
            .ok_or_else(|| format!("context {name:?} names unknown user {:?}", ctx.user))?;
        let pin: CaPin = cluster
            .ca_sha256
            .parse()
            .map_err(|e| format!("cluster {:?}: ca-sha256: {e}", cluster.name))?;
        Ok(Resolved {
            server: cluster.server.clone(),
            pin,
            token: user.token.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_resolve() {
        let pin = CaPin::of(b"ca");
        let c = ClientConfig::new(
            "https://127.0.0.1:50051",
            pin,
            "PEM",
            &[
                ("admin".into(), "admin.s".into()),
                ("viewer".into(), "viewer.t".into()),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        c.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = ClientConfig::load(&path).unwrap();
        assert_eq!(back, c);
        let r = back.resolve(None).unwrap();
        assert_eq!((r.token.as_str(), r.pin), ("admin.s", pin));
        assert_eq!(back.resolve(Some("viewer")).unwrap().token, "viewer.t");
        assert!(back.resolve(Some("nope")).is_err());
        assert!(!format!("{r:?}").contains("admin.s"));
        assert!(ClientConfig::parse("apiVersion: x\nkind: Config\ncurrent-context: a\nclusters: []\nusers: []\ncontexts: []\n").is_err());
    }
}
