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
