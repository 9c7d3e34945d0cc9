//! The distributed store: etcd's v3 API, for several server replicas sharing one state.
//!
//! How the [`Store`] trait maps onto etcd:
//!
//! | siderite | etcd |
//! |---|---|
//! | key `k` | `<namespace>k` (default namespace `/siderite/`); stripped on the way out |
//! | [`Versioned::revision`] | the key's `mod_revision` |
//! | [`TxnOutcome::Committed`]`(r)` | `r` = the txn response header's `revision` (for a txn that writes nothing: the store's current revision) |
//! | [`Precondition::At`]`(k, r)` | `Compare::mod_revision(k, Equal, r)` (`r` = 0: a compare that never holds, as no key is written at 0) |
//! | [`Precondition::Absent`]`(k)` | `Compare::version(k, Equal, 0)` |
//! | `txn` | one etcd `Txn`: every precondition in `when`, every op in `and_then`, and in `or_else` a keys-only read of each compared key, so a failed txn names the first failing precondition's key ([`TxnOutcome::Conflict`]) in the same round trip |
//! | several ops on one key | only the last is sent (etcd refuses a txn that names a key twice; applied in order, the last op decides anyway) |
//! | `watch(prefix)` | an etcd watch of `namespace+prefix` with `start_revision` just after the newest revision this client has seen (so nothing committed after the call is missed while the watch is being created); keys stripped of the namespace; after an error, re-created on the next member after a back-off (0.2 s doubling to 5 s) from just after the last event seen; after a compaction, from the compact revision (keys in between are missed) |
//! | `list(prefix)` | range reads of `[namespace+prefix, prefix_end)` in key order, [`PAGE`] keys per request, later pages pinned to the first page's revision (one consistent snapshot); restarted if etcd compacts that revision meanwhile |
//!
//! Limits of etcd to know about:
//! - `--max-txn-ops` (default 128): at most that many compares, and that many ops, in one
//!   txn. A larger [`Txn`] is refused here with a clear [`StoreError::Io`] before anything
//!   is sent; siderite's own transactions are a handful of ops, restore writes 100 at a time.
//!   A cluster run with a larger limit can say so with [`EtcdStore::with_max_txn_ops`].
//! - `--max-request-bytes` (default 1.5 MiB): one txn's keys and values together.
//! - Revisions are etcd's: they start above 1 and are shared by every namespace of the
//!   cluster, so they are strictly increasing but not dense.
//!
//! Failover: one client per member; calls go to one preferred member and move on to the
//! next when it fails (any member serves every request: etcd forwards writes to its leader).
//! A member that is down answers with a connect error, which proves the request was never
//! sent, so any call, a txn too, goes on to the next member at once (twice round the
//! members at most). A read that failed otherwise (the member lost its leader, the
//! connection dropped mid-call) is retried once on the next member after a pause. A txn
//! that may have reached etcd is never retried here: the caller's CAS loop rereads and
//! decides. Requests carry `require_leader`, so a member cut off from the quorum refuses at
//! once instead of waiting for a leader; connections have keepalives (5 s, 3 s timeout),
//! connects a 3 s timeout and requests a 10 s one.
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KeyValue, KvClient,
    ResponseHeader, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use tonic::Code;

use super::{Op, Precondition, Revision, Store, StoreError, Txn, TxnOutcome, Versioned};

/// The namespace when none is given.
pub const DEFAULT_NAMESPACE: &str = "/siderite/";
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Keys per range request of a list.
pub const PAGE: usize = 500;
/// A page of large Server records can exceed gRPC's default 4 MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longer than etcd's own proposal timeout (about 7 s with default election settings),
/// so etcd answers first when it can.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds over every member for a call that could not be sent anywhere.
const UNSENT_ROUNDS: usize = 2;
/// Pause between those rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Pause before retrying a read that failed otherwise, long enough for a leader election
/// after a member died (etcd's default election timeout is 1 s).
const READ_RETRY_PAUSE: Duration = Duration::from_millis(1500);
/// Retries of a read across an election: a loaded machine (CI, 2 cores) can take several
/// election timeouts to settle a new leader.
const READ_RETRIES: u32 = 5;
/// Times a list restarts because its snapshot revision was compacted.
const LIST_RESTARTS: usize = 3;
/// Back-off before re-creating a failed watch: doubles from the first to the last.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(200);
const WATCH_RETRY_LAST: Duration = Duration::from_secs(5);

