//! `siderite backup` / `siderite restore`: every key of a store (secrets included, so a
//! cluster can move to another store without losing its machines' credentials) to a
//! file and back. Offline tools: they open the store themselves.
//!
//! The file is JSON lines:
//! ```text
//! {"format":"siderite-backup","version":1,"created":"2025-01-01T00:00:00Z","keys":2}
//! {"key":"servers/a","value_b64":"..."}
//! {"key":"secrets/session/a","value_b64":"..."}
//! {"sha256":"<hex of every byte above, newlines included>"}
//! ```
//! Keys are in key order. Revisions are not kept: they belong to the store that wrote them,
//! and a restored key gets the target store's revision.
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Precondition, Store, StoreError, Txn, TxnOutcome};

pub const FORMAT: &str = "siderite-backup";
pub const VERSION: u32 = 1;
/// Ops per restore transaction (etcd's default --max-txn-ops is 128).
pub const RESTORE_BATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable backup: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the target store already holds {keys} keys; restore into an empty store, or pass \
         --force to replace its contents with the backup's"
    )]
    NotEmpty { keys: usize },
    #[error("{key} was written by someone else during the restore; {written} keys were restored before it")]
    Conflict { key: String, written: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created: String,
    keys: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    value_b64: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    sha256: String,
}

/// A verified backup file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub created: String,
    /// In key order.
    pub entries: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub keys: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub written: usize,
    /// Keys of the target that the backup does not have (with `force` only).
    pub deleted: usize,
}

/// Writes every key of `store` to `out` (through `out.tmp`, renamed when complete; 0600).
pub async fn backup(store: &dyn Store, out: &Path) -> Result<BackupSummary, BackupError> {
    let entries: Vec<(String, Vec<u8>)> = store
        .list("")
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write_file(&out, &created, &entries))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
}

fn write_file(
    out: &Path,
    created: &str,
    entries: &[(String, Vec<u8>)],
) -> Result<BackupSummary, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::File { path, source }
    };
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err(&tmp))?;
    // An existing .tmp keeps its old mode through O_CREAT: set it.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(file_err(&tmp))?;
    let mut w = std::io::BufWriter::new(file);
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut line = |w: &mut std::io::BufWriter<std::fs::File>, text: String| {
        let text = text + "\n";
        hash.update(text.as_bytes());
        bytes += text.len() as u64;
        w.write_all(text.as_bytes())
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        created: created.into(),
        keys: entries.len(),
    };
    line(&mut w, json(&header)).map_err(file_err(&tmp))?;
    for (key, value) in entries {
        let entry = Entry {
            key: key.clone(),
            value_b64: base64::engine::general_purpose::STANDARD.encode(value),
        };
        line(&mut w, json(&entry)).map_err(file_err(&tmp))?;
    }
    let trailer = Trailer {
        sha256: hex(&hash.finalize()),
    };
    let trailer = json(&trailer) + "\n";
    bytes += trailer.len() as u64;
    w.write_all(trailer.as_bytes()).map_err(file_err(&tmp))?;
    let file = w.into_inner().map_err(|e| BackupError::File {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(file_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, out).map_err(file_err(out))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err(dir))?;
    }
    Ok(BackupSummary {
        keys: entries.len(),
        bytes,
    })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain structs serialize")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and verifies a backup file: the header, every entry, the checksum over them, and
