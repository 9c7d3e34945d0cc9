#!/usr/bin/env bash
# The lab on one box: the siderite server plus this machine's own agent registering with
# it, visible with the CLI. (QEMU machines join the lab with the network-boot work.)
#   scripts/lab.sh up     install what is needed, build, start, show `siderite get servers`
#   scripts/lab.sh down   stop everything the lab started
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${SIDERITE_LAB_DIR:-$PWD/lab}
ADDR=127.0.0.1:7070

up() {
  if [ "${SIDERITE_SKIP_SETUP:-0}" != 1 ]; then bash scripts/setup-debian.sh; fi
  cargo build --release -p siderite-server -p siderite-agent
  mkdir -p "$LAB"
  down quiet
  target/release/siderite serve --data-dir "$LAB/data" --listen "$ADDR" --http-listen 127.0.0.1:7071 \
    --addr-file "$LAB/addr" >"$LAB/server.log" 2>&1 &
  echo $! >"$LAB/server.pid"
  for _ in $(seq 100); do [ -s "$LAB/addr" ] && break; sleep 0.1; done
  [ -s "$LAB/addr" ] || { echo "server did not start; see $LAB/server.log" >&2; exit 1; }
  target/release/siderite-agent run --server "$ADDR" >"$LAB/agent.log" 2>&1 &
  echo $! >"$LAB/agent.pid"
  for _ in $(seq 100); do grep -q "session open" "$LAB/agent.log" && break; sleep 0.1; done
  echo "siderite server on $ADDR (logs: $LAB/server.log), local agent registered (logs: $LAB/agent.log)"
  echo
  target/release/siderite --server "$ADDR" get servers
  echo
  echo "Try: target/release/siderite describe server <NAME>; target/release/siderite accept <NAME>"
  echo "Stop: scripts/lab.sh down"
}

down() {
  for p in agent server; do
    if [ -f "$LAB/$p.pid" ]; then
      kill "$(cat "$LAB/$p.pid")" 2>/dev/null || true
      rm -f "$LAB/$p.pid"
    fi
  done
  rm -f "$LAB/addr"
  [ "${1:-}" = quiet ] || echo "lab stopped (state kept in $LAB/data; remove it to start afresh)"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
