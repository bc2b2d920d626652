#!/usr/bin/env bash
# Benchmarks of issue #2: tests/fixtures/BTC-USD.csv repeated to >= 1,000,000 rows,
#   CSV → Kafka (scripts/broker.sh, memory storage), CSV → Kafka → file, CSV → embedded → file,
# against baselines measured in the same run on the same broker: the seeds' producer
# (kafka-python, json.dumps per row), a raw librdkafka producer doing the same job by hand
# (examples/raw_producer.rs: rdkafka, reads, types and encodes every row) and the raw librdkafka
# ceiling (confluent-kafka sending the same messages encoded beforehand).
# The producer runs are repeated BENCH_ROUNDS times (default 3), interleaved, each on a fresh
# broker: two cores shared with the broker make single runs vary by up to a third. The table
# gives medians, ranges, and the median of each round's ratio.
# Prints a markdown table; peak RSS from GNU time.
#   bench/run.sh [ROWS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
port=${BENCH_PORT:-19092}
export BENCH_KAFKA=127.0.0.1:$port BENCH_OUT=$work/out.jsonl

python3 -c "import kafka, confluent_kafka" 2>/dev/null || pip install --quiet kafka-python confluent-kafka
cargo build --release --quiet --bin sluice --example raw_producer
scripts/broker.sh install

bench_csv "$rows"

trap 'scripts/broker.sh stop "$port"' EXIT

fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-seeds
measure python3 bench/producers.py seeds "$BENCH_CSV" "$BENCH_KAFKA" bench-seeds
seeds_s=$secs; seeds_r=$(rate "$secs")
raw_rs=() rust_rs=() prod_as=() prod_ss=() prod_rss=0 vs_raw=() vs_rust=() eo_as=() eo_rss=0 vs_plain=() vs_rust_eo=()
for round in $(seq "$rounds"); do
  fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-raw
  measure python3 bench/producers.py raw "$BENCH_CSV" "$BENCH_KAFKA" bench-raw
  read -r _ raw_s < "$work/last.out"; raw_rs+=("$(rate "$raw_s")")
  if [ "$round" -eq 1 ]; then
    measure python3 bench/producers.py consume "$BENCH_CSV" "$BENCH_KAFKA" bench-raw
    read -r _ consume_s < "$work/last.out"; consume_r=$(rate "$consume_s")
  fi
  fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-hand
  measure target/release/examples/raw_producer "$BENCH_CSV" "$BENCH_KAFKA" bench-hand
  read -r _ rust_s < "$work/last.out"; rust_rs+=("$(rate "$rust_s")")
  fresh_broker "$port"; rm -rf "$work/state"
  measure target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state"
  prod_ss+=("$secs"); prod_as+=("$(summary_rate bench-produce/rows)"); prod_rss=$(( rss > prod_rss ? rss : prod_rss ))
  vs_raw+=("$(python3 -c "print(${prod_as[-1]} / ${raw_rs[-1]})")")
  vs_rust+=("$(python3 -c "print(${prod_as[-1]} / ${rust_rs[-1]})")")
  fresh_broker "$port"; rm -rf "$work/state"
  BENCH_EXACTLY_ONCE=true measure target/release/sluice run bench/csv-to-kafka.yaml --state-dir "$work/state"
  eo_as+=("$(summary_rate bench-produce/rows)"); eo_rss=$(( rss > eo_rss ? rss : eo_rss ))
  vs_plain+=("$(python3 -c "print(${eo_as[-1]} / ${prod_as[-1]})")")
  vs_rust_eo+=("$(python3 -c "print(${eo_as[-1]} / ${rust_rs[-1]})")")
  echo "round $round: raw ceiling ${raw_rs[-1]}/s, by hand ${rust_rs[-1]}/s, sluice ${prod_as[-1]}/s active (${secs} s whole), exactly_once ${eo_as[-1]}/s" >&2
