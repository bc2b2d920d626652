#!/usr/bin/env bash
# HTTP source benchmark: the `http` source paging through RECORDS records (1,000 a page, next-
# token pagination) served by the tests' API stand-in (examples/api_server.rs) into a 10-partition
# topic on the broker, against the same job written by hand on reqwest + rdkafka
# (examples/http_to_kafka.rs), in BENCH_ROUNDS (default 3) interleaved rounds; medians.
#   bench/http.sh [RECORDS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
kport=${BENCH_PORT:-19092}
export BENCH_KAFKA=127.0.0.1:$kport

cargo build --release --quiet --bin sluice --example api_server --example http_to_kafka
scripts/broker.sh install
api_pid=""
trap 'scripts/broker.sh stop "$kport"; [ -z "$api_pid" ] || kill "$api_pid" 2>/dev/null || true' EXIT
fresh_broker "$kport"
target/release/examples/api_server "$n" 1000 > "$work/api.url" & api_pid=$!
for _ in $(seq 100); do [ -s "$work/api.url" ] && break; sleep 0.1; done
export BENCH_API=$(cat "$work/api.url")
rm -rf "$work/state"
# The topic exists before the hand-written loop sends to it.
BENCH_NAME=bench-http-warmup target/release/sluice run --once bench/http-to-kafka.yaml --state-dir "$work/state" 2>/dev/null

hand_rs=() sl_rs=() ratios=() sl_rss=0 hand_rss=0
for round in $(seq "$rounds"); do
  measure target/release/examples/http_to_kafka "$BENCH_API" "$BENCH_KAFKA" bench-http
  read -r got hand_s < "$work/last.out"
  [ "$got" -eq "$n" ] || { echo "by hand sent $got of $n" >&2; exit 1; }
  hand_rs+=("$(rate "$hand_s")"); hand_rss=$(( rss > hand_rss ? rss : hand_rss ))
  BENCH_NAME=bench-http-$round-$$ measure target/release/sluice run --once bench/http-to-kafka.yaml --state-dir "$work/state"
  sl_rs+=("$(summary_rate "bench-http-$round-$$/items")"); sl_rss=$(( rss > sl_rss ? rss : sl_rss ))
  ratios+=("$(python3 -c "print(${sl_rs[-1]} / ${hand_rs[-1]})")")
  echo "round $round: by hand ${hand_rs[-1]}/s, sluice ${sl_rs[-1]}/s" >&2
done

cat <<TABLE

$n records in pages of 1,000 from the local API stand-in into topic bench-http (10 partitions, nisshi 0.8.1 memory storage), $(nproc) cores.
"active" is sluice's own summary (records out over the source's time from its first record to its end);
the hand-written loop times its first request to its last acknowledgement.

| run | records/s (median) [range] | vs by hand (median of rounds) | peak RSS |
|---|---:|---:|---:|
| by hand: reqwest + rdkafka, page after page (examples/http_to_kafka.rs) | $(median "${hand_rs[@]}") [$(range "${hand_rs[@]}")] | 1.00× | $(mib "$hand_rss") |
| **sluice \`http\` source → Kafka** (active) | $(median "${sl_rs[@]}") [$(range "${sl_rs[@]}")] | **$(median_ratio "${ratios[@]}")** | $(mib "$sl_rss") |
TABLE
