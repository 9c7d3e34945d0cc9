//! The `Wipe` command in the wipe engine's terms, and its outcome in the server's.
use siderite::proto::agent::v1::{CommandAck, DiskWipeResult, Wipe};

use crate::wipe::{DiskRequest, DiskResult, Mode};

/// The mode and the disks, pins included; an error (nothing touched) when either is wrong.
pub(super) fn requests(w: &Wipe) -> Result<(Mode, Vec<DiskRequest>), String> {
    let mode: Mode = w
        .mode
        .parse()
        .map_err(|e: crate::wipe::UnknownMode| e.to_string())?;
    if w.disks.is_empty() {
        return Err("no disks named".into());
    }
    let disks = w
        .disks
        .iter()
        .map(|d| DiskRequest {
            name: d.name.clone(),
            serial: (!d.serial.trim().is_empty()).then(|| d.serial.clone()),
            size_bytes: (d.size_bytes != 0).then_some(d.size_bytes),
        })
        .collect();
    Ok((mode, disks))
}

fn disk_result(r: &DiskResult, mode: Mode) -> DiskWipeResult {
    match &r.outcome {
        Ok(s) => DiskWipeResult {
            disk: r.disk.clone(),
            ok: true,
            error: String::new(),
            mode: s.mode.to_string(),
            size_bytes: s.size,
            methods: s.methods.clone(),
            bytes_written: s.bytes_written,
            bytes_offloaded: s.bytes_offloaded,
            signatures_removed: s.signatures_removed.clone(),
            verified_bytes: s.verified_bytes,
            verified_regions: s.verified_regions,
            wipe_millis: s.wipe_time.as_millis() as u64,
            verify_millis: s.verify_time.as_millis() as u64,
            notes: s.notes.clone(),
        },
        Err(e) => DiskWipeResult {
            disk: r.disk.clone(),
            ok: false,
            error: e.reason(),
            mode: mode.to_string(),
            ..Default::default()
        },
    }
}

/// "done" only when every named disk was wiped and verified; the failures named otherwise.
/// One entry in `disks` per named disk either way.
pub(super) fn ack(id: &str, mode: Mode, results: &[DiskResult]) -> CommandAck {
    let disks: Vec<DiskWipeResult> = results.iter().map(|r| disk_result(r, mode)).collect();
    let failed: Vec<&DiskWipeResult> = disks.iter().filter(|d| !d.ok).collect();
    let (state, message) = if failed.is_empty() {
        let names: Vec<&str> = disks.iter().map(|d| d.disk.as_str()).collect();
        (
            "done",
            format!("{mode} wipe verified on {}", names.join(", ")),
        )
    } else {
        let reasons: Vec<String> = failed
            .iter()
            .map(|d| format!("{}: {}", d.disk, d.error))
            .collect();
        (
            "failed",
            format!(
                "{} of {} disks not wiped: {}",
                failed.len(),
                disks.len(),
                reasons.join("; ")
            ),
        )
    };
    CommandAck {
        command_id: id.to_string(),
        state: state.into(),
        message,
        disks,
    }
}
