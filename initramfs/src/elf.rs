//! Just enough ELF64 (little-endian) to read a kernel module's `.modinfo` section and to
//! tell a static executable from a dynamic one. The kernel's own `modinfo` reads the same
//! section: NUL-separated `key=value` strings written by modpost.

use std::io::{Read, Seek, SeekFrom};

/// Errors reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("only 64-bit little-endian ELF is supported")]
    Unsupported,
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
    #[error("reading the ELF file")]
    Io(#[from] std::io::Error),
}

const EHDR_LEN: usize = 64;
const SHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_INTERP: u32 = 3;
/// Bounds what a hostile or broken file can make us allocate.
const MAX_SECTION: u64 = 64 << 20;
const MAX_HEADERS: usize = 1 << 16;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

struct Header {
    phoff: u64,
    phnum: usize,
    shoff: u64,
    shnum: usize,
    shstrndx: usize,
}

fn header(ehdr: &[u8]) -> Result<Header, ElfError> {
    if ehdr.len() < EHDR_LEN || &ehdr[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian.
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    let phentsize = u16_at(ehdr, 0x36) as usize;
    let shentsize = u16_at(ehdr, 0x3a) as usize;
    let h = Header {
        phoff: u64_at(ehdr, 0x20),
        phnum: u16_at(ehdr, 0x38) as usize,
        shoff: u64_at(ehdr, 0x28),
        shnum: u16_at(ehdr, 0x3c) as usize,
        shstrndx: u16_at(ehdr, 0x3e) as usize,
    };
    if h.phnum > 0 && phentsize != PHDR_LEN {
        return Err(ElfError::Malformed("program header size"));
    }
    if h.shnum > 0 && shentsize != SHDR_LEN {
        return Err(ElfError::Malformed("section header size"));
    }
    Ok(h)
}

fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: u64) -> Result<Vec<u8>, ElfError> {
    if len > MAX_SECTION {
        return Err(ElfError::Malformed("section too large"));
    }
    r.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ElfError::Malformed("section past end of file"),
        _ => ElfError::Io(e),
    })?;
    Ok(buf)
}

/// Returns the bytes of the section called `name`, or `None` when there is none.
/// Reads only the headers and that section, so scanning thousands of modules is cheap.
pub fn read_section<R: Read + Seek>(r: &mut R, name: &str) -> Result<Option<Vec<u8>>, ElfError> {
    let ehdr = read_at(r, 0, EHDR_LEN as u64).map_err(|e| match e {
        ElfError::Malformed(_) => ElfError::NotElf,
        e => e,
    })?;
    let h = header(&ehdr)?;
    if h.shnum == 0 {
        return Ok(None);
    }
    if h.shnum > MAX_HEADERS || h.shstrndx >= h.shnum {
        return Err(ElfError::Malformed("section header count"));
    }
    let shdrs = read_at(r, h.shoff, (h.shnum * SHDR_LEN) as u64)?;
    let sect = |i: usize| {
        let s = &shdrs[i * SHDR_LEN..(i + 1) * SHDR_LEN];
        // sh_name, sh_offset, sh_size
        (u32_at(s, 0) as usize, u64_at(s, 0x18), u64_at(s, 0x20))
    };
    let (_, str_off, str_size) = sect(h.shstrndx);
    let strtab = read_at(r, str_off, str_size)?;
    for i in 0..h.shnum {
        let (name_off, off, size) = sect(i);
        let Some(rest) = strtab.get(name_off..) else {
            return Err(ElfError::Malformed("section name offset"));
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return read_at(r, off, size).map(Some);
        }
    }
    Ok(None)
}

