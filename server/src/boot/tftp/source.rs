//! Where served files come from: a directory, memory, or a stack of both.
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

/// An opened file: read once, front to back.
pub struct FileContent {
    size: Option<u64>,
    reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl FileContent {
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self {
            size: Some(bytes.len() as u64),
            reader: Box::new(io::Cursor::new(bytes)),
        }
    }

    /// `size` is what tsize reports; none when the source cannot know it up front.
    pub fn from_reader(size: Option<u64>, reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        Self {
            size,
            reader: Box::new(reader),
        }
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    pub(super) fn into_reader(self) -> Box<dyn AsyncRead + Send + Unpin> {
        self.reader
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("file not found")]
    NotFound,
    #[error("access denied: {0}")]
    AccessDenied(&'static str),
    #[error("reading the file")]
    Io(#[source] io::Error),
}

/// Serves files by TFTP path. `path` is what the client sent; implementations start
/// with `normalize_path` so that no source ever sees `..` or a leading `/`.
#[async_trait]
pub trait FileSource: Send + Sync {
    async fn open(&self, path: &str) -> Result<FileContent, SourceError>;
}

/// The relative path a TFTP filename names: `\` counts as `/` (Windows PXE clients),
/// leading `/` (PXE) and `.` components are dropped, `..` and control characters are
/// refused rather than resolved.
pub fn normalize_path(requested: &str) -> Result<String, SourceError> {
    let mut parts = Vec::new();
    for part in requested.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(SourceError::AccessDenied("\"..\" in path")),
            p if p.chars().any(char::is_control) => {
                return Err(SourceError::AccessDenied("control character in path"))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(SourceError::NotFound);
    }
    Ok(parts.join("/"))
}

/// Files under a root directory. Symlinks are followed only while they stay inside it.
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = std::fs::canonicalize(root.as_ref())?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn io_to_source(e: io::Error) -> SourceError {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => SourceError::NotFound,
        io::ErrorKind::PermissionDenied => SourceError::AccessDenied("permission denied"),
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            SourceError::AccessDenied("symlink loop")
        }
        _ => SourceError::Io(e),
    }
}

#[async_trait]
impl FileSource for DirSource {
    async fn open(&self, path: &str) -> Result<FileContent, SourceError> {
        let rel = normalize_path(path)?;
        let canonical = tokio::fs::canonicalize(self.root.join(rel))
            .await
            .map_err(io_to_source)?;
        if !canonical.starts_with(&self.root) {
            return Err(SourceError::AccessDenied("path leaves the root"));
        }
        // The canonical path has no symlinks; O_NOFOLLOW refuses one swapped in since.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&canonical)
            .await
            .map_err(io_to_source)?;
        let meta = file.metadata().await.map_err(io_to_source)?;
        if !meta.is_file() {
            return Err(SourceError::AccessDenied("not a regular file"));
        }
        Ok(FileContent::from_reader(Some(meta.len()), file))
    }
}

/// Files held in memory, e.g. generated boot scripts.
#[derive(Debug, Default)]
pub struct MemSource {
    files: RwLock<HashMap<String, Bytes>>,
}

impl MemSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a file; `path` is normalized like a request.
    pub fn insert(&self, path: &str, content: impl Into<Bytes>) -> Result<(), SourceError> {
        let key = normalize_path(path)?;
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, content.into());
        Ok(())
    }

    pub fn remove(&self, path: &str) -> bool {
        let Ok(key) = normalize_path(path) else {
            return false;
        };
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .is_some()
    }
}

#[async_trait]
impl FileSource for MemSource {
    async fn open(&self, path: &str) -> Result<FileContent, SourceError> {
        let key = normalize_path(path)?;
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files
            .get(&key)
            .cloned()
            .map(FileContent::from_bytes)
            .ok_or(SourceError::NotFound)
    }
}

/// Tries each source in turn; the first that has the file (or refuses it) answers.
pub struct Layered {
    layers: Vec<Arc<dyn FileSource>>,
}

impl Layered {
    pub fn new(layers: Vec<Arc<dyn FileSource>>) -> Self {
        Self { layers }
    }
}

#[async_trait]
impl FileSource for Layered {
    async fn open(&self, path: &str) -> Result<FileContent, SourceError> {
        for layer in &self.layers {
            match layer.open(path).await {
                Err(SourceError::NotFound) => continue,
                other => return other,
            }
        }
        Err(SourceError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn normalizes_paths() {
        let ok = |p: &str| normalize_path(p).unwrap();
        assert_eq!(ok("/pxelinux.0"), "pxelinux.0");
        assert_eq!(ok("//a/./b//c"), "a/b/c");
        assert_eq!(ok("\\boot\\x86\\wdsnbp.com"), "boot/x86/wdsnbp.com");
        assert_eq!(ok("a/.../b"), "a/.../b");
        for bad in ["../etc/passwd", "a/../../b", "..\\x", "a/..", "a\nb"] {
            assert!(
                matches!(normalize_path(bad), Err(SourceError::AccessDenied(_))),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(normalize_path("/"), Err(SourceError::NotFound)));
        assert!(matches!(normalize_path("./"), Err(SourceError::NotFound)));
    }

    async fn read_all(c: FileContent) -> Vec<u8> {
        let mut v = Vec::new();
        c.into_reader().read_to_end(&mut v).await.unwrap();
        v
    }

    #[tokio::test]
    async fn dir_source_stays_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("inside-link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("out-link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out-dir")).unwrap();
        let src = DirSource::new(root).unwrap();

        let c = src.open("/sub/file").await.unwrap();
        assert_eq!(c.size(), Some(5));
        assert_eq!(read_all(c).await, b"hello");
        assert_eq!(
            read_all(src.open("inside-link").await.unwrap()).await,
            b"hello"
        );
        for denied in [
            "out-link",
            "out-dir/secret",
            "sub",
            "../x",
            "sub/../sub/file",
        ] {
            assert!(
                matches!(src.open(denied).await, Err(SourceError::AccessDenied(_))),
                "{denied} not denied"
            );
        }
        for missing in ["nope", "sub/file/x", "/"] {
            assert!(
                matches!(src.open(missing).await, Err(SourceError::NotFound)),
                "{missing} found"
            );
        }
    }

    #[tokio::test]
    async fn mem_and_layered_sources() {
        let mem = Arc::new(MemSource::new());
        mem.insert("/boot.ipxe", Bytes::from_static(b"#!ipxe\n"))
            .unwrap();
        assert!(mem.insert("../x", Bytes::new()).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot.ipxe"), b"shadowed").unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"kpxe").unwrap();
        let layered = Layered::new(vec![
            mem.clone(),
            Arc::new(DirSource::new(dir.path()).unwrap()),
        ]);
        assert_eq!(
            read_all(layered.open("boot.ipxe").await.unwrap()).await,
            b"#!ipxe\n"
        );
        assert_eq!(
            read_all(layered.open("undionly.kpxe").await.unwrap()).await,
            b"kpxe"
        );
        assert!(matches!(
            layered.open("x").await,
            Err(SourceError::NotFound)
        ));
        assert!(mem.remove("boot.ipxe"));
        assert_eq!(
            read_all(layered.open("boot.ipxe").await.unwrap()).await,
            b"shadowed"
        );
    }
}