/// One member's client.
struct Member {
    endpoint: String,
    kv: KvClient,
    watch: WatchClient,
    /// Owns the connection `kv` uses.
    _client: Client,
}

pub struct EtcdStore {
    members: Vec<Member>,
    /// The member calls go to first; moved on when it fails.
    preferred: AtomicUsize,
    namespace: String,
    page: usize,
    max_txn_ops: usize,
    /// The newest store revision any response has shown this client; watches start after it.
    seen: AtomicI64,
}

impl EtcdStore {
    /// Connects to the members at `endpoints` (`host:port` or `http://host:port`) and checks
    /// that the cluster serves a read; every key is kept under `namespace`.
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: format!("etcd://{}{namespace}", endpoints.join(",")),
            message,
        };
        if endpoints.is_empty() {
            return Err(open_err("no endpoints".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(KEEPALIVE_INTERVAL)
            .with_require_leader(true);
        let mut members = Vec::new();
        for endpoint in endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            // One client per member (not one balanced over all): a dead member refuses
            // connections at once and so looks idle to a balancer, which then prefers it.
            let client = Client::connect([url], Some(options.clone()))
                .await
                .map_err(|e| open_err(format!("{endpoint}: {}", detail(&e))))?;
            members.push(Member {
                endpoint: endpoint.clone(),
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                _client: client,
            });
        }
        let store = Self {
            members,
            preferred: AtomicUsize::new(0),
            namespace: namespace.to_string(),
            page: PAGE,
            max_txn_ops: MAX_TXN_OPS,
            seen: AtomicI64::new(0),
        };
        // Clients connect lazily: ask for something so a wrong address fails here.
        let ns = store.namespace.clone();
        let resp = store
            .call("connect", true, move |mut kv| {
                let key = ns.clone();
                async move {
                    kv.get(key, Some(GetOptions::new().with_count_only().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(|e| match e {
                StoreError::Io(m) => open_err(m),
                other => open_err(other.to_string()),
            })?;
        store.observe(resp.header());
        Ok(store)
    }

    /// Keys per range request of a list (tests use a small page to exercise paging).
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.page = keys.max(1);
        self
    }

    /// The cluster's `--max-txn-ops`, when it is not etcd's default of 128.
    pub fn with_max_txn_ops(mut self, ops: usize) -> Self {
        self.max_txn_ops = ops.max(1);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn observe(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.seen.fetch_max(h.revision(), Ordering::Relaxed);
        }
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.namespace).into_bytes()
    }

    fn entry(&self, kv: &KeyValue) -> Result<(String, Versioned), StoreError> {
        let key = kv
            .key()
            .strip_prefix(self.namespace.as_bytes())
            .ok_or_else(|| self.io_msg("range", "etcd returned a key outside the namespace"))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| self.io_msg("range", "a key under the namespace is not UTF-8"))?;
        Ok((key, versioned(kv)))
    }

    fn endpoints(&self) -> String {
        let all: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        all.join(",")
    }

    fn io_msg(&self, what: &str, message: &str) -> StoreError {
        StoreError::Io(format!("etcd at {}: {what}: {message}", self.endpoints()))
    }

    /// Runs `f` on the preferred member's client, failing over as the module doc says.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let mut at = self.preferred.load(Ordering::Relaxed) % n;
        let mut unsent = 0;
        let mut read_retries = 0;
        loop {
            let member = &self.members[at];
            let err = match f(member.kv.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let not_sent = is_unsent(&err);
            if not_sent || is_transient(&err) {
                // This member is down or cut off: the next call starts at the next one.
                at = (at + 1) % n;
                self.preferred.store(at, Ordering::Relaxed);
            }
            if not_sent && unsent + 1 < UNSENT_ROUNDS * n {
                unsent += 1;
                tracing::debug!(endpoint = %member.endpoint, error = %detail(&err), "etcd {what}: not sent, trying the next member");
                if unsent.is_multiple_of(n) {
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
                continue;
            }
            if idempotent && read_retries < READ_RETRIES && is_transient(&err) {
                read_retries += 1;
                tracing::debug!(endpoint = %member.endpoint, error = %detail(&err), attempt = read_retries, "etcd {what}: retrying on the next member");
                tokio::time::sleep(READ_RETRY_PAUSE).await;
                continue;
            }
            return Err(StoreError::Io(format!(
                "etcd at {}: {what}: {}",
                member.endpoint,
                detail(&err)
            )));
        }
    }

    /// One page of `[from, end)`, at `revision` when not 0.
    async fn page(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
        revision: i64,
    ) -> Result<GetResponse, StoreError> {
        let limit = i64::try_from(self.page).unwrap_or(i64::MAX);
        self.call("range", true, move |mut kv| {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let from = from.clone();
            async move { kv.get(from, Some(options)).await }
        })
        .await
    }

    /// The whole range in key order at one revision; `Ok(None)` when that revision was
    /// compacted between pages.
    async fn list_once(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<Vec<(String, Versioned)>>, StoreError> {
        let mut out = Vec::new();
        let mut from = start.to_vec();
        let mut revision = 0;
        loop {
            let resp = match self.page(from, end.to_vec(), revision).await {
                Ok(r) => r,
                Err(StoreError::Io(m)) if revision > 0 && m.contains("compacted") => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                self.observe(resp.header());
            }
            let kvs = resp.kvs();
            for kv in kvs {
                out.push(self.entry(kv)?);
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(Some(out)),
            }
        }
    }
}

fn versioned(kv: &KeyValue) -> Versioned {
    Versioned {
        value: kv.value().to_vec(),
        revision: kv.mod_revision().max(0) as Revision,
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`): the prefix
/// with its last byte below 0xff incremented; `[0]` (no end) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Keeps only the last op on each key, in their original order.
fn last_op_per_key(ops: Vec<Op>) -> Vec<Op> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Op> = ops
        .into_iter()
        .rev()
        .filter(|op| {
            let key = match op {
                Op::Put(k, _) | Op::Delete(k) => k.clone(),
            };
            seen.insert(key)
        })
        .collect();
    kept.reverse();
    kept
}

/// The error's text with its causes (tonic keeps the transport's reason in the source).
fn detail(e: &etcd_client::Error) -> String {
    let mut text = match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    };
    let mut source = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        _ => None,
    };
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The request never left this process: no connection to the member could be made.
fn is_unsent(e: &etcd_client::Error) -> bool {
    let text = detail(e).to_ascii_lowercase();
    let connect_failed = text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("connection refused");
    match e {
        etcd_client::Error::TransportError(_) => connect_failed,
        etcd_client::Error::GRpcStatus(s) => s.code() == Code::Unavailable && connect_failed,
        _ => false,
    }
}

/// Worth one more try for a read: the member or its link failed, not the request.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ),
        _ => false,
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .call("get", true, move |mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        self.observe(resp.header());
        Ok(resp.kvs().first().map(versioned))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        for _ in 0..LIST_RESTARTS {
            if let Some(out) = self.list_once(&start, &end).await? {
                return Ok(out);
            }
        }
        Err(self.io_msg("range", "the listing's revision was compacted on every try"))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let ops = last_op_per_key(txn.ops);
        let largest = ops.len().max(txn.preconditions.len());
        if largest > self.max_txn_ops {
            return Err(StoreError::Io(format!(
                "transaction of {largest} ops exceeds etcd's --max-txn-ops ({}): split it, or raise \
                 --max-txn-ops on every member (etcd at {})",
                self.max_txn_ops,
                self.endpoints()
            )));
        }
        let compares: Vec<Compare> = txn
            .preconditions
            .iter()
            .map(|p| match p {
                Precondition::Absent(k) => Compare::version(self.full_key(k), CompareOp::Equal, 0),
                Precondition::At(k, r) => match i64::try_from(*r) {
                    Ok(r) if r > 0 => Compare::mod_revision(self.full_key(k), CompareOp::Equal, r),
                    // No key is ever written at revision 0 (or beyond i64): never holds.
                    _ => Compare::version(self.full_key(k), CompareOp::Less, 0),
                },
            })
            .collect();
        let mut compared = Vec::new();
        for p in &txn.preconditions {
            if !compared.iter().any(|k: &String| k == p.key()) {
                compared.push(p.key().to_string());
            }
        }
        let reads: Vec<TxnOp> = compared
            .iter()
            .map(|k| TxnOp::get(self.full_key(k), Some(GetOptions::new().with_keys_only())))
            .collect();
        let writes: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(self.full_key(&k), v, None),
                Op::Delete(k) => TxnOp::delete(self.full_key(&k), None),
            })
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(writes)
            .or_else(reads);
        let resp = self
            .call("txn", false, move |mut kv| {
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await?;
        self.observe(resp.header());
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(TxnOutcome::Committed(revision.max(0) as Revision));
        }
        // The else branch read every compared key at the revision the compares saw.
        let mut current = std::collections::HashMap::new();
        for (key, op) in compared.iter().zip(resp.op_responses()) {
            if let TxnOpResponse::Get(get) = op {
                current.insert(key.as_str(), get.kvs().first().map(|kv| kv.mod_revision()));
            }
        }
        let failed = txn.preconditions.iter().find(|p| {
            let now = current.get(p.key()).copied().flatten();
            match p {
                Precondition::Absent(_) => now.is_some(),
                Precondition::At(_, r) => now.map(|m| m.max(0) as Revision) != Some(*r),
            }
        });
        // Without a failing one (it cannot happen: the reads are atomic with the compares)
        // the first precondition is named, never a commit.
        let key = failed
            .or(txn.preconditions.first())
            .map(|p| p.key().to_string())
            .unwrap_or_default();
        Ok(TxnOutcome::Conflict(key))
    }

    fn watch(&self, prefix: &str) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(super::WATCH_BUFFER);
        let watcher = Watcher {
            members: self
                .members
                .iter()
                .map(|m| (m.endpoint.clone(), m.watch.clone()))
                .collect(),
            at: self.preferred.load(Ordering::Relaxed),
            key: self.full_key(prefix),
            namespace: self.namespace.clone(),
            // Every commit after this call has a larger revision than any seen before it.
            from: self.seen.load(Ordering::Relaxed) + 1,
            tx,
        };
        tokio::spawn(watcher.run());
        rx
    }
}

/// One [`Store::watch`]: its etcd watch, re-created after errors, until the receiver goes.
struct Watcher {
    members: Vec<(String, WatchClient)>,
    /// The member to watch on next.
    at: usize,
    key: Vec<u8>,
    namespace: String,
    /// The revision the next etcd watch starts at.
    from: i64,
    tx: tokio::sync::mpsc::Sender<String>,
}

impl Watcher {
    async fn run(mut self) {
        let mut pause = WATCH_RETRY_FIRST;
        loop {
            let (endpoint, client) = self.members[self.at % self.members.len()].clone();
            let tx = self.tx.clone();
            let reason = tokio::select! {
                _ = tx.closed() => return,
                r = self.watch_once(client, &mut pause) => match r {
                    Ok(()) => return,
                    Err(reason) => reason,
                },
            };
            tracing::debug!(%endpoint, %reason, from = self.from, retry_in = ?pause, "etcd watch: re-creating");
            self.at += 1;
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(WATCH_RETRY_LAST);
        }
    }

    /// Forwards one etcd watch's keys; `Ok` when the receiver is gone, else why it ended.
    async fn watch_once(
        &mut self,
        mut client: WatchClient,
        pause: &mut Duration,
    ) -> Result<(), String> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.from);
        let mut stream = client
            .watch(self.key.clone(), Some(options))
            .await
            .map_err(|e| detail(&e))?;
        loop {
            let resp = stream
                .message()
                .await
                .map_err(|e| detail(&e))?
                .ok_or("the watch stream ended")?;
            if resp.compact_revision() > 0 {
                // The history before it is gone: what changed in between is missed.
                self.from = resp.compact_revision();
                return Err(format!("compacted up to {}", self.from));
            }
            if resp.canceled() {
                return Err(format!("canceled: {}", resp.cancel_reason()));
            }
            *pause = WATCH_RETRY_FIRST;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.from = self.from.max(kv.mod_revision() + 1);
                let Some(key) = kv.key().strip_prefix(self.namespace.as_bytes()) else {
                    continue;
                };
                let Ok(key) = String::from_utf8(key.to_vec()) else {
                    continue;
                };
                if self.tx.send(key).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/siderite/a/"), b"/siderite/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn only_the_last_op_on_a_key_is_sent() {
        let ops = vec![
            Op::Put("a".into(), vec![1]),
            Op::Put("b".into(), vec![1]),
            Op::Delete("a".into()),
            Op::Put("c".into(), vec![1]),
            Op::Put("b".into(), vec![2]),
        ];
        assert_eq!(
            last_op_per_key(ops),
            vec![
                Op::Delete("a".into()),
                Op::Put("c".into(), vec![1]),
                Op::Put("b".into(), vec![2]),
            ]
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_an_open_error_naming_the_endpoint() {
        // A port just released on loopback: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("127.0.0.1:{port}");
        let err = EtcdStore::connect(std::slice::from_ref(&endpoint), DEFAULT_NAMESPACE)
            .await
            .err()
            .expect("nothing listens there");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{msg}");
        assert!(msg.contains(&endpoint), "{msg}");
    }
}