/// nothing after it. A truncated or altered file is refused whole.
pub fn read(path: &Path) -> Result<Backup, BackupError> {
    let corrupt = |reason: String| BackupError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| BackupError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut hash = Sha256::new();
    let mut header: Option<Header> = None;
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut trailer: Option<Trailer> = None;
    let mut raw = String::new();
    let mut number = 0usize;
    loop {
        raw.clear();
        let n = reader
            .read_line(&mut raw)
            .map_err(|e| corrupt(format!("line {}: {e}", number + 1)))?;
        if n == 0 {
            break;
        }
        number += 1;
        if trailer.is_some() {
            return Err(corrupt(format!(
                "line {number}: data after the checksum line"
            )));
        }
        if !raw.ends_with('\n') {
            return Err(corrupt(format!(
                "line {number}: truncated (no end of line)"
            )));
        }
        let text = raw.trim_end_matches('\n');
        if header.is_none() {
            let h: Header = serde_json::from_str(text)
                .map_err(|e| corrupt(format!("line 1 is not a backup header: {e}")))?;
            if h.format != FORMAT {
                return Err(corrupt(format!(
                    "format {:?}, expected {FORMAT:?}",
                    h.format
                )));
            }
            if h.version != VERSION {
                return Err(corrupt(format!(
                    "version {} (this siderite reads version {VERSION})",
                    h.version
                )));
            }
            header = Some(h);
            hash.update(raw.as_bytes());
            continue;
        }
        if let Ok(t) = serde_json::from_str::<Trailer>(text) {
            trailer = Some(t);
            continue;
        }
        let e: Entry = serde_json::from_str(text)
            .map_err(|e| corrupt(format!("line {number} is not an entry: {e}")))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(&e.value_b64)
            .map_err(|err| corrupt(format!("line {number} ({}): value: {err}", e.key)))?;
        if let Some((last, _)) = entries.last() {
            if *last >= e.key {
                return Err(corrupt(format!(
                    "line {number}: key {} is out of order or repeated",
                    e.key
                )));
            }
        }
        entries.push((e.key, value));
        hash.update(raw.as_bytes());
    }
    let header = header.ok_or_else(|| corrupt("empty file".into()))?;
    let trailer =
        trailer.ok_or_else(|| corrupt("truncated: no checksum line at the end".into()))?;
    let actual = hex(&hash.finalize());
    if trailer.sha256 != actual {
        return Err(corrupt(format!(
            "checksum mismatch: the file says {}, its contents hash to {actual}",
            trailer.sha256
        )));
    }
    if header.keys != entries.len() {
        return Err(corrupt(format!(
            "the header counts {} keys, the file holds {}",
            header.keys,
            entries.len()
        )));
    }
    Ok(Backup {
        created: header.created,
        entries,
    })
}

