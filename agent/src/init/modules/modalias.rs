//! The modalias of every device the kernel knows about, read from a sysfs tree.
use std::collections::BTreeSet;
use std::path::Path;

/// Deeper than any real device path (a USB disk partition is about 14 levels down).
const MAX_DEPTH: usize = 48;

/// Reads every `modalias` file under `<sys>/devices`, without following symlinks (sysfs
/// links point back up the tree). Unreadable and empty files are skipped.
pub fn collect(sys: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(sys.join("devices"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        out.insert(alias.to_string());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_devices_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let put = |rel: &str, text: &str| {
            let p = sys.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            "devices/pci0000:00/0000:00:02.0/modalias",
            "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00\n",
        );
        put(
            "devices/pci0000:00/0000:00:02.0/virtio0/modalias",
            "virtio:d00000001v00001AF4\n",
        );
        put(
            "devices/platform/serial8250/modalias",
            "platform:serial8250\n",
        );
        put(
            "devices/system/cpu/modalias",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000\n",
        );
        put("devices/platform/empty/modalias", "\n");
        put("devices/platform/alias_dir/not_modalias", "pci:v0\n");
        // Outside devices/: not walked.
        put("bus/pci/devices/x/modalias", "pci:outside\n");
        std::os::unix::fs::symlink(
            sys.join("devices/pci0000:00"),
            sys.join("devices/pci0000:00/0000:00:02.0/loop"),
        )
        .unwrap();
        let got: Vec<String> = collect(sys).into_iter().collect();
        assert_eq!(
            got,
            [
                "cpu:type:x86,ven0000fam0006mod003F:feature:,0000",
                "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
                "platform:serial8250",
                "virtio:d00000001v00001AF4",
            ]
        );
        assert!(collect(&sys.join("nonexistent")).is_empty());
    }
}
