#!/usr/bin/env bash
# Scale-out on one machine: Kafka → MySQL (bench/kafka-to-mysql-workers.yaml, a `worker:` group)
# with one worker against two workers started together, in BENCH_ROUNDS (default 3)
# interleaved rounds, on >= ROWS rows of BTC-USD in topic `bench-sluice` (10 partitions, broker of scripts/broker.sh,
# with SQLite storage: tansu 0.6's memory storage skipped records when a consumer started inside
# a batch, which a partition handed over between workers does). Each run reads the topic as a new group (`--once`: a worker ends once its
# partitions are read, after twice the session timeout if it does not own them all). Prints
# whole-run rates, CPU seconds (user+sys of every worker) and the ratio of two workers to one.
#   bench/workers.sh [ROWS]      (default 1000000; BENCH_SESSION: the group's session timeout, 10s)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
kport=${BENCH_PORT:-19092}
mport=${BENCH_MYSQL_PORT:-13306}
export BENCH_KAFKA=127.0.0.1:$kport BENCH_MYSQL_PORT=$mport

cargo build --release --quiet --bin sluice
scripts/broker.sh install
bench_csv "$rows"
trap 'stop_services "$kport" "$mport"' EXIT
rm -f "${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}/bench-workers.db"
fresh_broker "$kport" "sqlite://bench-workers.db"
fresh_mariadb "$mport"
rm -rf "$work/state"
target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state" 2>/dev/null

one_rs=() two_rs=() one_cpus=() two_cpus=() ratios=()
for round in $(seq "$rounds"); do
  sql "DROP TABLE IF EXISTS bench_one"
  BENCH_NAME=bench-one-$round BENCH_TABLE=bench_one \
    measure target/release/sluice run --once --listen none bench/kafka-to-mysql-workers.yaml --state-dir "$work/state-1a"
  one_rs+=("$(rate "$secs")"); one_cpus+=("$cpu")
  written=$(sql "SELECT COUNT(*) FROM bench_one")
  [ "$written" -ge "$n" ] || { echo "one worker wrote $written of $n rows" >&2; exit 1; }
  sql "DROP TABLE IF EXISTS bench_two"
  export BENCH_NAME=bench-two-$round BENCH_TABLE=bench_two
  measure bash -c '
    target/release/sluice run --once --listen none bench/kafka-to-mysql-workers.yaml --state-dir "$0/state-2a" & a=$!
    target/release/sluice run --once --listen none bench/kafka-to-mysql-workers.yaml --state-dir "$0/state-2b" & b=$!
    wait $a && wait $b' "$work"
  unset BENCH_NAME BENCH_TABLE
  two_rs+=("$(rate "$secs")"); two_cpus+=("$cpu")
  written=$(sql "SELECT COUNT(*) FROM bench_two")
  distinct=$(sql "SELECT COUNT(DISTINCT Date) FROM bench_two")
  [ "$written" -ge "$n" ] || { echo "two workers wrote $written of $n rows" >&2; exit 1; }
  ratios+=("$(python3 -c "print(${two_rs[-1]} / ${one_rs[-1]})")")
  echo "round $round: one worker ${one_rs[-1]}/s (cpu ${one_cpus[-1]} s), two workers ${two_rs[-1]}/s (cpu ${two_cpus[-1]} s, $((written - n)) rows written twice)" >&2
done

cat <<TABLE

$n rows of BTC-USD in topic bench-sluice (10 partitions, nisshi 0.8.1 SQLite storage), MariaDB $(sql "SELECT VERSION()"), $(nproc) cores.
Whole runs (start, group join, reading, storing, exit), medians of $rounds interleaved rounds.

| run | rows/s (whole run) | CPU seconds (all workers) | vs one worker |
|---|---|---|---|
| one worker | $(median "${one_rs[@]}") [$(range "${one_rs[@]}")] | $(median "${one_cpus[@]}") | 1.00× |
| two workers | $(median "${two_rs[@]}") [$(range "${two_rs[@]}")] | $(median "${two_cpus[@]}") | $(median_ratio "${ratios[@]}") |
TABLE
