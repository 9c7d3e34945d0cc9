//! HTTP downloads, hashed as they stream in.
use std::fs::File;
use std::io::Write;

use bytes::Bytes;
use nix::sys::memfd::{memfd_create, MFdFlags};
use sha2::{Digest, Sha512};

use super::{check_sha, hex, Artifact, Ctx, InstallError, Meter};

/// Sends the GET and checks the status.
pub(super) async fn get(a: &Artifact, ctx: &Ctx) -> Result<reqwest::Response, InstallError> {
    let mut stop = ctx.stop.clone();
    let sent = tokio::select! {
        r = ctx.http.get(a.url.clone()).send() => r,
        () = stop.stopped() => return Err(InstallError::Cancelled),
    };
    let resp = sent.map_err(|source| InstallError::Download {
        what: a.what,
        url: a.url.to_string(),
        source,
    })?;
    if !resp.status().is_success() {
        return Err(InstallError::Status {
            what: a.what,
            url: a.url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    Ok(resp)
}

/// The next piece of the body; `None` at its end.
pub(super) async fn next(
    resp: &mut reqwest::Response,
    a: &Artifact,
    ctx: &Ctx,
) -> Result<Option<Bytes>, InstallError> {
    let mut stop = ctx.stop.clone();
    let got = tokio::select! {
        r = resp.chunk() => r,
        () = stop.stopped() => return Err(InstallError::Cancelled),
    };
    got.map_err(|source| InstallError::Download {
        what: a.what,
        url: a.url.to_string(),
        source,
    })
}

/// Downloads `a` into an anonymous memory file and checks its SHA-512.
pub(super) async fn to_memory(a: &Artifact, ctx: &Ctx) -> Result<File, InstallError> {
    let memory = |source: std::io::Error| InstallError::Memory {
        what: a.what,
        source,
    };
    let mut resp = get(a, ctx).await?;
    let fd = memfd_create(
        format!("siderite-{}", a.what).as_str(),
        MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| memory(e.into()))?;
    let mut file = File::from(fd);
    let mut hasher = Sha512::new();
    let mut meter = Meter::new(a.what, resp.content_length().unwrap_or(0), ctx);
    while let Some(chunk) = next(&mut resp, a, ctx).await? {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(memory)?;
        meter.add(chunk.len() as u64);
    }
    meter.finish();
    let got = hex(&hasher.finalize());
    check_sha(a.what, a.sha512.as_deref(), &got)?;
    tracing::info!(what = a.what, url = %a.url, sha512 = %got, "downloaded and verified");
    Ok(file)
}
