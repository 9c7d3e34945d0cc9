//! What the stand-in "installs": the machine config itself, behind a header, at offset 0
//! of `machine.install.disk`, so a test can read back exactly what the machine was given.
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The first bytes of an installed disk.
pub const MAGIC: &str = "SIDERITE-STANDIN-CONFIG v1";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the config is not valid YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("the config has no machine.install.disk (diskSelector is not supported)")]
    NoInstallDisk,
    #[error("machine.install.disk {0:?} is not an absolute device path")]
    BadInstallDisk(String),
}

/// `machine.install.disk` of the first YAML document that has one (Talos configs may be
/// several documents; the machine config is one of them).
pub fn install_disk(config: &[u8]) -> Result<String, ConfigError> {
    use serde::Deserialize;
    for doc in serde_yaml_ng::Deserializer::from_slice(config) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(ConfigError::Yaml)?;
        let Some(disk) = value["machine"]["install"]["disk"].as_str() else {
            continue;
        };
        if !disk.starts_with('/') || disk.len() < 2 {
            return Err(ConfigError::BadInstallDisk(disk.to_string()));
        }
        return Ok(disk.to_string());
    }
    Err(ConfigError::NoInstallDisk)
}

/// `SIDERITE-STANDIN-CONFIG v1 len=<N> sha256=<hex>\n`.
pub fn header(config: &[u8]) -> String {
    let digest = Sha256::digest(config);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{MAGIC} len={} sha256={hex}\n", config.len())
}

/// Writes the header and `config` at offset 0 of `disk` (a block device, or a file in
/// tests; never created) and waits until they are on stable storage.
pub fn write_config(disk: &Path, config: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    let mut bytes = header(config).into_bytes();
    bytes.extend_from_slice(config);
    f.write_all(&bytes)?;
    f.sync_all()
}

/// Waits for the device node to appear (devtmpfs adds it once the driver has probed).
pub fn wait_for(disk: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !disk.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_install_disk() {
        let yaml = b"version: v1alpha1\nmachine:\n  type: worker\n  install:\n    disk: /dev/vda\n    image: x\n";
        assert_eq!(install_disk(yaml).unwrap(), "/dev/vda");
        let multi = b"apiVersion: v1alpha1\nkind: SideroLinkConfig\n---\nmachine: {install: {disk: /dev/nvme0n1}}\n";
        assert_eq!(install_disk(multi).unwrap(), "/dev/nvme0n1");
    }

    #[test]
    fn refuses_configs_without_a_usable_disk() {
        for yaml in [
            &b""[..],
            b"machine: {install: {diskSelector: {size: '>10GB'}}}",
            b"machine: {type: worker}",
            b"just a string",
        ] {
            assert!(matches!(
                install_disk(yaml),
                Err(ConfigError::NoInstallDisk)
            ));
        }
        assert!(matches!(
            install_disk(b"machine: {install: {disk: vda}}"),
            Err(ConfigError::BadInstallDisk(_))
        ));
        assert!(matches!(
            install_disk(b"machine: [unclosed"),
            Err(ConfigError::Yaml(_))
        ));
    }

    #[test]
    fn writes_header_and_config_at_offset_zero() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        write_config(&disk, b"abc").unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        let want = "SIDERITE-STANDIN-CONFIG v1 len=3 sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\nabc";
        assert_eq!(&bytes[..want.len()], want.as_bytes());
        assert!(bytes[want.len()..].iter().all(|b| *b == 0));
        assert_eq!(bytes.len(), 1 << 20, "a disk is written, never resized");
        assert!(write_config(&dir.path().join("missing"), b"x").is_err());
    }
}
