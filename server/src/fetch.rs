//! [`HttpFetcher`]: the [`AssetFetcher`] that downloads `http://` assets into a
//! content-addressed cache, so [`crate::environment::verify`] can hash and serve them.
//!
//! A download streams into a temporary file in the cache directory, hashing as it goes,
//! and is renamed to `<cache>/<sha512>` of what actually arrived, so a cache file's name
//! never lies about its bytes. When the caller knows the sha512 the Environment expects
//! ([`HttpFetcher::fetch_expecting`], or the [`HttpFetcher::expecting`] adapter for
//! `verify`), an existing `<cache>/<sha512>` is reused without any request; `verify`
//! hashes it again anyway. `https://` is refused: reqwest is built without TLS.
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha512};
use tokio::io::AsyncWriteExt;

use crate::environment::{
    error_chain, AssetFetcher, AssetKind, AssetSource, AssetUrl, Environment, FetchError,
    LocalFileFetcher,
};

/// The largest asset downloaded unless [`HttpFetcher::with_max_bytes`] says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// From sending the request to the last byte of the body.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SHA512_HEX_LEN: usize = 128;
const TEMP_PREFIX: &str = ".download-";

/// Why an http(s) asset could not be downloaded into the cache.
#[derive(Debug, thiserror::Error)]
pub enum HttpFetchError {
    #[error("https assets need TLS support, not built in yet")]
    Https { url: String },
    #[error("GET {url} returned {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: the body is larger than the {max_bytes}-byte limit")]
    TooLarge { url: String, max_bytes: u64 },
    #[error("GET {url}: not done within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("GET {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("caching {url} in {dir:?}")]
    Cache {
        url: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HttpFetchError {
    pub fn url(&self) -> &str {
        match self {
            HttpFetchError::Https { url }
            | HttpFetchError::Status { url, .. }
            | HttpFetchError::TooLarge { url, .. }
            | HttpFetchError::Timeout { url, .. }
            | HttpFetchError::Request { url, .. }
            | HttpFetchError::Cache { url, .. } => url,
        }
    }
}

impl From<HttpFetchError> for FetchError {
    fn from(e: HttpFetchError) -> FetchError {
        FetchError::Failed {
            url: e.url().to_string(),
            message: error_chain(&e),
        }
    }
}

/// Downloads `http://` assets into `cache`; `file://` ones are read in place.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    cache: PathBuf,
    client: reqwest::Client,
    max_bytes: u64,
}

impl HttpFetcher {
    /// A fetcher caching in `cache` (created on first download), with
    /// [`DEFAULT_MAX_BYTES`], [`TOTAL_TIMEOUT`] and [`CONNECT_TIMEOUT`].
    pub fn new(cache: impl Into<PathBuf>) -> reqwest::Result<HttpFetcher> {
        let client = reqwest::Client::builder()
            .timeout(TOTAL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(HttpFetcher {
            cache: cache.into(),
            client,
            max_bytes: DEFAULT_MAX_BYTES,
        })
    }

    pub fn with_max_bytes(mut self, max_bytes: u64) -> HttpFetcher {
        self.max_bytes = max_bytes;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// An [`AssetFetcher`] for `verify(env, ..)` that knows `env`'s sha512s, so cached
    /// assets are reused instead of downloaded again.
    pub fn expecting<'a>(&'a self, env: &'a Environment) -> Expecting<'a> {
        Expecting { fetcher: self, env }
    }

    /// Makes `url` a local file. With `sha512` (the digest the Environment expects),
    /// a cached `<cache>/<sha512>` is returned without a request; otherwise the body is
    /// downloaded and stored under the sha512 it actually has.
    pub async fn fetch_expecting(
        &self,
        url: &AssetUrl,
        sha512: Option<&str>,
    ) -> Result<PathBuf, FetchError> {
        let url = match url {
            AssetUrl::File(_) => return LocalFileFetcher.fetch(url).await,
            AssetUrl::Http(u) => u,
        };
        if url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err(HttpFetchError::Https { url: url.clone() }.into());
        }
        if let Some(want) = sha512.filter(|d| is_sha512_hex(d)) {
            let cached = self.cache.join(want.to_ascii_lowercase());
            if tokio::fs::metadata(&cached)
                .await
                .is_ok_and(|m| m.is_file())
            {
                return Ok(cached);
            }
        }
        Ok(self.download(url).await?)
    }

    async fn download(&self, url: &str) -> Result<PathBuf, HttpFetchError> {
        let request = |source: reqwest::Error| {
            if source.is_timeout() {
                HttpFetchError::Timeout {
                    url: url.to_string(),
                    after: TOTAL_TIMEOUT,
                }
            } else {
                HttpFetchError::Request {
                    url: url.to_string(),
                    source,
                }
            }
        };
        let cache = |source: std::io::Error| HttpFetchError::Cache {
            url: url.to_string(),
            dir: self.cache.clone(),
            source,
        };
        let too_large = || HttpFetchError::TooLarge {
            url: url.to_string(),
            max_bytes: self.max_bytes,
        };

        let mut response = self.client.get(url).send().await.map_err(request)?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpFetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }

        tokio::fs::create_dir_all(&self.cache)
            .await
            .map_err(cache)?;
        // Deleted on drop, so an error or a cancelled fetch leaves nothing behind.
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.cache)
            .map_err(cache)?;
        let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(cache)?);
        let mut hasher = Sha512::new();
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(request)? {
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(cache)?;
        }
        file.flush().await.map_err(cache)?;
        file.sync_all().await.map_err(cache)?;
        drop(file);

