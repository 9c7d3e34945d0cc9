//! One image build: kernel + module closure + static agent -> `vmlinuz`,
//! `initramfs.cpio.zst` and `manifest.json` in the output directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpio::{Archive, CpioError};
use crate::kernel::{self, Kernel, KernelError, KernelPackage};
use crate::modules::{ModuleIndex, ModulesError, DEFAULT_MODULES};

/// Output file names inside the output directory.
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs.cpio.zst";
pub const MANIFEST: &str = "manifest.json";

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("getting the kernel")]
    Kernel(#[from] KernelError),
    #[error("reading the kernel's modules")]
    Modules(#[from] ModulesError),
    #[error("assembling the archive")]
    Cpio(#[from] CpioError),
    #[error("the agent {path} cannot be /init: {reason}")]
    Agent { path: PathBuf, reason: String },
    #[error("invalid module choice {0:?}: expected default, none or list:NAME,NAME")]
    BadModuleChoice(String),
    #[error("invalid extra file {0:?}: expected SOURCE:DEST")]
    BadExtraFile(String),
    #[error("compressing or decompressing the archive")]
    Compress(#[source] std::io::Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which modules go into the image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModuleChoice {
    /// [`DEFAULT_MODULES`]: the NIC and storage drivers real servers need.
    #[default]
    Default,
    /// None: the agent-only image (for kernels with the drivers built in).
    None,
    /// Exactly these (and their dependencies).
    List(Vec<String>),
}

impl std::str::FromStr for ModuleChoice {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("list:") {
                Some(list) => Ok(Self::List(
                    list.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                )),
                None => Err(ImageError::BadModuleChoice(s.to_string())),
            },
        }
    }
}

impl ModuleChoice {
    fn names(&self) -> Vec<String> {
        match self {
            Self::Default => DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            Self::None => Vec::new(),
            Self::List(l) => l.clone(),
        }
    }
}

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A Debian package (`linux-image-amd64`, or pinned `NAME=VERSION`) fetched with
    /// apt into `cache`.
    Apt { package: String, cache: PathBuf },
    /// A tree already unpacked (`boot/vmlinuz-<release>`, `lib/modules/<release>/`).
    Tree(PathBuf),
}

/// Everything one build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kernel: KernelSource,
    /// The static agent, installed as `/init`.
    pub agent: PathBuf,
    pub out_dir: PathBuf,
    pub modules: ModuleChoice,
    /// Further directories to look for firmware in, after the kernel tree's own.
    pub firmware_dirs: Vec<PathBuf>,
    /// Files added as they are (stand-in test images, site CA bundles...).
    pub extra_files: Vec<ExtraFile>,
    /// The mtime of every archive member (`SOURCE_DATE_EPOCH`, else 0).
    pub mtime: u32,
    /// zstd level; 19 by default.
    pub zstd_level: i32,
}

impl BuildOptions {
    pub fn new(kernel: KernelSource, agent: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            kernel,
            agent,
            out_dir,
            modules: ModuleChoice::Default,
            firmware_dirs: Vec::new(),
            extra_files: Vec::new(),
            mtime: 0,
            zstd_level: 19,
        }
    }
}

/// A host file to put into the image at `dest`, with the source's permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub source: PathBuf,
    pub dest: String,
}

impl std::str::FromStr for ExtraFile {
    type Err = ImageError;
    /// `SOURCE:DEST`, DEST being a path inside the image (`/etc/ssl/ca.pem`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((src, dest)) if !src.is_empty() && !dest.trim_matches('/').is_empty() => {
                Ok(Self {
                    source: PathBuf::from(src),
                    dest: dest.to_string(),
                })
            }
            _ => Err(ImageError::BadExtraFile(s.to_string())),
        }
    }
}

/// Size and sha256 of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

impl FileDigest {
    fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: crate::sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// A firmware file a shipped module may ask for that is not in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MissingFirmware {
    pub module: String,
    pub file: String,
}

