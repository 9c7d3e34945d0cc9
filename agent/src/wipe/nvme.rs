//! NVMe secure erase by Format NVM: whether a namespace may be formatted, and the command.
//! Pure decisions on Identify data; the admin passthrough itself is in [`super::blockdev`].
//!
//! The format keeps the namespace's current LBA format, metadata and protection settings (a
//! wipe must not change the sector size under the installer) and asks for a cryptographic
//! erase where the controller has one, else a user data erase. A controller whose format or
//! secure erase reaches every namespace (FNA bits 0/1) is refused when it has more than one
//! active namespace: only the disk the command names may be erased.

/// Admin opcodes and Identify CNS values used.
pub const OPC_IDENTIFY: u8 = 0x06;
pub const OPC_FORMAT_NVM: u8 = 0x80;
pub const CNS_NAMESPACE: u32 = 0x00;
pub const CNS_CONTROLLER: u32 = 0x01;
pub const CNS_ACTIVE_NSIDS: u32 = 0x02;
pub const IDENTIFY_LEN: usize = 4096;

/// Secure Erase Settings of Format NVM.
const SES_USER_DATA: u32 = 1;
const SES_CRYPTO: u32 = 2;

/// A Format NVM command to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatPlan {
    pub nsid: u32,
    pub cdw10: u32,
    /// For the summary: "nvme format (cryptographic erase)".
    pub method: String,
}

/// How many NSIDs an Identify active namespace list holds (zero-terminated u32s).
pub fn count_active(list: &[u8]) -> usize {
    list.chunks_exact(4)
        .take_while(|c| c != &[0, 0, 0, 0])
        .count()
}

/// The format for namespace `nsid`, from Identify Controller and Identify Namespace data and
/// the number of active namespaces; `Err(reason)` when there must be none.
pub fn plan_format(
    controller: &[u8],
    namespace: &[u8],
    active_namespaces: usize,
    nsid: u32,
) -> Result<FormatPlan, String> {
    if controller.len() < IDENTIFY_LEN || namespace.len() < IDENTIFY_LEN {
        return Err("short Identify data".into());
    }
    let oacs = u16::from_le_bytes([controller[256], controller[257]]);
    if oacs & (1 << 1) == 0 {
        return Err("the controller does not support Format NVM".into());
    }
    let fna = controller[524];
    let formats_all = fna & 0b01 != 0;
    let erases_all = fna & 0b10 != 0;
    let crypto = fna & 0b100 != 0;
    if (formats_all || erases_all) && active_namespaces > 1 {
        return Err(format!(
            "a format would erase all {active_namespaces} namespaces of the controller, \
             not only this one"
        ));
    }
    if nsid == 0 || nsid == u32::MAX {
        return Err(format!("not a single namespace (nsid {nsid:#x})"));
    }
    // FLBAS: format index bits 3:0 (and 6:5 above 16 formats), bit 4 metadata at the end of
    // each LBA. DPS: protection type bits 2:0, bit 3 protection information first.
    let (flbas, dps) = (u32::from(namespace[26]), u32::from(namespace[29]));
    let lbaf = flbas & 0xF;
    let lbaf_upper = (flbas >> 5) & 0x3;
    let mset = (flbas >> 4) & 1;
    let (pi, pil) = (dps & 0x7, (dps >> 3) & 1);
    let ses = if crypto { SES_CRYPTO } else { SES_USER_DATA };
    let cdw10 = lbaf | mset << 4 | pi << 5 | pil << 8 | ses << 9 | lbaf_upper << 12;
    Ok(FormatPlan {
        nsid,
        cdw10,
        method: if crypto {
            "nvme format (cryptographic erase)".into()
        } else {
            "nvme format (user data erase)".into()
        },
    })
}

/// Why an NVMe command failed, from the status the ioctl returns (Status Code Type and
/// Status Code of the completion, plus the DNR/More bits).
pub fn status_text(status: u32) -> String {
    let (sct, sc) = ((status >> 8) & 0x7, status & 0xFF);
    let what = match (sct, sc) {
        (0, 0x01) => "invalid opcode",
        (0, 0x02) => "invalid field",
        (0, 0x0B) => "invalid namespace or format",
        (0, 0x1D) => "sanitize in progress",
        (1, 0x0A) => "invalid format",
        (1, 0x15) => "namespace is write protected",
        (1, 0x0D) => "feature not changeable",
        _ => "command failed",
    };
    format!("NVMe status {status:#x}: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(oacs: u16, fna: u8) -> Vec<u8> {
        let mut c = vec![0u8; IDENTIFY_LEN];
        c[256..258].copy_from_slice(&oacs.to_le_bytes());
        c[524] = fna;
        c
    }

    fn namespace(flbas: u8, dps: u8) -> Vec<u8> {
        let mut n = vec![0u8; IDENTIFY_LEN];
        n[26] = flbas;
        n[29] = dps;
        n
    }

    #[test]
    fn crypto_erase_keeps_the_lba_format() {
        // Format 1 (say 4 KiB), no metadata, no protection, crypto erase supported.
        let p = plan_format(&controller(0b10, 0b100), &namespace(1, 0), 1, 1).unwrap();
        assert_eq!(p.cdw10, 1 | 2 << 9);
        assert_eq!(p.nsid, 1);
        assert_eq!(p.method, "nvme format (cryptographic erase)");
    }

    #[test]
    fn user_data_erase_with_metadata_and_protection() {
        // Format 18 (upper bits 01, lower 0010), extended metadata, PI type 1 first.
        let flbas = 0b0011_0010;
        let p = plan_format(&controller(0b10, 0), &namespace(flbas, 0b1001), 1, 3).unwrap();
        assert_eq!(p.cdw10, 2 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 12);
        assert_eq!(p.method, "nvme format (user data erase)");
    }

    #[test]
    fn refusals() {
        let ns = namespace(0, 0);
        assert_eq!(
            plan_format(&controller(0, 0b100), &ns, 1, 1).unwrap_err(),
            "the controller does not support Format NVM"
        );
        assert_eq!(
            plan_format(&controller(0b10, 0b001), &ns, 2, 1).unwrap_err(),
            "a format would erase all 2 namespaces of the controller, not only this one"
        );
        assert!(plan_format(&controller(0b10, 0b010), &ns, 3, 1).is_err());
        // Per-namespace format on a multi-namespace controller is fine.
        assert!(plan_format(&controller(0b10, 0), &ns, 3, 2).is_ok());
        assert!(plan_format(&controller(0b10, 0), &ns, 1, 0).is_err());
        assert!(plan_format(&controller(0b10, 0), &ns[..10], 1, 1).is_err());
    }

    #[test]
    fn active_namespace_lists() {
        let mut l = vec![0u8; IDENTIFY_LEN];
        assert_eq!(count_active(&l), 0);
        l[..8].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(count_active(&l), 2);
    }

    #[test]
    fn statuses() {
        assert_eq!(status_text(0x4002), "NVMe status 0x4002: invalid field");
        assert_eq!(status_text(0x10A), "NVMe status 0x10a: invalid format");
    }
}