        let path = self.cache.join(to_hex(&hasher.finalize()));
        let persisted = tokio::task::spawn_blocking({
            let path = path.clone();
            move || temp.persist(path).map(drop).map_err(|e| e.error)
        })
        .await
        .map_err(|e| cache(std::io::Error::other(e)))?;
        persisted.map_err(cache)?;
        Ok(path)
    }
}

#[async_trait::async_trait]
impl AssetFetcher for HttpFetcher {
    /// Without the expected sha512 the cache cannot be looked up, so this always
    /// downloads; use [`HttpFetcher::expecting`] to reuse cached assets.
    async fn fetch(&self, url: &AssetUrl) -> Result<PathBuf, FetchError> {
        self.fetch_expecting(url, None).await
    }
}

/// [`HttpFetcher`] with one Environment's expected sha512s; see [`HttpFetcher::expecting`].
#[derive(Debug, Clone, Copy)]
pub struct Expecting<'a> {
    fetcher: &'a HttpFetcher,
    env: &'a Environment,
}

impl Expecting<'_> {
    /// The sha512 the Environment gives for `url`, unless two assets disagree about it.
    fn sha512_for(&self, url: &AssetUrl) -> Option<&str> {
        let mut found = None;
        for kind in [AssetKind::Kernel, AssetKind::Initrd] {
            let asset = self.env.asset(kind);
            if matches!(asset.source(kind), Ok(AssetSource::Url(u)) if u == *url) {
                match found {
                    Some(d) if d != asset.sha512.as_str() => return None,
                    _ => found = Some(asset.sha512.as_str()),
                }
            }
        }
        found
    }
}

#[async_trait::async_trait]
impl AssetFetcher for Expecting<'_> {
    async fn fetch(&self, url: &AssetUrl) -> Result<PathBuf, FetchError> {
        self.fetcher
            .fetch_expecting(url, self.sha512_for(url))
            .await
    }
}