/// The `key=value` pairs of a `.modinfo` section, in file order. Keys repeat (`alias`,
/// `firmware`, `softdep`), so this is a list, not a map. Entries without `=` are dropped.
pub fn parse_modinfo(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Reads the `.modinfo` pairs of a kernel module (empty when it has no such section).
pub fn read_modinfo<R: Read + Seek>(r: &mut R) -> Result<Vec<(String, String)>, ElfError> {
    Ok(read_section(r, ".modinfo")?
        .map(|s| parse_modinfo(&s))
        .unwrap_or_default())
}

/// True when an ELF executable needs no program interpreter (a static binary, or a
/// static-pie one). `/init` must be: the image has no dynamic loader or libc.
pub fn is_static_executable(bytes: &[u8]) -> Result<bool, ElfError> {
    let h = header(bytes.get(..EHDR_LEN).ok_or(ElfError::NotElf)?)?;
    for i in 0..h.phnum {
        let off = usize::try_from(h.phoff)
            .ok()
            .and_then(|o| o.checked_add(i * PHDR_LEN))
            .ok_or(ElfError::Malformed("program header offset"))?;
        let ph = bytes
            .get(off..off + PHDR_LEN)
            .ok_or(ElfError::Malformed("program header past end of file"))?;
        if u32_at(ph, 0) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny ELF64 writer for tests: a header, the given sections and a section-name table.

    /// Builds an ELF64 LE relocatable file with the named sections (plus `.shstrtab`).
    pub fn elf_with_sections(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut shstrtab = vec![0u8];
        let mut names = Vec::new();
        for (name, _) in sections.iter().copied().chain([(".shstrtab", &[][..])]) {
            names.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
        }
        let mut out = vec![0u8; 64];
        let mut placed = vec![(0u32, 0u64, 0u64)]; // the null section
        for (i, (_, data)) in sections.iter().enumerate() {
            placed.push((names[i], out.len() as u64, data.len() as u64));
            out.extend_from_slice(data);
        }
        placed.push((
            names[sections.len()],
            out.len() as u64,
            shstrtab.len() as u64,
        ));
        out.extend_from_slice(&shstrtab);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        for (name, off, size) in &placed {
            let mut sh = [0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&sh);
        }
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(placed.len() as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((placed.len() - 1) as u16).to_le_bytes());
        out
    }

    /// An ELF64 executable with one program header of type `p_type`.
    pub fn elf_with_program_header(p_type: u32) -> Vec<u8> {
        let mut out = vec![0u8; 64 + 56];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        out[64..68].copy_from_slice(&p_type.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_modinfo_pairs_in_order() {
        let info = b"firmware=intel/ice/ddp/ice.pkg\0license=GPL\0depends=nvme-core,t10-pi\0\0\0alias=pci:v00008086d*\0name=ice\0";
        let elf = elf_with_sections(&[(".text", b"\x90\x90"), (".modinfo", info)]);
        let pairs = read_modinfo(&mut Cursor::new(&elf)).unwrap();
        assert_eq!(
            pairs,
            [
                ("firmware", "intel/ice/ddp/ice.pkg"),
                ("license", "GPL"),
                ("depends", "nvme-core,t10-pi"),
                ("alias", "pci:v00008086d*"),
                ("name", "ice"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn no_modinfo_section_is_empty() {
        let elf = elf_with_sections(&[(".text", b"\x90")]);
        assert!(read_modinfo(&mut Cursor::new(&elf)).unwrap().is_empty());
    }

    #[test]
    fn rejects_what_is_not_elf64_le() {
        assert!(matches!(
            read_modinfo(&mut Cursor::new(b"#!/bin/sh\n")),
            Err(ElfError::NotElf)
        ));
        let mut elf = elf_with_sections(&[]);
        elf[4] = 1; // 32-bit
        assert!(matches!(
            read_modinfo(&mut Cursor::new(&elf)),
            Err(ElfError::Unsupported)
        ));
    }

    #[test]
    fn truncated_section_is_malformed_not_a_panic() {
        let elf = elf_with_sections(&[(".modinfo", b"name=x\0")]);
        for cut in [70, elf.len() - 10] {
            assert!(read_modinfo(&mut Cursor::new(&elf[..cut])).is_err());
        }
    }

    #[test]
    fn static_means_no_interpreter() {
        assert!(is_static_executable(&elf_with_program_header(1)).unwrap());
        assert!(!is_static_executable(&elf_with_program_header(PT_INTERP)).unwrap());
        assert!(is_static_executable(b"not elf").is_err());
    }

    #[test]
    fn real_debian_module_if_extracted() {
        // Present once the image_build test (or the CLI) has extracted Debian's kernel.
        let cache =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/siderite-kernels");
        let Some(ko) = find_ko(&cache, "ice.ko") else {
            eprintln!(
                "no extracted kernel under {}: nothing to check",
                cache.display()
            );
            return;
        };
        let pairs = read_modinfo(&mut std::fs::File::open(&ko).unwrap()).unwrap();
        let get = |k: &'static str| {
            pairs
                .iter()
                .filter(move |(key, _)| key == k)
                .map(|(_, v)| v)
        };
        assert_eq!(get("name").next().map(String::as_str), Some("ice"));
        assert!(
            get("firmware").any(|f| f.starts_with("intel/ice/")),
            "{pairs:?}"
        );
        assert!(get("alias").any(|a| a.starts_with("pci:v00008086")));
    }

    fn find_ko(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                if let Some(f) = find_ko(&p, name) {
                    return Some(f);
                }
            } else if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
        }
        None
    }
}
