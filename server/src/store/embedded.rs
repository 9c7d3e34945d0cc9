//! The default store: one redb file in the data directory. ACID and crash-safe (a commit
//! is fsynced before it is acknowledged). Writes go through one writer thread that
//! commits whatever has queued up as one redb transaction (group commit), so throughput
//! under many concurrent registrations is not bounded by one fsync per request, while
//! each request keeps its own all-or-nothing preconditions. After each commit the writer
//! broadcasts the keys the committed transactions wrote; watches filter that by prefix.
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{Op, Precondition, Revision, Store, StoreError, Txn, TxnOutcome, Versioned};

/// key -> 8-byte little-endian revision followed by the value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// At most this many requests share one commit.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<TxnOutcome, StoreError>>;

pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: std::sync::mpsc::SyncSender<(Txn, Reply)>,
    /// The keys each commit wrote (put or deleted), for watches.
    changes: broadcast::Sender<Arc<Vec<String>>>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn encode(rev: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(raw: &[u8]) -> Result<Versioned, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Io(
            "corrupt record: shorter than its revision".into(),
        ));
    }
    let (rev, value) = raw.split_at(8);
    Ok(Versioned {
        revision: u64::from_le_bytes(rev.try_into().expect("8 bytes")),
        value: value.to_vec(),
    })
}

impl EmbeddedStore {
    /// Opens (or creates) `DIR/siderite.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(dir.join("siderite.redb")).map_err(|e| match e {
            // redb locks its file: one process at a time (the server, or an offline tool).
            redb::DatabaseError::DatabaseAlreadyOpen => open_err(
                "the database is already open in another process (a running `siderite serve`?); \
                 stop it first: the embedded store allows one process at a time"
                    .into(),
            ),
            e => open_err(e.to_string()),
        })?;
        let w = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            w.open_table(KV).map_err(|e| open_err(e.to_string()))?;
            w.open_table(META).map_err(|e| open_err(e.to_string()))?;
        }
        w.commit().map_err(|e| open_err(e.to_string()))?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Txn, Reply)>(4096);
        let wdb = db.clone();
        let (changes, _) = broadcast::channel(super::WATCH_BUFFER);
        let wchanges = changes.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&wdb, rx, &wchanges))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            db,
            writer: tx,
            changes,
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(io)?
        }
    }
}

fn writer_loop(
    db: &Database,
    rx: std::sync::mpsc::Receiver<(Txn, Reply)>,
    changes: &broadcast::Sender<Arc<Vec<String>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        match commit_batch(db, batch.iter().map(|(t, _)| t)) {
            Ok(outcomes) => {
                // Durable now; watches hear of it before the writers do.
                let mut written: Vec<String> = Vec::new();
                for ((txn, _), outcome) in batch.iter().zip(&outcomes) {
                    if !matches!(outcome, TxnOutcome::Committed(_)) {
                        continue;
                    }
                    // Each key once per transaction, as etcd reports it.
                    let start = written.len();
                    for op in &txn.ops {
                        let (Op::Put(k, _) | Op::Delete(k)) = op;
                        if !written[start..].contains(k) {
                            written.push(k.clone());
                        }
                    }
                }
                if !written.is_empty() {
                    // No receiver is no error; a full channel drops the oldest, never blocks.
                    let _ = changes.send(Arc::new(written));
                }
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
    }
}

/// Applies each transaction in order inside one redb write transaction. A transaction
/// whose precondition fails contributes nothing; the others see its absence.
fn commit_batch<'a>(
    db: &Database,
    txns: impl Iterator<Item = &'a Txn>,
) -> Result<Vec<TxnOutcome>, StoreError> {
    let w = db.begin_write().map_err(io)?;
    let mut outcomes = Vec::new();
    {
        let mut kv = w.open_table(KV).map_err(io)?;
        let mut meta = w.open_table(META).map_err(io)?;
        let mut rev = meta
            .get(REVISION)
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or(0);
        let start = rev;
        for txn in txns {
            let mut conflict = None;
            for p in &txn.preconditions {
                let current = kv
                    .get(p.key())
                    .map_err(io)?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                let ok = match (p, &current) {
                    (Precondition::Absent(_), None) => true,
                    (Precondition::At(_, want), Some(v)) => v.revision == *want,
                    _ => false,
                };
                if !ok {
                    conflict = Some(p.key().to_string());
                    break;
                }
            }
            if let Some(key) = conflict {
                outcomes.push(TxnOutcome::Conflict(key));
                continue;
            }
            rev += 1;
            for op in &txn.ops {
                match op {
                    Op::Put(k, v) => {
                        kv.insert(k.as_str(), encode(rev, v).as_slice())
                            .map_err(io)?;
                    }
                    Op::Delete(k) => {
                        kv.remove(k.as_str()).map_err(io)?;
                    }
                }
            }
            outcomes.push(TxnOutcome::Committed(rev));
        }
        if rev != start {
            meta.insert(REVISION, rev).map_err(io)?;
        }
    }
    w.commit().map_err(io)?;
    Ok(outcomes)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = key.to_string();
        self.read(move |db| {
            let r = db.begin_read().map_err(io)?;
            let kv = r.open_table(KV).map_err(io)?;
            kv.get(key.as_str())
                .map_err(io)?
                .map(|g| decode(g.value()))
                .transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |db| {
            let r = db.begin_read().map_err(io)?;
            let kv = r.open_table(KV).map_err(io)?;
            let mut out = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(io)? {
                let (k, v) = item.map_err(io)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.value().to_string(), decode(v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let writer = self.writer.clone();
        // The channel is bounded: a full queue applies back-pressure off the async threads.
        tokio::task::spawn_blocking(move || writer.send((txn, tx)))
            .await
            .map_err(io)?
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn watch(&self, prefix: &str) -> tokio::sync::mpsc::Receiver<String> {
        super::forward_matching(self.changes.subscribe(), prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    fn fresh() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, store)
    }

    macro_rules! suite_case {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = fresh();
                suite::$name(&store).await;
            }
        };
    }

    suite_case!(cas_and_atomicity);
    suite_case!(conflict_names_the_first_failing_key);
    suite_case!(list_order_and_prefix_isolation);
    suite_case!(delete_with_precondition);
    suite_case!(revisions_strictly_increase);
    suite_case!(last_op_on_a_key_wins);
    suite_case!(values_are_bytes);
    suite_case!(watch_sees_writes_under_its_prefix);

    #[tokio::test]
    async fn many_keys_listed_in_order() {
        let (_dir, store) = fresh();
        suite::many_keys_listed_in_order(&store, 2_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suite_concurrent_creates() {
        let (_dir, store) = fresh();
        suite::concurrent_creates_have_one_winner(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn suite_run_all() {
        let dirs = std::sync::Mutex::new(Vec::new());
        suite::run_all(|| {
            let (dir, store) = fresh();
            dirs.lock().unwrap().push(dir);
            async move { Arc::new(store) as Arc<dyn Store> }
        })
        .await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.txn(Txn::new().put("k", b"v".to_vec())).await.unwrap();
        }
        // The writer thread holds the database until its channel closes.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v".to_vec());
    }

    #[test]
    fn a_second_open_says_why() {
        let (dir, _store) = fresh();
        let err = EmbeddedStore::open(dir.path())
            .err()
            .expect("a second open fails");
        let msg = err.to_string();
        assert!(
            msg.contains("already open") && msg.contains("siderite serve"),
            "{msg}"
        );
    }
}