done
prod_s=$(median "${prod_ss[@]}"); prod_r=$(rate "$prod_s")
fresh_broker "$port"; python3 bench/producers.py create - "$BENCH_KAFKA" bench-lines
measure python3 bench/producers.py lines "$BENCH_CSV" "$BENCH_KAFKA" bench-lines
read -r _ lines_s < "$work/last.out"; lines_r=$(rate "$lines_s")
fresh_broker "$port"; rm -rf "$work/state" "$BENCH_OUT"
measure target/release/sluice run bench/csv-to-kafka-to-file.yaml --state-dir "$work/state"
thru_s=$secs; thru_r=$(rate "$secs"); thru_rss=$rss; thru_a=$(summary_rate bench-through-kafka/archive)
[ "$(wc -l < "$BENCH_OUT")" -eq "$n" ] || { echo "CSV → Kafka → file wrote $(wc -l < "$BENCH_OUT") of $n rows" >&2; exit 1; }
rm -rf "$work/state" "$BENCH_OUT"
measure target/release/sluice run bench/csv-to-embedded-to-file.yaml --state-dir "$work/state"
emb_s=$secs; emb_r=$(rate "$secs"); emb_rss=$rss; emb_a=$(summary_rate bench-embedded/archive)
[ "$(wc -l < "$BENCH_OUT")" -eq "$n" ] || { echo "CSV → embedded → file wrote $(wc -l < "$BENCH_OUT") of $n rows" >&2; exit 1; }

cat <<TABLE

$n rows of BTC-USD (Yahoo CSV layout), nisshi 0.8.1 memory storage on loopback, $(nproc) cores.
"whole run": the sluice process from start to exit (start-up, connecting, topic creation
included). "active": sluice's own summary, records out over the component's time from its first
record to its end -- what the baselines' timers cover (by hand: first row read to last
acknowledgement; ceiling: produce + flush; consume: the read loop). Producer rows: median of
$rounds interleaved rounds [range]; ratios: the median of each round's ratio.

| run | seconds (whole run) | records/s (whole run) | records/s (active) | vs seeds' kafka-python (whole runs) | vs raw librdkafka by hand (active) | vs raw librdkafka ceiling (active) | peak RSS |
|---|---:|---:|---:|---:|---:|---:|---:|
| baseline: seeds' producer (kafka-python, json.dumps per row; whole process timed) | $seeds_s | $seeds_r | | 1.00× | | | |
| baseline: raw librdkafka producer doing the same job by hand (examples/raw_producer.rs: rdkafka, one thread reads, types, encodes and sends each row) | | | $(median "${rust_rs[@]}") [$(range "${rust_rs[@]}")] | | 1.00× | | |
| ceiling: raw librdkafka, the same messages encoded before the clock starts (confluent-kafka; produce + flush timed) | | | $(median "${raw_rs[@]}") [$(range "${raw_rs[@]}")] | | | 1.00× | |
| reference: raw librdkafka, CSV lines as is (smaller messages; produce + flush timed) | | | $lines_r | | | $(ratio "$lines_r" "$(median "${raw_rs[@]}")") | |
| **sluice CSV → Kafka** (typed JSON, 10 partitions) | $prod_s | $prod_r | $(median "${prod_as[@]}") [$(range "${prod_as[@]}")] | $(ratio "$prod_r" "$seeds_r") | **$(median_ratio "${vs_rust[@]}")** | $(median_ratio "${vs_raw[@]}") | $(mib "$prod_rss") |
| sluice CSV → Kafka with \`exactly_once\` (records numbered in a header; vs the plain sluice run, same round: $(median_ratio "${vs_plain[@]}")) | | | $(median "${eo_as[@]}") [$(range "${eo_as[@]}")] | | $(median_ratio "${vs_rust_eo[@]}") | | $(mib "$eo_rss") |
| ceiling: raw consume of those messages (confluent-kafka, nothing done with them; read loop timed) | | | $consume_r | | | | |
| sluice CSV → Kafka → file (end to end; file sink active rate vs raw consume: $(ratio "$thru_a" "$consume_r")) | $thru_s | $thru_r | $thru_a | $(ratio "$thru_r" "$seeds_r") | | | $(mib "$thru_rss") |
| sluice CSV → embedded → file | $emb_s | $emb_r | $emb_a | | | | $(mib "$emb_rss") |
TABLE
