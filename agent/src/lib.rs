//! siderite-agent: collects the machine's inventory, registers with the server and follows
//! its commands over one long-lived session. The same code runs as PID 1 of the boot image
//! and as a normal process on any Linux box; only `init` (later) knows about PID 1.
// `deny`, not `forbid`: wipe::blockdev allows it for the block and NVMe ioctls, and
// install::kexec for kexec_file_load.
#![deny(unsafe_code)]

pub mod commands;
pub mod config;
pub mod hw;
pub mod init;
pub mod install;
pub mod inventory;
pub mod net;
pub mod session;
pub mod wipe;
