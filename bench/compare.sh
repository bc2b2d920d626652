#!/usr/bin/env bash
# Two sluice binaries on the same jobs, interleaved, ROUNDS times each (default 3), on ROWS rows
# (default 1,000,000): is a change faster or slower, whatever the machine is doing meanwhile?
#   bench/compare.sh OLD_BIN NEW_BIN [ROWS]
# Jobs: CSV → Kafka, CSV → Kafka → file, Kafka → MySQL (--once), Kafka → Elasticsearch
# (--once, the in-repo stand-in). Each Kafka job on a fresh broker (memory storage). Prints, per
# job, the median active rate (sluice's own summary), peak RSS and CPU seconds of each binary,
# and the median of the per-round ratios new/old.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/compare.sh OLD_BIN NEW_BIN [ROWS]}
new=${2:?usage: bench/compare.sh OLD_BIN NEW_BIN [ROWS]}
rows=${3:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
port=${BENCH_PORT:-19092}
mport=${BENCH_MYSQL_PORT:-13306}
export BENCH_KAFKA=127.0.0.1:$port BENCH_MYSQL_PORT=$mport BENCH_OUT=$work/out.jsonl

cargo build --release --quiet --example es_mock
scripts/broker.sh install
bench_csv "$rows"
trap 'stop_services "$port" "$mport"' EXIT
fresh_mariadb "$mport"
start_es_mock

declare -A rate rss cpu
# job NAME BIN: runs one job with BIN; records its active rate, peak RSS, CPU seconds.
job() {
  local name=$1 bin=$2 component
  rm -rf "$work/state" "$BENCH_OUT"
  case $name in
    csv-kafka)
      fresh_broker "$port"
      measure "$bin" run bench/csv-to-kafka.yaml --state-dir "$work/state"
      component=bench-produce/rows ;;
    csv-kafka-file)
      fresh_broker "$port"
      measure "$bin" run bench/csv-to-kafka-to-file.yaml --state-dir "$work/state"
      component=bench-through-kafka/archive ;;
    kafka-mysql)
      fresh_broker "$port"
      "$bin" run bench/csv-to-kafka.yaml --state-dir "$work/state" 2>/dev/null
      sql "DROP TABLE IF EXISTS bench_sluice; DROP TABLE IF EXISTS sluice_offsets"
      measure "$bin" run --once bench/kafka-to-mysql.yaml --state-dir "$work/state"
      component=bench-mysql/rows ;;
    kafka-es)
      fresh_broker "$port"
      "$bin" run bench/csv-to-kafka.yaml --state-dir "$work/state" 2>/dev/null
      curl -s -X DELETE "$BENCH_ES_URL/bench" > /dev/null || true
      measure "$bin" run --once bench/kafka-to-elasticsearch.yaml --state-dir "$work/state"
      component=bench-es/docs ;;
  esac
  rate[$name/$bin]="${rate[$name/$bin]:-} $(summary_rate "$component")"
  rss[$name/$bin]="${rss[$name/$bin]:-} $rss"
  cpu[$name/$bin]="${cpu[$name/$bin]:-} $cpu"
}

jobs=(csv-kafka csv-kafka-file kafka-mysql kafka-es)
ratios=()
declare -A per_round
for round in $(seq "$rounds"); do
  for name in "${jobs[@]}"; do
    # Alternate which binary goes first.
    if [ $((round % 2)) -eq 1 ]; then order=("$old" "$new"); else order=("$new" "$old"); fi
    for bin in "${order[@]}"; do job "$name" "$bin"; done
    old_rate=$(echo "${rate[$name/$old]}" | awk '{print $NF}')
    new_rate=$(echo "${rate[$name/$new]}" | awk '{print $NF}')
    per_round[$name]="${per_round[$name]:-} $(python3 -c "print($new_rate / max($old_rate, 1))")"
    echo "round $round $name: old $old_rate/s, new $new_rate/s" >&2
  done
done

cat <<TABLE

$n rows of BTC-USD, nisshi 0.8.1 memory storage, MariaDB, the Elasticsearch stand-in, $(nproc) cores; $rounds interleaved rounds.
old: $old
new: $new
Rates are active rates from sluice's summary (records out over the component's time from its
first record to its end); medians [ranges]; "new/old" is the median of each round's ratio.

| job | old rows/s | new rows/s | new/old | old peak RSS | new peak RSS | old CPU s | new CPU s |
|---|---:|---:|---:|---:|---:|---:|---:|
TABLE
for name in "${jobs[@]}"; do
  # shellcheck disable=SC2086
  printf '| %s | %s [%s] | %s [%s] | %s | %s | %s | %s | %s |\n' "$name" \
    "$(median ${rate[$name/$old]})" "$(range ${rate[$name/$old]})" \
    "$(median ${rate[$name/$new]})" "$(range ${rate[$name/$new]})" \
    "$(median_ratio ${per_round[$name]})" \
    "$(mib "$(median ${rss[$name/$old]})")" "$(mib "$(median ${rss[$name/$new]})")" \
    "$(median ${cpu[$name/$old]})" "$(median ${cpu[$name/$new]})"
done
