#!/usr/bin/env bash
# Transform benchmarks (issue 12), medians of BENCH_ROUNDS (default 3) interleaved rounds:
#  1. RECORDS (default 1,000,000) JSON lines of daily bars, file → embedded topic → file, with no
#     transform, through a chain of 5 record transforms, and through the `jq` transform; against
#     Debian's `jq -c` running the same program on the same file. Transform cost per record is
#     (pipeline − plain pipeline) / records.
#  2. The `window` stream transform making weekly candles of 10,000 symbols from the same
#     records, against examples/window_loop.rs (serde_json + a hash map, by hand): with the
#     source's default 32 batches in flight (the window checkpoints each time they all wait for
#     it), and with 1,000 (then the topic's capacity, 200,000 records, bounds what waits);
#     and the window operator alone (examples/window_operator.rs: same input and output, no
#     pipeline). Peak RSS.
#   bench/transforms.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
rounds=${BENCH_ROUNDS:-3}
source bench/lib.sh
command -v jq >/dev/null || { echo "bench/transforms.sh needs Debian's jq (apt-get install jq)" >&2; exit 1; }
cargo build --release --quiet --bin sluice --example window_loop --example window_operator

export BENCH_NDJSON=$work/bars-$n.ndjson
if [ ! -f "$BENCH_NDJSON" ]; then
  # Day d of symbol S<k> is record d·10000 + k: 10,000 symbols, each a series of days in order.
  python3 - "$n" "$BENCH_NDJSON" <<'PY'
import csv, datetime, json, sys
n, path = int(sys.argv[1]), sys.argv[2]
rows = [r for r in csv.DictReader(open("tests/fixtures/BTC-USD.csv")) if r["Open"] != "null"]
start = datetime.date(2015, 1, 5)
with open(path, "w") as out:
    for i in range(n):
        day, k = divmod(i, 10000)
        r = rows[(day * 7 + k) % len(rows)]
        out.write(json.dumps({"Date": str(start + datetime.timedelta(days=day)), "symbol": f"S{k}",
            "Open": float(r["Open"]), "High": float(r["High"]), "Low": float(r["Low"]),
            "Close": float(r["Close"]), "Volume": int(r["Volume"])}, separators=(",", ":")) + "\n")
PY
fi
export BENCH_JQ='{symbol, day: .Date, close: .Close, range: (.High - .Low), up: (.Close > .Open)}'
export BENCH_OUT=$work/transforms-out.jsonl

run_sluice() { # PIPELINE → sets secs, rss, cpu; checks the output has EXPECTED lines
  rm -rf "$work/state" "$BENCH_OUT"
  measure target/release/sluice run --once "$1" --state-dir "$work/state"
  local got; got=$(wc -l < "$BENCH_OUT")
  [ "$got" -eq "$2" ] || { echo "$1 wrote $got lines, not $2" >&2; exit 1; }
}

plain=() chain=() jqt=() jqcli=() win=() wide=() hand=() op=() win_rss=0 wide_rss=0 hand_rss=0 op_rss=0 candles=0
for round in $(seq "$rounds"); do
  run_sluice bench/transforms-plain.yaml "$n"; plain+=("$secs")
  run_sluice bench/transforms-chain.yaml "$n"; chain+=("$secs")
  run_sluice bench/transforms-jq.yaml "$n"; jqt+=("$secs")
  measure sh -c 'jq -c "$BENCH_JQ" "$BENCH_NDJSON" > "$BENCH_OUT"'; jqcli+=("$secs")
  measure target/release/examples/window_loop "$BENCH_NDJSON" "$work/hand-candles.jsonl"
  read -r candles _ < "$work/last.out"; hand+=("$secs"); hand_rss=$(( rss > hand_rss ? rss : hand_rss ))
  run_sluice bench/window.yaml "$candles"; win+=("$secs"); win_rss=$(( rss > win_rss ? rss : win_rss ))
  export BENCH_IN_FLIGHT=1000; run_sluice bench/window.yaml "$candles"; unset BENCH_IN_FLIGHT
  wide+=("$secs"); wide_rss=$(( rss > wide_rss ? rss : wide_rss ))
  measure target/release/examples/window_operator "$BENCH_NDJSON" "$work/operator-candles.jsonl"
  read -r got _ < "$work/last.out"; [ "$got" -eq "$candles" ] || { echo "the operator made $got candles, not $candles" >&2; exit 1; }
  op+=("$secs"); op_rss=$(( rss > op_rss ? rss : op_rss ))
  echo "round $round: plain ${plain[-1]} s, chain ${chain[-1]} s, jq transform ${jqt[-1]} s, jq CLI ${jqcli[-1]} s, window ${win[-1]} s (1,000 in flight ${wide[-1]} s), operator alone ${op[-1]} s, by hand ${hand[-1]} s" >&2
done

p=$(median "${plain[@]}") c=$(median "${chain[@]}") j=$(median "${jqt[@]}") q=$(median "${jqcli[@]}")
w=$(median "${win[@]}") v=$(median "${wide[@]}") h=$(median "${hand[@]}") o=$(median "${op[@]}")
ns() { python3 -c "print(f'{max($1 - $p, 0) / $n * 1e9 / $2:.0f} ns')"; }
cat <<TABLE

$n JSON records, medians of $rounds rounds (wall clock, start-up included)
| job                                   | seconds | records/s | vs baseline |
|---------------------------------------|--------:|----------:|------------:|
| sluice, no transform (file → file)    | $p | $(rate "$p") | |
| sluice, 5 record transforms           | $c | $(rate "$c") | $(ns "$c" 5) per record per transform |
| sluice, jq transform                  | $j | $(rate "$j") | $(ratio "$q" "$j") jq's rate; $(ns "$j" 1) per record in jq |
| Debian jq -c, same program            | $q | $(rate "$q") | |
| window: weekly candles, 10k symbols   | $w | $(rate "$w") | $(ratio "$h" "$w") of by hand; peak RSS $(mib "$win_rss") |
| window, source 1,000 batches in flight | $v | $(rate "$v") | $(ratio "$h" "$v") of by hand; peak RSS $(mib "$wide_rss") |
| window operator alone (no pipeline)  | $o | $(rate "$o") | $(ratio "$h" "$o") of by hand; peak RSS $(mib "$op_rss") |
| by hand (serde_json + HashMap)        | $h | $(rate "$h") | peak RSS $(mib "$hand_rss") |
$candles candles.
TABLE
