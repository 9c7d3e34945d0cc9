//! The boot image builder (newc cpio of the static agent and the kernel modules real
//! servers need). The builder lands with the boot-image issue; today this crate only
//! holds the place the design gives it.
#![forbid(unsafe_code)]
