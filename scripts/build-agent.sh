#!/usr/bin/env bash
# Builds the static agent and the Talos stand-in of the e2e tests (musl, profile `agent`)
# and prints their paths, sizes and linkage.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p siderite-agent -p siderite-standin --profile agent --target x86_64-unknown-linux-musl
for name in siderite-agent siderite-standin; do
  bin=target/x86_64-unknown-linux-musl/agent/$name
  echo "$bin: $(stat -c %s "$bin") bytes"
  file "$bin"
done
