//! Network boot services: what a machine talks to before the agent runs.
pub mod assets;
pub mod dhcp;
pub mod ipxe;
pub mod service;
pub mod storm;
pub mod tftp;
pub mod tftp_bench;
