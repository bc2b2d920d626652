#!/usr/bin/env bash
# The seeds' analytics evaluated on the real BTC-USD daily file (issue 12): runs the example
# pipelines as a user does (`sluice run --once`), then an independent pandas script prints
#  - candles: pipelines/btc-weekly-candles.yaml against pandas' own weekly resampling;
#  - anomalies: pipelines/btc-anomalies-to-elasticsearch.yaml (its index swapped for a file, every
#    scored day kept), the top 20 days and where the seed's Kibana days rank;
#  - forecasts: pipelines/btc-forecast.yaml, a rolling-origin backtest over the last two years,
#    MAPE per horizon against the naive last-value forecast, and interval coverage.
# Needs pandas (pip install pandas). The same thresholds are asserted by tests/e2e_analytics.rs.
#   bench/analytics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
python3 -c "import pandas" 2>/dev/null || { echo "bench/analytics.sh needs pandas: pip install pandas" >&2; exit 1; }
cargo build --release --quiet --bin sluice
out=$work/analytics && rm -rf "$out" && mkdir -p "$out"
run() { target/release/sluice run --once "$1" --state-dir "$out/state" >/dev/null 2>"$out/last.err" || { cat "$out/last.err" >&2; exit 1; }; }

CANDLES_OUT=$out/candles.jsonl CANDLES_DLQ_OUT=$out/candles-dlq.jsonl run pipelines/btc-weekly-candles.yaml
FORECAST_OUT=$out/forecast.jsonl FORECAST_DLQ_OUT=$out/forecast-dlq.jsonl run pipelines/btc-forecast.yaml
# The anomaly pipeline with a file instead of Elasticsearch, every scored day written.
python3 - "$out/anomalies.yaml" "$out/anomalies.jsonl" <<'PY'
import sys
text = open("pipelines/btc-anomalies-to-elasticsearch.yaml").read()
head, rest = text.split("\nsinks:\n", 1)
tail = rest[rest.index("\nerrors:"):]
sinks = f"\nsinks:\n  anomalies:\n    type: file\n    topics: [bitcoin-anomalies]\n    path: {sys.argv[2]}\n  rejects:\n    type: file\n    topics: [bitcoin-dlq]\n    path: {sys.argv[2]}.dlq\n"
open(sys.argv[1], "w").write(head + sinks + tail)
PY
ANOMALY_MIN_SEVERITY=0 run "$out/anomalies.yaml"

python3 - "$out" <<'PY'
import json, sys
import numpy as np, pandas as pd
out = sys.argv[1]
read = lambda name: pd.DataFrame([json.loads(l) for l in open(f"{out}/{name}")])
daily = pd.read_csv("tests/fixtures/BTC-USD.csv", na_values=["null"], parse_dates=["Date"]).dropna()

print("## Weekly candles (pipelines/btc-weekly-candles.yaml) against pandas")
weeks = daily.groupby(pd.Grouper(key="Date", freq="W-MON", label="left", closed="left")).agg(
    open=("Open", "first"), high=("High", "max"), low=("Low", "min"), close=("Close", "last"),
    volume=("Volume", "sum"), days=("Close", "count")).query("days > 0")
c = read("candles.jsonl")
c.index = pd.to_datetime(c["start"]).dt.tz_localize(None)
fields = ["open", "high", "low", "close", "volume", "days"]
same = (c[fields].astype(float) == weeks[fields].astype(float)).all(axis=1)
print(f"| weeks (sluice / pandas) | {len(c)} / {len(weeks)} |")
print(f"| weeks with every field identical | {int(same.sum())} of {len(weeks)} |")
for label, monday in [("first (partial)", weeks.index[0]), ("2020-W16", "2020-04-13"), ("2020-W41", "2020-10-05"),
                      ("2020-W42", "2020-10-12"), ("last (partial, final: false)", weeks.index[-1])]:
    row = c.loc[pd.Timestamp(monday)]
    print(f"| {label} {pd.Timestamp(monday).date()} | {int(row['days'])} days, final {row['final']} |")