fn is_sha512_hex(s: &str) -> bool {
    s.len() == SHA512_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;
    use crate::environment::{verify, Arch, Asset, EnvironmentSpec};

    const KERNEL: &[u8] = b"a kernel served over http";
    const INITRD: &[u8] = b"an initrd served over http";

    fn sha512_hex(bytes: &[u8]) -> String {
        to_hex(&Sha512::digest(bytes))
    }

    struct Server {
        base: String,
        hits: Arc<AtomicUsize>,
        _task: tokio::task::JoinHandle<()>,
    }

    /// `/kernel`, `/initrd`, `/big` (4 KiB with a Content-Length), `/chunked` (4 KiB in
    /// chunks, no Content-Length) and 404 for anything else; counts every request.
    async fn serve() -> Server {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let router = axum::Router::new()
            .route("/kernel", get(|| async { KERNEL }))
            .route("/initrd", get(|| async { INITRD }))
            .route("/big", get(|| async { vec![7u8; 4096] }))
            .route(
                "/chunked",
                get(|| async {
                    let chunks =
                        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 1024])));
                    Body::from_stream(futures::stream::iter(chunks))
                }),
            )
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(req)
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            hits,
            _task: task,
        }
    }

    impl Server {
        fn url(&self, path: &str) -> AssetUrl {
            AssetUrl::Http(format!("{}{path}", self.base))
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn env(server: &Server, kernel_sha512: String) -> Environment {
        let asset = |path: &str, sha512| Asset {
            url: Some(format!("{}{path}", server.base)),
            path: None,
            sha512,
        };
        Environment::new(
            "http-env",
            EnvironmentSpec {
                kernel: asset("/kernel", kernel_sha512),
                initrd: asset("/initrd", sha512_hex(INITRD)),
                args: vec![],
                arch: Arch::Amd64,
            },
        )
    }

    /// Everything in the cache directory, temporary files included.
    fn cache_files(dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return vec![];
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn downloads_into_a_content_addressed_cache_and_verifies() {
        let server = serve().await;
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap();

        let path = fetcher.fetch(&server.url("/kernel")).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), KERNEL);
        assert_eq!(path, cache.path().join(sha512_hex(KERNEL)));

        let good = env(&server, sha512_hex(KERNEL));
        let status = verify(&good, &fetcher).await;
        assert!(status.ready, "{status:?}");
        let mut names = vec![sha512_hex(KERNEL), sha512_hex(INITRD)];
        names.sort();
        assert_eq!(cache_files(cache.path()), names, "no temporary files left");

        let bad = env(&server, sha512_hex(b"other bytes"));
        let status = verify(&bad, &fetcher.expecting(&bad)).await;
        assert!(!status.ready);
        assert_eq!(
            status.reason,
            format!(
                "kernel sha512 mismatch: want {}, got {}",
                crate::environment::short(&sha512_hex(b"other bytes")),
                crate::environment::short(&sha512_hex(KERNEL)),
            )
        );
        assert_eq!(status.conditions[0].reason, "Sha512Mismatch");
    }

    #[tokio::test]
    async fn a_warm_cache_is_not_downloaded_again() {
        let server = serve().await;
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap();
        let env = env(&server, sha512_hex(KERNEL));

        assert!(verify(&env, &fetcher.expecting(&env)).await.ready);
        assert_eq!(server.hits(), 2, "kernel and initrd, once each");
        assert!(verify(&env, &fetcher.expecting(&env)).await.ready);
        let want = sha512_hex(KERNEL);
        let path = fetcher
            .fetch_expecting(&server.url("/kernel"), Some(&want.to_ascii_uppercase()))
            .await
            .unwrap();
        assert_eq!(path, cache.path().join(&want));
        assert_eq!(server.hits(), 2, "the cache answered");

        // Without the digest there is no way to look the cache up.
        fetcher.fetch(&server.url("/kernel")).await.unwrap();
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn a_404_names_the_url_and_status() {
        let server = serve().await;
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap();
        let url = server.url("/missing");
        let err = fetcher.fetch(&url).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fetching {url}: GET {url} returned 404 Not Found")
        );
        assert_eq!(cache_files(cache.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_and_leave_nothing() {
        let server = serve().await;
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap().with_max_bytes(4095);
        for path in ["/big", "/chunked"] {
            let url = server.url(path);
            let err = fetcher.fetch(&url).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("fetching {url}: GET {url}: the body is larger than the 4095-byte limit"),
            );
            assert_eq!(cache_files(cache.path()), Vec::<String>::new(), "{path}");
        }
        let fetcher = fetcher.with_max_bytes(4096);
        fetcher.fetch(&server.url("/chunked")).await.unwrap();
        assert_eq!(cache_files(cache.path()), [sha512_hex(&[7u8; 4096])]);
    }

    #[tokio::test]
    async fn https_is_refused_and_files_are_read_in_place() {
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap();
        let err = fetcher
            .fetch(&AssetUrl::Http("HTTPS://example.invalid/k".into()))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fetching HTTPS://example.invalid/k: https assets need TLS support, not built in yet"
        );
        let local = cache.path().join("local");
        let path = fetcher.fetch(&AssetUrl::File(local.clone())).await.unwrap();
        assert_eq!(path, local);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_request_error() {
        // Bind and drop to get a loopback port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cache = tempfile::tempdir().unwrap();
        let fetcher = HttpFetcher::new(cache.path()).unwrap();
        let url = format!("http://127.0.0.1:{port}/k");
        let err = fetcher
            .fetch(&AssetUrl::Http(url.clone()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("fetching {url}: GET {url}: ")),
            "{msg}"
        );
    }
}
