#!/usr/bin/env bash
# Builds the static agent (musl, profile `agent`) and prints its path, size and linkage.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p siderite-agent --profile agent --target x86_64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/agent/siderite-agent
echo "$bin: $(stat -c %s "$bin") bytes"
file "$bin"
