//! SMBIOS: the firmware's own description of the machine (system, board, chassis, BIOS,
//! processors, memory modules).
//!
//! A [`SmbiosSource`] hands over the raw entry point and structure table; [`parse`] turns
//! them into inventory types. The structure walk is checked here *before* smbioslib sees
//! the bytes, so a broken or truncated table is a clear [`SmbiosError`] and can never reach a
//! panic inside the library (the agent is built with panic=abort).
use std::path::{Path, PathBuf};

use siderite::proto::agent::v1::{Baseboard, Bios, Chassis, MemoryModule, Processor, System};
use smbioslib::{
    CoreCount, CoreCount2, MemorySize, MemorySizeExtended, MemorySpeed, MemorySpeedExtended,
    ProcessorSpeed, SMBiosBaseboardInformation, SMBiosData, SMBiosInformation, SMBiosMemoryDevice,
    SMBiosProcessorInformation, SMBiosString, SMBiosStruct, SMBiosSystemChassisInformation,
    SMBiosSystemInformation, SMBiosVersion, ThreadCount, ThreadCount2,
};

#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("no SMBIOS tables at {path}")]
    NotPresent { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SMBIOS entry point has no _SM_, _SM3_ or _DMI_ anchor")]
    BadAnchor,
    #[error("SMBIOS {kind} entry point is {len} bytes, shorter than the {need} it needs")]
    ShortEntryPoint {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("SMBIOS {kind} entry point checksum is wrong")]
    BadChecksum { kind: &'static str },
    #[error("SMBIOS structure table is empty")]
    EmptyTable,
    #[error("SMBIOS structure table is truncated: {actual} bytes, the entry point announces {announced}")]
    ShortTable { actual: usize, announced: usize },
    #[error("SMBIOS structure at offset {offset} is cut off by the end of the table ({table_len} bytes)")]
    Truncated { offset: usize, table_len: usize },
    #[error("SMBIOS structure type {kind} at offset {offset} claims length {length}, less than its 4-byte header")]
    BadLength { offset: usize, kind: u8, length: u8 },
    #[error("SMBIOS structure type {kind} at offset {offset}: its strings never end (no double NUL before the end of the table)")]
    UnterminatedStrings { offset: usize, kind: u8 },
}

/// The two files the kernel exposes, exactly as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSmbios {
    pub entry_point: Vec<u8>,
    pub table: Vec<u8>,
}

/// Where the SMBIOS tables come from.
pub trait SmbiosSource: Send + Sync {
    fn read(&self) -> Result<RawSmbios, SmbiosError>;
}

/// Reads root/sys/firmware/dmi/tables/{smbios_entry_point,DMI}.
pub struct LinuxSmbios {
    dir: PathBuf,
}

impl LinuxSmbios {
    pub fn new(root: &Path) -> Self {
        LinuxSmbios {
            dir: root.join("sys/firmware/dmi/tables"),
        }
    }
}

impl SmbiosSource for LinuxSmbios {
    fn read(&self) -> Result<RawSmbios, SmbiosError> {
        if !self.dir.is_dir() {
            return Err(SmbiosError::NotPresent {
                path: self.dir.clone(),
            });
        }
        let read = |name: &str| {
            let path = self.dir.join(name);
            std::fs::read(&path).map_err(|source| SmbiosError::Read { path, source })
        };
        Ok(RawSmbios {
            entry_point: read("smbios_entry_point")?,
            table: read("DMI")?,
        })
    }
}

/// Which entry point format the firmware used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPointKind {
    /// `_SM_`, SMBIOS 2.x, 32-bit table address, exact table length.
    Bits32,
    /// `_SM3_`, SMBIOS 3.x, 64-bit table address, maximum table length.
    Bits64,
    /// Bare `_DMI_`, pre-2.1 legacy.
    Legacy,
}

/// What the entry point says about the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub kind: EntryPointKind,
    pub major: u8,
    pub minor: u8,
    /// Exact length (32-bit, legacy) or maximum length (64-bit) of the structure table.
    pub table_len: usize,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

