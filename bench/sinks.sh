#!/usr/bin/env bash
# Benchmarks of issue #3 on >= 1,000,000 rows of BTC-USD written to topic `bench-sluice`
# (tansu, memory storage) by sluice's csv source:
#   Kafka → MySQL (MariaDB on loopback) with `sluice run --once`, against, in the same run, its
#   two ceilings -- the broker's raw consume rate of the same topic (a consumer that does
#   nothing) and LOAD DATA LOCAL INFILE of the same rows into the same server -- and the seeds'
#   way (Python kafka-python consumer + pymysql executemany);
#   Kafka → Elasticsearch against the in-repo stand-in (examples/es_mock.rs), with sluice's CPU
#   time per document (the whole process: consuming, decoding, building and sending `_bulk`).
#   bench/sinks.sh [ROWS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
source bench/lib.sh
kport=${BENCH_PORT:-19092}
mport=${BENCH_MYSQL_PORT:-13306}
export BENCH_KAFKA=127.0.0.1:$kport BENCH_MYSQL_PORT=$mport

python3 -c "import kafka, confluent_kafka, pymysql" 2>/dev/null || pip install --quiet kafka-python confluent-kafka pymysql
cargo build --release --quiet --bin sluice --example es_mock
scripts/tansu.sh install
bench_csv "$rows"

trap 'stop_services "$kport" "$mport"' EXIT
fresh_broker "$kport"
fresh_mariadb "$mport"

rm -rf "$work/state"
target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state" 2>/dev/null

measure python3 bench/producers.py consume "$BENCH_CSV" "$BENCH_KAFKA" bench-sluice
read -r _ consume_s < "$work/last.out"; consume_r=$(rate "$consume_s")
measure python3 bench/sink_baselines.py loaddata "$BENCH_CSV" "$mport"
read -r _ load_s < "$work/last.out"; load_r=$(rate "$load_s")
measure python3 bench/sink_baselines.py seeds "$BENCH_KAFKA" "$mport" "$n"
read -r _ seeds_s < "$work/last.out"; seeds_r=$(rate "$seeds_s")

sql "DROP TABLE IF EXISTS bench_sluice"
measure target/release/sluice run --once bench/kafka-to-mysql.yaml --state-dir "$work/state"
my_s=$secs; my_r=$(rate "$secs"); my_rss=$rss; my_a=$(summary_rate bench-mysql/rows)
written=$(sql "SELECT COUNT(*) FROM bench_sluice")
[ "$written" -eq "$n" ] || { echo "Kafka → MySQL wrote $written of $n rows" >&2; exit 1; }

start_es_mock
measure target/release/sluice run --once bench/kafka-to-elasticsearch.yaml --state-dir "$work/state"
es_s=$secs; es_r=$(rate "$secs"); es_rss=$rss; es_cpu=$cpu; es_a=$(summary_rate bench-es/docs)
indexed=$(curl -s "$BENCH_ES_URL/bench/_count" | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])")
[ "$indexed" -eq "$n" ] || { echo "Kafka → Elasticsearch indexed $indexed of $n documents" >&2; exit 1; }

lower=$(python3 -c "print(min($consume_r, $load_r))")
cat <<TABLE

$n rows of BTC-USD in topic bench-sluice (10 partitions, tansu 0.6 memory storage), MariaDB $(sql "SELECT VERSION()"), $(nproc) cores.
The ceilings time only their work (the read loop; the LOAD DATA statement); "active" is sluice's
own summary: rows out over the sink's time from its first record to its end (whole run: the
process from start to exit, connecting and reading committed offsets included). The seeds' way
is timed as a whole process; it has no start-up to speak of next to its 40 s.

| run | seconds (whole run) | rows/s (whole run) | rows/s (active) | vs lower ceiling (active) | vs seeds' Python | peak RSS |
|---|---:|---:|---:|---:|---:|---:|
| ceiling: raw consume of the topic (confluent-kafka, nothing done; fetch.min.bytes 1 MiB, which doubles tansu's rate) | | | $consume_r | | | |
| ceiling: LOAD DATA LOCAL INFILE of the CSV | | | $load_r | | | |
| baseline: seeds' way (kafka-python consumer + pymysql executemany) | $(printf %.2f "$seeds_s") | $seeds_r | | $(ratio "$seeds_r" "$lower") | 1.00× | |
| **sluice Kafka → MySQL** (multi-row INSERT, a transaction per 5,000) | $my_s | $my_r | $my_a | **$(ratio "$my_a" "$lower")** | $(ratio "$my_r" "$seeds_r") whole run, $(ratio "$my_a" "$seeds_r") active | $(mib "$my_rss") |
| sluice Kafka → Elasticsearch (in-repo stand-in) | $es_s | $es_r | $es_a | | | $(mib "$es_rss") |

sluice CPU per Elasticsearch document (whole process, user+sys): $(python3 -c "print(f'{$es_cpu / $n * 1e6:.1f} µs')").
TABLE
