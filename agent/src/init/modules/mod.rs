//! Kernel modules for the hardware found, as udev + modprobe would load them at boot.
//!
//! Each round reads the modalias of every device in sysfs, looks the modules up in
//! `modules.alias`, and loads each with its dependencies from `modules.dep` (dependencies
//! first) through `finit_module`. Loading drivers makes new devices appear (virtio-pci
//! exposes virtio devices, a SATA controller exposes SCSI disks), so rounds repeat, after
//! letting the kernel settle, until one loads nothing new.
//!
//! From the kernel command line, as modprobe honours them: `<module>.<param>=<value>` is
//! passed to the module when loaded, and `modprobe.blacklist=a,b` / `module_blacklist=a,b`
//! keep modules from being loaded for a device (they still load as another's dependency,
//! like modprobe; the kernel itself refuses `module_blacklist` ones).
//!
//! Soft dependencies (`modules.softdep`) and `/etc/modprobe.d` are not read: the image has
//! no such configuration.
mod alias;
mod dep;
mod modalias;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use alias::{fnmatch, AliasTable};
pub use dep::{module_name, parse_builtin, DepError, DepTable};
pub use modalias::collect as collect_modaliases;

/// Modules loaded on every boot whether or not a device asks for them. Each is skipped
/// quietly when built into the kernel.
///
/// - `af_packet`: raw packet sockets for the DHCP client; no device has it as an alias.
/// - `sd_mod`: SCSI/SATA/SAS/USB disks. Its alias matches the SCSI devices, but those
///   appear asynchronously (the SCSI scan runs after the HBA driver returns), possibly
///   after the last round looked.
/// - `efivarfs`: the filesystem for `/sys/firmware/efi/efivars` (Secure Boot state, boot
///   entries); a filesystem has no modalias, and the kernel cannot ask for it without
///   a `modprobe` binary.
pub const ALWAYS_LOAD: &[&str] = &["af_packet", "sd_mod", "efivarfs"];

/// Rounds of scan -> load before giving up on the device tree settling.
const MAX_ROUNDS: u32 = 6;

/// modprobe treats `-` and `_` in module names as the same; depmod writes `_`.
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("already loaded")]
    AlreadyLoaded,
    #[error("{0} is not in the image")]
    Missing(PathBuf),
    #[error("{0}: compressed modules are not supported")]
    Compressed(PathBuf),
    #[error("cannot open {path}: {errno}")]
    Open { path: PathBuf, errno: nix::Error },
    #[error("the kernel refused {path}: {errno}")]
    Kernel { path: PathBuf, errno: nix::Error },
}

/// Puts one module file into the kernel.
pub trait ModuleLoader {
    /// `params` is `name=value name=value`, as `finit_module` takes them.
    fn load(&mut self, path: &Path, params: &str) -> Result<(), LoadError>;
}

/// The real one: `finit_module(2)` on the opened `.ko`.
pub struct FinitModule;

impl ModuleLoader for FinitModule {
    fn load(&mut self, path: &Path, params: &str) -> Result<(), LoadError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if matches!(ext, "xz" | "zst" | "gz") {
            return Err(LoadError::Compressed(path.into()));
        }
        let file = std::fs::File::open(path).map_err(|e| {
            let errno = nix::Error::from_raw(e.raw_os_error().unwrap_or(0));
            match errno {
                nix::Error::ENOENT => LoadError::Missing(path.into()),
                _ => LoadError::Open {
                    path: path.into(),
                    errno,
                },
            }
        })?;
        // Parameters come from /proc/cmdline, which cannot hold a NUL.
        let params = CString::new(params).unwrap_or_default();
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::Error::EEXIST) => Err(LoadError::AlreadyLoaded),
            Err(errno) => Err(LoadError::Kernel {
                path: path.into(),
                errno,
            }),
        }
    }
}

/// What the command line says about modules: parameters and blacklists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleOptions {
    params: HashMap<String, Vec<String>>,
    blacklist: HashSet<String>,
}

impl ModuleOptions {
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut opts = ModuleOptions::default();
        for (key, value) in crate::config::split_cmdline(cmdline) {
            match (key, value) {
                ("modprobe.blacklist" | "module_blacklist", Some(list)) => opts
                    .blacklist
                    .extend(list.split(',').filter(|m| !m.is_empty()).map(normalize)),
                (key, value) => {
                    let Some((module, param)) = key.split_once('.') else {
                        continue;
                    };
                    if module.is_empty() || param.is_empty() || module == "siderite" {
                        continue;
                    }
                    let param = match value {
                        Some(v) if v.contains(char::is_whitespace) => format!("{param}=\"{v}\""),
                        Some(v) => format!("{param}={v}"),
                        None => param.to_string(),
                    };
                    opts.params
                        .entry(normalize(module))
                        .or_default()
                        .push(param);
                }
            }
        }
        opts
    }

    fn params(&self, module: &str) -> String {
        self.params
            .get(module)
            .map(|p| p.join(" "))
            .unwrap_or_default()
    }
}