fn need(data: &[u8], kind: &'static str, need: usize) -> Result<(), SmbiosError> {
    if data.len() < need {
        return Err(SmbiosError::ShortEntryPoint {
            kind,
            len: data.len(),
            need,
        });
    }
    Ok(())
}

/// Parses an SMBIOS entry point (`_SM_`, `_SM3_` or legacy `_DMI_`), checksums included.
pub fn parse_entry_point(data: &[u8]) -> Result<EntryPoint, SmbiosError> {
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([data[o], data[o + 1]]));
    if data.starts_with(b"_SM3_") {
        const KIND: &str = "64-bit";
        need(data, KIND, 0x18)?;
        let len = usize::from(data[6]).clamp(0x18, data.len());
        if !checksum_ok(&data[..len]) {
            return Err(SmbiosError::BadChecksum { kind: KIND });
        }
        let max = u32::from_le_bytes([data[0x0C], data[0x0D], data[0x0E], data[0x0F]]);
        Ok(EntryPoint {
            kind: EntryPointKind::Bits64,
            major: data[7],
            minor: data[8],
            table_len: usize::try_from(max).unwrap_or(usize::MAX),
        })
    } else if data.starts_with(b"_SM_") {
        const KIND: &str = "32-bit";
        need(data, KIND, 0x1F)?;
        let len = usize::from(data[5]).clamp(0x1F, data.len());
        if !checksum_ok(&data[..len]) || !checksum_ok(&data[0x10..0x1F]) {
            return Err(SmbiosError::BadChecksum { kind: KIND });
        }
        Ok(EntryPoint {
            kind: EntryPointKind::Bits32,
            major: data[6],
            minor: data[7],
            table_len: u16_at(0x16),
        })
    } else if data.starts_with(b"_DMI_") {
        const KIND: &str = "legacy";
        need(data, KIND, 0x0F)?;
        if !checksum_ok(&data[..0x0F]) {
            return Err(SmbiosError::BadChecksum { kind: KIND });
        }
        Ok(EntryPoint {
            kind: EntryPointKind::Legacy,
            major: data[0x0E] >> 4,
            minor: data[0x0E] & 0x0F,
            table_len: u16_at(0x06),
        })
    } else {
        Err(SmbiosError::BadAnchor)
    }
}

/// One structure found by [`walk`]: its type and where it starts and ends in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructureSpan {
    pub kind: u8,
    pub start: usize,
    pub end: usize,
}

const END_OF_TABLE: u8 = 127;

/// Walks the structure table and checks every structure's bounds: a 4-byte header, a length
/// of at least 4 that fits, and a string set closed by a double NUL inside the table. Stops
/// after the end-of-table structure (type 127) or at the end of the data.
pub fn walk(table: &[u8]) -> Result<Vec<StructureSpan>, SmbiosError> {
    if table.is_empty() {
        return Err(SmbiosError::EmptyTable);
    }
    let mut spans = Vec::new();
    let mut offset = 0;
    while offset < table.len() {
        let truncated = SmbiosError::Truncated {
            offset,
            table_len: table.len(),
        };
        let Some(header) = table.get(offset..offset + 4) else {
            return Err(truncated);
        };
        let (kind, length) = (header[0], header[1]);
        if length < 4 {
            return Err(SmbiosError::BadLength {
                offset,
                kind,
                length,
            });
        }
        let strings_start = offset + usize::from(length);
        let Some(strings) = table.get(strings_start..) else {
            return Err(truncated);
        };
        // The string set runs to the first double NUL; with no strings it is just "\0\0".
        let Some(nul) = strings.windows(2).position(|w| w == [0, 0]) else {
            return Err(SmbiosError::UnterminatedStrings { offset, kind });
        };
        let end = strings_start + nul + 2;
        spans.push(StructureSpan {
            kind,
            start: offset,
            end,
        });
        if kind == END_OF_TABLE {
            return Ok(spans);
        }
        offset = end;
    }
    tracing::debug!("SMBIOS table has no end-of-table structure; using what it holds");
    Ok(spans)
}

