#!/usr/bin/env bash
# Runs every test: installs what is missing (Debian), builds the binaries the end-to-end
# tests start (server, agent, static agent), then the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SIDERITE_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup-debian.sh
fi
export CARGO_TERM_COLOR=never
cargo fmt --all --check
cargo build --workspace --bins
bash scripts/build-agent.sh
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
# Every fuzz target (DHCP, TFTP, SMBIOS, command line, register) for a bounded time; a
# crash fails the run and names the input to keep in fuzz/regressions/.
bash scripts/fuzz.sh "${SIDERITE_FUZZ_SECONDS:-30}" 2>&1 | tee target/fuzz-output.txt
# The wipe on a real block device (a loop device) needs root: opt-in by name locally,
# always run here (CI runs as root). It fails, never skips, when loop devices are missing.
if [ "$(id -u)" = 0 ]; then
  cargo test -p siderite-agent --lib wipe::tests::root_ -- --ignored 2>&1 | tee -a target/test-output.txt
fi
