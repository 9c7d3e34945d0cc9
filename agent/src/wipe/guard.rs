//! May this disk be wiped? Read-only, mounted, swap, held by another device (multipath,
//! device-mapper, md, LVM, bcache) or not the disk the server meant: refused, with the
//! reason. Reads below a root (`/` on a machine, a fixture tree in tests): root/sys/block,
//! root/proc/self/mountinfo, root/proc/swaps.
//!
//! This is the readable half of the safety; the other half is the kernel's: the opener
//! opens the device with O_EXCL, which fails with EBUSY while anything holds it.
use std::path::Path;

use siderite::proto::agent::v1::BlockDevice;

use super::{check_name, DiskRequest, WipeError};
use crate::hw::block::{list_dir, read_sysfs_disk};
use crate::hw::read_attr;

/// The disk's sysfs description when it may be wiped; otherwise why not.
pub fn check(root: &Path, req: &DiskRequest) -> Result<BlockDevice, WipeError> {
    let name = &req.name;
    check_name(name)?;
    let refuse = |reason: String| WipeError::Refused {
        disk: name.clone(),
        reason,
    };
    let sys = root.join("sys");
    let dir = sys.join("block").join(name);
    if !dir.is_dir() {
        if sys
            .join("class/block")
            .join(name)
            .join("partition")
            .exists()
        {
            return Err(refuse("a partition, not a whole disk".into()));
        }
        return Err(WipeError::NotFound { disk: name.clone() });
    }
    if name.starts_with("dm-") || name.starts_with("md") {
        return Err(refuse(
            "a device-mapper/md device, not a disk: wipe its member disks".into(),
        ));
    }
    let dev = read_sysfs_disk(&sys, name);
    if dev.read_only {
        return Err(WipeError::ReadOnly { disk: name.clone() });
    }
    if dev.size_bytes == 0 {
        return Err(refuse("no medium (size 0)".into()));
    }
    if let Some(want) = &req.serial {
        if dev.serial.trim() != want.trim() && dev.wwn.trim() != want.trim() {
            return Err(refuse(format!(
                "serial is {:?}, the server expected {want:?}",
                dev.serial
            )));
        }
    }
    if let Some(want) = req.size_bytes {
        if dev.size_bytes != want {
            return Err(refuse(format!(
                "size is {} bytes, the server expected {want}",
                dev.size_bytes
            )));
        }
    }

    // The disk and its partitions: (kernel name, "major:minor").
    let mut nodes = vec![(
        name.clone(),
        read_attr(&dir.join("dev")).unwrap_or_default(),
    )];
    let mut entries = list_dir(&dir).unwrap_or_default();
    entries.sort();
    for part in entries {
        if dir.join(&part).join("partition").exists() {
            let dev = read_attr(&dir.join(&part).join("dev")).unwrap_or_default();
            nodes.push((part, dev));
        }
    }

    let mut holders = Vec::new();
    for (node, _) in &nodes {
        let hdir = if node == name {
            dir.join("holders")
        } else {
            dir.join(node).join("holders")
        };
        let mut held = list_dir(&hdir).unwrap_or_default();
        held.sort();
        for h in held {
            holders.push(if node == name {
                h
            } else {
                format!("{h} (via {node})")
            });
        }
    }
    if !holders.is_empty() {
        return Err(WipeError::Shared {
            disk: name.clone(),
            holders: holders.join(", "),
        });
    }

    let mountinfo = std::fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
    if let Some((node, at)) = mounted(&mountinfo, &nodes) {
        return Err(WipeError::Busy {
            disk: name.clone(),
            reason: format!("{node} is mounted at {at}"),
        });
    }
    let swaps = std::fs::read_to_string(root.join("proc/swaps")).unwrap_or_default();
    if let Some(node) = swapping(&swaps, &nodes) {
        return Err(WipeError::Busy {
            disk: name.clone(),
            reason: format!("{node} is in use as swap"),
        });
    }
    if dev.removable {
        tracing::info!(disk = %name, "removable disk, wiped because the command names it");
    }
    Ok(dev)
}

/// The first of `nodes` mounted according to mountinfo, by device number or by source
/// (btrfs reports an anonymous device number), and where.
fn mounted(mountinfo: &str, nodes: &[(String, String)]) -> Option<(String, String)> {
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(devno), Some(at)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let source = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 2))
            .copied()
            .unwrap_or("");
        for (node, num) in nodes {
            if (!num.is_empty() && devno == num) || source == format!("/dev/{node}") {
                return Some((node.clone(), unescape(at)));
            }
        }
    }
    None
}

