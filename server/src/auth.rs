//! Who may do what. Three kinds of secret, all kept in the store under `secrets/`:
//!
//! - **Join tokens** (`secrets/join/<id>`, text `<id>.<secret>`): a machine must present
//!   one to register. They expire, are revoked, and are rotated by creating a new one and
//!   revoking the old; the newest usable `boot` token is the one the iPXE script hands out.
//! - **Machine credentials**: the per-boot session token registration returns (see
//!   `registry`), and the per-binding metadata token (see `binding`).
//! - **Operator tokens** (`secrets/operators/<name>`, text `<name>.<secret>`), with a
//!   role: `read-only` may call the read methods of the admin API, `admin` everything.
//!
//! The admin API is wrapped in [`AdminAuth`], which authenticates every call before any
//! handler runs and refuses anonymous callers and read-only callers on anything that is
//! not on the read list: a method added later is admin-only until someone decides
//! otherwise.
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::binding::{new_token, secret_eq};
use crate::store::{Precondition, Store, StoreError, Txn, TxnOutcome};

pub const JOIN_PREFIX: &str = "secrets/join/";
pub const OPERATOR_PREFIX: &str = "secrets/operators/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ReadOnly,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "read-only" | "readonly" | "viewer" => Ok(Role::ReadOnly),
            other => Err(format!("unknown role {other:?}: admin or read-only")),
        }
    }
}

/// The caller of an admin API method, put into the request's extensions by [`AdminAuth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredJoinToken {
    pub id: String,
    pub secret: String,
    #[serde(default)]
    pub description: String,
    pub created: String,
    /// RFC 3339; none: never.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub revoked: Option<String>,
    #[serde(default)]
    pub boot: bool,
}

impl StoredJoinToken {
    pub fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// Why it cannot be used now, if it cannot.
    pub fn unusable(&self) -> Option<&'static str> {
        if self.revoked.is_some() {
            return Some("revoked");
        }
        if let Some(exp) = &self.expires {
            match time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339) {
                Ok(t) if t > time::OffsetDateTime::now_utc() => {}
                _ => return Some("expired"),
            }
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredOperator {
    pub name: String,
    pub secret: String,
    pub role: String,
    pub created: String,
    #[serde(default)]
    pub revoked: Option<String>,
}

impl StoredOperator {
    pub fn text(&self) -> String {
        format!("{}.{}", self.name, self.secret)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Store(s) => Status::unavailable(format!("store: {s}")),
            AuthError::Invalid(m) => Status::invalid_argument(m),
            AuthError::Exists(_) => Status::already_exists(e.to_string()),
            AuthError::NotFound(_) => Status::not_found(e.to_string()),
        }
    }
}

