//! The `Environment` resource: a kernel, an initrd and a command line that a machine
//! boots, and the check that makes its assets servable. Nothing of an Environment is
//! served until both assets hashed to the sha512 the resource names ([`verify`]); the
//! [`Environments`] catalog holds what was checked and how it came out.
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::model::{now_rfc3339, API_VERSION};

pub const KIND: &str = "Environment";
/// The built-in environment every unknown machine boots.
pub const AGENT_ENVIRONMENT: &str = "agent";
/// File names the boot image builder writes (see `siderite_initramfs::image`).
pub const AGENT_KERNEL_FILE: &str = "vmlinuz";
pub const AGENT_INITRD_FILE: &str = "initramfs.cpio.zst";
/// Put first on the agent's command line: the console where its PID 1 logs.
pub const AGENT_CONSOLE_ARGS: [&str; 2] = ["console=tty0", "console=ttyS0"];
/// The condition [`verify`] sets.
pub const CONDITION_ASSETS_VERIFIED: &str = "AssetsVerified";
/// Linux's `COMMAND_LINE_SIZE` on x86 and arm64; iPXE adds `initrd=` and siderite
/// its own keys, so the Environment's args must leave room below it.
pub const MAX_ARGS_LEN: usize = 2048;
const SHA512_HEX_LEN: usize = 128;
const HASH_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: EnvironmentSpec,
    #[serde(default)]
    pub status: EnvironmentStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub kernel: Asset,
    pub initrd: Asset,
    /// Kernel command line, one argument per item.
    #[serde(default)]
    pub args: Vec<String>,
    pub arch: Arch,
}

/// One boot file: where it is (exactly one of `url` and `path`) and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Asset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub sha512: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentStatus {
    #[serde(default)]
    pub ready: bool,
    /// Why the environment is not ready; empty when it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`, as Kubernetes spells them.
    pub status: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// From iPXE's `${buildarch}`. BIOS iPXE (`undionly.kpxe`) is an i386 build even on
    /// x86_64 machines, so `i386` means amd64 here: siderite boots no 32-bit kernels.
    pub fn from_ipxe_buildarch(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "i386" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = EnvironmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            _ => Err(EnvironmentError::Arch(s.to_string())),
        }
    }
}

/// Which of an Environment's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AssetKind {
    Kernel,
    Initrd,
}

impl AssetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Kernel => "kernel",
            AssetKind::Initrd => "initrd",
        }
    }
}

impl fmt::Display for AssetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssetKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "kernel" => Ok(AssetKind::Kernel),
            "initrd" => Ok(AssetKind::Initrd),
            _ => Err(()),
        }
    }
}

/// Where an asset lives, once its spec is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetSource {
    /// `path:` in the spec; read in place.
    Path(PathBuf),
    /// `url:`, handed to an [`AssetFetcher`].
    Url(AssetUrl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetUrl {
    /// `file:///abs/path` (or `file://localhost/abs/path`), percent-decoded.
    File(PathBuf),
    /// `http://` or `https://`, as written.
    Http(String),
}

impl fmt::Display for AssetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssetUrl::File(p) => write!(f, "file://{}", p.display()),
            AssetUrl::Http(u) => f.write_str(u),
        }
    }
}

/// An Environment that breaks a rule; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    #[error("apiVersion {0:?}: expected {API_VERSION:?}")]
    ApiVersion(String),
    #[error("kind {0:?}: expected {KIND:?}")]
    Kind(String),
    #[error("name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("{asset}: give exactly one of url and path")]
    Source { asset: AssetKind },
    #[error("{asset} url {url:?}: {why}")]
    Url {
        asset: AssetKind,
        url: String,
        why: &'static str,
    },
    #[error("{asset} path {path:?}: must be absolute")]
    RelativePath { asset: AssetKind, path: PathBuf },
    #[error("{asset} sha512 {value:?}: want {SHA512_HEX_LEN} hex characters")]
    Sha512 { asset: AssetKind, value: String },
    #[error("arg {index} ({arg:?}): {why}")]
    Arg {
        index: usize,
        arg: String,
        why: &'static str,
    },
    #[error("args take {len} bytes of kernel command line; the limit is {MAX_ARGS_LEN}")]
    ArgsTooLong { len: usize },
    #[error("arch {0:?}: expected amd64 or arm64")]
    Arch(String),
}

