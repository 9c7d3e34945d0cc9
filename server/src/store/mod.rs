//! The store: a key-value space with revisions and atomic compare-and-swap transactions.
//! Everything that must not race (registrations, UUID and MAC claims, acceptance) is one
//! transaction whose preconditions name the revisions it read. The embedded backend is
//! the default; the same trait is what a distributed backend implements.
mod embedded;

pub use embedded::EmbeddedStore;

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
}

#[cfg(test)]
pub(crate) mod suite {
    //! The behaviour every backend must show; each backend's tests call these.
    use super::*;

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
        let listed: Vec<String> = store
            .list("p/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(listed, vec!["p/1".to_string(), "p/2".to_string()]);

        store.txn(Txn::new().delete("p/1")).await.unwrap();
        assert!(store.get("p/1").await.unwrap().is_none());
    }

    pub async fn concurrent_creates_have_one_winner(store: std::sync::Arc<dyn Store>) {
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
        let mut winners = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), TxnOutcome::Committed(_)) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
