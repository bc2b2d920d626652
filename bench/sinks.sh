#!/usr/bin/env bash
# Sink benchmarks on >= 1,000,000 rows of BTC-USD written to topic `bench-sluice` (broker of scripts/broker.sh,
# memory storage) by sluice's csv source:
#   Kafka → MySQL (MariaDB on loopback) with `sluice run --once`, in BENCH_ROUNDS (default 3)
#   interleaved rounds against its like-for-like baseline -- the same rows inserted by hand with
#   mysql_async, the same multi-row statements and transaction size, no Kafka
#   (examples/mysql_insert_loop.rs) -- and its load path (`load_data` with `exactly_once`)
#   against LOAD DATA LOCAL INFILE of the CSV file; once: the broker's raw consume rate of the
#   topic and the seeds' way (Python kafka-python consumer + pymysql executemany);
#   Kafka → Elasticsearch against the in-repo stand-in (examples/es_mock.rs), with sluice's CPU
#   time per document (the whole process: consuming, decoding, building and sending `_bulk`).
#   bench/sinks.sh [ROWS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
kport=${BENCH_PORT:-19092}
mport=${BENCH_MYSQL_PORT:-13306}
export BENCH_KAFKA=127.0.0.1:$kport BENCH_MYSQL_PORT=$mport

python3 -c "import kafka, confluent_kafka, pymysql" 2>/dev/null || pip install --quiet kafka-python confluent-kafka pymysql
cargo build --release --quiet --bin sluice --example es_mock --example mysql_insert_loop
scripts/broker.sh install
bench_csv "$rows"

trap 'stop_services "$kport" "$mport"' EXIT
fresh_broker "$kport"
fresh_mariadb "$mport"

rm -rf "$work/state"
target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state" 2>/dev/null

measure python3 bench/producers.py consume "$BENCH_CSV" "$BENCH_KAFKA" bench-sluice
read -r _ consume_s < "$work/last.out"; consume_r=$(rate "$consume_s")
measure python3 bench/sink_baselines.py seeds "$BENCH_KAFKA" "$mport" "$n"
read -r _ seeds_s < "$work/last.out"; seeds_r=$(rate "$seeds_s")

# Interleaved rounds: LOAD DATA of the file, the by-hand INSERT loop, sluice's statements,
# sluice's load path (exactly once). Each sluice run reads the topic as a new group.
load_rs=() hand_rs=() my_as=() my_ss=() my_rss=0 ld_as=() ld_rss=0 vs_hand=() vs_load=()
for round in $(seq "$rounds"); do
  measure python3 bench/sink_baselines.py loaddata "$BENCH_CSV" "$mport"
  read -r _ load_s < "$work/last.out"; load_rs+=("$(rate "$load_s")")
  measure target/release/examples/mysql_insert_loop "$BENCH_CSV" "$mport" bench_hand 5000
  read -r _ hand_s < "$work/last.out"; hand_rs+=("$(rate "$hand_s")")
  sql "DROP TABLE IF EXISTS bench_sluice"
  BENCH_NAME=bench-mysql-$round measure target/release/sluice run --once bench/kafka-to-mysql.yaml --state-dir "$work/state"
  my_ss+=("$secs"); my_as+=("$(summary_rate "bench-mysql-$round/rows")"); my_rss=$(( rss > my_rss ? rss : my_rss ))
  written=$(sql "SELECT COUNT(*) FROM bench_sluice")
  [ "$written" -eq "$n" ] || { echo "Kafka → MySQL wrote $written of $n rows" >&2; exit 1; }
  sql "DROP TABLE IF EXISTS bench_sluice_load"
  BENCH_NAME=bench-load-$round BENCH_TABLE=bench_sluice_load BENCH_LOAD_DATA=true BENCH_EXACTLY_ONCE=true \
    measure target/release/sluice run --once bench/kafka-to-mysql.yaml --state-dir "$work/state"
  ld_as+=("$(summary_rate "bench-load-$round/rows")"); ld_rss=$(( rss > ld_rss ? rss : ld_rss ))
  written=$(sql "SELECT COUNT(*) FROM bench_sluice_load")
  [ "$written" -eq "$n" ] || { echo "Kafka → MySQL (load_data) wrote $written of $n rows" >&2; exit 1; }
  vs_hand+=("$(python3 -c "print(${my_as[-1]} / ${hand_rs[-1]})")")
  vs_load+=("$(python3 -c "print(${ld_as[-1]} / ${load_rs[-1]})")")
  echo "round $round: LOAD DATA ${load_rs[-1]}/s, by hand ${hand_rs[-1]}/s, sluice ${my_as[-1]}/s, sluice load_data ${ld_as[-1]}/s" >&2