impl Environment {
    /// A fresh resource with `apiVersion`, `kind` and an empty status.
    pub fn new(name: impl Into<String>, spec: EnvironmentSpec) -> Self {
        Environment {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec,
            status: EnvironmentStatus::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The built-in `agent` Environment: `vmlinuz` and `initramfs.cpio.zst` of a boot
    /// image directory. The builder's `manifest.json` carries sha256, not sha512, so the
    /// sha512s are computed here (at startup; [`verify`] checks them again before
    /// anything is served). The command line is [`AGENT_CONSOLE_ARGS`] followed by
    /// `server_args` (`siderite.server=...`, `siderite.ca=...`); the arch is amd64,
    /// the only one the image builder makes today.
    pub async fn agent(dir: &Path, server_args: Vec<String>) -> Result<Environment, VerifyError> {
        // Assets are addressed by absolute path; a relative image dir is the caller's cwd.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let kernel = dir.join(AGENT_KERNEL_FILE);
        let initrd = dir.join(AGENT_INITRD_FILE);
        let (k, i) = tokio::join!(hash_file(kernel.clone()), hash_file(initrd.clone()));
        let k = k.map_err(|source| VerifyError::Read {
            asset: AssetKind::Kernel,
            path: kernel.clone(),
            source,
        })?;
        let i = i.map_err(|source| VerifyError::Read {
            asset: AssetKind::Initrd,
            path: initrd.clone(),
            source,
        })?;
        let args = AGENT_CONSOLE_ARGS
            .iter()
            .map(|a| a.to_string())
            .chain(server_args)
            .collect();
        let env = Environment::new(
            AGENT_ENVIRONMENT,
            EnvironmentSpec {
                kernel: Asset {
                    url: None,
                    path: Some(kernel),
                    sha512: k.sha512,
                },
                initrd: Asset {
                    url: None,
                    path: Some(initrd),
                    sha512: i.sha512,
                },
                args,
                arch: Arch::Amd64,
            },
        );
        env.validate().map_err(VerifyError::Invalid)?;
        Ok(env)
    }

    /// Every rule a stored Environment keeps: shape, name, asset sources, sha512s, args.
    pub fn validate(&self) -> Result<(), EnvironmentError> {
        if self.api_version != API_VERSION {
            return Err(EnvironmentError::ApiVersion(self.api_version.clone()));
        }
        if self.kind != KIND {
            return Err(EnvironmentError::Kind(self.kind.clone()));
        }
        validate_name(&self.metadata.name)?;
        for (kind, asset) in [
            (AssetKind::Kernel, &self.spec.kernel),
            (AssetKind::Initrd, &self.spec.initrd),
        ] {
            asset.source(kind)?;
            if !is_sha512_hex(&asset.sha512) {
                return Err(EnvironmentError::Sha512 {
                    asset: kind,
                    value: asset.sha512.clone(),
                });
            }
        }
        for (index, arg) in self.spec.args.iter().enumerate() {
            validate_arg(arg).map_err(|why| EnvironmentError::Arg {
                index,
                arg: arg.clone(),
                why,
            })?;
        }
        let len = args_len(&self.spec.args);
        if len > MAX_ARGS_LEN {
            return Err(EnvironmentError::ArgsTooLong { len });
        }
        Ok(())
    }

    pub fn asset(&self, kind: AssetKind) -> &Asset {
        match kind {
            AssetKind::Kernel => &self.spec.kernel,
            AssetKind::Initrd => &self.spec.initrd,
        }
    }
}

fn args_len(args: &[String]) -> usize {
    args.iter()
        .map(|a| a.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
}

impl Asset {
    /// The one place this asset is read from, checked.
    pub fn source(&self, kind: AssetKind) -> Result<AssetSource, EnvironmentError> {
        match (&self.url, &self.path) {
            (Some(url), None) => parse_asset_url(kind, url).map(AssetSource::Url),
            (None, Some(path)) if path.is_absolute() => Ok(AssetSource::Path(path.clone())),
            (None, Some(path)) => Err(EnvironmentError::RelativePath {
                asset: kind,
                path: path.clone(),
            }),
            _ => Err(EnvironmentError::Source { asset: kind }),
        }
    }
}

/// A DNS label (RFC 1123): it names the Environment in asset URLs, `/assets/<name>/kernel`.
pub fn validate_name(name: &str) -> Result<(), EnvironmentError> {
    let bad = |why| {
        Err(EnvironmentError::Name {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// One kernel command line argument as it goes into an iPXE `kernel` line. iPXE splits a
/// line on whitespace with no quoting, treats a token starting with `#` as a comment and
/// the tokens `||`, `&&` and `;` as command separators, and expands `${...}` in every
/// token (see iPXE's `src/core/exec.c`); Linux treats `"` as a quote. Anything else
/// printable is passed through unchanged, so `&` inside a URL is fine.
pub fn validate_arg(arg: &str) -> Result<(), &'static str> {
    if arg.is_empty() {
        return Err("empty");
    }
    if !arg.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed (iPXE splits on whitespace, a newline ends the command)");
    }
    if arg.starts_with('#') {
        return Err("iPXE reads a token starting with '#' as a comment");
    }
    if matches!(arg, "||" | "&&" | ";") {
        return Err("iPXE reads this token as a command separator");
    }
    if arg.contains('$') {
        return Err("iPXE would expand '$' settings in it");
    }
    if arg.contains('"') {
        return Err("the kernel reads '\"' as a quote");
    }
    Ok(())
}

fn is_sha512_hex(s: &str) -> bool {
    s.len() == SHA512_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_asset_url(asset: AssetKind, url: &str) -> Result<AssetUrl, EnvironmentError> {
    let bad = |why| EnvironmentError::Url {
        asset,
        url: url.to_string(),
        why,
    };
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only printable ASCII without spaces is allowed"));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(bad(
                "a file URL names an absolute path on this host: file:///path",
            ));
        }
        if path.contains(['?', '#']) {
            return Err(bad("a file URL has no query or fragment"));
        }
        let decoded = percent_decode(path).ok_or_else(|| bad("bad percent-encoding"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("the path is not UTF-8"))?;
        return Ok(AssetUrl::File(PathBuf::from(decoded)));
    }
    let lower = url.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = lower.strip_prefix(scheme) {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("no host"));
            }
            return Ok(AssetUrl::Http(url.to_string()));
        }
    }
    Err(bad("only file://, http:// and https:// are supported"))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Makes a URL asset available as a local file, so it can be hashed and then served
/// from disk. An HTTP implementation downloads into its own cache directory and returns
/// the cached file.
#[async_trait::async_trait]
pub trait AssetFetcher: Send + Sync {
    async fn fetch(&self, url: &AssetUrl) -> Result<PathBuf, FetchError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} assets need a downloading fetcher; this server has none")]
    Unsupported(&'static str),
    #[error("fetching {url}: {message}")]
    Failed { url: String, message: String },
}

/// Resolves `file://` URLs in place; refuses http(s).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFileFetcher;

#[async_trait::async_trait]
impl AssetFetcher for LocalFileFetcher {
    async fn fetch(&self, url: &AssetUrl) -> Result<PathBuf, FetchError> {
        match url {
            AssetUrl::File(path) => Ok(path.clone()),
            AssetUrl::Http(_) => Err(FetchError::Unsupported("http(s)")),
        }
    }
}

/// Why an Environment's assets cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("invalid environment: {0}")]
    Invalid(EnvironmentError),
    #[error("{asset} unavailable")]
    Fetch {
        asset: AssetKind,
        #[source]
        source: FetchError,
    },
    #[error("reading {asset} {path:?}")]
    Read {
        asset: AssetKind,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{asset} sha512 mismatch: want {}, got {}", short(want), short(got))]
    Mismatch {
        asset: AssetKind,
        want: String,
        got: String,
    },
}

impl VerifyError {
    /// The condition reason: a CamelCase word, as Kubernetes has them.
    pub fn reason_code(&self) -> &'static str {
        match self {
            VerifyError::Invalid(_) => "Invalid",
            VerifyError::Fetch { .. } => "AssetUnavailable",
            VerifyError::Read { .. } => "AssetUnreadable",
            VerifyError::Mismatch { .. } => "Sha512Mismatch",
        }
    }
}