/// How long to wait, after a round loaded something, for new devices to stop appearing.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    pub poll: Duration,
    /// The device list must stay unchanged this long...
    pub quiet: Duration,
    /// ...or this much time passes.
    pub max: Duration,
}

impl Default for Settle {
    fn default() -> Self {
        Settle {
            poll: Duration::from_millis(50),
            quiet: Duration::from_millis(250),
            max: Duration::from_secs(3),
        }
    }
}

/// A module that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleFailure {
    pub module: String,
    pub reason: String,
}

/// What module loading did, for the console and the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModuleReport {
    pub kernel_release: String,
    /// Loaded by us, in load order.
    pub loaded: Vec<String>,
    /// Wanted but already there: built in, or loaded before us.
    pub present: Vec<String>,
    /// Wanted (or needed by a wanted one) but not in the image.
    pub missing: Vec<String>,
    /// Wanted but blacklisted on the command line.
    pub blacklisted: Vec<String>,
    pub failed: Vec<ModuleFailure>,
    /// Scan rounds done.
    pub rounds: u32,
    /// Distinct device modaliases seen in the last scan.
    pub devices: usize,
    /// Set when the module tables could not be read: nothing was loaded.
    pub error: Option<String>,
}

impl ModuleReport {
    /// Logs a summary; failures one by one.
    pub fn log(&self) {
        if let Some(error) = &self.error {
            tracing::error!(kernel = %self.kernel_release, "no kernel modules loaded: {error}");
            return;
        }
        tracing::info!(
            kernel = %self.kernel_release,
            rounds = self.rounds,
            devices = self.devices,
            "loaded {} kernel modules: {}",
            self.loaded.len(),
            self.loaded.join(" ")
        );
        if !self.missing.is_empty() {
            tracing::info!(
                "{} wanted modules are not in the image: {}",
                self.missing.len(),
                self.missing.join(" ")
            );
        }
        if !self.blacklisted.is_empty() {
            tracing::info!("blacklisted: {}", self.blacklisted.join(" "));
        }
        for f in &self.failed {
            tracing::warn!(module = %f.module, "module not loaded: {}", f.reason);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The module database of one kernel: `modules.alias`, `modules.dep`, `modules.builtin`.
#[derive(Debug, Default)]
pub struct ModuleTables {
    pub aliases: AliasTable,
    pub deps: DepTable,
    pub builtin: HashSet<String>,
}

impl ModuleTables {
    /// Reads the tables from `dir` (`/lib/modules/<release>`). `modules.builtin` is optional.
    pub fn read(dir: &Path) -> Result<Self, TablesError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TablesError::Read { path, source })
        };
        Ok(ModuleTables {
            aliases: AliasTable::parse(&read("modules.alias")?),
            deps: DepTable::parse(&read("modules.dep")?),
            builtin: read("modules.builtin")
                .map(|t| parse_builtin(&t))
                .unwrap_or_default(),
        })
    }
}

/// Loads the modules the hardware under `root` needs: tables from
/// `<root>/lib/modules/<kernel_release>`, devices from `<root>/sys`, options from
/// `<root>/proc/cmdline`. Never fails: what went wrong is in the report. Calling it again
/// is cheap and loads only what is new (late USB or SCSI devices, for example).
pub fn load_modules(root: &Path, kernel_release: &str) -> ModuleReport {
    let dir = root.join("lib/modules").join(kernel_release);
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
    let options = ModuleOptions::from_cmdline(&cmdline);
    let mut report = match ModuleTables::read(&dir) {
        Ok(tables) => load_with(
            &tables,
            &dir,
            &root.join("sys"),
            &options,
            &mut FinitModule,
            Settle::default(),
        ),
        Err(e) => ModuleReport {
            error: Some(e.to_string()),
            ..ModuleReport::default()
        },
    };
    report.kernel_release = kernel_release.to_string();
    report
}