/// What the inventory takes from SMBIOS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmbiosInfo {
    pub major: u8,
    pub minor: u8,
    /// Type 0.
    pub bios: Option<Bios>,
    /// Type 1; `None` when the table has none.
    pub system: Option<System>,
    /// Type 2, the first one.
    pub baseboard: Option<Baseboard>,
    /// Type 3, the first one.
    pub chassis: Option<Chassis>,
    /// Type 4, populated sockets only.
    pub processors: Vec<Processor>,
    /// Type 17, installed modules only.
    pub memory_modules: Vec<MemoryModule>,
}

/// Validates and decodes the raw tables.
pub fn parse(raw: &RawSmbios) -> Result<SmbiosInfo, SmbiosError> {
    let ep = parse_entry_point(&raw.entry_point)?;
    let mut table = raw.table.as_slice();
    if table.is_empty() {
        return Err(SmbiosError::EmptyTable);
    }
    match ep.kind {
        // 2.x tables have an exact length: less data means the table was cut off.
        EntryPointKind::Bits32 | EntryPointKind::Legacy => {
            if table.len() < ep.table_len {
                return Err(SmbiosError::ShortTable {
                    actual: table.len(),
                    announced: ep.table_len,
                });
            }
            table = &table[..ep.table_len];
        }
        EntryPointKind::Bits64 => table = &table[..table.len().min(ep.table_len)],
    }
    let spans = walk(table)?;
    let end = spans.last().map_or(0, |s| s.end);
    // Only the validated bytes go to smbioslib.
    let data = SMBiosData::from_vec_and_version(
        table[..end].to_vec(),
        Some(SMBiosVersion::new(ep.major, ep.minor, 0)),
    );
    Ok(decode(&data, ep.major, ep.minor))
}

fn decode(data: &SMBiosData, major: u8, minor: u8) -> SmbiosInfo {
    let bios = data.first::<SMBiosInformation>().map(|b| Bios {
        vendor: text(b.vendor()),
        version: text(b.version()),
        release_date: text(b.release_date()),
    });
    let system = data.first::<SMBiosSystemInformation>().map(|s| System {
        uuid: system_uuid(&s, (major, minor)),
        manufacturer: text(s.manufacturer()),
        product: text(s.product_name()),
        version: text(s.version()),
        serial: text(s.serial_number()),
        sku: text(s.sku_number()),
        family: text(s.family()),
    });
    let baseboard = data
        .first::<SMBiosBaseboardInformation>()
        .map(|b| Baseboard {
            manufacturer: text(b.manufacturer()),
            product: text(b.product()),
            version: text(b.version()),
            serial: text(b.serial_number()),
            asset_tag: text(b.asset_tag()),
        });
    let chassis = data
        .first::<SMBiosSystemChassisInformation>()
        .map(|c| Chassis {
            manufacturer: text(c.manufacturer()),
            chassis_type: c
                .chassis_type()
                .map(|t| chassis_type_name(t.raw))
                .unwrap_or_default(),
            version: text(c.version()),
            serial: text(c.serial_number()),
            asset_tag: text(c.asset_tag_number()),
        });
    let processors = data
        .defined_struct_iter::<SMBiosProcessorInformation>()
        .filter(|p| p.status().is_some_and(|s| s.socket_populated()))
        .map(|p| processor(&p))
        .collect();
    let memory_modules = data
        .defined_struct_iter::<SMBiosMemoryDevice>()
        .filter_map(|m| memory_module(&m))
        .collect();
    SmbiosInfo {
        major,
        minor,
        bios,
        system,
        baseboard,
        chassis,
        processors,
        memory_modules,
    }
}

