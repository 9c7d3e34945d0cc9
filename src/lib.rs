//! siderite's contract, shared by the agent, the server and the tests: the gRPC types
//! generated from `proto/`, typed IDs and the checks that every side applies the same way.
#![forbid(unsafe_code)]

pub mod codec;
pub mod ids;
pub mod strict;
pub mod tls;

pub use ids::{IdError, ServerId, SmbiosUuid, UuidVerdict};

/// Generated protobuf and gRPC code.
pub mod proto {
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("siderite.agent.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("siderite.admin.v1");
        }
    }
    /// The compiled descriptors of every message, for strict decoding.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/siderite_descriptor.bin"));
}

/// The agent's version, sent at registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
