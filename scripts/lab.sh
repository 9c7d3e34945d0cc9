#!/usr/bin/env bash
# The lab: the siderite server plus QEMU machines (TCG) that PXE-boot into the agent and
# register, all inside network namespaces on this box.
#   scripts/lab.sh up [N] [bios|uefi]   install what is needed, build, start, list servers
#   scripts/lab.sh down                 stop everything the lab started, remove what it made
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-up}
if [ "$cmd" = down ]; then
  exec target/debug/siderite lab down --dir lab/run
fi
[ "$cmd" = up ] || { echo "usage: $0 up [N] [bios|uefi] | down" >&2; exit 2; }
MACHINES=${2:-2}
FIRMWARE=${3:-bios}

if [ "$(id -u)" != 0 ]; then echo "the lab needs root (namespaces, bridges, taps); run with sudo" >&2; exit 1; fi
if [ "${SIDERITE_SKIP_SETUP:-0}" != 1 ]; then bash scripts/setup-debian.sh; fi
cargo build -p siderite-server -p siderite-initramfs --bins
bash scripts/build-agent.sh
target/debug/siderite-image build --kernel-package linux-image-amd64 --out lab/image
target/debug/siderite lab down --dir lab/run >/dev/null 2>&1 || true
target/debug/siderite lab up --machines "$MACHINES" --firmware "$FIRMWARE" --image lab/image --dir lab/run
echo
echo "Next: export SIDERITE_CONFIG=$PWD/lab/run/siderite-config.yaml; target/debug/siderite describe server <NAME>"
echo "Stop: scripts/lab.sh down"
