# Shared by the bench scripts: test data, brokers, timing. Source it from the project root.
work=bench/work
mkdir -p "$work"
export SLUICE_LOG=warn

# bench_csv ROWS: BTC-USD.csv repeated to at least ROWS rows; sets BENCH_CSV and n.
bench_csv() {
  local rows=$1 src=${BTC_CSV:-tests/fixtures/BTC-USD.csv}
  [ -f "$src" ] || src=tests/fixtures/BTC-USD.csv
  export BENCH_CSV=$work/btc-$rows.csv
  if [ ! -f "$BENCH_CSV" ]; then
    local data per
    data=$(tail -n +2 "$src")
    per=$(printf '%s\n' "$data" | wc -l)
    { head -1 "$src"; for _ in $(seq $(( (rows + per - 1) / per ))); do printf '%s\n' "$data"; done; } > "$BENCH_CSV"
  fi
  n=$(( $(wc -l < "$BENCH_CSV") - 1 ))
}

# fresh_broker PORT [STORAGE]: a new broker (scripts/broker.sh) (memory storage unless STORAGE is given).
fresh_broker() { scripts/broker.sh stop "$1"; scripts/broker.sh start "$1" ${2:+"$2"}; }

# measure CMD…: runs it; sets secs (wall), rss (peak KiB), cpu (user+sys seconds).
measure() {
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" "$@" > "$work/last.out" 2> "$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
  local u s
  read -r secs rss u s < "$work/time"
  cpu=$(python3 -c "print($u + $s)")
}

rate() { python3 -c "print(int($n / max($1, 1e-9)))"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
# median X…, range X…: of numbers (rates as integers, seconds to 2 decimals); median_ratio R…
num='lambda v: str(int(v)) if v >= 100 else f"{v:.2f}"'
median() { python3 -c "import statistics, sys; print(($num)(statistics.median(map(float, sys.argv[1:]))))" "$@"; }
range() { python3 -c "import sys; v = [float(x) for x in sys.argv[1:]]; f = $num; print(f(min(v)) + '–' + f(max(v)))" "$@"; }
median_ratio() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}×')" "$@"; }
mib() { python3 -c "print(f'{$1 / 1024:.0f} MiB')"; }

# summary_rate COMPONENT: the rate that sluice's end-of-run summary gives COMPONENT
# (`pipeline/id`) in the last measured run: records out over its time from its first record to
# its end, so start-up (connecting, creating topics) is left out, as the baselines' timers do.
summary_rate() {
  awk -v c="$1" '$1 == c { for (i = NF; i > 0; i--) if ($i ~ /^[0-9]+$/) { print $i; exit } }' "$work/last.err"
}

# fresh_mariadb PORT: a new private MariaDB server (scripts/mariadb.sh) on PORT; sql SQL runs a
# statement in its database `sluice`.
fresh_mariadb() {
  mysql_port=$1
  scripts/mariadb.sh stop "$mysql_port"
  rm -rf "${SLUICE_SERVICES_DIR:-${TMPDIR:-/tmp}/sluice-services}/mariadb-$mysql_port"
  scripts/mariadb.sh start "$mysql_port"
}
sql() { mariadb -h127.0.0.1 -P"$mysql_port" -usluice -psluice -N -B sluice -e "$1"; }

# start_es_mock: the tests' Elasticsearch stand-in as a server; exports BENCH_ES_URL.
es_pid=""
start_es_mock() {
  target/release/examples/es_mock > "$work/es.url" & es_pid=$!
  for _ in $(seq 100); do [ -s "$work/es.url" ] && break; sleep 0.1; done
  export BENCH_ES_URL=$(cat "$work/es.url")
}

# stop_services KAFKA_PORT MYSQL_PORT: stops what the script started.
stop_services() {
  scripts/broker.sh stop "$1"
  scripts/mariadb.sh stop "$2"
  [ -z "$es_pid" ] || kill "$es_pid" 2>/dev/null || true
}
