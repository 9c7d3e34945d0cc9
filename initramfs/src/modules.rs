//! The kernel modules of an extracted kernel tree: which exist, what each one needs, and
//! the closure of a wanted list with its dependencies. Also renders the trimmed
//! `modules.dep`, `modules.alias` and `modules.softdep` the agent reads in the image.
//!
//! Debian's kernel package ships no `modules.dep` (its postinst runs depmod), so the
//! dependencies come from each module's `.modinfo` `depends=` (what modpost recorded, the
//! same edges depmod finds from symbols). When a tree does have a `modules.dep`, it wins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf::{self, ElfError};

/// Errors reading a module tree.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the .modinfo of {path}")]
    Elf { path: PathBuf, source: ElfError },
    #[error("modules.dep line {line}: expected `path.ko: dep.ko ...`")]
    BadModulesDep { line: usize },
}

/// The NIC and storage drivers real servers (and QEMU) need, plus the few kernel
/// facilities the agent uses. Dependencies come with them through the closure.
pub const DEFAULT_MODULES: &[&str] = &[
    // NICs: Intel, Broadcom, Mellanox/NVIDIA, Realtek, virtio.
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "bnx2x",
    "mlx4_en",
    "mlx5_core",
    "r8169",
    "virtio_net",
    // Storage: SATA/AHCI, legacy IDE (QEMU's i440fx), NVMe (and Intel VMD in front of
    // it), SCSI disks, the common RAID/HBA drivers, virtio, USB mass storage.
    "ahci",
    "ata_piix",
    "nvme",
    "vmd",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
    "smartpqi",
    "hpsa",
    "aacraid",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    // Raw sockets for DHCP (built in on Debian) and EFI variables for Secure Boot state.
    "af_packet",
    "efivarfs",
];

/// Module names treat `-` and `_` alike (the kernel does); this is the `_` spelling.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// One loadable module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Module {
    /// Normalized name (`usb_storage`).
    pub name: String,
    /// Path relative to `lib/modules/<release>/` (`kernel/drivers/usb/storage/usb-storage.ko`).
    pub path: String,
    /// Normalized names of the modules it needs loaded first.
    pub depends: Vec<String>,
    /// `softdep` pre/post names, as written (a module name or an alias such as `crc32c`).
    pub softdep_pre: Vec<String>,
    pub softdep_post: Vec<String>,
    /// Its `alias=` patterns (`pci:v00008086d0000100Esv*sd*bc*sc*i*`).
    pub aliases: Vec<String>,
    /// Firmware files it may request, relative to `/lib/firmware`.
    pub firmware: Vec<String>,
}

impl Module {
    /// Builds a module from its `.modinfo` pairs; `path` names its file.
    pub fn from_modinfo(path: &str, pairs: &[(String, String)]) -> Self {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        let mut m = Module {
            name: normalize(file_name),
            path: path.to_string(),
            ..Default::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "name" if !v.is_empty() => m.name = normalize(v),
                "depends" => m
                    .depends
                    .extend(v.split(',').filter(|d| !d.is_empty()).map(normalize)),
                "alias" => m.aliases.push(v.clone()),
                "firmware" => m.firmware.push(v.clone()),
                "softdep" => {
                    let (pre, post) = parse_softdep(v);
                    m.softdep_pre.extend(pre);
                    m.softdep_post.extend(post);
                }
                _ => {}
            }
        }
        m
    }
}

/// Splits a `softdep` value (`pre: crc32c post: foo bar`) into its pre and post names.
pub fn parse_softdep(value: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut target: Option<&mut Vec<String>> = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => target = Some(&mut pre),
            "post:" => target = Some(&mut post),
            w => {
                if let Some(t) = target.as_deref_mut() {
                    t.push(w.to_string());
                }
            }
        }
    }
    (pre, post)
}