/// Verifies the file at `input`, then writes every key into `store`, at most
/// [`RESTORE_BATCH`] ops per transaction. An empty target is required unless `force`,
/// which makes the target equal to the backup (keys the backup lacks are deleted). Without
/// `force` every write requires its key to be absent, so a concurrent writer is noticed.
/// Not atomic as a whole: after a failure, run it again with `force`.
pub async fn restore(
    store: &dyn Store,
    input: &Path,
    force: bool,
) -> Result<RestoreSummary, BackupError> {
    let path = input.to_path_buf();
    let backup = tokio::task::spawn_blocking(move || read(&path))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
    let existing = store.list("").await?;
    if !existing.is_empty() && !force {
        return Err(BackupError::NotEmpty {
            keys: existing.len(),
        });
    }
    let mut written = 0;
    for chunk in backup.entries.chunks(RESTORE_BATCH) {
        let mut txn = Txn::new();
        for (key, value) in chunk {
            if !force {
                txn = txn.require(Precondition::Absent(key.clone()));
            }
            txn = txn.put(key.clone(), value.clone());
        }
        if let TxnOutcome::Conflict(key) = store.txn(txn).await? {
            return Err(BackupError::Conflict { key, written });
        }
        written += chunk.len();
    }
    let keep: std::collections::HashSet<&str> =
        backup.entries.iter().map(|(k, _)| k.as_str()).collect();
    let extra: Vec<&str> = existing
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !keep.contains(k))
        .collect();
    for chunk in extra.chunks(RESTORE_BATCH) {
        let mut txn = Txn::new();
        for key in chunk {
            txn = txn.delete(*key);
        }
        store.txn(txn).await?;
    }
    Ok(RestoreSummary {
        written,
        deleted: extra.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    async fn filled() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("a")).unwrap();
        let mut txn = Txn::new();
        for i in 0..250u32 {
            txn = txn.put(format!("servers/{i:04}"), i.to_le_bytes().repeat(500));
        }
        txn = txn
            .put("secrets/session/0001", b"s3cr\x00t\xff".to_vec())
            .put("secrets/machine/0001", b"token".to_vec())
            .put("empty", Vec::new());
        store.txn(txn).await.unwrap();
        (dir, store)
    }

    async fn contents(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
        store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect()
    }

    #[tokio::test]
    async fn round_trip_between_embedded_stores() {
        let (dir, source) = filled().await;
        let file = dir.path().join("backup.jsonl");
        let summary = backup(&source, &file).await.unwrap();
        assert_eq!(summary.keys, 253);
        assert_eq!(summary.bytes, std::fs::metadata(&file).unwrap().len());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("backup.jsonl.tmp").exists());

        let text = std::fs::read_to_string(&file).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["format"], "siderite-backup");
        assert_eq!(first["version"], 1);
        assert_eq!(first["keys"], 253);
        assert!(text.contains("\"key\":\"secrets/session/0001\""));

        let target = EmbeddedStore::open(&dir.path().join("b")).unwrap();
        let restored = restore(&target, &file, false).await.unwrap();
        assert_eq!(
            restored,
            RestoreSummary {
                written: 253,
                deleted: 0
            }
        );
        assert_eq!(contents(&target).await, contents(&source).await);
    }

    #[tokio::test]
    async fn a_corrupt_or_truncated_file_is_refused_and_nothing_is_written() {
        let (dir, source) = filled().await;
        let file = dir.path().join("backup.jsonl");
        backup(&source, &file).await.unwrap();
        let good = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = good.lines().collect();

        let created = serde_json::from_str::<serde_json::Value>(lines[0]).unwrap()["created"]
            .as_str()
            .unwrap()
            .to_string();
        let redated = good.replacen(&created, "1999-01-01T00:00:00Z", 1);
        let flipped = good.replacen("\"key\":\"servers/0007\"", "\"key\":\"servers/0008\"", 1);
        let truncated_at_entry = lines[..100].join("\n") + "\n";
        let cut_mid_line = &good[..good.len() / 2];
        let no_trailer = lines[..lines.len() - 1].join("\n") + "\n";
        let mut fewer = lines.clone();
        fewer.remove(5);
        let cases = [
            ("header altered", redated),
            ("flipped", flipped),
            ("truncated", truncated_at_entry),
            ("cut mid-line", cut_mid_line.to_string()),
            ("no trailer", no_trailer),
            ("a line removed", fewer.join("\n") + "\n"),
            (
                "trailing data",
                good.clone() + "{\"key\":\"x\",\"value_b64\":\"\"}\n",
            ),
            ("empty", String::new()),
        ];
        let target = EmbeddedStore::open(&dir.path().join("b")).unwrap();
        for (name, text) in cases {
            let bad = dir.path().join(format!("{name}.jsonl"));
            std::fs::write(&bad, text).unwrap();
            let err = restore(&target, &bad, false).await.unwrap_err();
            assert!(matches!(err, BackupError::Corrupt { .. }), "{name}: {err}");
            // Refused with --force too: a bad file never reaches the store.
            let err = restore(&target, &bad, true).await.unwrap_err();
            assert!(matches!(err, BackupError::Corrupt { .. }), "{name}: {err}");
            assert!(
                contents(&target).await.is_empty(),
                "{name}: something was written"
            );
        }
    }

    #[tokio::test]
    async fn a_non_empty_target_is_refused_unless_forced() {
        let (dir, source) = filled().await;
        let file = dir.path().join("backup.jsonl");
        backup(&source, &file).await.unwrap();
        let target = EmbeddedStore::open(&dir.path().join("b")).unwrap();
        target
            .txn(
                Txn::new()
                    .put("servers/0001", b"other".to_vec())
                    .put("stale/key", b"x".to_vec()),
            )
            .await
            .unwrap();
        let err = restore(&target, &file, false).await.unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty { keys: 2 }), "{err}");
        assert!(err.to_string().contains("--force"));
        assert_eq!(
            target.get("servers/0001").await.unwrap().unwrap().value,
            b"other".to_vec()
        );
        assert!(target.get("servers/0002").await.unwrap().is_none());

        let forced = restore(&target, &file, true).await.unwrap();
        assert_eq!(
            forced,
            RestoreSummary {
                written: 253,
                deleted: 1
            }
        );
        assert_eq!(contents(&target).await, contents(&source).await);
    }

    #[tokio::test]
    async fn an_empty_store_backs_up_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let empty = EmbeddedStore::open(&dir.path().join("a")).unwrap();
        let file = dir.path().join("backup.jsonl");
        assert_eq!(backup(&empty, &file).await.unwrap().keys, 0);
        assert_eq!(read(&file).unwrap().entries, vec![]);
        let target = EmbeddedStore::open(&dir.path().join("b")).unwrap();
        assert_eq!(restore(&target, &file, false).await.unwrap().written, 0);
    }
}