/// A string field, trimmed; an invalid string reference reads as empty.
fn text(s: SMBiosString) -> String {
    s.to_utf8_lossy()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The type 1 UUID as canonical lowercase text. Read from the raw bytes rather than through
/// smbioslib's `SystemUuidData`: that enum names all-zeros "IdNotPresentButSettable" and
/// all-ones "IdNotPresent", the reverse of the spec (all FFh is "not present but settable"),
/// so the raw value is the only unambiguous thing to report; the server rejects both.
/// From SMBIOS 2.6 on the first three fields are little-endian; before that, dmidecode and
/// the kernel read them as network order, and so do we.
fn system_uuid(s: &SMBiosSystemInformation, version: (u8, u8)) -> String {
    let Some(bytes) = s
        .parts()
        .get_field_data(0x08, 0x18)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
    else {
        return String::new();
    };
    let uuid = if version >= (2, 6) {
        uuid::Uuid::from_bytes_le(bytes)
    } else {
        uuid::Uuid::from_bytes(bytes)
    };
    uuid.hyphenated().to_string()
}

fn processor(p: &SMBiosProcessorInformation) -> Processor {
    let cores = match p.core_count() {
        Some(CoreCount::Count(n)) => u32::from(n),
        Some(CoreCount::SeeCoreCount2) => match p.core_count_2() {
            Some(CoreCount2::Count(n)) => u32::from(n),
            _ => 0,
        },
        _ => 0,
    };
    let threads = match p.thread_count() {
        Some(ThreadCount::Count(n)) => u32::from(n),
        Some(ThreadCount::SeeThreadCount2) => match p.thread_count_2() {
            Some(ThreadCount2::Count(n)) => u32::from(n),
            _ => 0,
        },
        _ => 0,
    };
    Processor {
        socket: text(p.socket_designation()),
        manufacturer: text(p.processor_manufacturer()),
        version: text(p.processor_version()),
        cores,
        threads,
        max_speed_mhz: match p.max_speed() {
            Some(ProcessorSpeed::MHz(n)) => u32::from(n),
            _ => 0,
        },
    }
}

const MIB: u64 = 1024 * 1024;

/// A type 17 memory device; `None` for an empty slot.
fn memory_module(m: &SMBiosMemoryDevice) -> Option<MemoryModule> {
    let size_bytes = match m.size()? {
        MemorySize::NotInstalled => return None,
        MemorySize::Unknown => 0,
        MemorySize::Kilobytes(k) => u64::from(k) * 1024,
        MemorySize::Megabytes(mb) => u64::from(mb) * MIB,
        MemorySize::SeeExtendedSize => match m.extended_size() {
            Some(MemorySizeExtended::Megabytes(mb)) => u64::from(mb) * MIB,
            _ => 0,
        },
    };
    let speed_mts = match m.speed() {
        Some(MemorySpeed::MTs(n)) => u32::from(n),
        Some(MemorySpeed::SeeExtendedSpeed) => match m.extended_speed() {
            Some(MemorySpeedExtended::MTs(n)) => n,
            _ => 0,
        },
        _ => 0,
    };
    Some(MemoryModule {
        locator: text(m.device_locator()),
        bank: text(m.bank_locator()),
        size_bytes,
        memory_type: m
            .memory_type()
            .map(|t| memory_type_name(t.raw))
            .unwrap_or_default(),
        speed_mts,
        manufacturer: text(m.manufacturer()),
        serial: text(m.serial_number()),
        part_number: text(m.part_number()),
    })
}

/// SMBIOS 3.7 table 77 (type 17 "Memory Type"), in dmidecode's words.
fn memory_type_name(raw: u8) -> String {
    let name = match raw {
        0x01 => "Other",
        0x02 => "Unknown",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0A => "EEPROM",
        0x0B => "FEPROM",
        0x0C => "EPROM",
        0x0D => "CDRAM",
        0x0E => "3DRAM",
        0x0F => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return format!("0x{raw:02x}"),
    };
    name.to_string()
}

/// SMBIOS 3.7 table 17 (type 3 "Chassis Type", lock bit masked), in dmidecode's words.
fn chassis_type_name(raw: u8) -> String {
    let name = match raw & 0x7F {
        0x01 => "Other",
        0x02 => "Unknown",
        0x03 => "Desktop",
        0x04 => "Low Profile Desktop",
        0x05 => "Pizza Box",
        0x06 => "Mini Tower",
        0x07 => "Tower",
        0x08 => "Portable",
        0x09 => "Laptop",
        0x0A => "Notebook",
        0x0B => "Hand Held",
        0x0C => "Docking Station",
        0x0D => "All In One",
        0x0E => "Sub Notebook",
        0x0F => "Space-saving",
        0x10 => "Lunch Box",
        0x11 => "Main Server Chassis",
        0x12 => "Expansion Chassis",
        0x13 => "Sub Chassis",
        0x14 => "Bus Expansion Chassis",
        0x15 => "Peripheral Chassis",
        0x16 => "RAID Chassis",
        0x17 => "Rack Mount Chassis",
        0x18 => "Sealed-case PC",
        0x19 => "Multi-system",
        0x1A => "CompactPCI",
        0x1B => "AdvancedTCA",
        0x1C => "Blade",
        0x1D => "Blade Enclosure",
        0x1E => "Tablet",
        0x1F => "Convertible",
        0x20 => "Detachable",
        0x21 => "IoT Gateway",
        0x22 => "Embedded PC",
        0x23 => "Mini PC",
        0x24 => "Stick PC",
        _ => return format!("0x{raw:02x}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &str) -> RawSmbios {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/smbios");
        LinuxSmbios {
            dir: base.join(dir),
        }
        .read()
        .unwrap_or_else(|e| panic!("fixture {dir}: {e}"))
    }

    fn lab_system(uuid: &str, serial: &str) -> System {
        System {
            uuid: uuid.into(),
            manufacturer: "Siderite Test".into(),
            product: "Lab Machine".into(),
            version: "1.0".into(),
            serial: serial.into(),
            sku: "SKU-42".into(),
            family: "Lab".into(),
        }
    }

    fn lab_baseboard() -> Baseboard {
        Baseboard {
            manufacturer: "Siderite Boards".into(),
            product: "LB-1".into(),
            version: "pc-q35-7.2".into(),
            serial: "BB-1".into(),
            asset_tag: String::new(),
        }
    }

    #[test]
    fn seabios_capture() {
        let raw = fixture("seabios");
        let ep = parse_entry_point(&raw.entry_point).unwrap();
        assert_eq!(ep.kind, EntryPointKind::Bits32);
        assert_eq!((ep.major, ep.minor, ep.table_len), (2, 8, 439));
        let info = parse(&raw).unwrap();
        assert_eq!(
            info.system,
            Some(lab_system(
                "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e",
                "SER-SEABIOS-001"
            ))
        );
        assert_eq!(info.baseboard, Some(lab_baseboard()));
        let bios = info.bios.unwrap();
        assert_eq!(bios.vendor, "SeaBIOS");
        assert_eq!(bios.version, "1.16.2-debian-1.16.2-1");
        assert_eq!(bios.release_date, "04/01/2014");
        let chassis = info.chassis.unwrap();
        assert_eq!(chassis.manufacturer, "QEMU");
        assert_eq!(chassis.chassis_type, "Other");
        assert_eq!(
            info.processors,
            vec![Processor {
                socket: "CPU 0".into(),
                manufacturer: "QEMU".into(),
                version: "pc-q35-7.2".into(),
                cores: 2,
                threads: 2,
                max_speed_mhz: 2000,
            }]
        );
        assert_eq!(info.memory_modules.len(), 1);
        let dimm = &info.memory_modules[0];
        assert_eq!(dimm.locator, "DIMM 0");
        assert_eq!(dimm.manufacturer, "QEMU");
        assert_eq!(dimm.size_bytes, 512 * MIB);
        assert_eq!(dimm.memory_type, "RAM");
    }

    #[test]
    fn ovmf_capture_has_type0_last() {
        let info = parse(&fixture("ovmf")).unwrap();
        assert_eq!(
            info.system,
            Some(lab_system(
                "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b",
                "SER-OVMF-002"
            ))
        );
        assert_eq!(info.baseboard, Some(lab_baseboard()));
        let bios = info.bios.unwrap();
        assert_eq!(bios.vendor, "EFI Development Kit II / OVMF");
        assert_eq!(info.processors.len(), 1);
        assert_eq!(info.memory_modules.len(), 1);
        assert_eq!(info.memory_modules[0].size_bytes, 512 * MIB);
    }

    #[test]
    fn sm3_captures_use_the_64_bit_entry_point() {
        for (dir, uuid, serial) in [
            (
                "seabios_sm3",
                "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                "SER-SEABIOS-003",
            ),
            (
                "ovmf_sm3",
                "0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
                "SER-OVMF-004",
            ),
        ] {
            let raw = fixture(dir);
            let ep = parse_entry_point(&raw.entry_point).unwrap();
            assert_eq!(ep.kind, EntryPointKind::Bits64, "{dir}");
            assert_eq!((ep.major, ep.minor), (3, 0), "{dir}");
            let info = parse(&raw).unwrap();
            assert_eq!(info.system, Some(lab_system(uuid, serial)), "{dir}");
        }
    }

    #[test]
    fn walk_stops_at_end_of_table() {
        let raw = fixture("seabios");
        let spans = walk(&raw.table).unwrap();
        let kinds: Vec<u8> = spans.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [0, 1, 2, 3, 4, 16, 17, 19, 32, 127]);
        assert_eq!(spans.last().unwrap().end, raw.table.len());
    }

    #[test]
    fn broken_captures_fail_clearly() {
        let err = |dir: &str| parse(&fixture(&format!("broken/{dir}"))).unwrap_err();
        assert!(matches!(
            err("truncated"),
            SmbiosError::ShortTable {
                actual: 57,
                announced: 439
            }
        ));
        assert!(matches!(
            err("bad_length"),
            SmbiosError::BadLength {
                offset: 0,
                kind: 0,
                length: 2
            }
        ));
        assert!(matches!(
            err("no_terminator"),
            SmbiosError::UnterminatedStrings { kind: 127, .. }
        ));
        assert!(matches!(err("bad_entry_point"), SmbiosError::BadAnchor));
        assert!(matches!(err("empty"), SmbiosError::EmptyTable));
        assert_eq!(
            err("bad_length").to_string(),
            "SMBIOS structure type 0 at offset 0 claims length 2, less than its 4-byte header"
        );
    }

    #[test]
    fn truncated_table_fails_in_the_walk_too() {
        // Same cut as broken/truncated, but with no entry point to compare against.
        let raw = fixture("broken/truncated");
        assert!(matches!(
            walk(&raw.table),
            Err(SmbiosError::UnterminatedStrings { offset: 0, kind: 0 })
        ));
    }

    #[test]
    fn every_prefix_and_corruption_is_an_error_or_a_result_never_a_panic() {
        for dir in ["seabios", "ovmf", "seabios_sm3", "ovmf_sm3"] {
            let raw = fixture(dir);
            for cut in 0..raw.table.len() {
                let _ = walk(&raw.table[..cut]);
                let mut r = raw.clone();
                r.table.truncate(cut);
                let _ = parse(&r);
            }
            for cut in 0..raw.entry_point.len() {
                let _ = parse_entry_point(&raw.entry_point[..cut]);
            }
            for i in 0..raw.table.len() {
                for v in [0x00, 0x01, 0x03, 0x04, 0x7f, 0xff] {
                    let mut r = raw.clone();
                    r.table[i] = v;
                    let _ = parse(&r);
                }
            }
        }
    }

    #[test]
    fn missing_tables_are_not_present() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            LinuxSmbios::new(dir.path()).read(),
            Err(SmbiosError::NotPresent { .. })
        ));
    }

    #[test]
    fn entry_point_checksum_is_checked() {
        let mut raw = fixture("seabios");
        raw.entry_point[0x08] ^= 0x55;
        assert!(matches!(
            parse_entry_point(&raw.entry_point),
            Err(SmbiosError::BadChecksum { kind: "32-bit" })
        ));
    }

    /// A minimal table: type 1 with the given 16 UUID bytes, then end-of-table.
    fn table_with_uuid(uuid: [u8; 16]) -> Vec<u8> {
        let mut t = vec![1, 0x19, 0x01, 0x00, 0, 0, 0, 0];
        t.extend_from_slice(&uuid);
        t.push(0); // wake-up type
        t.extend_from_slice(&[0, 0]); // no strings
        t.extend_from_slice(&[127, 4, 0x02, 0x00, 0, 0]);
        t
    }

    fn sm3_entry_point(table_len: u32) -> Vec<u8> {
        let mut ep = vec![0u8; 0x18];
        ep[..5].copy_from_slice(b"_SM3_");
        ep[6] = 0x18;
        ep[7] = 3;
        ep[8] = 2;
        ep[0x0A] = 1;
        ep[0x0C..0x10].copy_from_slice(&table_len.to_le_bytes());
        let sum = ep.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        ep[5] = 0u8.wrapping_sub(sum);
        ep
    }

    #[test]
    fn placeholder_uuids_keep_their_raw_value() {
        for (bytes, text) in [
            ([0u8; 16], "00000000-0000-0000-0000-000000000000"),
            ([0xffu8; 16], "ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ] {
            let table = table_with_uuid(bytes);
            let raw = RawSmbios {
                entry_point: sm3_entry_point(table.len() as u32),
                table,
            };
            let info = parse(&raw).unwrap();
            assert_eq!(info.system.unwrap().uuid, text);
            assert_eq!(info.bios, None);
        }
    }

    #[test]
    fn a_table_without_type_1_has_no_system() {
        let table = vec![127, 4, 0, 0, 0, 0];
        let raw = RawSmbios {
            entry_point: sm3_entry_point(table.len() as u32),
            table,
        };
        let info = parse(&raw).unwrap();
        assert_eq!(info.system, None);
        assert!(info.processors.is_empty());
    }

    #[test]
    fn extended_memory_size_is_used() {
        // Type 17, SMBIOS 2.7 layout (0x22 bytes): size 0x7FFF, extended size 64 GiB.
        let mut t17 = vec![0u8; 0x22];
        t17[0] = 17;
        t17[1] = 0x22;
        t17[0x0C..0x0E].copy_from_slice(&0x7FFFu16.to_le_bytes());
        t17[0x10] = 1; // device locator: string 1
        t17[0x12] = 0x1A; // DDR4
        t17[0x15..0x17].copy_from_slice(&3200u16.to_le_bytes());
        t17[0x1C..0x20].copy_from_slice(&(64u32 * 1024).to_le_bytes());
        let mut table = t17;
        table.extend_from_slice(b"DIMM_A1\0\0");
        // An empty slot, skipped.
        let mut empty = vec![0u8; 0x22];
        empty[0] = 17;
        empty[1] = 0x22;
        table.extend_from_slice(&empty);
        table.extend_from_slice(&[0, 0]);
        table.extend_from_slice(&[127, 4, 0, 0, 0, 0]);
        let raw = RawSmbios {
            entry_point: sm3_entry_point(table.len() as u32),
            table,
        };
        let info = parse(&raw).unwrap();
        assert_eq!(
            info.memory_modules,
            vec![MemoryModule {
                locator: "DIMM_A1".into(),
                size_bytes: 64 * 1024 * MIB,
                memory_type: "DDR4".into(),
                speed_mts: 3200,
                ..Default::default()
            }]
        );
    }
}