/// Parses `modules.dep`: each line `path.ko: dep.ko dep.ko`, paths relative to the
/// release directory. Returns (path, deps) pairs in file order.
pub fn parse_modules_dep(text: &str) -> Result<Vec<(String, Vec<String>)>, ModulesError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, deps) = line
            .split_once(':')
            .ok_or(ModulesError::BadModulesDep { line: i + 1 })?;
        let path = path.trim();
        if path.is_empty() || path.contains(char::is_whitespace) {
            return Err(ModulesError::BadModulesDep { line: i + 1 });
        }
        out.push((
            path.to_string(),
            deps.split_whitespace().map(str::to_string).collect(),
        ));
    }
    Ok(out)
}

fn file_stem_name(path: &str) -> String {
    normalize(path.rsplit('/').next().unwrap_or(path))
}

/// What [`ModuleIndex::select`] made of a wanted list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every module to ship: the wanted ones and all they need.
    pub modules: BTreeSet<String>,
    /// Wanted names that are built into this kernel (nothing to ship).
    pub builtin: Vec<String>,
    /// Wanted names this kernel does not have at all.
    pub unknown: Vec<String>,
}

/// All modules of one kernel release.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// An index of the given modules (for trees read elsewhere, and tests).
    pub fn new(modules: impl IntoIterator<Item = Module>, builtin: &[&str]) -> Self {
        let mut idx = Self::default();
        for m in modules {
            idx.insert(m);
        }
        idx.builtin = builtin.iter().map(|b| normalize(b)).collect();
        idx
    }

    fn insert(&mut self, m: Module) {
        if let Some(old) = self.modules.get(&m.name) {
            tracing::warn!(module = %m.name, kept = %old.path, ignored = %m.path, "module present twice");
            return;
        }
        self.modules.insert(m.name.clone(), m);
    }

    /// Reads every `.ko` under `release_dir` (`.../lib/modules/<release>`): its
    /// `.modinfo`, then `modules.dep` and `modules.builtin` when the tree has them.
    pub fn scan(release_dir: &Path) -> Result<Self, ModulesError> {
        let mut files = Vec::new();
        walk_ko(release_dir, release_dir, &mut files)?;
        files.sort();
        let mut idx = Self::default();
        for rel in files {
            let path = release_dir.join(&rel);
            let mut f = std::fs::File::open(&path).map_err(|source| ModulesError::Io {
                path: path.clone(),
                source,
            })?;
            let pairs = elf::read_modinfo(&mut f).map_err(|source| ModulesError::Elf {
                path: path.clone(),
                source,
            })?;
            idx.insert(Module::from_modinfo(&rel, &pairs));
        }
        let dep_file = release_dir.join("modules.dep");
        if let Some(text) = read_optional(&dep_file)? {
            idx.apply_modules_dep(&parse_modules_dep(&text)?);
        }
        if let Some(text) = read_optional(&release_dir.join("modules.builtin"))? {
            idx.builtin = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| file_stem_name(l.trim()))
                .collect();
        }
        tracing::debug!(modules = idx.modules.len(), builtin = idx.builtin.len(), dir = %release_dir.display(), "module tree indexed");
        Ok(idx)
    }

    /// Takes the dependency lists of a `modules.dep` (depmod's word beats modinfo's).
    pub fn apply_modules_dep(&mut self, deps: &[(String, Vec<String>)]) {
        for (path, list) in deps {
            let name = file_stem_name(path);
            let m = self.modules.entry(name.clone()).or_insert_with(|| Module {
                name,
                path: path.clone(),
                ..Default::default()
            });
            m.depends = list.iter().map(|d| file_stem_name(d)).collect();
        }
    }

    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize(name))
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The modules a name stands for: the module of that name, else every module with
    /// exactly that alias (as modprobe resolves `crc32c` to crc32c_generic and
    /// crc32c_intel).
    pub fn resolve(&self, name: &str) -> Vec<&Module> {
        if let Some(m) = self.get(name) {
            return vec![m];
        }
        self.modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| a == name))
            .collect()
    }

    /// The closure of `wanted` over hard dependencies and softdeps (pre and post).
    /// Unknown names are reported in the result, not an error.
    pub fn select<S: AsRef<str>>(&self, wanted: &[S]) -> Selection {
        let mut sel = Selection::default();
        let mut stack: Vec<String> = Vec::new();
        for w in wanted {
            let w = w.as_ref().trim();
            if w.is_empty() {
                continue;
            }
            let found = self.resolve(w);
            if !found.is_empty() {
                stack.extend(found.iter().map(|m| m.name.clone()));
            } else if self.is_builtin(w) {
                sel.builtin.push(normalize(w));
            } else {
                sel.unknown.push(w.to_string());
            }
        }
        while let Some(name) = stack.pop() {
            let Some(m) = self.modules.get(&name) else {
                // A dependency that is built in, or a tree missing a file: nothing to ship.
                if !self.builtin.contains(&name) {
                    tracing::warn!(module = %name, "dependency not found in the module tree");
                }
                continue;
            };
            if !sel.modules.insert(name) {
                continue;
            }
            stack.extend(m.depends.iter().cloned());
            for soft in m.softdep_pre.iter().chain(&m.softdep_post) {
                stack.extend(self.resolve(soft).iter().map(|d| d.name.clone()));
            }
        }
        sel.builtin.sort();
        sel.builtin.dedup();
        sel
    }

    /// The order to load `name`'s hard dependencies in (each after what it needs), not
    /// including `name` itself. Only modules in `within`.
    fn load_order(&self, name: &str, within: &BTreeSet<String>) -> Vec<String> {
        fn visit(
            idx: &ModuleIndex,
            name: &str,
            within: &BTreeSet<String>,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<String>,
        ) {
            if !seen.insert(name.to_string()) {
                return;
            }
            let Some(m) = idx.modules.get(name) else {
                return;
            };
            for d in &m.depends {
                if within.contains(d) {
                    visit(idx, d, within, seen, out);
                }
            }
            out.push(name.to_string());
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        visit(self, name, within, &mut seen, &mut out);
        out.pop(); // `name` itself comes last
        out
    }

    /// `modules.dep` for the selected modules, in depmod's layout: each line lists all
    /// of a module's hard dependencies, the one to load first last (modprobe loads the
    /// list from the end). Softdeps stay out, as with depmod: they are optional (e.g.
    /// crct10dif_pclmul fails with ENODEV on a CPU without PCLMULQDQ, and sd_mod must
    /// load anyway); they are in `modules.softdep` for a loader to try first.
    pub fn render_modules_dep(&self, sel: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for name in sel {
            let Some(m) = self.modules.get(name) else {
                continue;
            };
            out.push_str(&m.path);
            out.push(':');
            for d in self.load_order(name, sel).iter().rev() {
                out.push(' ');
                out.push_str(&self.modules[d].path);
            }
            out.push('\n');
        }
        out
    }

    /// `modules.alias` for the selected modules: `alias <pattern> <module>` lines.
    pub fn render_modules_alias(&self, sel: &BTreeSet<String>) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for m in sel.iter().filter_map(|n| self.modules.get(n)) {
            for a in &m.aliases {
                out.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        out
    }

    /// `modules.softdep` for the selected modules that declare softdeps.
    pub fn render_modules_softdep(&self, sel: &BTreeSet<String>) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in sel.iter().filter_map(|n| self.modules.get(n)) {
            if m.softdep_pre.is_empty() && m.softdep_post.is_empty() {
                continue;
            }
            out.push_str(&format!("softdep {}", m.name));
            if !m.softdep_pre.is_empty() {
                out.push_str(&format!(" pre: {}", m.softdep_pre.join(" ")));
            }
            if !m.softdep_post.is_empty() {
                out.push_str(&format!(" post: {}", m.softdep_post.join(" ")));
            }
            out.push('\n');
        }
        out
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ModulesError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModulesError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn walk_ko(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ModulesError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModulesError::Io { path, source }
    };
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let path = e.path();
        let ft = e.file_type().map_err(io(&path))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ft.is_dir() {
            walk_ko(root, &path, out)?;
        } else if ft.is_file() && name.ends_with(".ko") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        } else if ft.is_file() && (name.ends_with(".ko.xz") || name.ends_with(".ko.zst")) {
            // Debian 6.1 ships plain .ko; compressed ones would need the kernel's
            // in-kernel decompression and a loader that passes the right flag.
            tracing::warn!(path = %path.display(), "compressed module ignored");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dep() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/initramfs/modules.dep");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn fixture_index() -> ModuleIndex {
        let mut idx = ModuleIndex::new(
            [
                Module {
                    name: "libcrc32c".into(),
                    path: "kernel/lib/libcrc32c.ko".into(),
                    softdep_pre: vec!["crc32c".into()],
                    ..Default::default()
                },
                Module {
                    name: "crc32c_generic".into(),
                    path: "kernel/crypto/crc32c_generic.ko".into(),
                    aliases: vec!["crc32c".into(), "crypto-crc32c".into()],
                    ..Default::default()
                },
                Module {
                    name: "crc32c_intel".into(),
                    path: "kernel/arch/x86/crypto/crc32c-intel.ko".into(),
                    aliases: vec![
                        "crc32c".into(),
                        "cpu:type:x86,ven*fam*mod*:feature:*0094*".into(),
                    ],
                    ..Default::default()
                },
                Module {
                    name: "e1000".into(),
                    path: "kernel/drivers/net/ethernet/intel/e1000/e1000.ko".into(),
                    aliases: vec!["pci:v00008086d0000100Esv*sd*bc*sc*i*".into()],
                    firmware: vec![],
                    ..Default::default()
                },
            ],
            &["af_packet", "unix"],
        );
        idx.apply_modules_dep(&parse_modules_dep(&fixture_dep()).unwrap());
        idx
    }

    #[test]
    fn parses_modules_dep() {
        let deps = parse_modules_dep(&fixture_dep()).unwrap();
        let sd = deps
            .iter()
            .find(|(p, _)| p == "kernel/drivers/scsi/sd_mod.ko")
            .unwrap();
        assert_eq!(
            sd.1,
            [
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/scsi/scsi_common.ko",
                "kernel/block/t10-pi.ko",
                "kernel/lib/crc64-rocksoft.ko",
                "kernel/lib/crc-t10dif.ko",
            ]
        );
        assert!(parse_modules_dep("kernel/x.ko dep.ko\n").is_err());
        assert!(parse_modules_dep(": x.ko\n").is_err());
        assert!(parse_modules_dep("\n# comment\nkernel/x.ko:\n").unwrap()[0]
            .1
            .is_empty());
    }

    #[test]
    fn closure_follows_dependencies_softdeps_and_aliases() {
        let idx = fixture_index();
        let sel = idx.select(&[
            "sd_mod",
            "usb-storage",
            "af_packet",
            "no_such_driver",
            "e1000",
        ]);
        let want: BTreeSet<String> = [
            "sd_mod",
            "t10_pi",
            "crc64_rocksoft",
            "crc_t10dif",
            "scsi_common",
            "scsi_mod",
            "usb_storage",
            "usbcore",
            "usb_common",
            "e1000",
        ]
        .map(String::from)
        .into();
        assert_eq!(sel.modules, want);
        assert_eq!(sel.builtin, ["af_packet"]);
        assert_eq!(sel.unknown, ["no_such_driver"]);

        // A softdep names an alias: every module with that alias comes along.
        let sel = idx.select(&["libcrc32c"]);
        assert_eq!(
            sel.modules,
            ["crc32c_generic", "crc32c_intel", "libcrc32c"]
                .map(String::from)
                .into()
        );
        // A wanted name may be an alias too.
        assert_eq!(
            idx.select(&["crypto-crc32c"]).modules,
            ["crc32c_generic"].map(String::from).into()
        );
    }

    #[test]
    fn rendered_modules_dep_loads_dependencies_first_from_the_end() {
        let idx = fixture_index();
        let sel = idx.select(&["sd_mod", "libcrc32c"]).modules;
        let text = idx.render_modules_dep(&sel);
        let parsed = parse_modules_dep(&text).unwrap();
        assert_eq!(parsed.len(), sel.len());
        let line = |p: &str| &parsed.iter().find(|(path, _)| path == p).unwrap().1;
        // Read from the end, every module comes after what it needs.
        let sd = line("kernel/drivers/scsi/sd_mod.ko");
        let pos = |p: &str| sd.iter().position(|x| x == p).unwrap();
        assert!(pos("kernel/drivers/scsi/scsi_common.ko") > pos("kernel/drivers/scsi/scsi_mod.ko"));
        assert!(pos("kernel/lib/crc-t10dif.ko") > pos("kernel/block/t10-pi.ko"));
        assert_eq!(sd.len(), 5);
        // Softdeps are not hard dependencies (a failed crct10dif_pclmul must not stop
        // sd_mod), but their modules are shipped.
        assert!(line("kernel/lib/libcrc32c.ko").is_empty());
        assert!(line("kernel/crypto/crc32c_generic.ko").is_empty());
        assert!(line("kernel/drivers/scsi/scsi_common.ko").is_empty());
        // Only selected modules appear.
        assert!(!text.contains("e1000"));

        let alias = idx.render_modules_alias(&idx.select(&["e1000"]).modules);
        assert!(alias.contains("alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n"));
        let soft = idx.render_modules_softdep(&sel);
        assert!(soft.contains("softdep libcrc32c pre: crc32c\n"), "{soft}");
    }

    #[test]
    fn module_from_modinfo() {
        let pairs: Vec<(String, String)> = [
            ("alias", "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*"),
            ("depends", "usbcore,scsi_mod,"),
            ("softdep", "pre: crc32c post: foo bar"),
            ("firmware", "a/b.bin"),
            ("name", "usb_storage"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        let m = Module::from_modinfo("kernel/drivers/usb/storage/usb-storage.ko", &pairs);
        assert_eq!(m.name, "usb_storage");
        assert_eq!(m.depends, ["usbcore", "scsi_mod"]);
        assert_eq!(m.softdep_pre, ["crc32c"]);
        assert_eq!(m.softdep_post, ["foo", "bar"]);
        assert_eq!(m.firmware, ["a/b.bin"]);
        assert_eq!(m.aliases.len(), 1);
        // No name= in modinfo: the file name gives it.
        assert_eq!(
            Module::from_modinfo("kernel/x/nvme-core.ko", &[]).name,
            "nvme_core"
        );
    }

    #[test]
    fn scans_a_tree_of_elf_modules() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("kernel/drivers/nvme/host");
        std::fs::create_dir_all(&rel).unwrap();
        let ko = |info: &[u8]| crate::elf::testing::elf_with_sections(&[(".modinfo", info)]);
        std::fs::write(
            rel.join("nvme.ko"),
            ko(b"depends=nvme-core\0name=nvme\0alias=pci:v*d*sv*sd*bc01sc08i02*\0"),
        )
        .unwrap();
        std::fs::write(rel.join("nvme-core.ko"), ko(b"depends=\0name=nvme_core\0")).unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        let idx = ModuleIndex::scan(dir.path()).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(
            idx.get("nvme-core").unwrap().path,
            "kernel/drivers/nvme/host/nvme-core.ko"
        );
        assert!(idx.is_builtin("af_packet"));
        let sel = idx.select(&["nvme"]);
        assert_eq!(sel.modules, ["nvme", "nvme_core"].map(String::from).into());

        std::fs::write(rel.join("broken.ko"), b"not elf").unwrap();
        assert!(matches!(
            ModuleIndex::scan(dir.path()),
            Err(ModulesError::Elf { .. })
        ));
    }
}
