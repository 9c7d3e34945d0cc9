//! Debian's kernel package: resolve a (meta)package name to the concrete
//! `linux-image-<release>` package and version, fetch it with `apt-get download`, unpack
//! it with `dpkg-deb -x` into a cache, and find the vmlinuz and module tree inside.
//!
//! Nothing is installed on the host. Each package version is downloaded and unpacked once:
//! the unpacked tree appears by an atomic rename, so an existing tree is a complete one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Errors resolving, fetching or unpacking a kernel package.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("invalid package spec {0:?}: expected NAME or NAME=VERSION")]
    BadSpec(String),
    #[error(
        "`{tool}` is not available (Debian package {package}); it is needed to fetch the kernel"
    )]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("apt knows no package {0} (run apt-get update?)")]
    NotFound(String),
    #[error("{0} resolves through too many metapackages")]
    TooDeep(String),
    #[error("downloaded {path} has sha256 {actual}, apt says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{0} holds no kernel: expected lib/modules/<release>/ and boot/vmlinuz-<release>")]
    NoKernel(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A package name with an optional pinned version (`linux-image-amd64`,
/// `linux-image-6.1.0-56-amd64=6.1.192-2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub name: String,
    pub version: Option<String>,
}

impl std::str::FromStr for PackageSpec {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        let version_ok = version.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
        });
        if !name_ok || !version_ok {
            return Err(KernelError::BadSpec(s.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }
}

/// The concrete package that holds the kernel, as pinned in the image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPackage {
    /// What was asked for (`linux-image-amd64`).
    pub requested: String,
    /// The package with the kernel in it (`linux-image-6.1.0-56-amd64`).
    pub name: String,
    pub version: String,
    /// The sha256 of the .deb (apt's, checked against the download).
    pub deb_sha256: Option<String>,
}

/// An unpacked kernel: where its vmlinuz and modules are.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: KernelPackage,
    /// The kernel release (`6.1.0-56-amd64`), the directory name under lib/modules.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `<tree>/lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// `<tree>/lib/firmware` (which may not exist; Debian's kernel package has none).
    pub firmware_dir: PathBuf,
}

impl Kernel {
    /// A kernel already unpacked at `tree` (a `dpkg -x` of a kernel package, or any tree
    /// with `boot/vmlinuz-<release>` and `lib/modules/<release>/`).
    pub fn from_tree(tree: &Path, package: KernelPackage) -> Result<Self, KernelError> {
        let modules_root = tree.join("lib/modules");
        let mut releases = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&modules_root) {
            for e in rd {
                let e = e.map_err(io_err(&modules_root))?;
                let rel = e.file_name().to_string_lossy().into_owned();
                if tree.join("boot").join(format!("vmlinuz-{rel}")).is_file() {
                    releases.push(rel);
                }
            }
        }
        releases.sort();
        let [release] = releases.as_slice() else {
            return Err(KernelError::NoKernel(tree.to_path_buf()));
        };
        Ok(Self {
            package,
            vmlinuz: tree.join("boot").join(format!("vmlinuz-{release}")),
            modules_dir: modules_root.join(release),
            firmware_dir: tree.join("lib/firmware"),
            release: release.clone(),
        })
    }
}

/// Parses deb822 stanzas (`apt-cache show` output). Continuation lines are joined.
pub fn parse_stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.to_string(), v.trim().to_string());
            last = Some(k.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The candidate version in `apt-cache policy NAME` output, if apt has one.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// For a kernel metapackage, the `linux-image-*` package (and pinned version) its
/// `Depends` names; `None` for a package that is itself a kernel.
pub fn kernel_dependency(depends: &str) -> Option<PackageSpec> {
    depends.split(',').find_map(|alternatives| {
        let first = alternatives.split('|').next()?.trim();
        let (name, rest) = first.split_once(' ').unwrap_or((first, ""));
        let name = name.split(':').next()?; // drop an arch qualifier
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim().to_string());
        Some(PackageSpec {
            name: name.to_string(),
            version,
        })
    })
}

