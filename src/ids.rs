//! Typed identities.
//!
//! A machine's SMBIOS UUID is a claim, not an identity: firmware ships all-zero, all-one
//! and vendor placeholder values, and cloned boards share one. The server always keys a
//! machine by a [`ServerId`] it owns; it adopts the SMBIOS UUID only when it is usable.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("empty UUID")]
    Empty,
    #[error("invalid UUID {0:?}")]
    Invalid(String),
    #[error("invalid server ID {0:?}: expected a UUID")]
    InvalidServerId(String),
}

/// The name of a Server resource; always a lowercase hyphenated UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(uuid::Uuid);

impl ServerId {
    /// A fresh identity issued by the server.
    pub fn issue() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn from_smbios(uuid: SmbiosUuid) -> Self {
        Self(uuid.0)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for ServerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s.trim())
            .map(Self)
            .map_err(|_| IdError::InvalidServerId(s.to_string()))
    }
}

/// A UUID read from SMBIOS type 1, usable or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SmbiosUuid(uuid::Uuid);

/// Whether an SMBIOS UUID can identify a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidVerdict {
    Usable,
    AllZeros,
    AllOnes,
    /// A value known to be burned into many boards by a firmware vendor.
    KnownPlaceholder,
}

impl UuidVerdict {
    pub fn reason(self) -> &'static str {
        match self {
            UuidVerdict::Usable => "usable",
            UuidVerdict::AllZeros => "SMBIOS UUID is all zeros",
            UuidVerdict::AllOnes => "SMBIOS UUID is all ones (not set)",
            UuidVerdict::KnownPlaceholder => "SMBIOS UUID is a known vendor placeholder",
        }
    }
}

/// Placeholders seen in the field on many boards at once (AMI/Supermicro defaults,
/// "To Be Filled By O.E.M." boards).
const PLACEHOLDERS: &[&str] = &[
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    "12345678-1234-5678-90ab-cddeefaabbcc",
    "01234567-8901-2345-6789-012345678901",
    "4c4c4544-0000-0000-0000-000000000000",
];

impl SmbiosUuid {
    pub fn verdict(&self) -> UuidVerdict {
        if self.0.is_nil() {
            UuidVerdict::AllZeros
        } else if self.0.as_bytes().iter().all(|b| *b == 0xff) {
            UuidVerdict::AllOnes
        } else if PLACEHOLDERS
            .iter()
            .any(|p| uuid::Uuid::parse_str(p).is_ok_and(|u| u == self.0))
        {
            UuidVerdict::KnownPlaceholder
        } else {
            UuidVerdict::Usable
        }
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for SmbiosUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SmbiosUuid {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(IdError::Empty);
        }
        uuid::Uuid::try_parse(s.trim())
            .map(Self)
            .map_err(|_| IdError::Invalid(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let v = |s: &str| s.parse::<SmbiosUuid>().unwrap().verdict();
        assert_eq!(
            v("00000000-0000-0000-0000-000000000000"),
            UuidVerdict::AllZeros
        );
        assert_eq!(
            v("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
            UuidVerdict::AllOnes
        );
        assert_eq!(
            v("03000200-0400-0500-0006-000700080009"),
            UuidVerdict::KnownPlaceholder
        );
        assert_eq!(
            v("5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e"),
            UuidVerdict::Usable
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!("".parse::<SmbiosUuid>(), Err(IdError::Empty));
        assert!(matches!(
            "nope".parse::<SmbiosUuid>(),
            Err(IdError::Invalid(_))
        ));
        assert!("x".parse::<ServerId>().is_err());
        let id: ServerId = "5C1A3D4E-8F2B-4A6C-9D0E-1F2A3B4C5D6E".parse().unwrap();
        assert_eq!(id.to_string(), "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e");
    }
}