print("\n## Anomalies (pipelines/btc-anomalies-to-elasticsearch.yaml, default settings)")
a = read("anomalies.jsonl")
a["day"] = a["time"].str[:10]
a = a.reindex(a["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)
print("| rank | day | severity | actual | typical | score |\n|---|---|---|---|---|---|")
for i, r in a.head(20).iterrows():
    print(f"| {i+1} | {r['day']} | {r['severity']:.2f} | {r['actual']:.2f} | {r['typical']:.2f} | {r['score']:.2f} |")
days = list(a["day"])
def rank(d):
    d = pd.Timestamp(d)
    found = [days.index(str(x.date())) + 1 for x in (d, d + pd.Timedelta(days=1)) if str(x.date()) in days]
    return min(found) if found else None
seed = {"2017-12-06": 97, "2016-06-15": 94, "2015-11-03": 93, "2017-12-21": 91, "2015-01-13": 85}
ranks = {d: rank(d) for d in seed}
for d, s in seed.items():
    print(f"seed {d} (Kibana {s}): rank {ranks[d]} (that day or the next)")
print(f"seed days in the top 10: {sum(r is not None and r <= 10 for r in ranks.values())} of 5 (needed 3); "
      f"top 20: {sum(r is not None and r <= 20 for r in ranks.values())} of 5 (needed 4); "
      f"2020-03-12 ranked {rank('2020-03-12')} (needed ≤ 3)")
sev = a["severity"].to_numpy()
print(f"severities within 0–100: {bool(((sev >= 0) & (sev <= 100)).all())}; monotone in |score|: {bool((np.diff(sev) <= 0).all())}")

print("\n## Forecasts (pipelines/btc-forecast.yaml): rolling origins over the last two years")
f = read("forecast.jsonl")
close = daily.set_index(daily["Date"].dt.strftime("%Y-%m-%d"))["Close"]
f["target_day"] = f["target"].str[:10]
f["origin"] = pd.to_datetime(f["fitted_at"].str[:10])
f = f[f["origin"] > daily["Date"].max() - pd.Timedelta(days=730)]
f = f[f["target_day"].isin(close.index)].copy()
f["actual"] = close.loc[f["target_day"]].to_numpy()
f["ape"] = (f["mean"] - f["actual"]).abs() / f["actual"]
f["naive_ape"] = (f["last"] - f["actual"]).abs() / f["actual"]
f["in80"] = (f["lower_80"] <= f["actual"]) & (f["actual"] <= f["upper_80"])
f["in95"] = (f["lower_95"] <= f["actual"]) & (f["actual"] <= f["upper_95"])
print(f"model: {f['model'].iloc[-1]}; origins: {f['origin'].nunique()}")
print("| horizon | MAPE | naive MAPE | ratio | coverage 80 % | coverage 95 % |\n|---|---|---|---|---|---|")
for h, g in f.groupby("horizon"):
    print(f"| {h} | {g['ape'].mean():.4f} | {g['naive_ape'].mean():.4f} | {g['ape'].mean() / g['naive_ape'].mean():.3f} | {g['in80'].mean():.3f} | {g['in95'].mean():.3f} |")
print(f"mean coverage: 80 % {f['in80'].mean():.3f} (needed 0.75–0.88), 95 % {f['in95'].mean():.3f} (needed 0.90–0.975)")
w = read("forecast.jsonl").assign(width=lambda d: d["upper_95"] - d["lower_95"]).sort_values(["fitted_at", "horizon"])
narrowing = (w.groupby("fitted_at")["width"].diff().dropna() < 0).sum()
values = w[["mean", "lower_80", "upper_80", "lower_95", "upper_95"]].to_numpy()
print(f"intervals narrowing with the horizon: {narrowing}; all values finite and positive: {bool(np.isfinite(values).all() and (values > 0).all())}")
PY
