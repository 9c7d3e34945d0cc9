#!/usr/bin/env bash
# Installs everything siderite's build, lab and tests need on a fresh Debian 12 machine.
# Idempotent; run as root (or with sudo available). Nothing is downloaded outside apt and cargo.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

PKGS=(
  protobuf-compiler   # protoc for build.rs (PROTOC may point elsewhere)
  musl-tools          # static agent (x86_64-unknown-linux-musl)
  qemu-system-x86     # TCG guests for the boot tests and the lab
  qemu-utils          # same suite as qemu-system-x86, see E2E.md
  ovmf                # UEFI firmware
  ipxe-qemu ipxe      # PXE ROMs and undionly.kpxe / ipxe.efi
  busybox-static      # stand-in test images only, never in the agent image
  etcd-server         # distributed store tests
  dnsmasq-base        # plays the site's DHCP server in the lab and tests
  iproute2 file cpio zstd
  g++                 # libFuzzer (cargo fuzz, scripts/fuzz.sh)
)

$SUDO apt-get update -q
# Pin qemu-utils to the suite qemu-system-x86 comes from so the two never conflict.
qemu_ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
args=()
for p in "${PKGS[@]}"; do
  if [ "$p" = qemu-utils ] && [ -n "$qemu_ver" ]; then args+=("qemu-utils=$qemu_ver"); else args+=("$p"); fi
done
$SUDO apt-get install -y -q --no-install-recommends --allow-downgrades "${args[@]}"

if command -v rustup >/dev/null 2>&1; then
  rustup target add x86_64-unknown-linux-musl
else
  echo "rustup not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
