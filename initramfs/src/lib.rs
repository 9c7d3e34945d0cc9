//! siderite's boot image builder: Debian's kernel package, the NIC and storage modules
//! real servers need (with their dependencies and the firmware the package has), and the
//! static agent as `/init`, packed into a reproducible newc cpio compressed with zstd.
//!
//! Rooms: [`kernel`] (apt resolve/download/unpack), [`modules`] (module tree, closure,
//! index files), [`elf`] (`.modinfo` reader), [`cpio`] (newc writer/reader), [`image`]
//! (one build, the manifest). The `siderite-image` binary is a thin CLI over [`build`].
#![forbid(unsafe_code)]

pub mod cpio;
pub mod elf;
pub mod image;
pub mod kernel;
pub mod modules;

pub use image::{
    build, BuildOptions, ExtraFile, ImageError, KernelSource, Manifest, ModuleChoice, INITRAMFS,
    MANIFEST, VMLINUZ,
};

use sha2::{Digest, Sha256};

/// Where fetched kernels are cached, relative to the workspace root.
pub const DEFAULT_CACHE: &str = "target/siderite-kernels";
/// Where `scripts/build-agent.sh` leaves the static agent, relative to the workspace root.
pub const DEFAULT_AGENT: &str = "target/x86_64-unknown-linux-musl/agent/siderite-agent";

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
