//! The newc ("070701") cpio format the kernel unpacks into its rootfs, written by hand so
//! every header field is ours to fix: uid/gid 0, one mtime for all, inode numbers in path
//! order, entries sorted by path. Same input, same bytes.
//!
//! A header is "070701" and 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime,
//! filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), then the NUL
//! terminated name padded to 4 bytes, then the data padded to 4 bytes. "TRAILER!!!" ends it.

use std::collections::BTreeMap;
use std::io::Write;

/// Errors building or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid path in archive: {0:?}")]
    InvalidPath(String),
    #[error("{0} is added twice with different contents")]
    Conflict(String),
    #[error("{0} is too large for newc (4 GiB limit)")]
    TooLarge(String),
    #[error("malformed newc archive at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
    #[error("writing the archive")]
    Io(#[from] std::io::Error),
}

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive member: its kind and permission bits (`0o755`, `0o1777`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub perm: u32,
}

impl Entry {
    /// The full `st_mode`: file type bits plus permissions.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDevice { .. } => S_IFCHR,
        };
        ty | (self.perm & 0o7777)
    }
}

/// An archive under construction. Paths are relative ("init", "dev/console"); parent
/// directories are added (mode 0755) when a member needs them.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn check_path(path: &str) -> Result<String, CpioError> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    let bad = p.is_empty()
        || p.len() > 4000
        || p.contains('\0')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CpioError::InvalidPath(path.to_string()));
    }
    Ok(p.to_string())
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` and any missing parents. Adding the same entry twice is a no-op;
    /// adding a different one at a taken path is an error.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = check_path(path)?;
        let len = match &entry.kind {
            Kind::File(data) => data.len(),
            Kind::Symlink(target) => target.len(),
            Kind::Dir | Kind::CharDevice { .. } => 0,
        };
        if u32::try_from(len).is_err() {
            return Err(CpioError::TooLarge(path));
        }
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            match self.entries.get(p) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(_) => return Err(CpioError::Conflict(p.to_string())),
                None => {
                    self.entries.insert(
                        p.to_string(),
                        Entry {
                            kind: Kind::Dir,
                            perm: 0o755,
                        },
                    );
                }
            }
            parent = p;
        }
        match self.entries.get(&path) {
            Some(old) if *old == entry => Ok(()),
            // An explicit directory may set the mode of one created as a parent.
            Some(old) if old.kind == Kind::Dir && entry.kind == Kind::Dir => {
                self.entries.insert(path, entry);
                Ok(())
            }
            Some(_) => Err(CpioError::Conflict(path)),
            None => {
                self.entries.insert(path, entry);
                Ok(())
            }
        }
    }

    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                kind: Kind::Dir,
                perm,
            },
        )
    }

    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                kind: Kind::File(data),
                perm,
            },
        )
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                kind: Kind::Symlink(target.to_string()),
                perm: 0o777,
            },
        )
    }

    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                kind: Kind::CharDevice { major, minor },
                perm,
            },
        )
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive in path order (a parent sorts before its children), inode
    /// numbers 1, 2, 3... in that order, every mtime `mtime`. Returns the bytes written.
    pub fn write<W: Write>(&self, w: &mut W, mtime: u32) -> Result<u64, CpioError> {
        let mut n = 0u64;
        for (i, (path, e)) in self.entries.iter().enumerate() {
            let (data, rdev, nlink): (&[u8], (u32, u32), u32) = match &e.kind {
                Kind::Dir => (&[], (0, 0), 2),
                Kind::File(d) => (d, (0, 0), 1),
                Kind::Symlink(t) => (t.as_bytes(), (0, 0), 1),
                Kind::CharDevice { major, minor } => (&[], (*major, *minor), 1),
            };
            let ino = u32::try_from(i + 1).map_err(|_| CpioError::TooLarge(path.clone()))?;
            n += write_member(w, path, ino, e.mode(), nlink, mtime, rdev, data)?;
        }
        n += write_member(w, TRAILER, 0, 0, 1, 0, (0, 0), &[])?;
        Ok(n)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self, mtime: u32) -> Result<Vec<u8>, CpioError> {
        let mut out = Vec::new();
        self.write(&mut out, mtime)?;
        Ok(out)
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[allow(clippy::too_many_arguments)]
fn write_member<W: Write>(
    w: &mut W,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: &[u8],
) -> Result<u64, CpioError> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check (newc has no checksum)
    ];
    let mut head = Vec::with_capacity(HEADER_LEN + namesize + 3);
    head.extend_from_slice(MAGIC);
    for f in fields {
        write!(head, "{f:08x}")?;
    }
    head.extend_from_slice(name.as_bytes());
    head.push(0);
    head.resize(head.len() + pad4(HEADER_LEN + namesize), 0);
    w.write_all(&head)?;
    w.write_all(data)?;
    let pad = pad4(data.len());
    w.write_all(&[0u8; 3][..pad])?;
    Ok((head.len() + data.len() + pad) as u64)
}

/// One member as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub data: Vec<u8>,
}

impl ReadEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_char_device(&self) -> bool {
        self.mode & S_IFMT == S_IFCHR
    }
}

/// Reads a newc archive up to its trailer (for checks and tests; the kernel is the real
/// reader).
pub fn read(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let bad = |offset, what| CpioError::Malformed { offset, what };
    loop {
        let head = bytes
            .get(off..off + HEADER_LEN)
            .ok_or(bad(off, "truncated header"))?;
        if &head[..6] != MAGIC {
            return Err(bad(off, "bad magic"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&head[6 + i * 8..14 + i * 8])
                .map_err(|_| bad(off, "non-ASCII header"))?;
            *v = u32::from_str_radix(s, 16).map_err(|_| bad(off, "non-hex header field"))?;
        }
        let namesize = f[11] as usize;
        let name_end = off + HEADER_LEN + namesize;
        let name = bytes
            .get(off + HEADER_LEN..name_end)
            .ok_or(bad(off, "truncated name"))?;
        let name = name
            .strip_suffix(&[0])
            .ok_or(bad(off, "name not NUL-terminated"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad(off, "non-UTF-8 name"))?;
        let data_start = name_end + pad4(HEADER_LEN + namesize);
        let size = f[6] as usize;
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or(bad(off, "truncated data"))?;
        off = data_start + size + pad4(size);
        if name == TRAILER {
            return Ok(out);
        }
        out.push(ReadEntry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdev_major: f[9],
            rdev_minor: f[10],
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("init", 0o755, b"\x7fELF static agent".to_vec())
            .unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        a.add_dir("tmp", 0o1777).unwrap();
        a.add_dir("proc", 0o555).unwrap();
        a.add_file(
            "lib/modules/6.1.0-1-amd64/modules.dep",
            0o644,
            b"abc".to_vec(),
        )
        .unwrap();
        a.add_symlink("sbin/init", "/init").unwrap();
        a
    }

    #[test]
    fn writes_what_it_reads_back() {
        let bytes = sample().to_bytes(0).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0-1-amd64",
                "lib/modules/6.1.0-1-amd64/modules.dep",
                "proc",
                "sbin",
                "sbin/init",
                "tmp"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        let console = get("dev/console");
        assert!(console.is_char_device());
        assert_eq!(console.mode, 0o020600);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        let init = get("init");
        assert!(init.is_file());
        assert_eq!(init.mode, 0o100755);
        assert_eq!(init.data, b"\x7fELF static agent");
        assert_eq!(get("tmp").mode, 0o041777);
        assert_eq!(get("proc").mode, 0o040555);
        assert_eq!(get("lib").mode, 0o040755);
        assert_eq!(get("sbin/init").mode, 0o120777);
        assert_eq!(get("sbin/init").data, b"/init");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.name);
            assert_eq!(e.ino as usize, i + 1, "{}", e.name);
        }
    }

    #[test]
    fn same_input_same_bytes_whatever_the_insertion_order() {
        let mut b = Archive::new();
        b.add_symlink("sbin/init", "/init").unwrap();
        b.add_dir("proc", 0o555).unwrap();
        b.add_file(
            "lib/modules/6.1.0-1-amd64/modules.dep",
            0o644,
            b"abc".to_vec(),
        )
        .unwrap();
        b.add_dir("tmp", 0o1777).unwrap();
        b.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        b.add_file("init", 0o755, b"\x7fELF static agent".to_vec())
            .unwrap();
        assert_eq!(sample().to_bytes(7).unwrap(), b.to_bytes(7).unwrap());
        assert_ne!(sample().to_bytes(7).unwrap(), b.to_bytes(8).unwrap());
    }

    #[test]
    fn header_is_newc() {
        let mut a = Archive::new();
        a.add_file("x", 0o644, b"hello".to_vec()).unwrap();
        let bytes = a.to_bytes(0x5f5e100).unwrap();
        let head = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            head,
            "070701\
             00000001000081a4000000000000000000000001\
             05f5e100000000050000000000000000\
             000000000000000000000002\
             00000000"
        );
        assert_eq!(&bytes[110..112], b"x\0");
        assert_eq!(&bytes[112..117], b"hello");
        assert_eq!(&bytes[117..120], [0, 0, 0]);
        assert!(std::str::from_utf8(&bytes[120..])
            .unwrap()
            .contains("TRAILER!!!"));
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for p in ["", "/", "a/../b", "a//b", "./a"] {
            assert!(matches!(
                a.add_dir(p, 0o755),
                Err(CpioError::InvalidPath(_))
            ));
        }
        a.add_file("etc/x", 0o644, vec![1]).unwrap();
        a.add_file("/etc/x", 0o644, vec![1]).unwrap(); // the same entry again: fine
        assert!(matches!(
            a.add_file("etc/x", 0o644, vec![2]),
            Err(CpioError::Conflict(_))
        ));
        assert!(matches!(
            a.add_file("etc/x/y", 0o644, vec![2]),
            Err(CpioError::Conflict(_))
        ));
        a.add_dir("etc", 0o700).unwrap(); // sets the mode of the implicit parent
        assert_eq!(
            a.entries().find(|(p, _)| *p == "etc").unwrap().1.perm,
            0o700
        );
    }

    #[test]
    fn reader_rejects_garbage() {
        assert!(read(b"").is_err());
        assert!(read(&[b'0'; 200]).is_err());
        let bytes = sample().to_bytes(0).unwrap();
        assert!(read(&bytes[..bytes.len() - 120]).is_err());
    }

    #[test]
    fn debian_cpio_agrees() {
        // GNU cpio (Debian package `cpio`, installed by scripts/setup-debian.sh) lists
        // what we wrote with the same types, modes and device numbers.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.cpio");
        std::fs::write(&file, sample().to_bytes(0).unwrap()).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&file)
            .output()
            .expect("`cpio` is needed for this test: apt-get install cpio");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
                .unwrap_or_else(|| panic!("{name} not listed in:\n{text}"))
                .to_string()
        };
        let console = line("dev/console");
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(
            console.contains("5,") && console.contains(" 1 "),
            "{console}"
        );
        assert!(line("init").starts_with("-rwxr-xr-x"));
        assert!(line("tmp").starts_with("drwxrwxrwt"));
        assert!(line("sbin/init").starts_with("lrwxrwxrwx"));
        assert!(line("init").contains(" root "), "{}", line("init"));
    }
}