/// The first of `nodes` listed in /proc/swaps.
fn swapping(swaps: &str, nodes: &[(String, String)]) -> Option<String> {
    swaps.lines().skip(1).find_map(|line| {
        let path = line.split_whitespace().next()?;
        nodes
            .iter()
            .find(|(node, _)| path == format!("/dev/{node}"))
            .map(|(node, _)| node.clone())
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Self {
            let t = Tree(tempfile::tempdir().unwrap());
            t.disk("sda", "8:0");
            t.part("sda", "sda1", "8:1");
            t.part("sda", "sda2", "8:2");
            t.disk("sdb", "8:16");
            t.file("proc/self/mountinfo", "");
            t.file("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
            t
        }
        fn root(&self) -> PathBuf {
            self.0.path().to_path_buf()
        }
        fn file(&self, rel: &str, text: &str) {
            let p = self.0.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fn disk(&self, name: &str, dev: &str) {
            let d = format!("sys/block/{name}");
            self.file(&format!("{d}/dev"), dev);
            self.file(&format!("{d}/size"), "2097152");
            self.file(&format!("{d}/ro"), "0");
            self.file(&format!("{d}/removable"), "0");
            self.file(&format!("{d}/device/serial"), &format!("SER-{name}"));
            fs::create_dir_all(self.0.path().join(format!("{d}/holders"))).unwrap();
        }
        fn part(&self, disk: &str, name: &str, dev: &str) {
            let d = format!("sys/block/{disk}/{name}");
            self.file(&format!("{d}/dev"), dev);
            self.file(&format!("{d}/partition"), "1");
            fs::create_dir_all(self.0.path().join(format!("{d}/holders"))).unwrap();
            self.file(&format!("sys/class/block/{name}/partition"), "1");
        }
        fn check(&self, name: &str) -> Result<BlockDevice, WipeError> {
            check(&self.root(), &DiskRequest::named(name))
        }
    }

    #[test]
    fn a_plain_disk_passes() {
        let t = Tree::new();
        let d = t.check("sda").unwrap();
        assert_eq!(d.size_bytes, 1 << 30);
        assert_eq!(d.serial, "SER-sda");
    }

    #[test]
    fn refusals_say_why() {
        let t = Tree::new();
        let msg = |r: Result<BlockDevice, WipeError>| r.unwrap_err().to_string();

        assert_eq!(msg(t.check("sdz")), "sdz not found");
        assert_eq!(
            msg(t.check("sda1")),
            "refusing to wipe sda1: a partition, not a whole disk"
        );
        assert_eq!(
            msg(t.check("../sda")),
            "refusing to wipe ../sda: not a disk name"
        );

        t.file("sys/block/sdb/ro", "1");
        assert_eq!(msg(t.check("sdb")), "refusing to wipe sdb: read-only");
        t.file("sys/block/sdb/ro", "0");

        t.file("sys/block/sdb/size", "0");
        assert_eq!(
            msg(t.check("sdb")),
            "refusing to wipe sdb: no medium (size 0)"
        );
        t.file("sys/block/sdb/size", "8");

        t.file("sys/block/sda/sda2/holders/md0", "");
        t.file("sys/block/sda/holders/dm-3", "");
        assert_eq!(
            msg(t.check("sda")),
            "refusing to wipe sda: shared, held by dm-3, md0 (via sda2)"
        );
    }

    #[test]
    fn mounted_and_swap_partitions_are_busy() {
        let t = Tree::new();
        t.file(
            "proc/self/mountinfo",
            "22 1 0:21 / /proc rw - proc proc rw\n\
             30 1 8:1 / /srv/my\\040data rw,relatime - ext4 /dev/sda1 rw\n",
        );
        assert_eq!(
            t.check("sda").unwrap_err().to_string(),
            "refusing to wipe sda: busy (sda1 is mounted at /srv/my data)"
        );
        assert!(t.check("sdb").is_ok());

        // btrfs: anonymous device number, the source names the partition.
        t.file(
            "proc/self/mountinfo",
            "31 1 0:45 / /var rw - btrfs /dev/sdb rw\n",
        );
        assert_eq!(
            t.check("sdb").unwrap_err().to_string(),
            "refusing to wipe sdb: busy (sdb is mounted at /var)"
        );

        t.file("proc/self/mountinfo", "");
        t.file(
            "proc/swaps",
            "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 1048572 0 -2\n",
        );
        assert_eq!(
            t.check("sda").unwrap_err().to_string(),
            "refusing to wipe sda: busy (sda2 is in use as swap)"
        );
    }

    #[test]
    fn the_server_can_pin_serial_and_size() {
        let t = Tree::new();
        let req = |serial: Option<&str>, size: Option<u64>| DiskRequest {
            name: "sda".into(),
            serial: serial.map(str::to_string),
            size_bytes: size,
        };
        assert!(check(&t.root(), &req(Some("SER-sda"), Some(1 << 30))).is_ok());
        assert_eq!(
            check(&t.root(), &req(Some("OTHER"), None))
                .unwrap_err()
                .to_string(),
            "refusing to wipe sda: serial is \"SER-sda\", the server expected \"OTHER\""
        );
        assert!(check(&t.root(), &req(None, Some(1))).is_err());
    }
}