/// The first 16 hex characters and an ellipsis: enough to tell two digests apart.
pub fn short(digest: &str) -> String {
    match digest.get(..16) {
        Some(head) if digest.len() > 16 => format!("{head}…"),
        _ => digest.to_string(),
    }
}

/// The error and its causes on one line, for a status reason.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What a file looked like when it was hashed. A served file must still look the same,
/// or it may not be the bytes that were verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    pub fn of(meta: &std::fs::Metadata) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A file's sha512 (lowercase hex) and what it looked like while being hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedFile {
    pub sha512: String,
    pub fingerprint: Fingerprint,
}

/// Hashes a regular file in chunks on the blocking pool, never holding it whole in
/// memory. Fails if the file changes while it is read.
pub async fn hash_file(path: PathBuf) -> std::io::Result<HashedFile> {
    tokio::task::spawn_blocking(move || hash_file_blocking(&path))
        .await
        .map_err(std::io::Error::other)?
}

fn hash_file_blocking(path: &Path) -> std::io::Result<HashedFile> {
    use std::io::{Error, ErrorKind};
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let before = Fingerprint::of(&meta);
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let after = Fingerprint::of(&file.metadata()?);
    if before != after || total != before.len {
        return Err(Error::other("the file changed while it was being hashed"));
    }
    Ok(HashedFile {
        sha512: to_hex(&hasher.finalize()),
        fingerprint: before,
    })
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A local file whose bytes hashed to the Environment's sha512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAsset {
    pub path: PathBuf,
    pub sha512: String,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssets {
    pub kernel: VerifiedAsset,
    pub initrd: VerifiedAsset,
}

impl VerifiedAssets {
    pub fn get(&self, kind: AssetKind) -> &VerifiedAsset {
        match kind {
            AssetKind::Kernel => &self.kernel,
            AssetKind::Initrd => &self.initrd,
        }
    }
}

/// Validates the Environment, fetches its URL assets and hashes both files.
pub async fn verify_assets(
    env: &Environment,
    fetch: &dyn AssetFetcher,
) -> Result<VerifiedAssets, VerifyError> {
    env.validate().map_err(VerifyError::Invalid)?;
    let (kernel, initrd) = tokio::join!(
        verify_asset(AssetKind::Kernel, &env.spec.kernel, fetch),
        verify_asset(AssetKind::Initrd, &env.spec.initrd, fetch),
    );
    Ok(VerifiedAssets {
        kernel: kernel?,
        initrd: initrd?,
    })
}

async fn verify_asset(
    kind: AssetKind,
    asset: &Asset,
    fetch: &dyn AssetFetcher,
) -> Result<VerifiedAsset, VerifyError> {
    let path = match asset.source(kind).map_err(VerifyError::Invalid)? {
        AssetSource::Path(p) => p,
        AssetSource::Url(url) => fetch
            .fetch(&url)
            .await
            .map_err(|source| VerifyError::Fetch {
                asset: kind,
                source,
            })?,
    };
    let hashed = hash_file(path.clone())
        .await
        .map_err(|source| VerifyError::Read {
            asset: kind,
            path: path.clone(),
            source,
        })?;
    let want = asset.sha512.to_ascii_lowercase();
    if hashed.sha512 != want {
        return Err(VerifyError::Mismatch {
            asset: kind,
            want,
            got: hashed.sha512,
        });
    }
    Ok(VerifiedAsset {
        path,
        sha512: hashed.sha512,
        fingerprint: hashed.fingerprint,
    })
}

/// The status [`verify_assets`] leads to: ready, or not ready with the reason.
pub async fn verify(env: &Environment, fetch: &dyn AssetFetcher) -> EnvironmentStatus {
    status_of(&verify_assets(env, fetch).await)
}

fn status_of(result: &Result<VerifiedAssets, VerifyError>) -> EnvironmentStatus {
    let now = now_rfc3339();
    match result {
        Ok(v) => EnvironmentStatus {
            ready: true,
            reason: String::new(),
            conditions: vec![Condition {
                kind: CONDITION_ASSETS_VERIFIED.into(),
                status: "True".into(),
                reason: "Verified".into(),
                message: format!(
                    "kernel sha512 {}, initrd sha512 {}",
                    v.kernel.sha512, v.initrd.sha512
                ),
                last_transition_time: now,
            }],
        },
        Err(e) => {
            let reason = error_chain(e);
            let message = match e {
                VerifyError::Mismatch { asset, want, got } => {
                    format!("{asset} sha512 mismatch: want {want}, got {got}")
                }
                _ => reason.clone(),
            };
            EnvironmentStatus {
                ready: false,
                reason,
                conditions: vec![Condition {
                    kind: CONDITION_ASSETS_VERIFIED.into(),
                    status: "False".into(),
                    reason: e.reason_code().into(),
                    message,
                    last_transition_time: now,
                }],
            }
        }
    }
}

/// One Environment as the boot services know it: the resource with its status, and the
/// verified files when (and only when) it is ready.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub environment: Environment,
    pub verified: Option<VerifiedAssets>,
}

