#!/usr/bin/env bash
# Chaos runs, on the Kafka broker of scripts/broker.sh and MariaDB, with ROWS rows
# (default 1,000,000) of BTC-USD numbered by a unique key `n`:
#   1. kill -9 of sluice every 2-4 s, 10 times, then the same command to its end, for
#      a. CSV → Kafka → MySQL with `exactly_once` (numbered source, exactly-once sink),
#      b. the same with the source unnumbered (duplicates allowed, up to the stated bound),
#      c. CSV → Kafka → Elasticsearch stand-in, ids from the key,
#      d. CSV → embedded transport → MySQL with `exactly_once`,
#      e. two stream transforms in a row (datagen, 8 symbols → 4 partitions → weekly candles →
#         1 partition → indicators → MySQL `exactly_once`), compared with a run never killed;
#   2. the broker killed (kill -9: a crash) mid-run and started again 3 s later;
#   3. MariaDB stopped for 30 s mid-run;
#   4. SIGTERM during an outage of the Elasticsearch stand-in, then a run to the end.
# Prints per scenario: rows expected, found, distinct, duplicates, dead letters, exit codes and
# time to exit. Nothing may be lost, every stop must come within the drain deadline, and with
# `exactly_once` there may be no duplicate; without it, at most the bound printed.
#   bench/chaos.sh [ROWS]            (CHAOS_ONLY=1e,3 runs only those scenarios)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
source bench/lib.sh
kport=${CHAOS_KAFKA_PORT:-19192}
mport=${CHAOS_MYSQL_PORT:-13316}
drain=7 # sluice's default --drain-timeout, in seconds
export CHAOS_KAFKA=127.0.0.1:$kport CHAOS_MYSQL_PORT=$mport
services=${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}
only=${CHAOS_ONLY:-}
# want SCENARIO: whether to run it (every scenario unless CHAOS_ONLY names some).
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

cargo build --release --quiet --bin sluice --example es_mock
scripts/broker.sh install
bench_csv "$rows"
export CHAOS_CSV=$work/chaos-$rows.csv
[ -f "$CHAOS_CSV" ] || awk 'NR == 1 { print "n," $0; next } { print NR - 1 "," $0 }' "$BENCH_CSV" > "$CHAOS_CSV"

es_pid=""
cleanup() {
  scripts/broker.sh stop "$kport" || true
  scripts/mariadb.sh stop "$mport" || true
  [ -z "$es_pid" ] || kill "$es_pid" 2>/dev/null || true
}
trap cleanup EXIT

