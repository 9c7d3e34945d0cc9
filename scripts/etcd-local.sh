#!/usr/bin/env bash
# A throwaway etcd cluster on loopback for benchmarks and trying --store etcd://.
#   scripts/etcd-local.sh up [1|3]   start 1 or 3 members (client ports 23791..23793), print the --store URL
#   scripts/etcd-local.sh down       stop them and remove their data
# Data lives under /dev/shm when it exists (the figures then measure etcd, not this disk).
set -euo pipefail
base=/dev/shm; [ -d "$base" ] || base=/tmp
dir="$base/siderite-etcd-local"
case "${1:-}" in
  up)
    n="${2:-3}"
    command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server (scripts/setup-debian.sh)" >&2; exit 1; }
    mkdir -p "$dir"
    cluster=""
    for i in $(seq 1 "$n"); do cluster="${cluster:+$cluster,}m$i=http://127.0.0.1:$((23800 + i))"; done
    endpoints=""
    for i in $(seq 1 "$n"); do
      etcd --name "m$i" --data-dir "$dir/m$i" \
        --listen-client-urls "http://127.0.0.1:$((23790 + i))" --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
        --listen-peer-urls "http://127.0.0.1:$((23800 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token siderite-local \
        >"$dir/m$i.log" 2>&1 &
      echo $! >"$dir/m$i.pid"
      endpoints="${endpoints:+$endpoints,}127.0.0.1:$((23790 + i))"
    done
    for _ in $(seq 1 100); do
      if curl -fsS -X POST -d '{}' "http://127.0.0.1:23791/v3/maintenance/status" 2>/dev/null | grep -q '"leader"'; then
        echo "etcd://$endpoints"; exit 0
      fi
      sleep 0.2
    done
    echo "etcd did not become healthy; logs in $dir" >&2; exit 1
    ;;
  down)
    for p in "$dir"/*.pid; do [ -e "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
    sleep 0.5; rm -rf "$dir"
    ;;
  *) echo "usage: $0 up [1|3] | down" >&2; exit 2 ;;
esac
