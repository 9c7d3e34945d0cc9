//! CPUs and memory as the kernel sees them: /proc/cpuinfo, /proc/meminfo, cpufreq, and
//! sysinfo on the live system. SMBIOS (types 4 and 17) adds the firmware's view in
//! `inventory`.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{is_live_root, read_num};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} lists no processors")]
    NoProcessors { path: PathBuf },
    #[error("{path} has no MemTotal line")]
    NoMemTotal { path: PathBuf },
}

/// The CPU flags that matter for placing workloads; everything else is left out.
pub const INTERESTING_FLAGS: [&str; 9] = [
    "vmx",
    "svm",
    "aes",
    "avx",
    "avx2",
    "avx512f",
    "sse4_2",
    "hypervisor",
    "lm",
];

/// What the kernel reports about the processors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub model: String,
    pub vendor: String,
    /// Logical CPUs (hardware threads) online.
    pub threads: u32,
    /// Distinct physical packages; 1 when the kernel does not say (most arm64).
    pub sockets: u32,
    /// Distinct cores over all sockets; `threads` when the kernel does not say.
    pub cores: u32,
    /// The [`INTERESTING_FLAGS`] present, in that order.
    pub flags: Vec<String>,
    /// Highest frequency cpufreq allows, 0 when unknown.
    pub max_speed_mhz: u32,
}

impl CpuInfo {
    /// VT-x or AMD-V.
    pub fn virtualization(&self) -> bool {
        self.flags.iter().any(|f| f == "vmx" || f == "svm")
    }
}

/// Processors and memory.
pub trait CpuMemory: Send + Sync {
    fn cpu(&self) -> Result<CpuInfo, CpuError>;
    /// Memory the kernel manages (MemTotal), in bytes.
    fn total_memory_bytes(&self) -> Result<u64, CpuError>;
}

/// Reads root/proc; on the live system sysinfo supplies memory, thread count, brand and
/// vendor, since it also knows the platforms where /proc/cpuinfo is thin.
pub struct LinuxCpuMemory {
    root: PathBuf,
}

impl LinuxCpuMemory {
    pub fn new(root: &Path) -> Self {
        LinuxCpuMemory {
            root: root.to_path_buf(),
        }
    }

    fn read(&self, rel: &str) -> Result<(PathBuf, String), CpuError> {
        let path = self.root.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(CpuError::Read { path, source }),
        }
    }
}

impl CpuMemory for LinuxCpuMemory {
    fn cpu(&self) -> Result<CpuInfo, CpuError> {
        let (path, text) = self.read("proc/cpuinfo")?;
        let mut info = parse_cpuinfo(&text);
        if is_live_root(&self.root) {
            let mut sys = sysinfo::System::new();
            sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            if let Some(first) = sys.cpus().first() {
                if !first.brand().trim().is_empty() {
                    info.model = first.brand().trim().to_string();
                }
                if !first.vendor_id().trim().is_empty() {
                    info.vendor = first.vendor_id().trim().to_string();
                }
                info.threads = u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX);
            }
        }
        if info.threads == 0 {
            return Err(CpuError::NoProcessors { path });
        }
        let khz: Option<u64> = read_num(
            &self
                .root
                .join("sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
        );
        info.max_speed_mhz = khz.map_or(0, |k| u32::try_from(k / 1000).unwrap_or(0));
        Ok(info)
    }

    fn total_memory_bytes(&self) -> Result<u64, CpuError> {
        if is_live_root(&self.root) {
            let mut sys = sysinfo::System::new();
            sys.refresh_memory();
            if sys.total_memory() > 0 {
                return Ok(sys.total_memory());
            }
        }
        let (path, text) = self.read("proc/meminfo")?;
        parse_meminfo_total(&text).ok_or(CpuError::NoMemTotal { path })
    }
}