done
my_s=$(median "${my_ss[@]}"); my_r=$(rate "$my_s"); my_a=$(median "${my_as[@]}")
load_r=$(median "${load_rs[@]}")

start_es_mock
measure target/release/sluice run --once bench/kafka-to-elasticsearch.yaml --state-dir "$work/state"
es_s=$secs; es_r=$(rate "$secs"); es_rss=$rss; es_cpu=$cpu; es_a=$(summary_rate bench-es/docs)
indexed=$(curl -s "$BENCH_ES_URL/bench/_count" | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])")
[ "$indexed" -eq "$n" ] || { echo "Kafka → Elasticsearch indexed $indexed of $n documents" >&2; exit 1; }

lower=$(python3 -c "print(min($consume_r, $load_r))")
cat <<TABLE

$n rows of BTC-USD in topic bench-sluice (10 partitions, nisshi 0.8.1 memory storage), MariaDB $(sql "SELECT VERSION()"), $(nproc) cores.
The ceilings time only their work (the read loop; the LOAD DATA statement); "active" is sluice's
own summary: rows out over the sink's time from its first record to its end (whole run: the
process from start to exit, connecting and reading committed offsets included). The seeds' way
is timed as a whole process; it has no start-up to speak of next to its 40 s.

| run | seconds (whole run) | rows/s (whole run) | rows/s (active) | vs like-for-like baseline (active, median of rounds) | vs lower ceiling (active) | vs seeds' Python | peak RSS |
|---|---:|---:|---:|---:|---:|---:|---:|
| ceiling: raw consume of the topic (confluent-kafka, nothing done; fetch.min.bytes 1 MiB, which doubles the broker's rate) | | | $consume_r | | | | |
| ceiling: LOAD DATA LOCAL INFILE of the CSV file | | | $load_r [$(range "${load_rs[@]}")] | | | | |
| baseline: by hand, mysql_async multi-row INSERT, 5,000 rows per statement and transaction, from the CSV (examples/mysql_insert_loop.rs, no Kafka) | | | $(median "${hand_rs[@]}") [$(range "${hand_rs[@]}")] | 1.00× | | | |
| baseline: seeds' way (kafka-python consumer + pymysql executemany) | $(printf %.2f "$seeds_s") | $seeds_r | | | $(ratio "$seeds_r" "$lower") | 1.00× | |
| **sluice Kafka → MySQL** (multi-row INSERT, a transaction per 5,000) | $my_s | $my_r | $my_a [$(range "${my_as[@]}")] | **$(median_ratio "${vs_hand[@]}")** vs by hand | $(ratio "$my_a" "$lower") | $(ratio "$my_r" "$seeds_r") whole run, $(ratio "$my_a" "$seeds_r") active | $(mib "$my_rss") |
| **sluice Kafka → MySQL, \`load_data\` + \`exactly_once\`** (LOAD DATA LOCAL INFILE from memory, offsets in the same transaction) | | | $(median "${ld_as[@]}") [$(range "${ld_as[@]}")] | **$(median_ratio "${vs_load[@]}")** vs LOAD DATA of the file | $(ratio "$(median "${ld_as[@]}")" "$lower") | | $(mib "$ld_rss") |
| sluice Kafka → Elasticsearch (in-repo stand-in) | $es_s | $es_r | $es_a | | | $(mib "$es_rss") |

sluice CPU per Elasticsearch document (whole process, user+sys): $(python3 -c "print(f'{$es_cpu / $n * 1e6:.1f} µs')").
TABLE
