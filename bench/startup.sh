#!/usr/bin/env bash
# Start-up against a long-lived pipeline: the time `sluice run --once` takes, start to exit, for
# a pipeline whose source has nothing left to send, after UPDATES source-offset updates were
# stored by earlier runs (default 100,000: written straight to the offsets topic, in the form
# sluice stores them), against the same pipeline with none stored. Start-up reads offsets back
# from a marker it writes, so the time must not grow with the updates. tansu 0.6, memory and
# SQLite storage; medians of interleaved rounds.
#   bench/startup.sh [UPDATES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
updates=${1:-100000}
rounds=${2:-3}
source bench/lib.sh
port=${BENCH_STARTUP_PORT:-19392}
export BENCH_KAFKA=127.0.0.1:$port
python3 -c "import confluent_kafka" 2>/dev/null || pip install --quiet confluent-kafka
cargo build --release --quiet --bin sluice
scripts/broker.sh install
trap 'scripts/broker.sh stop "$port"' EXIT

# A pipeline whose datagen source has already sent its one record: a run is all start-up.
pipeline() {
  cat > "$work/startup-$1.yaml" <<YAML
name: $1
kafka: { bootstrap_servers: "$BENCH_KAFKA" }
topics: { startup-$1: { partitions: 1 } }
sources:
  gen: { type: datagen, topic: startup-$1, count: 1 }
YAML
  echo "$work/startup-$1.yaml"
}
timed() { # timed FILE: seconds from start to exit of `sluice run --once`
  local t0; t0=$(date +%s.%N)
  target/release/sluice run --once "$1" --state-dir "$work/startup-state" 2>/dev/null
  python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')"
}

rows=()
for storage in memory://nisshi/ sqlite://startup.db; do
  scripts/broker.sh stop "$port"
  rm -f "${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}"/startup.db*
  scripts/broker.sh start "$port" "$storage"
  fresh=$(pipeline fresh); aged=$(pipeline aged)
  target/release/sluice run --once "$fresh" --state-dir "$work/startup-state" 2>/dev/null
  target/release/sluice run --once "$aged" --state-dir "$work/startup-state" 2>/dev/null
  # UPDATES snapshots of pipeline `aged`, as its source would have stored them, then a marker.
  python3 - "$BENCH_KAFKA" "$updates" <<'PY'
import json, sys
from confluent_kafka import Producer
bootstrap, updates = sys.argv[1], int(sys.argv[2])
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
key = json.dumps(["aged"]).encode()
for i in range(updates):
    p.produce("sluice-offsets", key=key, value=json.dumps({"gen": {"datagen": 1}}).encode(), partition=0)
    if i % 10000 == 0:
        p.poll(0)
p.flush(120)
PY
  fresh_s=(); aged_s=()
  for _ in $(seq "$rounds"); do
    fresh_s+=("$(timed "$fresh")"); aged_s+=("$(timed "$aged")")
  done
  rows+=("| $storage | $(median "${fresh_s[@]}") s ($(range "${fresh_s[@]}")) | $(median "${aged_s[@]}") s ($(range "${aged_s[@]}")) |")
done

cat <<TABLE

\`sluice run --once\`, start to exit, of a pipeline with nothing left to send; medians of $rounds interleaved rounds (range).

| broker storage | no stored offset updates | $updates stored offset updates |
|---|---:|---:|
$(printf '%s\n' "${rows[@]}")
TABLE
