//! The running kernel: host name, release, architecture.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Facts about the operating system the agent runs on.
pub trait OsInfo: Send + Sync {
    fn hostname(&self) -> Result<String, OsError>;
    /// Kernel release, as `uname -r` prints it.
    fn kernel(&self) -> Result<String, OsError>;
    /// CPU architecture the agent was built for (x86_64, aarch64...).
    fn arch(&self) -> String {
        std::env::consts::ARCH.to_string()
    }
}

/// Reads root/proc/sys/kernel.
pub struct LinuxOs {
    dir: PathBuf,
}

impl LinuxOs {
    pub fn new(root: &Path) -> Self {
        LinuxOs {
            dir: root.join("proc/sys/kernel"),
        }
    }

    fn read(&self, name: &str) -> Result<String, OsError> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| OsError::Read { path, source })
    }
}

impl OsInfo for LinuxOs {
    fn hostname(&self) -> Result<String, OsError> {
        self.read("hostname")
    }

    fn kernel(&self) -> Result<String, OsError> {
        self.read("osrelease")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_kernel_and_hostname() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab");
        let os = LinuxOs::new(&root);
        assert_eq!(os.hostname().unwrap(), "lab-1");
        assert_eq!(os.kernel().unwrap(), "6.1.0-56-cloud-amd64");
        assert_eq!(os.arch(), std::env::consts::ARCH);
    }

    #[test]
    fn missing_proc_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = LinuxOs::new(dir.path()).kernel().unwrap_err();
        assert!(err.to_string().starts_with("reading "), "{err}");
    }
}
