//! The API filesystems PID 1 mounts before anything else can work.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// One filesystem to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    /// Absolute path on the target system.
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Mount only if this path exists (e.g. the firmware is UEFI).
    pub only_if: Option<&'static str>,
    /// Whether the agent can do its job without it; a missing optional mount is info only.
    pub required: bool,
}

/// What [`crate::init::early_setup`] mounts, in order (parents before children). The Debian
/// kernel has `CONFIG_DEVTMPFS_MOUNT` off, so `/dev` is ours to mount too.
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        only_if: None,
        required: true,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        only_if: None,
        required: true,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        only_if: None,
        required: true,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
        only_if: None,
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
        only_if: None,
        required: true,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        only_if: None,
        required: true,
    },
];

/// `/sys/firmware/efi/efivars`: needs the `efivarfs` module on Debian, so it is mounted
/// after module loading by [`crate::init::mount_efivars`].
pub const EFIVARS: MountSpec = MountSpec {
    source: "efivarfs",
    target: "/sys/firmware/efi/efivars",
    fstype: "efivarfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    only_if: Some("/sys/firmware/efi"),
    required: false,
};

/// What happened to one mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MountOutcome {
    Mounted {
        target: String,
    },
    AlreadyMounted {
        target: String,
    },
    /// Its `only_if` path does not exist.
    NotApplicable {
        target: String,
    },
    Failed {
        target: String,
        required: bool,
        error: String,
    },
}

impl MountOutcome {
    pub fn log(&self) {
        match self {
            MountOutcome::Mounted { target } => tracing::debug!(%target, "mounted"),
            MountOutcome::AlreadyMounted { target } => {
                tracing::debug!(%target, "already mounted")
            }
            MountOutcome::NotApplicable { target } => tracing::debug!(%target, "not applicable"),
            MountOutcome::Failed {
                target,
                required: true,
                error,
            } => tracing::error!(%target, "mount failed: {error}"),
            MountOutcome::Failed { target, error, .. } => {
                tracing::info!(%target, "optional mount failed: {error}")
            }
        }
    }
}

/// What to do about one mount, given what is mounted and what exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Mount,
    AlreadyMounted,
    NotApplicable,
}

pub(crate) fn decide(
    spec: &MountSpec,
    mounted: &HashSet<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Decision {
    if mounted.contains(Path::new(spec.target)) {
        Decision::AlreadyMounted
    } else if spec.only_if.is_some_and(|p| !exists(Path::new(p))) {
        Decision::NotApplicable
    } else {
        Decision::Mount
    }
}

/// Mount points listed in `/proc/self/mountinfo` (field 5, with `\040`-style escapes).
pub(crate) fn parse_mountinfo(text: &str) -> HashSet<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        if b[i] == b'\\' && digits.is_some_and(|d| d.iter().all(|c| (b'0'..=b'7').contains(c))) {
            let d = digits.unwrap_or_default();
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is mounted now, or nothing if `/proc` is not there yet.
pub(crate) fn mounted_now() -> HashSet<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Mounts `spec` unless it is mounted already; never panics.
pub(crate) fn mount_one(spec: &MountSpec, mounted: &HashSet<PathBuf>) -> MountOutcome {
    let target = spec.target.to_string();
    match decide(spec, mounted, Path::exists) {
        Decision::AlreadyMounted => return MountOutcome::AlreadyMounted { target },
        Decision::NotApplicable => return MountOutcome::NotApplicable { target },
        Decision::Mount => {}
    }
    // On a read-only root the directory may exist already; mount() says what is wrong.
    let _ = std::fs::create_dir_all(spec.target);
    match nix::mount::mount(
        Some(spec.source),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    ) {
        Ok(()) => MountOutcome::Mounted { target },
        Err(errno) => MountOutcome::Failed {
            target,
            required: spec.required,
            error: errno.to_string(),
        },
    }
}

/// `/dev/fd` and `/dev/std{in,out,err}`, which devtmpfs does not provide.
pub(crate) fn dev_links() {
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(to, link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw,size=230000k
19 1 0:19 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
20 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
21 1 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=230000k,mode=755
30 1 0:33 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        for p in ["/", "/proc", "/sys", "/dev", "/mnt/with space"] {
            assert!(m.contains(Path::new(p)), "{p}");
        }
        assert_eq!(m.len(), 5);
        assert!(parse_mountinfo("").is_empty());
        assert_eq!(unescape_octal(r"a\011b\134\12"), "a\tb\\\\12");
    }

    #[test]
    fn decisions() {
        let mounted = parse_mountinfo(MOUNTINFO);
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        let d = |target: &str, exists: &dyn Fn(&Path) -> bool| {
            let spec = EARLY_MOUNTS
                .iter()
                .chain([&EFIVARS])
                .find(|s| s.target == target)
                .unwrap();
            decide(spec, &mounted, exists)
        };
        assert_eq!(d("/proc", &none), Decision::AlreadyMounted);
        assert_eq!(d("/dev", &none), Decision::AlreadyMounted);
        assert_eq!(d("/run", &none), Decision::Mount);
        assert_eq!(d("/dev/pts", &all), Decision::Mount);
        assert_eq!(
            d("/sys/firmware/efi/efivars", &none),
            Decision::NotApplicable
        );
        assert_eq!(d("/sys/firmware/efi/efivars", &all), Decision::Mount);
    }

    #[test]
    fn early_mounts_are_ordered_parents_first() {
        for (i, spec) in EARLY_MOUNTS.iter().enumerate() {
            for later in &EARLY_MOUNTS[i + 1..] {
                assert!(
                    !Path::new(spec.target).starts_with(later.target),
                    "{} must come after {}",
                    spec.target,
                    later.target
                );
            }
        }
        assert_eq!(
            EARLY_MOUNTS[0].target, "/proc",
            "mountinfo needs /proc first"
        );
    }

    #[test]
    fn outcomes_serialize_for_the_server() {
        let o = MountOutcome::Failed {
            target: "/run".into(),
            required: true,
            error: "EPERM: Operation not permitted".into(),
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"outcome":"failed","target":"/run","required":true,"error":"EPERM: Operation not permitted"}"#
        );
    }
}
