//! `modules.dep` and `modules.builtin`: where each module's file is, what it needs first.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::normalize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    #[error("{0} is not in modules.dep")]
    Unknown(String),
    #[error("dependency cycle through {0}")]
    Cycle(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// As written in modules.dep: relative to `/lib/modules/<release>/`.
    path: PathBuf,
    /// Names of the modules it needs, as listed (depmod lists them in reverse load order).
    deps: Vec<String>,
}

/// The parsed `modules.dep`: `<path>: <dep path> <dep path>...` lines.
#[derive(Debug, Default)]
pub struct DepTable {
    entries: HashMap<String, Entry>,
}

impl DepTable {
    pub fn parse(text: &str) -> Self {
        let mut entries = HashMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() || path.starts_with('#') {
                continue;
            }
            let entry = Entry {
                path: PathBuf::from(path),
                deps: deps.split_whitespace().map(module_name).collect(),
            };
            entries.insert(module_name(path), entry);
        }
        DepTable { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The module's file, relative to the modules directory.
    pub fn path(&self, module: &str) -> Option<&Path> {
        self.entries.get(module).map(|e| e.path.as_path())
    }

    /// The modules to load for `module`, dependencies first and `module` last, each once.
    pub fn load_order(&self, module: &str) -> Result<Vec<String>, DepError> {
        let mut order = Vec::new();
        let mut visiting = Vec::new();
        self.visit(module, &mut visiting, &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        module: &str,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), DepError> {
        if order.iter().any(|m| m == module) {
            return Ok(());
        }
        if visiting.iter().any(|m| m == module) {
            return Err(DepError::Cycle(module.to_string()));
        }
        let entry = self
            .entries
            .get(module)
            .ok_or_else(|| DepError::Unknown(module.to_string()))?;
        visiting.push(module.to_string());
        // modprobe loads from the end of the list: the deepest dependency comes last.
        for dep in entry.deps.iter().rev() {
            self.visit(dep, visiting, order)?;
        }
        visiting.pop();
        order.push(module.to_string());
        Ok(())
    }
}

/// Names of the modules built into the kernel, from `modules.builtin` (one path a line).
pub fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(module_name)
        .collect()
}

/// `kernel/drivers/nvme/host/nvme-core.ko[.xz]` -> `nvme_core`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    normalize(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/orphan.ko: kernel/gone.ko
kernel/zst.ko.zst:
";

    #[test]
    fn load_order_puts_dependencies_first() {
        let t = DepTable::parse(DEP);
        assert_eq!(t.len(), 11);
        assert_eq!(
            t.load_order("virtio_net").unwrap(),
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert_eq!(t.load_order("nvme").unwrap(), ["nvme_core", "nvme"]);
        assert_eq!(t.load_order("failover").unwrap(), ["failover"]);
        assert_eq!(
            t.path("nvme_core"),
            Some(Path::new("kernel/drivers/nvme/host/nvme-core.ko"))
        );
        assert_eq!(t.path("zst"), Some(Path::new("kernel/zst.ko.zst")));
    }

    #[test]
    fn unknown_modules_and_cycles() {
        let t = DepTable::parse(DEP);
        assert_eq!(
            t.load_order("e1000e"),
            Err(DepError::Unknown("e1000e".into()))
        );
        assert_eq!(
            t.load_order("orphan"),
            Err(DepError::Unknown("gone".into()))
        );
        assert_eq!(t.load_order("a"), Err(DepError::Cycle("a".into())));
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko"),
            "nvme_core"
        );
        assert_eq!(module_name("kernel/x/e1000e.ko.xz"), "e1000e");
        assert_eq!(module_name("sd_mod.ko"), "sd_mod");
        let builtin = parse_builtin(
            "kernel/net/packet/af_packet.ko\n\nkernel/drivers/nvme/host/nvme-core.ko\n",
        );
        assert_eq!(
            builtin,
            HashSet::from(["af_packet".into(), "nvme_core".into()])
        );
    }
}