fn run(
    program: &'static str,
    package: &'static str,
    args: &[&str],
    cwd: Option<&Path>,
) -> Result<String, KernelError> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    tracing::debug!(command = %format!("{program} {}", args.join(" ")), "running");
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KernelError::ToolMissing {
            tool: program,
            package,
        },
        _ => KernelError::Io {
            path: PathBuf::from(program),
            source: e,
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(KernelError::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves `spec` through apt: its candidate (or pinned) version, then through any
/// metapackage to the package that carries the kernel.
pub fn resolve(spec: &str) -> Result<KernelPackage, KernelError> {
    let mut cur: PackageSpec = spec.parse()?;
    for _ in 0..4 {
        let version = match &cur.version {
            Some(v) => v.clone(),
            None => {
                let policy = run("apt-cache", "apt", &["policy", &cur.name], None)?;
                parse_candidate(&policy).ok_or_else(|| KernelError::NotFound(cur.name.clone()))?
            }
        };
        let pinned = format!("{}={version}", cur.name);
        let show = match run("apt-cache", "apt", &["show", &pinned], None) {
            Ok(s) => s,
            Err(KernelError::CommandFailed { .. }) => return Err(KernelError::NotFound(pinned)),
            Err(e) => return Err(e),
        };
        let stanza = parse_stanzas(&show)
            .into_iter()
            .find(|s| s.get("Version") == Some(&version))
            .ok_or_else(|| KernelError::NotFound(pinned.clone()))?;
        match stanza.get("Depends").and_then(|d| kernel_dependency(d)) {
            Some(next) => {
                tracing::debug!(from = %pinned, to = %next.name, "metapackage");
                cur = next;
            }
            None => {
                return Ok(KernelPackage {
                    requested: spec.to_string(),
                    name: cur.name,
                    version,
                    deb_sha256: stanza.get("SHA256").cloned(),
                })
            }
        }
    }
    Err(KernelError::TooDeep(spec.to_string()))
}

/// The cache's directory for one package version (`:` of an epoch made file-safe).
fn package_dir(cache: &Path, pkg: &KernelPackage) -> PathBuf {
    cache.join(format!("{}_{}", pkg.name, pkg.version.replace(':', "%3a")))
}

/// A name no other process uses, for work that ends in an atomic rename.
fn scratch(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Makes sure `pkg` is downloaded and unpacked under `cache`, and returns the kernel in
/// it. Reuses what an earlier run left; checks a fresh download against apt's sha256.
pub fn fetch(pkg: &KernelPackage, cache: &Path) -> Result<Kernel, KernelError> {
    let dir = package_dir(cache, pkg);
    let tree = dir.join("tree");
    if tree.is_dir() {
        tracing::info!(package = %pkg.name, version = %pkg.version, tree = %tree.display(), "kernel already unpacked");
        return Kernel::from_tree(&tree, pkg.clone());
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let deb = dir.join("package.deb");
    let have = match (&pkg.deb_sha256, deb.is_file()) {
        (Some(want), true) => crate::sha256_file(&deb).map_err(io_err(&deb))? == *want,
        (None, true) => true,
        (_, false) => false,
    };
    if !have {
        let dl = scratch(&dir, "download");
        std::fs::create_dir_all(&dl).map_err(io_err(&dl))?;
        let pinned = format!("{}={}", pkg.name, pkg.version);
        tracing::info!(package = %pinned, "apt-get download");
        let result = run("apt-get", "apt", &["download", "-q", &pinned], Some(&dl))
            .and_then(|_| downloaded_deb(&dl))
            .and_then(|got| {
                if let Some(want) = &pkg.deb_sha256 {
                    let actual = crate::sha256_file(&got).map_err(io_err(&got))?;
                    if actual != *want {
                        return Err(KernelError::Checksum {
                            path: got,
                            expected: want.clone(),
                            actual,
                        });
                    }
                }
                std::fs::rename(&got, &deb).map_err(io_err(&deb))
            });
        let _ = std::fs::remove_dir_all(&dl);
        result?;
    }
    let x = scratch(&dir, "unpack");
    tracing::info!(deb = %deb.display(), "dpkg-deb -x");
    let unpacked = run(
        "dpkg-deb",
        "dpkg",
        &["-x", &deb.to_string_lossy(), &x.to_string_lossy()],
        None,
    );
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&x);
        return Err(e);
    }
    // Another build may have won the race: its tree is as good as ours.
    if let Err(e) = std::fs::rename(&x, &tree) {
        let _ = std::fs::remove_dir_all(&x);
        if !tree.is_dir() {
            return Err(io_err(&tree)(e));
        }
    }
    Kernel::from_tree(&tree, pkg.clone())
}

fn downloaded_deb(dir: &Path) -> Result<PathBuf, KernelError> {
    let mut debs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            debs.push(p);
        }
    }
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(KernelError::CommandFailed {
            command: "apt-get download".into(),
            status: "ok".into(),
            stderr: format!(
                "expected one .deb in {}, found {}",
                dir.display(),
                debs.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
 continued description
SHA256: 45457bcfc86c87585800b5656bdf2773b063a3bb95486b0e820d51e870491f8d

Package: linux-image-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-48-amd64 (= 6.1.176-1)
";

    #[test]
    fn parses_apt_cache_show() {
        let s = parse_stanzas(META);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["Version"], "6.1.192-2");
        assert_eq!(
            s[0]["Description"],
            "Linux for 64-bit PCs (meta-package)\ncontinued description"
        );
        assert_eq!(
            kernel_dependency(&s[0]["Depends"]),
            Some(PackageSpec {
                name: "linux-image-6.1.0-56-amd64".into(),
                version: Some("6.1.192-2".into())
            })
        );
    }

    #[test]
    fn a_real_kernel_package_depends_on_no_image() {
        let deps =
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool";
        assert_eq!(kernel_dependency(deps), None);
        assert_eq!(
            kernel_dependency("foo, linux-image-6.1.0-56-cloud-amd64:amd64 | linux-image-x")
                .unwrap()
                .name,
            "linux-image-6.1.0-56-cloud-amd64"
        );
    }

    #[test]
    fn parses_policy_candidate() {
        let p =
            "linux-image-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(p).as_deref(), Some("6.1.192-2"));
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn package_specs() {
        let s: PackageSpec = "linux-image-6.1.0-56-amd64=6.1.192-2".parse().unwrap();
        assert_eq!(s.name, "linux-image-6.1.0-56-amd64");
        assert_eq!(s.version.as_deref(), Some("6.1.192-2"));
        assert!("linux-image-amd64"
            .parse::<PackageSpec>()
            .unwrap()
            .version
            .is_none());
        for bad in ["", "Linux", "a b", "x=", "x=1 2", "-o=Dir::Etc", "x;rm"] {
            assert!(bad.parse::<PackageSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_kernel_in_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Kernel::from_tree(dir.path(), local()),
            Err(KernelError::NoKernel(_))
        ));
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0-9-amd64/kernel")).unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot/vmlinuz-6.1.0-9-amd64"), b"bzImage").unwrap();
        let k = Kernel::from_tree(dir.path(), local()).unwrap();
        assert_eq!(k.release, "6.1.0-9-amd64");
        assert!(k.vmlinuz.ends_with("boot/vmlinuz-6.1.0-9-amd64"));
        assert!(k.modules_dir.ends_with("lib/modules/6.1.0-9-amd64"));
    }

    fn local() -> KernelPackage {
        KernelPackage {
            requested: "local".into(),
            name: "local".into(),
            version: "0".into(),
            deb_sha256: None,
        }
    }
}
