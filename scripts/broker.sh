#!/usr/bin/env bash
# Starts or stops the test Kafka broker on loopback, building it first if it is missing.
#   scripts/broker.sh start [PORT] [STORAGE]   # default 9092, memory://nisshi/ ; prints nothing on success
#   scripts/broker.sh stop [PORT]
#   scripts/broker.sh install
#
# The broker is nisshi 0.8.1 (Kafka-compatible, Apache-2.0; the project was called tansu up to
# 0.6). Its group coordinator is Kafka's: a JoinGroup waits for every member to rejoin (up to the
# rebalance timeout) and a member that stops heartbeating is evicted after its session timeout.
# tansu 0.6 did neither, which kept worker groups from being tested against a dead worker.
set -euo pipefail
cmd=${1:?usage: broker.sh start|stop|install [PORT] [STORAGE]}
port=${2:-9092}
storage=${3:-memory://nisshi/}
state=${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}
mkdir -p "$state"
pidfile="$state/broker-$port.pid"

install() {
  if ! command -v nisshi >/dev/null 2>&1; then
    echo "building nisshi 0.8.1 from crates.io (once, ~12 min)…" >&2
    # nisshi's lock file pins rama 0.4.0, which declares rust-version 1.96 but builds on 1.95,
    # the toolchain of these machines: --ignore-rust-version lets cargo try (measured: it builds).
    cargo install nisshi --version 0.8.1 --locked --ignore-rust-version >&2
  fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$cmd" in
  install) install ;;
  start)
    install
    if listening; then echo "port $port is already in use" >&2; exit 1; fi
    url="tcp://127.0.0.1:$port"
    (cd "$state" && exec nisshi broker --listener-url "$url" --advertised-listener-url "$url" \
      --storage-engine "$storage" >"$state/broker-$port.log" 2>&1) &
    echo $! >"$pidfile"
    for _ in $(seq 200); do listening && exit 0; sleep 0.05; done
    echo "nisshi did not start; see $state/broker-$port.log" >&2; exit 1 ;;
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