/// Reads /proc/cpuinfo text (x86 or arm64 layout). `max_speed_mhz` stays 0.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut flags = BTreeSet::new();
    let mut package: Option<&str> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => {
                info.threads += 1;
                package = None;
            }
            "model name" | "Model" | "cpu model" if info.model.is_empty() => {
                info.model = value.to_string();
            }
            "vendor_id" if info.vendor.is_empty() => info.vendor = value.to_string(),
            "CPU implementer" if info.vendor.is_empty() => {
                info.vendor = arm_implementer(value).to_string();
            }
            "physical id" => {
                packages.insert(value);
                package = Some(value);
            }
            "core id" => {
                cores.insert((package.unwrap_or(""), value));
            }
            "flags" | "Features" => flags.extend(value.split_whitespace()),
            _ => {}
        }
    }
    info.sockets = match packages.len() {
        0 if info.threads > 0 => 1,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    info.cores = match cores.len() {
        0 => info.threads,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    info.flags = INTERESTING_FLAGS
        .iter()
        .filter(|f| flags.contains(*f))
        .map(|f| f.to_string())
        .collect();
    info
}

/// arm64 "CPU implementer" codes (MIDR_EL1 bits 31:24) for the usual server vendors.
fn arm_implementer(code: &str) -> &str {
    match code.to_ascii_lowercase().as_str() {
        "0x41" => "ARM",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x46" => "Fujitsu",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x50" => "APM",
        "0x51" => "Qualcomm",
        "0x61" => "Apple",
        "0xc0" => "Ampere",
        _ => code,
    }
}

/// MemTotal from /proc/meminfo text, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpuinfo(case: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/sysfs")
            .join(case)
            .join("proc/cpuinfo");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn two_socket_xeon_with_hyperthreads() {
        let info = parse_cpuinfo(&cpuinfo("xeon-2s"));
        assert_eq!(info.model, "Intel(R) Xeon(R) Silver 4110 CPU @ 2.10GHz");
        assert_eq!(info.vendor, "GenuineIntel");
        assert_eq!((info.sockets, info.cores, info.threads), (2, 4, 8));
        assert_eq!(
            info.flags,
            ["vmx", "aes", "avx", "avx2", "avx512f", "sse4_2", "lm"]
        );
        assert!(info.virtualization());
    }

    #[test]
    fn lab_kvm_guest() {
        let info = parse_cpuinfo(&cpuinfo("lab"));
        assert_eq!((info.sockets, info.cores, info.threads), (1, 2, 2));
        assert_eq!(
            info.flags,
            [
                "vmx",
                "aes",
                "avx",
                "avx2",
                "avx512f",
                "sse4_2",
                "hypervisor",
                "lm"
            ]
        );
    }

    #[test]
    fn arm64_without_topology() {
        let info = parse_cpuinfo(&cpuinfo("arm64"));
        assert_eq!(info.vendor, "ARM");
        assert_eq!(info.model, "");
        assert_eq!((info.sockets, info.cores, info.threads), (1, 4, 4));
        assert_eq!(info.flags, ["aes"]);
        assert!(!info.virtualization());
    }

    #[test]
    fn empty_cpuinfo() {
        let info = parse_cpuinfo("");
        assert_eq!((info.sockets, info.cores, info.threads), (0, 0, 0));
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       16318004 kB\nMemFree: 1 kB\n"),
            Some(16_318_004 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn lab_root_reads_proc_below_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab");
        let host = LinuxCpuMemory::new(&root);
        assert_eq!(host.total_memory_bytes().unwrap(), 475_516 * 1024);
        let cpu = host.cpu().unwrap();
        assert_eq!(cpu.threads, 2);
        assert_eq!(cpu.max_speed_mhz, 0);
    }

    #[test]
    fn missing_proc_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let host = LinuxCpuMemory::new(dir.path());
        assert!(matches!(host.cpu(), Err(CpuError::Read { .. })));
        assert!(matches!(
            host.total_memory_bytes(),
            Err(CpuError::Read { .. })
        ));
    }

    #[test]
    fn live_system_has_cpus_and_memory() {
        let host = LinuxCpuMemory::new(Path::new("/"));
        assert!(host.cpu().unwrap().threads > 0);
        assert!(host.total_memory_bytes().unwrap() > 0);
    }
}