/// What was built, from what: written next to the image as `manifest.json`. Holds no
/// time or host detail, so two builds of the same inputs give the same manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel: KernelPackage,
    pub kernel_release: String,
    /// `vmlinuz` and `initramfs.cpio.zst`.
    pub files: BTreeMap<String, FileDigest>,
    /// The agent as shipped in `/init`.
    pub agent: FileDigest,
    /// The uncompressed cpio size.
    pub cpio_size: u64,
    pub mtime: u32,
    pub zstd_level: i32,
    /// Module names asked for.
    pub modules_requested: Vec<String>,
    /// Modules shipped (requested ones and their dependencies), sorted.
    pub modules: Vec<String>,
    /// Requested names that are built into this kernel.
    pub modules_builtin: Vec<String>,
    /// Requested names this kernel does not have.
    pub modules_unknown: Vec<String>,
    /// Firmware files shipped, relative to /lib/firmware.
    pub firmware: Vec<String>,
    pub firmware_missing: Vec<MissingFirmware>,
    /// Extra files by their path in the image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// The digest of an output file by name ([`VMLINUZ`], [`INITRAMFS`]).
    pub fn file(&self, name: &str) -> Option<&FileDigest> {
        self.files.get(name)
    }
}

/// The image contents before compression.
pub struct Assembled {
    pub archive: Archive,
    pub manifest_modules: ModulesReport,
}

/// The module part of a manifest.
#[derive(Debug, Clone, Default)]
pub struct ModulesReport {
    pub requested: Vec<String>,
    pub shipped: Vec<String>,
    pub builtin: Vec<String>,
    pub unknown: Vec<String>,
    pub firmware: Vec<String>,
    pub firmware_missing: Vec<MissingFirmware>,
}

/// The directories every image has; the agent mounts proc, sys, dev and run itself.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// Builds the archive: base layout, `/dev/console`, the agent as `/init`, the chosen
/// modules with trimmed index files, and the firmware they need that can be found.
pub fn assemble(
    kernel: &Kernel,
    agent: &[u8],
    choice: &ModuleChoice,
    firmware_dirs: &[PathBuf],
) -> Result<Assembled, ImageError> {
    let mut a = Archive::new();
    for (dir, perm) in DIRS {
        a.add_dir(dir, *perm)?;
    }
    // The kernel opens /dev/console before it runs /init; without it the agent's
    // output goes nowhere.
    a.add_char_device("dev/console", 0o600, 5, 1)?;
    a.add_file("init", 0o755, agent.to_vec())?;

    let base = format!("lib/modules/{}", kernel.release);
    a.add_dir(&base, 0o755)?;
    let mut report = ModulesReport {
        requested: choice.names(),
        ..Default::default()
    };
    let index = if *choice == ModuleChoice::None {
        ModuleIndex::default()
    } else {
        ModuleIndex::scan(&kernel.modules_dir)?
    };
    let sel = index.select(&report.requested);
    report.builtin = sel.builtin.clone();
    report.unknown = sel.unknown.clone();
    for u in &sel.unknown {
        tracing::warn!(module = %u, release = %kernel.release, "requested module not in this kernel");
    }

    let mut firmware = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for name in &sel.modules {
        let m = index.get(name).expect("selected modules are indexed");
        let src = kernel.modules_dir.join(&m.path);
        let bytes = std::fs::read(&src).map_err(io_err(&src))?;
        a.add_file(&format!("{base}/{}", m.path), 0o644, bytes)?;
        for fw in &m.firmware {
            match find_firmware(fw, &kernel.firmware_dir, firmware_dirs) {
                Some(path) => {
                    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
                    a.add_file(&format!("lib/firmware/{fw}"), 0o644, bytes)?;
                    firmware.insert(fw.clone());
                }
                None => {
                    missing.insert(MissingFirmware {
                        module: m.name.clone(),
                        file: fw.clone(),
                    });
                }
            }
        }
    }
    a.add_file(
        &format!("{base}/modules.dep"),
        0o644,
        index.render_modules_dep(&sel.modules).into_bytes(),
    )?;
    a.add_file(
        &format!("{base}/modules.alias"),
        0o644,
        index.render_modules_alias(&sel.modules).into_bytes(),
    )?;
    a.add_file(
        &format!("{base}/modules.softdep"),
        0o644,
        index.render_modules_softdep(&sel.modules).into_bytes(),
    )?;
    // Lets the agent tell "built in" from "missing" when an alias names no module file.
    let builtin = kernel.modules_dir.join("modules.builtin");
    if builtin.is_file() {
        let bytes = std::fs::read(&builtin).map_err(io_err(&builtin))?;
        a.add_file(&format!("{base}/modules.builtin"), 0o644, bytes)?;
    }
    report.shipped = sel.modules.into_iter().collect();
    report.firmware = firmware.into_iter().collect();
    report.firmware_missing = missing.into_iter().collect();
    Ok(Assembled {
        archive: a,
        manifest_modules: report,
    })
}

