#!/usr/bin/env bash
# Benchmarks of issue #2: ../shared/data/BTC-USD.csv repeated to >= 1,000,000 rows,
#   CSV → Kafka (tansu, memory storage), CSV → Kafka → file, CSV → embedded → file,
# against two baselines measured in the same run on the same broker: the seeds' producer
# (kafka-python, json.dumps per row) and a raw librdkafka producer (confluent-kafka).
# Every Kafka run gets a fresh broker. Prints a markdown table; peak RSS from GNU time.
#   bench/run.sh [ROWS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
source bench/lib.sh
port=${BENCH_PORT:-19092}
export BENCH_KAFKA=127.0.0.1:$port BENCH_OUT=$work/out.jsonl

python3 -c "import kafka, confluent_kafka" 2>/dev/null || pip install --quiet kafka-python confluent-kafka
cargo build --release --quiet
scripts/tansu.sh install

bench_csv "$rows"

trap 'scripts/tansu.sh stop "$port"' EXIT

fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-seeds
measure python3 bench/producers.py seeds "$BENCH_CSV" "$BENCH_KAFKA" bench-seeds
seeds_s=$secs; seeds_r=$(rate "$secs")
fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-raw
measure python3 bench/producers.py raw "$BENCH_CSV" "$BENCH_KAFKA" bench-raw
read -r _ raw_s < "$work/last.out"; raw_r=$(rate "$raw_s")
measure python3 bench/producers.py consume "$BENCH_CSV" "$BENCH_KAFKA" bench-raw
read -r _ consume_s < "$work/last.out"; consume_r=$(rate "$consume_s")
fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-lines
measure python3 bench/producers.py lines "$BENCH_CSV" "$BENCH_KAFKA" bench-lines
read -r _ lines_s < "$work/last.out"; lines_r=$(rate "$lines_s")
fresh_broker "$port"; rm -rf "$work/state"
measure target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state"
prod_s=$secs; prod_r=$(rate "$secs"); prod_rss=$rss; prod_a=$(summary_rate bench-produce/rows)
fresh_broker "$port"; rm -rf "$work/state" "$BENCH_OUT"
measure target/release/sluice run bench/csv-to-kafka-to-file.yaml --state-dir "$work/state"
thru_s=$secs; thru_r=$(rate "$secs"); thru_rss=$rss; thru_a=$(summary_rate bench-through-kafka/archive)
[ "$(wc -l < "$BENCH_OUT")" -eq "$n" ] || { echo "CSV → Kafka → file wrote $(wc -l < "$BENCH_OUT") of $n rows" >&2; exit 1; }
rm -rf "$work/state" "$BENCH_OUT"
measure target/release/sluice run bench/csv-to-embedded-to-file.yaml --state-dir "$work/state"
emb_s=$secs; emb_r=$(rate "$secs"); emb_rss=$rss; emb_a=$(summary_rate bench-embedded/archive)
[ "$(wc -l < "$BENCH_OUT")" -eq "$n" ] || { echo "CSV → embedded → file wrote $(wc -l < "$BENCH_OUT") of $n rows" >&2; exit 1; }

cat <<TABLE

$n rows of BTC-USD (Yahoo CSV layout), tansu 0.6 memory storage on loopback, $(nproc) cores.
"whole run": the sluice process from start to exit (start-up, connecting, topic creation
included). "active": sluice's own summary, records out over the component's time from its first
record to its end -- what the baselines' timers cover (raw: produce + flush; consume: the read
loop). sluice's active time still includes reading the CSV, typing and encoding every row.

| run | seconds (whole run) | records/s (whole run) | records/s (active) | vs seeds' kafka-python (whole runs) | vs raw librdkafka (active) | vs raw librdkafka (whole run) | peak RSS |
|---|---:|---:|---:|---:|---:|---:|---:|
| baseline: seeds' producer (kafka-python, json.dumps per row; whole process timed) | $seeds_s | $seeds_r | | 1.00× | | | |
| baseline: raw librdkafka producer (confluent-kafka, the same typed-JSON messages pre-encoded; produce + flush timed) | | | $raw_r | | 1.00× | | |
| reference: raw librdkafka, CSV lines as is (smaller messages; produce + flush timed) | | | $lines_r | | $(ratio "$lines_r" "$raw_r") | | |
| **sluice CSV → Kafka** (typed JSON, 10 partitions) | $prod_s | $prod_r | $prod_a | $(ratio "$prod_r" "$seeds_r") | **$(ratio "$prod_a" "$raw_r")** | $(ratio "$prod_r" "$raw_r") | $(mib "$prod_rss") |
| ceiling: raw consume of those messages (confluent-kafka, nothing done with them; read loop timed) | | | $consume_r | | | | |
| sluice CSV → Kafka → file (end to end; file sink active rate vs raw consume: $(ratio "$thru_a" "$consume_r")) | $thru_s | $thru_r | $thru_a | $(ratio "$thru_r" "$seeds_r") | | | $(mib "$thru_rss") |
| sluice CSV → embedded → file | $emb_s | $emb_r | $emb_a | | | | $(mib "$emb_rss") |
TABLE
