//! Environment assets over HTTP: `/assets/<environment>/kernel` and `.../initrd`.
//!
//! Assets are addressed by Environment name and kind, never by path, so a request can
//! only ever reach a file an Environment names. Only Environments whose files hashed to
//! their sha512 are served ([`Environments::apply`]), and a file that no longer looks
//! like the one that was hashed (inode, size, mtime, ctime) is refused rather than
//! served unchecked. Files stream from disk; single byte ranges (RFC 9110 §14) are
//! honoured so a client can resume or probe.
use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::environment::{validate_name, AssetKind, Environments, Fingerprint, VerifiedAsset};

/// Read size per body chunk.
const CHUNK: usize = 64 * 1024;

/// The asset routes, with their own state; merge into the boot HTTP router.
pub fn router(environments: Arc<Environments>) -> Router {
    Router::new()
        .route("/assets/{env}/{asset}", get(asset))
        .with_state(environments)
}

/// The URL path of an asset, as the iPXE scripts reference it.
pub fn asset_path(env: &str, kind: AssetKind) -> String {
    format!("/assets/{env}/{kind}")
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything with 200.
    Full,
    /// Bytes `start..=end`, with 206.
    Partial { start: u64, end: u64 },
    /// 416, with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads a `Range` header per RFC 9110 §14.1.2 and §14.2. Single ranges only: a
/// server may ignore a Range header, and does so here for several ranges, other units
/// and anything that does not parse, answering with the whole file.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(value) = value else {
        return RangeRequest::Full;
    };
    let Some((unit, set)) = value.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    match (
        digits(first),
        digits(last),
        first.is_empty(),
        last.is_empty(),
    ) {
        // bytes=-n: the last n bytes
        (_, Some(n), true, false) => {
            if n == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: len - n.min(len),
                    end: len - 1,
                }
            }
        }
        // bytes=a-
        (Some(a), _, false, true) => {
            if a >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: a,
                    end: len - 1,
                }
            }
        }
        // bytes=a-b
        (Some(a), Some(b), false, false) if a <= b => {
            if a >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: a,
                    end: b.min(len - 1),
                }
            }
        }
        _ => RangeRequest::Full,
    }
}

/// A decimal number of ASCII digits only (`u64::from_str` would take a `+`).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn asset(
    State(environments): State<Arc<Environments>>,
    Path((env, kind)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = validate_name(&env) {
        return text(StatusCode::BAD_REQUEST, format!("invalid environment {e}"));
    }
    let Ok(kind) = kind.parse::<AssetKind>() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no asset {kind:?}: an environment has a kernel and an initrd"),
        );
    };
    let Some(entry) = environments.get(&env) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no environment named {env:?}"),
        );
    };
    let Some(verified) = &entry.verified else {
        let reason = &entry.environment.status.reason;
        tracing::warn!(environment = %env, asset = %kind, %reason, "refused an asset of an environment that is not ready");
        return text(
            StatusCode::CONFLICT,
            format!("environment {env} is not ready: {reason}"),
        );
    };
    let asset = verified.get(kind);
    match open_verified(asset).await {
        Ok(file) => respond(file, asset, &method, &headers),
        Err(why) => {
            tracing::warn!(environment = %env, asset = %kind, path = ?asset.path, %why, "refused a changed asset");
            text(
                StatusCode::CONFLICT,
                format!("{kind} of environment {env} {why}; apply the environment again"),
            )
        }
    }
}

/// Opens the verified file and checks, on the open descriptor, that it is still the
/// file that was hashed.
async fn open_verified(asset: &VerifiedAsset) -> Result<tokio::fs::File, String> {
    let file = tokio::fs::File::open(&asset.path)
        .await
        .map_err(|e| format!("cannot be opened ({e})"))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| format!("cannot be read ({e})"))?;
    if Fingerprint::of(&meta) != asset.fingerprint {
        return Err("changed on disk since it was verified".into());
    }
    Ok(file)
}

fn respond(
    file: tokio::fs::File,
    asset: &VerifiedAsset,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let len = asset.fingerprint.len();
    let etag = format!("\"{}\"", asset.sha512);
    // Range is defined for GET only (RFC 9110 §14.2): HEAD describes the whole file.
    // An If-Range that is not our (strong) ETag means the client holds other bytes.
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = if method == Method::GET && if_range_ok {
        parse_range(range_header, len)
    } else {
        RangeRequest::Full
    };
    let (status, start, count, content_range) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len, None),
        RangeRequest::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        RangeRequest::Unsatisfiable => {
            let mut r = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range not satisfiable: the file is {len} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    tracing::debug!(path = ?asset.path, %status, start, count, "serving asset");
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(file_stream(file, start, count))
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag);
    if let Some(cr) = content_range {
        builder = builder.header(header::CONTENT_RANGE, cr);
    }
    builder.body(body).unwrap_or_else(|e| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the response: {e}"),
        )
    })
}

/// `count` bytes of `file` from `start`, in chunks. A file that ends early is an error,
/// so the client sees a cut connection instead of a short body it might trust.
fn file_stream(
    file: tokio::fs::File,
    start: u64,
    count: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold(
        (file, start, count, false),
        |(mut file, start, left, sought)| async move {
            if !sought && start > 0 {
                file.seek(SeekFrom::Start(start)).await?;
            }
            if left == 0 {
                return Ok(None);
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
            let mut buf = vec![0u8; want];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the asset shrank while being served",
                ));
            }
            buf.truncate(n);
            Ok(Some((
                Bytes::from(buf),
                (file, start, left - n as u64, true),
            )))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let p = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(parse_range(None, 1000), Full);
        assert_eq!(p("bytes=0-99", 1000), Partial { start: 0, end: 99 });
        assert_eq!(p("bytes=0-0", 1000), Partial { start: 0, end: 0 });
        assert_eq!(
            p("bytes=900-", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            p("bytes=-100", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            p("bytes=990-2000", 1000),
            Partial {
                start: 990,
                end: 999
            },
            "the end is clamped"
        );
        assert_eq!(
            p("bytes=-5000", 1000),
            Partial { start: 0, end: 999 },
            "a long suffix is the whole file"
        );
        assert_eq!(
            p("Bytes = 1-2", 1000),
            Partial { start: 1, end: 2 },
            "the unit is case-insensitive"
        );
        assert_eq!(
            p("bytes=999-999", 1000),
            Partial {
                start: 999,
                end: 999
            }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        let p = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(p("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(p("bytes=1000-1001", 1000), Unsatisfiable);
        assert_eq!(p("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(
            p("bytes=0-", 0),
            Unsatisfiable,
            "an empty file has no bytes to give"
        );
        assert_eq!(p("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn ranges_that_are_ignored() {
        let p = |h: &str| parse_range(Some(h), 1000);
        for h in [
            "bytes=5-3",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-",
            "bytes=a-b",
            "bytes=99999999999999999999999-",
            "bytes",
            "",
        ] {
            assert_eq!(p(h), Full, "{h:?}");
        }
    }
}