fn short_id() -> String {
    new_token()[..6].to_string()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// Splits `<id>.<secret>`; `None` when it is not of that shape.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.split_once('.')?;
    (valid_name(id) && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}

/// The store side of join tokens and operators.
#[derive(Clone)]
pub struct Auth {
    pub store: Arc<dyn Store>,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn create_join_token(
        &self,
        description: &str,
        ttl: Option<std::time::Duration>,
        boot: bool,
    ) -> Result<StoredJoinToken, AuthError> {
        if description.len() > 256 {
            return Err(AuthError::Invalid(
                "a description is at most 256 bytes".into(),
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        let fmt = &time::format_description::well_known::Rfc3339;
        let token = StoredJoinToken {
            id: short_id(),
            secret: new_token()[..32].to_string(),
            description: description.to_string(),
            created: now.format(fmt).unwrap_or_default(),
            expires: ttl.map(|t| (now + t).format(fmt).unwrap_or_default()),
            revoked: None,
            boot,
        };
        let key = format!("{JOIN_PREFIX}{}", token.id);
        let txn = Txn::new()
            .require(Precondition::Absent(key.clone()))
            .put(key, serde_json::to_vec(&token).expect("serializes"));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(_) => Ok(token),
            TxnOutcome::Conflict(k) => Err(AuthError::Exists(k)),
        }
    }

    pub async fn join_tokens(&self) -> Result<Vec<StoredJoinToken>, AuthError> {
        let mut out = Vec::new();
        for (key, v) in self.store.list(JOIN_PREFIX).await? {
            match serde_json::from_slice::<StoredJoinToken>(&v.value) {
                Ok(t) => out.push(t),
                Err(e) => tracing::warn!(%key, error = %e, "damaged join token skipped"),
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest usable boot token: what the iPXE script hands to machines.
    pub async fn boot_join_token(&self) -> Result<Option<StoredJoinToken>, AuthError> {
        Ok(self
            .join_tokens()
            .await?
            .into_iter()
            .rev()
            .find(|t| t.boot && t.unusable().is_none()))
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<StoredJoinToken, AuthError> {
        self.revoke(
            &format!("{JOIN_PREFIX}{id}"),
            &format!("join token {id}"),
            |t: &mut StoredJoinToken| &mut t.revoked,
        )
        .await
    }

    /// Marks the record at `key` revoked (once: a second revoke keeps the first time),
    /// with a compare-and-swap on its revision.
    async fn revoke<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &str,
        revoked: impl Fn(&mut T) -> &mut Option<String>,
    ) -> Result<T, AuthError> {
        for _ in 0..8 {
            let Some(v) = self.store.get(key).await? else {
                return Err(AuthError::NotFound(what.to_string()));
            };
            let mut record: T = serde_json::from_slice(&v.value)
                .map_err(|e| AuthError::Invalid(format!("{what} is damaged: {e}")))?;
            revoked(&mut record).get_or_insert_with(crate::model::now_rfc3339);
            let txn = Txn::new()
                .require(Precondition::At(key.to_string(), v.revision))
                .put(key, serde_json::to_vec(&record).expect("serializes"));
            if let TxnOutcome::Committed(_) = self.store.txn(txn).await? {
                return Ok(record);
            }
        }
        Err(AuthError::Invalid(format!(
            "{what} kept changing; try again"
        )))
    }

    /// Checks a join token; the error says why in words safe to return to the caller
    /// (the same for unknown, wrong, expired and revoked) and to log (which one).
    pub async fn check_join_token(&self, text: &str) -> Result<String, (Status, String)> {
        let refused = |why: &str| {
            (
                Status::unauthenticated(
                    "join token refused: registration needs a valid siderite.token=",
                ),
                why.to_string(),
            )
        };
        if text.is_empty() {
            return Err((
                Status::unauthenticated("no join token: registration needs siderite.token="),
                "no join token".into(),
            ));
        }
        let Some((id, secret)) = split_token(text) else {
            return Err(refused("malformed join token"));
        };
        let stored = self
            .store
            .get(&format!("{JOIN_PREFIX}{id}"))
            .await
            .map_err(|e| (Status::unavailable(format!("store: {e}")), e.to_string()))?;
        let Some(v) = stored else {
            return Err(refused(&format!("unknown join token id {id}")));
        };
        let Ok(t) = serde_json::from_slice::<StoredJoinToken>(&v.value) else {
            return Err(refused(&format!("join token {id} is damaged")));
        };
        if !secret_eq(&t.secret, secret) {
            return Err(refused(&format!("wrong secret for join token {id}")));
        }
        if let Some(why) = t.unusable() {
            return Err(refused(&format!("join token {id} is {why}")));
        }
        Ok(t.id)
    }

    pub async fn create_operator(
        &self,
        name: &str,
        role: Role,
    ) -> Result<StoredOperator, AuthError> {
        if !valid_name(name) {
            return Err(AuthError::Invalid(format!(
                "operator name {name:?}: lower-case letters, digits and '-', at most 63"
            )));
        }
        let op = StoredOperator {
            name: name.to_string(),
            secret: new_token(),
            role: role.as_str().to_string(),
            created: crate::model::now_rfc3339(),
            revoked: None,
        };
        let key = format!("{OPERATOR_PREFIX}{name}");
        let txn = Txn::new()
            .require(Precondition::Absent(key.clone()))
            .put(key, serde_json::to_vec(&op).expect("serializes"));
        match self.store.txn(txn).await? {
            TxnOutcome::Committed(_) => Ok(op),
            TxnOutcome::Conflict(_) => Err(AuthError::Exists(format!("operator {name}"))),
        }
    }

    pub async fn operators(&self) -> Result<Vec<StoredOperator>, AuthError> {
        let mut out = Vec::new();
        for (key, v) in self.store.list(OPERATOR_PREFIX).await? {
            match serde_json::from_slice::<StoredOperator>(&v.value) {
                Ok(o) => out.push(o),
                Err(e) => tracing::warn!(%key, error = %e, "damaged operator skipped"),
            }
        }
        Ok(out)
    }

    pub async fn revoke_operator(&self, name: &str) -> Result<StoredOperator, AuthError> {
        self.revoke(
            &format!("{OPERATOR_PREFIX}{name}"),
            &format!("operator {name}"),
            |o: &mut StoredOperator| &mut o.revoked,
        )
        .await
    }

    /// The caller an `authorization: Bearer <name>.<secret>` header names.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, Status> {
        let Some(value) = header else {
            return Err(Status::unauthenticated(
                "no credentials: the admin API needs a bearer token (siderite --siderite-config FILE)",
            ));
        };
        let refused = || Status::unauthenticated("bearer token refused");
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(refused)?
            .trim();
        let (name, secret) = split_token(token).ok_or_else(refused)?;
        let v = self
            .store
            .get(&format!("{OPERATOR_PREFIX}{name}"))
            .await
            .map_err(|e| Status::unavailable(format!("store: {e}")))?
            .ok_or_else(refused)?;
        let op: StoredOperator = serde_json::from_slice(&v.value).map_err(|_| refused())?;
        if !secret_eq(&op.secret, secret) || op.revoked.is_some() {
            return Err(refused());
        }
        let role = Role::parse(&op.role).map_err(|_| refused())?;
        Ok(Caller {
            name: op.name,
            role,
        })
    }
}

/// Admin API methods a read-only operator may call. Everything else needs admin.
const READ_METHODS: &[&str] = &[
    "ListServers",
    "GetServer",
    "ListEnvironments",
    "GetResource",
    "ListResources",
    "ListJoinTokens",
    "ListOperators",
    "WhoAmI",
];

/// Is `method` (the last path segment) open to `role`?
pub fn allowed(role: Role, method: &str) -> bool {
    role == Role::Admin || READ_METHODS.contains(&method)
}

/// The caller of a request that went through [`AdminAuth`].
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a handler without authentication"))
}

/// Wraps the admin gRPC service: authenticates, authorizes by method, then passes the
/// [`Caller`] on in the request's extensions.
#[derive(Clone)]
pub struct AdminAuth<S> {
    inner: S,
    auth: Auth,
    /// Refusals are logged at most once a second (a flood would multiply them).
    refusals: Arc<std::sync::Mutex<crate::guard::LogGate>>,
}

impl<S> AdminAuth<S> {
    pub fn new(inner: S, auth: Auth) -> Self {
        Self {
            inner,
            auth,
            refusals: Default::default(),
        }
    }
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for AdminAuth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready handles this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let refusals = self.refusals.clone();
        let log_refusal = move || {
            refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pass()
        };
        Box::pin(async move {
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let caller = match auth.authenticate(header.as_deref()).await {
                Ok(c) => c,
                Err(status) => {
                    if let Some(suppressed) = log_refusal() {
                        tracing::info!(%method, reason = %status.message(), suppressed, "admin API: unauthenticated call refused");
                    }
                    return Ok(status.into_http());
                }
            };
            if !allowed(caller.role, &method) {
                if let Some(suppressed) = log_refusal() {
                    tracing::info!(%method, operator = %caller.name, suppressed, "admin API: read-only operator refused");
                }
                return Ok(Status::permission_denied(format!(
                    "{method} needs the admin role; operator {} is {}",
                    caller.name,
                    caller.role.as_str()
                ))
                .into_http());
            }
            req.extensions_mut().insert(caller);
            inner.call(req).await
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AdminAuth<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, Auth::new(Arc::new(store)))
    }

    #[tokio::test]
    async fn join_tokens_check_expire_and_revoke() {
        let (_d, a) = auth();
        let t = a.create_join_token("rack 1", None, true).await.unwrap();
        assert_eq!(a.check_join_token(&t.text()).await.unwrap(), t.id);
        let wrong = format!("{}.{}", t.id, "0".repeat(32));
        assert!(a
            .check_join_token(&wrong)
            .await
            .unwrap_err()
            .1
            .contains("wrong secret"));
        assert!(a.check_join_token("").await.is_err());
        assert!(a.check_join_token("nodot").await.is_err());
        assert!(a
            .check_join_token("zzzzzz.x")
            .await
            .unwrap_err()
            .1
            .contains("unknown"));
        let short = a
            .create_join_token("", Some(std::time::Duration::from_secs(0)), true)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(a
            .check_join_token(&short.text())
            .await
            .unwrap_err()
            .1
            .contains("expired"));
        assert_eq!(a.boot_join_token().await.unwrap().unwrap().id, t.id);
        a.revoke_join_token(&t.id).await.unwrap();
        assert!(a
            .check_join_token(&t.text())
            .await
            .unwrap_err()
            .1
            .contains("revoked"));
        assert!(a.boot_join_token().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn operators_authenticate_by_role() {
        let (_d, a) = auth();
        let admin = a.create_operator("admin", Role::Admin).await.unwrap();
        let viewer = a.create_operator("viewer", Role::ReadOnly).await.unwrap();
        assert!(a.create_operator("admin", Role::Admin).await.is_err());
        assert!(a.create_operator("Bad Name", Role::Admin).await.is_err());
        let h = |t: &StoredOperator| format!("Bearer {}", t.text());
        assert_eq!(
            a.authenticate(Some(&h(&admin))).await.unwrap().role,
            Role::Admin
        );
        assert_eq!(
            a.authenticate(Some(&h(&viewer))).await.unwrap().role,
            Role::ReadOnly
        );
        assert!(a.authenticate(None).await.is_err());
        assert!(a.authenticate(Some("Bearer admin.wrong")).await.is_err());
        assert!(a.authenticate(Some(&admin.text())).await.is_err());
        a.revoke_operator("viewer").await.unwrap();
        assert!(a.authenticate(Some(&h(&viewer))).await.is_err());
        assert!(allowed(Role::ReadOnly, "ListServers"));
        assert!(!allowed(Role::ReadOnly, "AcceptServer"));
        assert!(!allowed(Role::ReadOnly, "SomethingNew"));
        assert!(allowed(Role::Admin, "SomethingNew"));
    }
}