# fresh NAME [STORAGE]: a fresh broker (SQLite storage unless told), database and state.
# tansu 0.6's memory storage loses records for a consumer that resumes inside a batch (a fetch
# at offset 2429 of a batch 2429-2436 answers from 2431; at 2436, from 2464), so the kill -9
# loops, whose sinks resume at committed offsets, run on SQLite. SQLite storage reads records
# with headers slowly (20,000 rows with `exactly_once`'s header: 27 s end to end; 50,000: 651
# s), so the kill loops take KILL_ROWS rows (default 30,000) and the runs that do not resume
# mid-topic (the MariaDB outage) use memory storage.
fresh() {
  scripts/broker.sh stop "$kport"
  rm -f "$services"/chaos-"$kport".db*
  scripts/broker.sh start "$kport" "${2:-sqlite://chaos-$kport.db}"
  scripts/mariadb.sh stop "$mport"
  rm -rf "$services/mariadb-$mport"
  scripts/mariadb.sh start "$mport"
  rm -rf "$work/chaos-state"
  export CHAOS_DLQ=$work/chaos-dlq-$1.jsonl
  rm -f "$CHAOS_DLQ"
}
sql() { mariadb -h127.0.0.1 -P"$mport" -usluice -psluice -N -B sluice -e "$1"; }
# start_sluice FILE: starts sluice in the background (not in a subshell: `pid` is sluice's own).
start_sluice() {
  target/release/sluice run "$1" --state-dir "$work/chaos-state" 2>>"$work/chaos.log" &
  pid=$!
}
dead_letters() { [ -f "$CHAOS_DLQ" ] && wc -l < "$CHAOS_DLQ" || echo 0; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

table=()
verdicts=()
# report NAME FOUND DISTINCT DEAD EXIT_CODES TIME_TO_EXIT [DEADLINE_S] [DUPLICATES_ALLOWED] [EXPECTED]
report() {
  local expected=${9:-$n}
  local lost=$(( expected - $3 )) dups=$(( $2 - $3 )) verdict=ok
  [ "$lost" -eq 0 ] || verdict="LOST $lost"
  [ "$dups" -le "${8:-0}" ] || verdict="$verdict, $dups DUPLICATES"
  if [ -n "${7:-}" ] && ! python3 -c "import sys; sys.exit(0 if float('${6% s}') <= $7 else 1)"; then verdict="$verdict, SLOW EXIT"; fi
  table+=("| $1 | $expected | $2 | $3 | $dups | $4 | $5 | $6 | $verdict |")
  verdicts+=("$verdict")
}
: > "$work/chaos.log"

# kill_loop NAME PIPELINE rows|es [DUPLICATES_ALLOWED]: on the first KILL_ROWS rows,
# 10 × (start, 2-4 s, kill -9), then a run to the end.
kill_rows=${KILL_ROWS:-30000}
kill_csv=$work/chaos-kill-$kill_rows.csv
head -n "$(( kill_rows + 1 ))" "$CHAOS_CSV" > "$kill_csv"
kill_loop() {
  local name=$1 file=$2 codes="" code start found distinct n=$kill_rows CHAOS_CSV=$kill_csv
  export CHAOS_CSV CHAOS_RATE=${CHAOS_KILL_RATE:-2000}
  for _ in $(seq 10); do
    start_sluice "$file"
    sleep "$(python3 -c 'import random; print(round(random.uniform(2, 4), 1))')"
    kill -9 "$pid" 2>/dev/null || true
    code=0; wait "$pid" || code=$?
    codes="$codes$code,"
  done
  start=$(now); code=0; timeout 900 target/release/sluice run "$file" --state-dir "$work/chaos-state" 2>>"$work/chaos.log" || code=$?
  if [ "$3" = es ]; then
    found=$(es_count); distinct=$found # ids are the unique keys: documents = distinct rows
  else
    found=$(sql 'SELECT COUNT(*) FROM chaos'); distinct=$(sql 'SELECT COUNT(DISTINCT n) FROM chaos')
  fi
  report "$name" "$found" "$distinct" "$(dead_letters)" "${codes}${code}" "final run $(since "$start") s" "" "${4:-0}" "$n"
}
start_es() {
  target/release/examples/es_mock > "$work/chaos-es.url" & es_pid=$!
  for _ in $(seq 100); do [ -s "$work/chaos-es.url" ] && break; sleep 0.1; done
  export CHAOS_ES_URL=$(cat "$work/chaos-es.url")
}
es_count() { curl -s "$CHAOS_ES_URL/chaos/_count" | python3 -c "import json, sys; print(json.load(sys.stdin).get('count', 0))"; }

if want 1a; then
echo "1a/4 kill -9 ×10, CSV → Kafka → MySQL, exactly once…" >&2
fresh kill9
kill_loop "kill -9 ×10, CSV → Kafka → MySQL, \`exactly_once\`" bench/chaos-mysql.yaml rows

fi

if want 1b; then
echo "1b/4 kill -9 ×10, CSV → Kafka → MySQL, source unnumbered…" >&2
fresh kill9-plain
# A kill re-sends what the source sent after its last stored offsets: at most its
# unacknowledged batches (32 × 2,000 on Kafka) and one second of rows (the rate).
bound=$(( 10 * (32 * 2000 + ${CHAOS_KILL_RATE:-2000}) ))
CHAOS_EXACTLY_ONCE=false kill_loop "kill -9 ×10, CSV → Kafka → MySQL, source unnumbered (bound $bound)" bench/chaos-mysql.yaml rows "$bound"

fi

if want 1c; then
echo "1c/4 kill -9 ×10, CSV → Kafka → Elasticsearch…" >&2
fresh kill9-es
start_es
kill_loop "kill -9 ×10, CSV → Kafka → Elasticsearch stand-in, ids from the key" bench/chaos-es.yaml es
kill "$es_pid"; es_pid=""

fi

if want 1d; then
echo "1d/4 kill -9 ×10, CSV → embedded → MySQL, exactly once…" >&2
fresh kill9-embedded
kill_loop "kill -9 ×10, CSV → embedded → MySQL, \`exactly_once\`" bench/chaos-mysql-embedded.yaml rows

fi

if want 1e; then
echo "1e kill -9 ×10, two stream transforms in a row → MySQL, exactly once…" >&2
fresh chain
# The reference: the same pipeline under another name and table, never killed.
CHAOS_CHAIN_NAME=chaos-chain-ref CHAOS_CHAIN_TABLE=chain_ref CHAOS_RATE=100000 timeout 600 \
  target/release/sluice run bench/chaos-chain.yaml --state-dir "$work/chaos-state-ref" 2>>"$work/chaos.log"
codes=""
# Killed 6-9 s in: a run first waits out the killed run's session (3 s) in its groups.
export CHAOS_RATE=${CHAOS_CHAIN_RATE:-200}
for _ in $(seq 10); do
  start_sluice bench/chaos-chain.yaml
  sleep "$(python3 -c 'import random; print(round(random.uniform(6, 9), 1))')"
  kill -9 "$pid" 2>/dev/null || true
  code=0; wait "$pid" || code=$?
  codes="$codes$code,"
done
before=$(sql 'SELECT COUNT(*) FROM chain' 2>/dev/null || echo 0)
start=$(now); code=0; timeout 900 target/release/sluice run bench/chaos-chain.yaml --state-dir "$work/chaos-state" 2>>"$work/chaos.log" || code=$?
unset CHAOS_RATE
expected=$(sql 'SELECT COUNT(*) FROM chain_ref')
found=$(sql 'SELECT COUNT(*) FROM chain')
distinct=$(sql 'SELECT COUNT(DISTINCT `key`, `start`) FROM chain')
# Rows equal to the reference's row of the same candle, indicators included.
equal=$(sql 'SELECT COUNT(*) FROM chain c JOIN chain_ref r ON c.`key` = r.`key` AND c.`start` = r.`start` WHERE c.`close` <=> r.`close` AND c.`volume` <=> r.`volume` AND c.`sma_4` <=> r.`sma_4` AND c.`ema_4` <=> r.`ema_4` AND c.`final` <=> r.`final`')
report "kill -9 ×10, datagen → 4 partitions → window → 1 partition → indicators → MySQL, \`exactly_once\` ($before rows in before the last run; $equal of $expected rows equal to a run never killed)" \
  "$found" "$distinct" "0" "${codes}${code}" "final run $(since "$start") s" "" 0 "$expected"
[ "$equal" -eq "$expected" ] || verdicts+=("$(( expected - equal )) ROWS DIFFER FROM THE REFERENCE")
fi

if want 2; then
echo "2/4 broker restart mid-run…" >&2
fresh broker
CHAOS_EXACTLY_ONCE=false CHAOS_RATE=100000 start_sluice bench/chaos-mysql.yaml
sleep 4
# A crash: a stopping tansu answers in-flight produce requests UNKNOWN_SERVER_ERROR, which
# Kafka clients treat as permanent (a Kafka broker hands leadership over instead).
kill -9 "$(cat "$services/broker-$kport.pid")"; rm -f "$services/broker-$kport.pid"
sleep 3; scripts/broker.sh start "$kport" "sqlite://chaos-$kport.db"
code=0; wait "$pid" || code=$?
report "broker (SQLite storage) killed -9 4 s in, back 3 s later; source unnumbered" \
  "$(sql 'SELECT COUNT(*) FROM chaos')" "$(sql 'SELECT COUNT(DISTINCT n) FROM chaos')" \
  "$(dead_letters)" "$code" "-"

fi

if want 3; then
echo "3/4 MariaDB stopped 30 s mid-run…" >&2
fresh mariadb memory://nisshi/
CHAOS_RATE=100000 start_sluice bench/chaos-mysql.yaml
sleep 4
scripts/mariadb.sh stop "$mport"; sleep 30; scripts/mariadb.sh start "$mport"
code=0; wait "$pid" || code=$?
report "MariaDB stopped 4 s in, for 30 s" \
  "$(sql 'SELECT COUNT(*) FROM chaos')" "$(sql 'SELECT COUNT(DISTINCT n) FROM chaos')" \
  "$(dead_letters)" "$code" "-"

fi

if want 4; then
echo "4/4 SIGTERM during an Elasticsearch outage…" >&2
fresh es # the run after the SIGTERM resumes mid-topic
start_es
start_sluice bench/chaos-es.yaml
sleep 5
curl -s -X POST "$CHAOS_ES_URL/_stand_in/outage/on" > /dev/null
sleep 2
stopped=$(now); kill -TERM "$pid"
code=0; wait "$pid" || code=$?
took=$(since "$stopped")
curl -s -X POST "$CHAOS_ES_URL/_stand_in/outage/off" > /dev/null
code2=0; timeout 900 target/release/sluice run bench/chaos-es.yaml --state-dir "$work/chaos-state" 2>>"$work/chaos.log" || code2=$?
docs=$(es_count) # ids are the unique keys: documents = distinct rows
report "SIGTERM 2 s into an Elasticsearch outage, then a run to the end" \
  "$docs" "$docs" "$(dead_letters)" "$code,$code2" "$took s" "$(( drain + 5 ))"

fi

cat <<TABLE

$n rows (kill -9 loops: the first $kill_rows at ${CHAOS_KILL_RATE:-2000} rows/s) of BTC-USD repeated, numbered by a unique key, nisshi 0.8.1 (SQLite storage; memory for the runs that do not resume mid-topic), MariaDB $(sql "SELECT VERSION()"), $(nproc) cores.
Exit codes: 137 is a kill -9; 0 a run that ended or stopped as asked. Time to exit: from the
SIGTERM to the exit (deadline: the ${drain} s drain timeout + 5 s). Duplicates are rows found
more than once (MySQL tables without a key show them; Elasticsearch ids from keys cannot).

| scenario | rows expected | rows found | distinct | duplicates | dead letters | exit codes | time to exit | verdict |
|---|---:|---:|---:|---:|---:|---|---|---|
$(printf '%s\n' "${table[@]}")
TABLE
for v in "${verdicts[@]}"; do [ "$v" = ok ] || exit 1; done