/// A firmware file by its modinfo name, if one of the directories has it. Names that
/// are patterns or climb out of the directory are never looked up.
fn find_firmware(name: &str, tree_dir: &Path, extra: &[PathBuf]) -> Option<PathBuf> {
    let safe = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('*')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !safe {
        return None;
    }
    std::iter::once(tree_dir)
        .chain(extra.iter().map(PathBuf::as_path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// zstd at `level`, single-threaded (the crate is built without `zstdmt`), with the
/// content size and a checksum in the frame: same input, same bytes.
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, ImageError> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(data.len() / 3), level)?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(data.len() as u64))?;
        enc.write_all(data)?;
        enc.finish()
    };
    run().map_err(ImageError::Compress)
}

/// The members of a built `initramfs.cpio.zst` (for checks and tests).
pub fn unpack(zst: &[u8]) -> Result<Vec<crate::cpio::ReadEntry>, ImageError> {
    let cpio = zstd::decode_all(zst).map_err(ImageError::Compress)?;
    Ok(crate::cpio::read(&cpio)?)
}

fn check_agent(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::Agent {
        path: path.to_path_buf(),
        reason,
    };
    match crate::elf::is_static_executable(bytes) {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad(
            "it is dynamically linked and the image has no loader or libc; build it for \
             x86_64-unknown-linux-musl (scripts/build-agent.sh)"
                .into(),
        )),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Writes `bytes` to `path` by way of a temporary file and a rename, so a reader never
/// sees half an image.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Builds the image described by `opts` into `opts.out_dir`.
pub fn build(opts: &BuildOptions) -> Result<Manifest, ImageError> {
    let kernel = match &opts.kernel {
        KernelSource::Apt { package, cache } => {
            let pkg = kernel::resolve(package)?;
            tracing::info!(requested = %package, package = %pkg.name, version = %pkg.version, "kernel package resolved");
            kernel::fetch(&pkg, cache)?
        }
        KernelSource::Tree(tree) => {
            let pkg = KernelPackage {
                requested: tree.display().to_string(),
                name: "local-tree".into(),
                version: "unknown".into(),
                deb_sha256: None,
            };
            Kernel::from_tree(tree, pkg)?
        }
    };
    let _span = tracing::info_span!("image", release = %kernel.release).entered();
    let agent = std::fs::read(&opts.agent).map_err(io_err(&opts.agent))?;
    check_agent(&opts.agent, &agent)?;

    let Assembled {
        mut archive,
        manifest_modules: report,
    } = assemble(&kernel, &agent, &opts.modules, &opts.firmware_dirs)?;
    let mut extra_files = BTreeMap::new();
    for extra in &opts.extra_files {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&extra.source).map_err(io_err(&extra.source))?;
        let bytes = std::fs::read(&extra.source).map_err(io_err(&extra.source))?;
        let perm = meta.permissions().mode() & 0o7777;
        extra_files.insert(
            extra.dest.trim_start_matches('/').to_string(),
            FileDigest::of(&bytes),
        );
        archive.add_file(&extra.dest, perm, bytes)?;
    }
    let cpio = archive.to_bytes(opts.mtime)?;
    let zst = compress(&cpio, opts.zstd_level)?;
    let vmlinuz = std::fs::read(&kernel.vmlinuz).map_err(io_err(&kernel.vmlinuz))?;
    tracing::info!(
        entries = archive.len(),
        cpio = cpio.len(),
        compressed = zst.len(),
        modules = report.shipped.len(),
        "archive built"
    );

    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    write_atomic(&opts.out_dir.join(VMLINUZ), &vmlinuz)?;
    write_atomic(&opts.out_dir.join(INITRAMFS), &zst)?;
    let manifest = Manifest {
        kernel: kernel.package.clone(),
        kernel_release: kernel.release.clone(),
        files: BTreeMap::from([
            (VMLINUZ.to_string(), FileDigest::of(&vmlinuz)),
            (INITRAMFS.to_string(), FileDigest::of(&zst)),
        ]),
        agent: FileDigest::of(&agent),
        cpio_size: cpio.len() as u64,
        mtime: opts.mtime,
        zstd_level: opts.zstd_level,
        modules_requested: report.requested,
        modules: report.shipped,
        modules_builtin: report.builtin,
        modules_unknown: report.unknown,
        firmware: report.firmware,
        firmware_missing: report.firmware_missing,
        extra_files,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    json.push(b'\n');
    write_atomic(&opts.out_dir.join(MANIFEST), &json)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio;
    use crate::elf::testing::{elf_with_program_header, elf_with_sections};

    /// A kernel tree with two modules (one needing the other and a firmware file that
    /// is there, one asking for firmware that is not).
    fn fake_tree(dir: &Path) -> PathBuf {
        let rel = dir.join("lib/modules/6.1.0-9-amd64");
        let net = rel.join("kernel/drivers/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::create_dir_all(dir.join("lib/firmware/acme")).unwrap();
        std::fs::write(dir.join("boot/vmlinuz-6.1.0-9-amd64"), b"bzImage").unwrap();
        std::fs::write(dir.join("lib/firmware/acme/nic.bin"), b"fw").unwrap();
        let ko = |info: &[u8]| elf_with_sections(&[(".modinfo", info)]);
        std::fs::write(
            net.join("acme-nic.ko"),
            ko(b"name=acme_nic\0depends=acme_core\0alias=pci:v0000AAAAd*\0firmware=acme/nic.bin\0firmware=acme/extra.bin\0"),
        )
        .unwrap();
        std::fs::write(net.join("acme_core.ko"), ko(b"name=acme_core\0depends=\0")).unwrap();
        std::fs::write(net.join("other.ko"), ko(b"name=other\0depends=\0")).unwrap();
        std::fs::write(
            rel.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn builds_a_reproducible_image_from_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(&dir.path().join("tree"));
        let agent = dir.path().join("agent");
        std::fs::write(&agent, elf_with_program_header(1)).unwrap();
        let mut opts = BuildOptions::new(KernelSource::Tree(tree), agent, dir.path().join("out1"));
        opts.modules = "list:acme-nic,af_packet,nope".parse().unwrap();
        opts.zstd_level = 3;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"PEM").unwrap();
        opts.extra_files = vec![format!("{}:/etc/ssl/ca.pem", ca.display()).parse().unwrap()];
        let m1 = build(&opts).unwrap();
        opts.out_dir = dir.path().join("out2");
        let m2 = build(&opts).unwrap();
        assert_eq!(m1, m2);
        for f in [VMLINUZ, INITRAMFS, MANIFEST] {
            assert_eq!(
                std::fs::read(dir.path().join("out1").join(f)).unwrap(),
                std::fs::read(dir.path().join("out2").join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(m1.modules, ["acme_core", "acme_nic"]);
        assert_eq!(m1.modules_builtin, ["af_packet"]);
        assert_eq!(m1.modules_unknown, ["nope"]);
        assert_eq!(m1.firmware, ["acme/nic.bin"]);
        assert_eq!(
            m1.firmware_missing,
            [MissingFirmware {
                module: "acme_nic".into(),
                file: "acme/extra.bin".into()
            }]
        );

        let zst = std::fs::read(dir.path().join("out1").join(INITRAMFS)).unwrap();
        assert_eq!(m1.file(INITRAMFS).unwrap().sha256, crate::sha256_hex(&zst));
        let cpio_bytes = zstd::decode_all(&zst[..]).unwrap();
        assert_eq!(cpio_bytes.len() as u64, m1.cpio_size);
        let entries = cpio::read(&cpio_bytes).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(
            (get("dev/console").rdev_major, get("dev/console").rdev_minor),
            (5, 1)
        );
        assert_eq!(get("lib/firmware/acme/nic.bin").data, b"fw");
        assert_eq!(get("etc/ssl/ca.pem").data, b"PEM");
        assert_eq!(m1.extra_files["etc/ssl/ca.pem"].size, 3);
        // An extra file never replaces what the builder put there.
        opts.extra_files = vec![format!("{}:init", ca.display()).parse().unwrap()];
        assert!(matches!(
            build(&opts),
            Err(ImageError::Cpio(CpioError::Conflict(_)))
        ));
        opts.extra_files.clear();
        let base = "lib/modules/6.1.0-9-amd64";
        get(&format!("{base}/kernel/drivers/net/acme-nic.ko"));
        get(&format!("{base}/kernel/drivers/net/acme_core.ko"));
        assert!(!entries.iter().any(|e| e.name.ends_with("other.ko")));
        let dep = String::from_utf8(get(&format!("{base}/modules.dep")).data.clone()).unwrap();
        assert!(
            dep.contains("kernel/drivers/net/acme-nic.ko: kernel/drivers/net/acme_core.ko\n"),
            "{dep}"
        );
        let alias = String::from_utf8(get(&format!("{base}/modules.alias")).data.clone()).unwrap();
        assert!(alias.contains("alias pci:v0000AAAAd* acme_nic\n"));
        get(&format!("{base}/modules.builtin"));
        // No shell, no busybox: the agent is the only program.
        assert!(!entries
            .iter()
            .any(|e| e.name.contains("bin/") || e.name.contains("busybox")));

        // SOURCE_DATE_EPOCH-style mtime changes the bytes, nothing else.
        opts.mtime = 1_700_000_000;
        opts.out_dir = dir.path().join("out3");
        let m3 = build(&opts).unwrap();
        assert_ne!(m3.file(INITRAMFS), m1.file(INITRAMFS));
        assert_eq!(m3.modules, m1.modules);
    }

    #[test]
    fn agent_only_image_and_a_dynamic_agent_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(&dir.path().join("tree"));
        let agent = dir.path().join("agent");
        std::fs::write(&agent, elf_with_program_header(1)).unwrap();
        let mut opts = BuildOptions::new(
            KernelSource::Tree(tree),
            agent.clone(),
            dir.path().join("out"),
        );
        opts.modules = ModuleChoice::None;
        let m = build(&opts).unwrap();
        assert!(m.modules.is_empty() && m.modules_requested.is_empty());
        let zst = std::fs::read(dir.path().join("out").join(INITRAMFS)).unwrap();
        let entries = cpio::read(&zstd::decode_all(&zst[..]).unwrap()).unwrap();
        assert!(!entries.iter().any(|e| e.name.ends_with(".ko")));

        std::fs::write(&agent, elf_with_program_header(3)).unwrap();
        assert!(matches!(build(&opts), Err(ImageError::Agent { .. })));
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        assert!(matches!(build(&opts), Err(ImageError::Agent { .. })));
    }

    #[test]
    fn module_choices() {
        assert_eq!(
            "default".parse::<ModuleChoice>().unwrap(),
            ModuleChoice::Default
        );
        assert_eq!("none".parse::<ModuleChoice>().unwrap(), ModuleChoice::None);
        assert_eq!(
            "list:e1000, nvme,".parse::<ModuleChoice>().unwrap(),
            ModuleChoice::List(vec!["e1000".into(), "nvme".into()])
        );
        assert!("e1000".parse::<ModuleChoice>().is_err());
        assert!("nodest".parse::<ExtraFile>().is_err());
        assert!("src:/".parse::<ExtraFile>().is_err());
        assert_eq!(
            "a:b:/etc/x".parse::<ExtraFile>().unwrap().source,
            PathBuf::from("a:b")
        );
    }

    #[test]
    fn firmware_names_never_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), b"").unwrap();
        assert!(find_firmware("x.bin", dir.path(), &[]).is_some());
        for bad in ["../x.bin", "/etc/passwd", "a/*.bin", "", "a//x.bin"] {
            assert!(
                find_firmware(bad, &dir.path().join("sub"), &[]).is_none(),
                "{bad}"
            );
        }
    }
}
