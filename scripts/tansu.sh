#!/usr/bin/env bash
# Starts or stops a tansu broker (Kafka protocol) on loopback, building it first if it is missing.
#   scripts/tansu.sh start [PORT] [STORAGE]   # default 9092, memory://tansu/ ; prints nothing on success
#   scripts/tansu.sh stop [PORT]
#   scripts/tansu.sh install
set -euo pipefail
cmd=${1:?usage: tansu.sh start|stop|install [PORT] [STORAGE]}
port=${2:-9092}
storage=${3:-memory://tansu/}
state=${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}
mkdir -p "$state"
pidfile="$state/tansu-$port.pid"

install() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "building tansu 0.6.0 from crates.io (once, ~8 min)…" >&2
    cargo install tansu --version 0.6.0 --locked --features libsql,dynostore >&2
  fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$cmd" in
  install) install ;;
  start)
    install
    if listening; then echo "port $port is already in use" >&2; exit 1; fi
    url="tcp://127.0.0.1:$port"
    (cd "$state" && exec tansu broker --listener-url "$url" --advertised-listener-url "$url" \
      --storage-engine "$storage" >"$state/tansu-$port.log" 2>&1) &
    echo $! >"$pidfile"
    for _ in $(seq 200); do listening && exit 0; sleep 0.05; done
    echo "tansu did not start; see $state/tansu-$port.log" >&2; exit 1 ;;
  stop)
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
    for _ in $(seq 100); do listening || exit 0; sleep 0.05; done ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