impl CatalogEntry {
    pub fn is_ready(&self) -> bool {
        self.verified.is_some()
    }
}

/// The Environments the boot services serve, by name. Only [`Environments::apply`] puts
/// one in, so nothing gets here without having been verified.
#[derive(Debug, Default)]
pub struct Environments {
    entries: RwLock<BTreeMap<String, Arc<CatalogEntry>>>,
}

impl Environments {
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `env` and stores it with the outcome in its status, replacing an
    /// Environment of the same name; an invalid name is not stored. Returns the status.
    pub async fn apply(&self, mut env: Environment, fetch: &dyn AssetFetcher) -> EnvironmentStatus {
        let result = verify_assets(&env, fetch).await;
        env.status = status_of(&result);
        let status = env.status.clone();
        match &result {
            Ok(_) => tracing::info!(environment = env.name(), "environment verified"),
            Err(_) => {
                tracing::warn!(environment = env.name(), reason = %status.reason, "environment not ready")
            }
        }
        if validate_name(env.name()).is_ok() {
            let name = env.name().to_string();
            let entry = Arc::new(CatalogEntry {
                environment: env,
                verified: result.ok(),
            });
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, entry);
        }
        status
    }

    pub fn get(&self, name: &str) -> Option<Arc<CatalogEntry>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn remove(&self, name: &str) -> bool {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sha512_hex(bytes: &[u8]) -> String {
        to_hex(&Sha512::digest(bytes))
    }

    /// An Environment over two files written into `dir`.
    pub(crate) fn env_on_disk(dir: &Path, name: &str, kernel: &[u8], initrd: &[u8]) -> Environment {
        let kp = dir.join(format!("{name}-vmlinuz"));
        let ip = dir.join(format!("{name}-initrd"));
        std::fs::write(&kp, kernel).unwrap();
        std::fs::write(&ip, initrd).unwrap();
        Environment::new(
            name,
            EnvironmentSpec {
                kernel: Asset {
                    url: None,
                    path: Some(kp),
                    sha512: sha512_hex(kernel),
                },
                initrd: Asset {
                    url: Some(format!("file://{}", ip.display())),
                    path: None,
                    sha512: sha512_hex(initrd),
                },
                args: vec!["console=ttyS0".into()],
                arch: Arch::Amd64,
            },
        )
    }

    const YAML: &str = "\
apiVersion: metal.siderite.dev/v1alpha1
kind: Environment
metadata:
  name: talos-1-9
  labels:
    os: talos
spec:
  kernel:
    url: https://example.invalid/vmlinuz-amd64
    sha512: 00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
  initrd:
    path: /var/lib/siderite/initramfs-amd64.xz
    sha512: 11111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111
  args:
  - talos.platform=metal
  - console=ttyS0
  arch: amd64
";

    #[test]
    fn parses_the_kubernetes_shape_and_round_trips() {
        let env: Environment = serde_yaml_ng::from_str(YAML).unwrap();
        assert_eq!(env.name(), "talos-1-9");
        assert_eq!(env.metadata.labels["os"], "talos");
        assert_eq!(env.spec.arch, Arch::Amd64);
        assert_eq!(env.spec.args, ["talos.platform=metal", "console=ttyS0"]);
        env.validate().unwrap();
        assert_eq!(
            env.spec.kernel.source(AssetKind::Kernel).unwrap(),
            AssetSource::Url(AssetUrl::Http(
                "https://example.invalid/vmlinuz-amd64".into()
            ))
        );
        let json = serde_json::to_string(&env).unwrap();
        assert!(
            json.contains(r#""apiVersion":"metal.siderite.dev/v1alpha1""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Environment>(&json).unwrap(), env);
    }

    #[test]
    fn unknown_fields_and_arches_are_refused_when_parsing() {
        let typo = YAML.replace("  args:\n", "  argz:\n");
        assert!(serde_yaml_ng::from_str::<Environment>(&typo).is_err());
        let arch = YAML.replace("arch: amd64", "arch: riscv64");
        let err = serde_yaml_ng::from_str::<Environment>(&arch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("riscv64"), "{err}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let base: Environment = serde_yaml_ng::from_str(YAML).unwrap();
        let check = |f: &dyn Fn(&mut Environment)| {
            let mut e = base.clone();
            f(&mut e);
            e.validate().unwrap_err().to_string()
        };
        assert_eq!(
            check(&|e| e.metadata.name = "Talos".into()),
            r#"name "Talos": only a-z, 0-9 and '-' are allowed"#
        );
        assert_eq!(
            check(&|e| e.metadata.name = "../etc".into()),
            r#"name "../etc": only a-z, 0-9 and '-' are allowed"#
        );
        assert_eq!(
            check(&|e| e.metadata.name = "-a".into()),
            r#"name "-a": must start and end with a letter or digit"#
        );
        assert_eq!(
            check(&|e| e.metadata.name = "a".repeat(64)),
            format!("name {:?}: must be 1 to 63 characters", "a".repeat(64))
        );
        assert_eq!(
            check(&|e| e.kind = "Server".into()),
            r#"kind "Server": expected "Environment""#
        );
        assert_eq!(
            check(&|e| e.spec.kernel.path = Some("/boot/vmlinuz".into())),
            "kernel: give exactly one of url and path"
        );
        assert_eq!(
            check(&|e| e.spec.kernel.url = None),
            "kernel: give exactly one of url and path"
        );
        assert_eq!(
            check(&|e| e.spec.kernel.url = Some("ftp://host/vmlinuz".into())),
            r#"kernel url "ftp://host/vmlinuz": only file://, http:// and https:// are supported"#
        );
        assert_eq!(
            check(&|e| e.spec.kernel.url = Some("file://other-host/vmlinuz".into())),
            r#"kernel url "file://other-host/vmlinuz": a file URL names an absolute path on this host: file:///path"#
        );
        assert_eq!(
            check(&|e| e.spec.initrd.path = Some("initrd.xz".into())),
            r#"initrd path "initrd.xz": must be absolute"#
        );
        assert_eq!(
            check(&|e| e.spec.initrd.sha512 = "abc".into()),
            r#"initrd sha512 "abc": want 128 hex characters"#
        );
        assert_eq!(
            check(&|e| e.spec.initrd.sha512 = "g".repeat(128)),
            format!(
                "initrd sha512 {:?}: want 128 hex characters",
                "g".repeat(128)
            )
        );
        assert_eq!(
            check(&|e| e.spec.args.push("a=b\nchain http://evil/".into())),
            r#"arg 2 ("a=b\nchain http://evil/"): only printable ASCII without spaces is allowed (iPXE splits on whitespace, a newline ends the command)"#
        );
        assert_eq!(
            check(&|e| e.spec.args.push("x=${ip}".into())),
            r#"arg 2 ("x=${ip}"): iPXE would expand '$' settings in it"#
        );
        assert_eq!(
            check(&|e| e.spec.args.push("||".into())),
            r#"arg 2 ("||"): iPXE reads this token as a command separator"#
        );
        assert_eq!(
            check(&|e| e.spec.args.push("#x".into())),
            r##"arg 2 ("#x"): iPXE reads a token starting with '#' as a comment"##
        );
        assert_eq!(
            check(&|e| e.spec.args.push("a=\"b".into())),
            r#"arg 2 ("a=\"b"): the kernel reads '"' as a quote"#
        );
        assert_eq!(
            check(&|e| e.spec.args.push(String::new())),
            r#"arg 2 (""): empty"#
        );
        assert_eq!(
            check(&|e| e.spec.args = vec!["x".repeat(2049)]),
            "args take 2049 bytes of kernel command line; the limit is 2048"
        );
    }

    #[test]
    fn args_may_carry_urls_with_queries() {
        assert_eq!(
            validate_arg("talos.config=http://10.0.0.1:8081/config?uuid=a&mac=b"),
            Ok(())
        );
        assert_eq!(validate_arg("ip=dhcp"), Ok(()));
    }

    #[test]
    fn file_urls_are_percent_decoded() {
        let a = Asset {
            url: Some("file:///srv/my%20image/vmlinuz".into()),
            path: None,
            sha512: "0".repeat(128),
        };
        assert_eq!(
            a.source(AssetKind::Kernel).unwrap(),
            AssetSource::Url(AssetUrl::File("/srv/my image/vmlinuz".into()))
        );
        let a = Asset {
            url: Some("file://localhost/srv/k".into()),
            ..a
        };
        assert_eq!(
            a.source(AssetKind::Kernel).unwrap(),
            AssetSource::Url(AssetUrl::File("/srv/k".into()))
        );
        let a = Asset {
            url: Some("file:///srv/%zz".into()),
            ..a
        };
        assert!(a.source(AssetKind::Kernel).is_err());
    }

    #[tokio::test]
    async fn a_matching_environment_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_on_disk(dir.path(), "ok", b"kernel bytes", b"initrd bytes");
        let status = verify(&env, &LocalFileFetcher).await;
        assert!(status.ready, "{status:?}");
        assert_eq!(status.reason, "");
        assert_eq!(status.conditions[0].kind, "AssetsVerified");
        assert_eq!(status.conditions[0].status, "True");
    }

    #[tokio::test]
    async fn uppercase_digests_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_on_disk(dir.path(), "upper", b"k", b"i");
        env.spec.kernel.sha512 = env.spec.kernel.sha512.to_ascii_uppercase();
        assert!(verify(&env, &LocalFileFetcher).await.ready);
    }

    #[tokio::test]
    async fn a_mismatch_is_not_ready_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_on_disk(dir.path(), "bad", b"kernel bytes", b"initrd bytes");
        env.spec.kernel.sha512 = sha512_hex(b"other bytes");
        let status = verify(&env, &LocalFileFetcher).await;
        assert!(!status.ready);
        let want = short(&sha512_hex(b"other bytes"));
        let got = short(&sha512_hex(b"kernel bytes"));
        assert_eq!(
            status.reason,
            format!("kernel sha512 mismatch: want {want}, got {got}")
        );
        let c = &status.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Sha512Mismatch")
        );
        assert!(
            c.message.contains(&sha512_hex(b"kernel bytes")),
            "the message has the full digests"
        );
    }

    #[tokio::test]
    async fn missing_files_and_http_without_a_fetcher_are_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_on_disk(dir.path(), "gone", b"k", b"i");
        std::fs::remove_file(env.spec.kernel.path.as_ref().unwrap()).unwrap();
        let status = verify(&env, &LocalFileFetcher).await;
        assert!(
            status.reason.starts_with("reading kernel \""),
            "{}",
            status.reason
        );
        assert!(
            status
                .reason
                .ends_with("No such file or directory (os error 2)"),
            "{}",
            status.reason
        );

        env.spec.kernel = Asset {
            url: Some("https://example.invalid/k".into()),
            path: None,
            sha512: "0".repeat(128),
        };
        let status = verify(&env, &LocalFileFetcher).await;
        assert_eq!(
            status.reason,
            "kernel unavailable: http(s) assets need a downloading fetcher; this server has none"
        );
        assert_eq!(status.conditions[0].reason, "AssetUnavailable");
    }

    #[tokio::test]
    async fn a_directory_is_not_an_asset() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_on_disk(dir.path(), "dir", b"k", b"i");
        env.spec.kernel.path = Some(dir.path().to_path_buf());
        let status = verify(&env, &LocalFileFetcher).await;
        assert!(
            status.reason.ends_with("not a regular file"),
            "{}",
            status.reason
        );
    }

    #[tokio::test]
    async fn the_agent_environment_hashes_the_boot_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"a kernel").unwrap();
        std::fs::write(dir.path().join("initramfs.cpio.zst"), b"an initramfs").unwrap();
        let env = Environment::agent(dir.path(), vec!["siderite.server=10.0.0.1:50051".into()])
            .await
            .unwrap();
        assert_eq!(env.name(), "agent");
        assert_eq!(env.spec.kernel.sha512, sha512_hex(b"a kernel"));
        assert_eq!(env.spec.initrd.sha512, sha512_hex(b"an initramfs"));
        assert_eq!(
            env.spec.initrd.path.as_deref(),
            Some(dir.path().join("initramfs.cpio.zst").as_path())
        );
        assert_eq!(
            env.spec.args,
            [
                "console=tty0",
                "console=ttyS0",
                "siderite.server=10.0.0.1:50051"
            ]
        );
        assert!(verify(&env, &LocalFileFetcher).await.ready);

        let err = Environment::agent(dir.path(), vec!["bad arg".into()])
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid environment: arg 2"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = Environment::agent(empty.path(), vec![]).await.unwrap_err();
        assert!(err.to_string().starts_with("reading kernel"), "{err}");
    }

    #[tokio::test]
    async fn the_catalog_keeps_what_was_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Environments::new();
        let good = env_on_disk(dir.path(), "good", b"k", b"i");
        let mut bad = env_on_disk(dir.path(), "bad", b"k", b"i");
        bad.spec.initrd.sha512 = sha512_hex(b"x");
        assert!(cat.apply(good, &LocalFileFetcher).await.ready);
        assert!(!cat.apply(bad, &LocalFileFetcher).await.ready);
        assert!(cat.get("good").unwrap().is_ready());
        let bad = cat.get("bad").unwrap();
        assert!(!bad.is_ready());
        assert!(bad
            .environment
            .status
            .reason
            .starts_with("initrd sha512 mismatch"));
        assert_eq!(cat.names(), ["bad", "good"]);

        let mut invalid = env_on_disk(dir.path(), "x", b"k", b"i");
        invalid.metadata.name = "../x".into();
        assert!(!cat.apply(invalid, &LocalFileFetcher).await.ready);
        assert_eq!(
            cat.names(),
            ["bad", "good"],
            "an invalid name is never stored"
        );
        assert!(cat.remove("bad"));
        assert!(cat.get("bad").is_none());
    }
}
