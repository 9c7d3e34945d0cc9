//! The store: a key-value space with revisions and atomic compare-and-swap transactions.
//! Everything that must not race (registrations, UUID and MAC claims, acceptance) is one
//! transaction whose preconditions name the revisions it read. The embedded backend is
//! the default (`embedded`); `etcd` is the distributed backend for several replicas. Both
//! pass the same behaviour suite ([`suite`]).
pub mod backup;
mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

/// A store-wide, strictly increasing commit number.
pub type Revision = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote this key.
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent(String),
    /// The key must exist, last written at exactly this revision.
    At(String, Revision),
}

impl Precondition {
    /// The precondition that the key is still as it was read.
    pub fn unchanged(key: impl Into<String>, read: Option<&Versioned>) -> Self {
        match read {
            Some(v) => Precondition::At(key.into(), v.revision),
            None => Precondition::Absent(key.into()),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Precondition::Absent(k) | Precondition::At(k, _) => k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// All preconditions hold and then every op is applied, or nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub preconditions: Vec<Precondition>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn require(mut self, p: Precondition) -> Self {
        self.preconditions.push(p);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put(key.into(), value));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Durable: on disk before this is returned.
    Committed(Revision),
    /// A precondition failed on this key; nothing was written.
    Conflict(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("store I/O: {0}")]
    Io(String),
    #[error("the store is shut down")]
    Closed,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;
    /// Every key starting with `prefix` that a transaction committed from now on put or
    /// deleted, sent after the commit (a key once per transaction that wrote it; a
    /// transaction committed just before the call may be reported too). Lossy by design:
    /// a receiver that falls behind by more than [`WATCH_BUFFER`] keys (or, on etcd, a
    /// watch re-established after its history was compacted) misses keys, so consumers
    /// also poll; a watch never holds up a commit. The forwarding task ends when the
    /// receiver is dropped. Call it inside a Tokio runtime.
    fn watch(&self, prefix: &str) -> tokio::sync::mpsc::Receiver<String>;
}

/// How many changed keys a watch holds for its receiver (and, on the embedded store,
/// how many committed batches wait for the slowest watch) before it drops keys.
pub const WATCH_BUFFER: usize = 1024;

/// Forwards the keys under `prefix` from a store's broadcast of committed keys to a
/// watch's channel, until the receiver or the broadcast goes away.
fn forward_matching(
    mut from: tokio::sync::broadcast::Receiver<Arc<Vec<String>>>,
    prefix: &str,
) -> tokio::sync::mpsc::Receiver<String> {
    use tokio::sync::broadcast::error::RecvError;
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        loop {
            let keys = tokio::select! {
                _ = tx.closed() => return,
                got = from.recv() => match got {
                    Ok(keys) => keys,
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(%prefix, batches = n, "store watch fell behind; keys missed");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            for k in keys.iter().filter(|k| k.starts_with(&prefix)) {
                if tx.send(k.clone()).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Where the store lives, as `siderite serve --store` and the backup tools take it:
/// `embedded` (the redb file under the data directory) or
/// `etcd://host:port[,host:port...][/namespace]` (namespace default `/siderite/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Embedded,
    Etcd {
        /// `host:port` of each member; the client balances across them.
        endpoints: Vec<String>,
        /// Prefix of every key, `/name/`.
        namespace: String,
    },
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str =
            "expected `embedded` or `etcd://host:port[,host:port...][/namespace]`";
        if s == "embedded" {
            return Ok(StoreUrl::Embedded);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!("store {s:?}: {EXPECTED}"));
        };
        let (hosts, namespace) = match rest.split_once('/') {
            Some((hosts, ns)) => (hosts, ns.trim_matches('/')),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for e in hosts.split(',') {
            let valid = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(format!(
                    "store {s:?}: endpoint {e:?} is not host:port; {EXPECTED}"
                ));
            }
            endpoints.push(e.to_string());
        }
        let namespace = if namespace.is_empty() {
            etcd::DEFAULT_NAMESPACE.to_string()
        } else {
            format!("/{namespace}/")
        };
        Ok(StoreUrl::Etcd {
            endpoints,
            namespace,
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Embedded => f.write_str("embedded"),
            StoreUrl::Etcd {
                endpoints,
                namespace,
            } => write!(
                f,
                "etcd://{}{}",
                endpoints.join(","),
                namespace.trim_end_matches('/')
            ),
        }
    }
}

/// Opens the store `url` names; `data_dir` is where the embedded one keeps its file.
pub async fn open(url: &StoreUrl, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        StoreUrl::Embedded => Arc::new(EmbeddedStore::open(data_dir)?),
        StoreUrl::Etcd {
            endpoints,
            namespace,
        } => Arc::new(EtcdStore::connect(endpoints, namespace).await?),
    })
}

/// The behaviour every backend must show. Each backend's tests call these on an empty
/// store (the embedded unit tests, and `tests/tests/etcd_store.rs` against a real etcd);
/// [`suite::run_all`] runs every case, each on a fresh store.
pub mod suite {
    use std::future::Future;

    use super::*;

    /// Every case below, each on a store `fresh` returns empty.
    pub async fn run_all<F, Fut>(mut fresh: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Arc<dyn Store>>,
    {
        cas_and_atomicity(&*fresh().await).await;
        concurrent_creates_have_one_winner(fresh().await).await;
        conflict_names_the_first_failing_key(&*fresh().await).await;
        list_order_and_prefix_isolation(&*fresh().await).await;
        delete_with_precondition(&*fresh().await).await;
        revisions_strictly_increase(&*fresh().await).await;
        last_op_on_a_key_wins(&*fresh().await).await;
        values_are_bytes(&*fresh().await).await;
        many_keys_listed_in_order(&*fresh().await, 2_000).await;
        watch_sees_writes_under_its_prefix(&*fresh().await).await;
    }

    fn committed(out: TxnOutcome) -> Revision {
        match out {
            TxnOutcome::Committed(r) => r,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
        store
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    pub async fn cas_and_atomicity(store: &dyn Store) {
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::Absent("a".into()))
                    .put("a", b"1".to_vec()),
            )
            .await
            .unwrap();
        let TxnOutcome::Committed(r1) = out else {
            panic!("{out:?}")
        };
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(
            a,
            Versioned {
                value: b"1".to_vec(),
                revision: r1
            }
        );

        // A second create of the same key conflicts and writes nothing, not even its other ops.
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::Absent("a".into()))
                    .put("a", b"2".to_vec())
                    .put("b", b"x".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out, TxnOutcome::Conflict("a".into()));
        assert!(store.get("b").await.unwrap().is_none());

        // Update at the read revision wins once; a stale revision loses.
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::At("a".into(), r1))
                    .put("a", b"3".to_vec()),
            )
            .await
            .unwrap();
        let TxnOutcome::Committed(r2) = out else {
            panic!("{out:?}")
        };
        assert!(r2 > r1);
        let stale = store
            .txn(
                Txn::new()
                    .require(Precondition::At("a".into(), r1))
                    .put("a", b"4".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(stale, TxnOutcome::Conflict("a".into()));

        store
            .txn(
                Txn::new()
                    .put("p/1", vec![1])
                    .put("p/2", vec![2])
                    .put("q", vec![3]),
            )
            .await
            .unwrap();
        assert_eq!(keys(store, "p/").await, vec!["p/1", "p/2"]);

        store.txn(Txn::new().delete("p/1")).await.unwrap();
        assert!(store.get("p/1").await.unwrap().is_none());
    }

    pub async fn concurrent_creates_have_one_winner(store: Arc<dyn Store>) {
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.txn(
                    Txn::new()
                        .require(Precondition::Absent("claim".into()))
                        .put("claim", vec![i]),
                )
                .await
                .unwrap()
            }));
        }
        let mut winners = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                TxnOutcome::Committed(_) => winners.push(i as u8),
                TxnOutcome::Conflict(k) => assert_eq!(k, "claim"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let stored = store.get("claim").await.unwrap().unwrap();
        assert_eq!(stored.value, winners);
    }

    /// Preconditions are checked in order; the conflict names the first that fails.
    pub async fn conflict_names_the_first_failing_key(store: &dyn Store) {
        let r = committed(
            store
                .txn(Txn::new().put("x", b"x".to_vec()).put("y", b"y".to_vec()))
                .await
                .unwrap(),
        );
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::At("x".into(), r))
                    .require(Precondition::Absent("y".into()))
                    .require(Precondition::At("z".into(), r))
                    .put("w", b"w".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out, TxnOutcome::Conflict("y".into()));
        // `At` on a key that does not exist fails, whatever the revision.
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::At("x".into(), r))
                    .require(Precondition::At("z".into(), r))
                    .put("w", b"w".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out, TxnOutcome::Conflict("z".into()));
        assert!(store.get("w").await.unwrap().is_none());
        // `At` on an existing key with any other revision fails.
        for wrong in [0, r - 1, r + 1] {
            let out = store
                .txn(
                    Txn::new()
                        .require(Precondition::At("x".into(), wrong))
                        .put("w", b"w".to_vec()),
                )
                .await
                .unwrap();
            assert_eq!(out, TxnOutcome::Conflict("x".into()), "At(x, {wrong})");
        }
        assert!(store.get("w").await.unwrap().is_none());
    }

    /// Keys come back in byte order; a prefix never matches a longer sibling ("a/" vs "ab/").
    pub async fn list_order_and_prefix_isolation(store: &dyn Store) {
        let written = [
            "b/1", "ab/1", "a/2", "a", "a/10", "a0", "a/", "a/1", "a/\u{e9}", "a/Z", "ab",
        ];
        let mut txn = Txn::new();
        for k in written {
            txn = txn.put(k, k.as_bytes().to_vec());
        }
        committed(store.txn(txn).await.unwrap());
        assert_eq!(
            keys(store, "a/").await,
            vec!["a/", "a/1", "a/10", "a/2", "a/Z", "a/\u{e9}"]
        );
        assert_eq!(keys(store, "ab/").await, vec!["ab/1"]);
        assert_eq!(keys(store, "ab").await, vec!["ab", "ab/1"]);
        assert_eq!(keys(store, "b/").await, vec!["b/1"]);
        assert!(keys(store, "c/").await.is_empty());
        assert!(keys(store, "a/1/").await.is_empty());
        let mut all: Vec<String> = written.iter().map(|k| k.to_string()).collect();
        all.sort();
        assert_eq!(keys(store, "").await, all);
        for (k, v) in store.list("").await.unwrap() {
            assert_eq!(v.value, k.as_bytes(), "value of {k}");
        }
    }

    /// A delete can carry a precondition like a put; a stale or absent key conflicts.
    pub async fn delete_with_precondition(store: &dyn Store) {
        let r1 = committed(store.txn(Txn::new().put("d", b"1".to_vec())).await.unwrap());
        let r2 = committed(store.txn(Txn::new().put("d", b"2".to_vec())).await.unwrap());
        let stale = store
            .txn(
                Txn::new()
                    .require(Precondition::At("d".into(), r1))
                    .delete("d"),
            )
            .await
            .unwrap();
        assert_eq!(stale, TxnOutcome::Conflict("d".into()));
        assert_eq!(store.get("d").await.unwrap().unwrap().revision, r2);
        committed(
            store
                .txn(
                    Txn::new()
                        .require(Precondition::At("d".into(), r2))
                        .delete("d"),
                )
                .await
                .unwrap(),
        );
        assert!(store.get("d").await.unwrap().is_none());
        let gone = store
            .txn(
                Txn::new()
                    .require(Precondition::At("d".into(), r2))
                    .delete("d"),
            )
            .await
            .unwrap();
        assert_eq!(gone, TxnOutcome::Conflict("d".into()));
        // Deleted means absent: it can be created again, and deleting nothing is no error.
        committed(
            store
                .txn(
                    Txn::new()
                        .require(Precondition::Absent("d".into()))
                        .put("d", b"3".to_vec()),
                )
                .await
                .unwrap(),
        );
        committed(store.txn(Txn::new().delete("never")).await.unwrap());
    }

    /// Every committed write gets a larger revision; a key keeps the revision of the
    /// transaction that last wrote it, whatever else is written later.
    pub async fn revisions_strictly_increase(store: &dyn Store) {
        let first = committed(store.txn(Txn::new().put("r/old", vec![0])).await.unwrap());
        let mut last = first;
        for i in 0..20u8 {
            let key = format!("r/{}", i % 3);
            let read = store.get(&key).await.unwrap();
            let r = committed(
                store
                    .txn(
                        Txn::new()
                            .require(Precondition::unchanged(&key, read.as_ref()))
                            .put(&key, vec![i]),
                    )
                    .await
                    .unwrap(),
            );
            assert!(r > last, "revision {r} after {last}");
            last = r;
            assert_eq!(store.get(&key).await.unwrap().unwrap().revision, r);
        }
        assert_eq!(store.get("r/old").await.unwrap().unwrap().revision, first);
        for (k, v) in store.list("r/").await.unwrap() {
            assert_eq!(
                Some(v),
                store.get(&k).await.unwrap(),
                "list and get agree on {k}"
            );
        }
        // A delete is a write too.
        let d = committed(store.txn(Txn::new().delete("r/0")).await.unwrap());
        assert!(d > last);
    }

    /// Ops apply in order: the last op on a key decides what is stored.
    pub async fn last_op_on_a_key_wins(store: &dyn Store) {
        committed(
            store
                .txn(
                    Txn::new()
                        .put("k", b"1".to_vec())
                        .put("k", b"2".to_vec())
                        .put("j", b"1".to_vec())
                        .delete("j"),
                )
                .await
                .unwrap(),
        );
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2".to_vec());
        assert!(store.get("j").await.unwrap().is_none());
        committed(
            store
                .txn(Txn::new().delete("k").put("k", b"3".to_vec()))
                .await
                .unwrap(),
        );
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"3".to_vec());
    }

    /// Values are bytes: empty, every byte value, and large ones come back unchanged.
    pub async fn values_are_bytes(store: &dyn Store) {
        let all: Vec<u8> = (0..=255u8).collect();
        let large: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        committed(
            store
                .txn(
                    Txn::new()
                        .put("v/empty", Vec::new())
                        .put("v/all", all.clone())
                        .put("v/large", large.clone()),
                )
                .await
                .unwrap(),
        );
        let empty = store
            .get("v/empty")
            .await
            .unwrap()
            .expect("an empty value exists");
        assert!(empty.value.is_empty());
        assert_eq!(store.get("v/all").await.unwrap().unwrap().value, all);
        assert_eq!(store.get("v/large").await.unwrap().unwrap().value, large);
        // An empty value is a present key, not an absent one.
        let out = store
            .txn(
                Txn::new()
                    .require(Precondition::Absent("v/empty".into()))
                    .put("v/empty", b"x".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out, TxnOutcome::Conflict("v/empty".into()));
    }

    /// `n` keys written in transactions of 100 in scrambled order come back whole and in
    /// order (a backend that pages its lists must stitch the pages together).
    pub async fn many_keys_listed_in_order(store: &dyn Store, n: usize) {
        assert!(n > 0);
        let mut order: Vec<usize> = (0..n).collect();
        // A fixed shuffle: a stride coprime with n.
        let stride = (1..).map(|s| 7919 + s).find(|s| gcd(*s, n) == 1).unwrap();
        for (i, slot) in order.iter_mut().enumerate() {
            *slot = i * stride % n;
        }
        for chunk in order.chunks(100) {
            let mut txn = Txn::new();
            for i in chunk {
                txn = txn.put(format!("many/{i:06}"), i.to_le_bytes().to_vec());
            }
            committed(store.txn(txn).await.unwrap());
        }
        committed(store.txn(Txn::new().put("many0", vec![])).await.unwrap());
        let listed = store.list("many/").await.unwrap();
        assert_eq!(listed.len(), n);
        for (i, (k, v)) in listed.iter().enumerate() {
            assert_eq!(k, &format!("many/{i:06}"));
            assert_eq!(v.value, i.to_le_bytes().to_vec(), "value of {k}");
        }
    }

    /// A watch reports the keys a committed transaction put or deleted under its prefix,
    /// and nothing outside it ("w/" does not match "wx").
    pub async fn watch_sees_writes_under_its_prefix(store: &dyn Store) {
        use std::time::Duration;
        const WAIT: Duration = Duration::from_secs(10);
        let mut rx = store.watch("w/");
        committed(
            store
                .txn(Txn::new().put("w/a", b"1".to_vec()).put("wx", vec![]))
                .await
                .unwrap(),
        );
        committed(store.txn(Txn::new().put("other", vec![])).await.unwrap());
        committed(store.txn(Txn::new().delete("w/a")).await.unwrap());
        // A marker written last: once it arrives, everything before it has too.
        committed(store.txn(Txn::new().put("w/end", vec![])).await.unwrap());
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("w/end") {
            let key = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("watch: no key within {WAIT:?}; seen {seen:?}"))
                .expect("the watch stays open");
            seen.push(key);
        }
        assert_eq!(seen, vec!["w/a", "w/a", "w/end"], "put, delete, marker");
    }

    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!("embedded".parse::<StoreUrl>(), Ok(StoreUrl::Embedded));
        let etcd = |e: &[&str], ns: &str| StoreUrl::Etcd {
            endpoints: e.iter().map(|s| s.to_string()).collect(),
            namespace: ns.into(),
        };
        assert_eq!(
            "etcd://127.0.0.1:2379".parse::<StoreUrl>(),
            Ok(etcd(&["127.0.0.1:2379"], "/siderite/"))
        );
        assert_eq!(
            "etcd://a:1,b:2,[::1]:3/prod".parse::<StoreUrl>(),
            Ok(etcd(&["a:1", "b:2", "[::1]:3"], "/prod/"))
        );
        assert_eq!(
            "etcd://a:1/site/rack1/".parse::<StoreUrl>(),
            Ok(etcd(&["a:1"], "/site/rack1/"))
        );
        assert_eq!(
            "etcd://a:1/".parse::<StoreUrl>(),
            Ok(etcd(&["a:1"], "/siderite/"))
        );
        for bad in [
            "",
            "redb",
            "etcd://",
            "etcd://host",
            "etcd://a:1,",
            "etcd://:1",
            "etcd://a:x",
        ] {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            assert!(err.contains("etcd://host:port"), "{bad}: {err}");
        }
        // Display is what parses back.
        for url in ["embedded", "etcd://a:1,b:2/prod", "etcd://a:1/siderite"] {
            let parsed: StoreUrl = url.parse().unwrap();
            assert_eq!(parsed.to_string(), url);
        }
    }
}