/// The loading rounds, with every input explicit.
pub fn load_with(
    tables: &ModuleTables,
    modules_dir: &Path,
    sys: &Path,
    options: &ModuleOptions,
    loader: &mut dyn ModuleLoader,
    settle: Settle,
) -> ModuleReport {
    let mut run = Run {
        tables,
        modules_dir,
        sys,
        options,
        loader,
        status: HashMap::new(),
        report: ModuleReport::default(),
    };
    let mut devices = collect_modaliases(sys);
    let mut wanted_before: HashSet<String> = HashSet::new();
    loop {
        run.report.rounds += 1;
        run.report.devices = devices.len();
        let mut wanted: Vec<String> = Vec::new();
        if run.report.rounds == 1 {
            // efivarfs only means something on a UEFI boot; on BIOS the kernel refuses it.
            let uefi = sys.join("firmware/efi").exists();
            wanted.extend(
                ALWAYS_LOAD
                    .iter()
                    .filter(|m| uefi || **m != "efivarfs")
                    .map(|m| m.to_string()),
            );
        }
        for device in &devices {
            wanted.extend(tables.aliases.lookup(device).into_iter().map(String::from));
        }
        wanted.retain(|m| wanted_before.insert(m.clone()));
        let loaded_before = run.report.loaded.len();
        for module in &wanted {
            run.want(module);
        }
        if run.report.loaded.len() == loaded_before || run.report.rounds >= MAX_ROUNDS {
            break;
        }
        devices = settle_devices(sys, devices, settle);
    }
    run.report
}

/// Rescans until the device list stops changing (see [`Settle`]).
fn settle_devices(sys: &Path, before: BTreeSet<String>, settle: Settle) -> BTreeSet<String> {
    let start = Instant::now();
    let mut last = collect_modaliases(sys);
    let mut changed = if last != before {
        Instant::now()
    } else {
        start
    };
    while changed.elapsed() < settle.quiet && start.elapsed() < settle.max {
        std::thread::sleep(settle.poll);
        let now = collect_modaliases(sys);
        if now != last {
            last = now;
            changed = Instant::now();
        }
    }
    last
}

#[derive(Debug, Clone)]
enum Status {
    Ok,
    Missing,
    Failed(String),
}

struct Run<'a> {
    tables: &'a ModuleTables,
    modules_dir: &'a Path,
    sys: &'a Path,
    options: &'a ModuleOptions,
    loader: &'a mut dyn ModuleLoader,
    status: HashMap<String, Status>,
    report: ModuleReport,
}

impl Run<'_> {
    /// A module wanted for a device or by [`ALWAYS_LOAD`].
    fn want(&mut self, module: &str) {
        if self.status.contains_key(module) {
            return;
        }
        if self.options.blacklist.contains(module) {
            self.report.blacklisted.push(module.to_string());
            return;
        }
        if self.present(module) {
            self.load(module);
            return;
        }
        let order = match self.tables.deps.load_order(module) {
            Ok(order) => order,
            Err(DepError::Unknown(m)) if m == module => return self.set(module, Status::Missing),
            Err(e) => return self.set(module, Status::Failed(e.to_string())),
        };
        let (last, deps) = order.split_last().expect("load_order ends with the module");
        for dep in deps {
            let why = match self.load(dep) {
                Status::Ok => continue,
                Status::Missing => format!("needs {dep}, which is not in the image"),
                Status::Failed(reason) => format!("needs {dep}, which failed: {reason}"),
            };
            return self.set(module, Status::Failed(why));
        }
        self.load(last);
    }

    /// Loads one module whose dependencies are in; remembers and reports the outcome.
    fn load(&mut self, module: &str) -> Status {
        if let Some(status) = self.status.get(module) {
            return status.clone();
        }
        if self.present(module) {
            self.report.present.push(module.to_string());
            self.status.insert(module.into(), Status::Ok);
            return Status::Ok;
        }
        let Some(rel) = self.tables.deps.path(module) else {
            self.set(module, Status::Missing);
            return Status::Missing;
        };
        let path = self.modules_dir.join(rel);
        let status = match self.loader.load(&path, &self.options.params(module)) {
            Ok(()) => {
                self.report.loaded.push(module.to_string());
                self.status.insert(module.into(), Status::Ok);
                return Status::Ok;
            }
            Err(LoadError::AlreadyLoaded) => {
                self.report.present.push(module.to_string());
                self.status.insert(module.into(), Status::Ok);
                return Status::Ok;
            }
            Err(LoadError::Missing(_)) => Status::Missing,
            Err(e) => Status::Failed(e.to_string()),
        };
        self.set(module, status.clone());
        status
    }

    fn present(&self, module: &str) -> bool {
        self.tables.builtin.contains(module) || self.sys.join("module").join(module).exists()
    }

    fn set(&mut self, module: &str, status: Status) {
        match &status {
            Status::Ok => {}
            Status::Missing => self.report.missing.push(module.to_string()),
            Status::Failed(reason) => self.report.failed.push(ModuleFailure {
                module: module.to_string(),
                reason: reason.clone(),
            }),
        }
        self.status.insert(module.to_string(), status);
    }
}

#[cfg(test)]
mod tests;
