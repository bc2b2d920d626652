//! The bars of a v8 chart answer: parsing, Yahoo's quirks (a live row beside the week's or
//! month's bar; `30m` answered with hourly bars), and whether a bar is final by the market's
//! clock rather than the machine's.

use serde_json::Value;

pub(super) const DAY: i64 = 86_400;

/// One bar of a chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Bar {
    pub ts: i64,
    pub open: Option<f64>,
    pub high: Option<f64>,
    pub low: Option<f64>,
    pub close: Option<f64>,
    pub adjclose: Option<f64>,
    pub volume: Option<i64>,
}

impl Bar {
    /// Whether every price and the volume are `null`.
    pub fn is_empty(&self) -> bool {
        [self.open, self.high, self.low, self.close, self.adjclose]
            .iter()
            .all(Option::is_none)
            && self.volume.is_none()
    }

    /// `self` widened by `later`, a part of the same bar that comes after it: the first open,
    /// the highest high, the lowest low, the last close, the volumes added.
    fn absorb(&mut self, later: &Bar) {
        self.open = self.open.or(later.open);
        self.high = max_of(self.high, later.high, f64::max);
        self.low = max_of(self.low, later.low, f64::min);
        self.close = later.close.or(self.close);
        self.adjclose = later.adjclose.or(self.adjclose);
        self.volume = match (self.volume, later.volume) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

fn max_of(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// How a configured bar size is asked for and shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BarSize {
    /// Length in seconds (months count 31 days, quarters 92: only for bounds and chunks).
    pub seconds: i64,
    /// Calendar months per bar (`1mo`: 1, `3mo`: 3), 0 for bars of fixed length.
    pub months: u32,
    /// The `interval` asked of Yahoo: `30m` is asked as `15m` and two bars made one, because
    /// Yahoo answers `30m` with hourly bars (yfinance does the same).
    pub asked: &'static str,
    /// The longest span one request may cover.
    pub chunk: i64,
    /// How far back Yahoo keeps bars of this size.
    pub reach: Option<i64>,
}

impl BarSize {
    pub fn of(interval: &str) -> Option<BarSize> {
        let minute = 60;
        let intraday = |seconds, asked, chunk, reach| BarSize {
            seconds,
            months: 0,
            asked,
            chunk,
            reach: Some(reach),
        };
        let long = |seconds, months, asked| BarSize {
            seconds,
            months,
            asked,
            chunk: 3650 * DAY,
            reach: None,
        };
        Some(match interval {
            "1m" => intraday(minute, "1m", 8 * DAY, 30 * DAY),
            "2m" => intraday(2 * minute, "2m", 60 * DAY, 60 * DAY),
            "5m" => intraday(5 * minute, "5m", 60 * DAY, 60 * DAY),
            "15m" => intraday(15 * minute, "15m", 60 * DAY, 60 * DAY),
            "30m" => intraday(30 * minute, "15m", 60 * DAY, 60 * DAY),
            "90m" => intraday(90 * minute, "90m", 60 * DAY, 60 * DAY),
            "60m" => intraday(60 * minute, "60m", 730 * DAY, 730 * DAY),
            "1h" => intraday(60 * minute, "1h", 730 * DAY, 730 * DAY),
            "1d" => long(DAY, 0, "1d"),
            "5d" => long(5 * DAY, 0, "5d"),
            "1wk" => long(7 * DAY, 0, "1wk"),
            "1mo" => long(31 * DAY, 1, "1mo"),
            "3mo" => long(92 * DAY, 3, "3mo"),
            _ => return None,
        })
    }

    /// When the bar starting at `ts` ends (months by the calendar in the exchange's zone).
    pub fn end_of(&self, ts: i64, gmtoffset: i64) -> i64 {
        if self.months == 0 {
            return ts + self.seconds;
        }
        chrono::DateTime::from_timestamp(ts + gmtoffset, 0)
            .and_then(|t| t.date_naive().with_day0(0))
            .and_then(|first| first.checked_add_months(chrono::Months::new(self.months)))
            .and_then(|next| next.and_hms_opt(0, 0, 0))
            .map_or(ts + self.seconds, |t| t.and_utc().timestamp() - gmtoffset)
    }

    /// The bars of an answer as this size has them: a trailing live row that falls inside the
    /// bar before it merged into it (Yahoo sends today apart from the week's or month's bar,
    /// and sometimes today's daily bar twice), and `15m` bars made `30m` ones.
    pub fn shape(&self, mut bars: Vec<Bar>, gmtoffset: i64) -> Vec<Bar> {
        if self.asked == "15m" && self.seconds == 30 * 60 {
            bars = resample(&bars, self.seconds, gmtoffset);
        }
        if let [.., before, live] = bars.as_slice() {
            let daily = self.seconds == DAY;
            let local_day = |ts: i64| (ts + gmtoffset).div_euclid(DAY);
            let same_bar = if daily {
                local_day(live.ts) == local_day(before.ts)
            } else {
                live.ts < self.end_of(before.ts, gmtoffset)
            };
            if live.ts > before.ts && same_bar {
                let live = *live;
                bars.pop();
                if let Some(before) = bars.last_mut() {
                    if daily {
                        *before = Bar {
                            ts: before.ts,
                            ..live
                        };
                    } else {
                        before.absorb(&live);
                    }
                }
            }
        }
        bars
    }
}

use chrono::Datelike;

/// Bars of `seconds` made from shorter ones, on a grid that starts at each exchange day's
/// first bar (the session's open: 09:30 gives 09:30, 10:00, …; a 24-hour market, :00 and :30).
fn resample(bars: &[Bar], seconds: i64, gmtoffset: i64) -> Vec<Bar> {
    let mut out: Vec<Bar> = Vec::new();
    let mut day_open: Option<(i64, i64)> = None; // (exchange day, its first bar)
    for bar in bars {
        let day = (bar.ts + gmtoffset).div_euclid(DAY);
        let open = match day_open {
            Some((d, open)) if d == day => open,
            _ => {
                day_open = Some((day, bar.ts));
                bar.ts
            }
        };
        let start = open + (bar.ts - open).div_euclid(seconds) * seconds;
        match out.last_mut() {
            Some(last) if last.ts == start => last.absorb(bar),
            _ => out.push(Bar { ts: start, ..*bar }),
        }
    }
    out
}

/// What Yahoo says of the market's time: `meta.regularMarketTime` (the last trade) and
/// `meta.currentTradingPeriod.regular` (today's session), when the answer has them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct MarketClock {
    /// The market's "now": the last trade, or the machine's clock without one.
    pub time: i64,
    /// Start and end of the current regular session.
    pub session: Option<(i64, i64)>,
}

impl MarketClock {
    pub fn of(meta: Option<&Value>, machine_now: i64) -> MarketClock {
        let number = |pointer: &str| {
            meta.and_then(|m| m.pointer(pointer))
                .and_then(Value::as_i64)
        };
        MarketClock {
            time: number("/regularMarketTime").unwrap_or(machine_now),
            session: number("/currentTradingPeriod/regular/start")
                .zip(number("/currentTradingPeriod/regular/end")),
        }
    }

    /// Whether the bar starting at `ts` (ending at `end`) can change no more: a later bar
    /// exists, or the market's time passed its end, or (a bar of a day or less) it belongs to
    /// an earlier session or today's session closed. A stock's daily bar is final at the
    /// close; a bitcoin's at midnight UTC; neither by the machine's clock.
    pub fn is_final(&self, ts: i64, end: i64, seconds: i64, later_bar: bool) -> bool {
        if later_bar || end <= self.time {
            return true;
        }
        match self.session {
            Some((start, session_end)) if seconds <= DAY => {
                ts < start || (self.time >= session_end && ts < session_end)
            }
            _ => false,
        }
    }
}

/// The bars of a v8 chart answer, or why it is not one.
pub(super) fn parse_chart(doc: &Value) -> Result<Vec<Bar>, String> {
    let result = doc
        .pointer("/chart/result/0")
        .ok_or("no `chart.result[0]` in the answer")?;
    let Some(timestamps) = result.get("timestamp").and_then(Value::as_array) else {
        return Ok(Vec::new()); // no bar in the period (a weekend, a holiday)
    };
    let quote = result
        .pointer("/indicators/quote/0")
        .ok_or("no `indicators.quote[0]` in the chart")?;
    let series = |v: Option<&Value>, name: &str| -> Result<Vec<Value>, String> {
        match v {
            Some(Value::Array(items)) if items.len() == timestamps.len() => Ok(items.clone()),
            None | Some(Value::Null) => Ok(vec![Value::Null; timestamps.len()]),
            _ => Err(format!("`{name}` does not have one value per timestamp")),
        }
    };
    let [open, high, low, close, volume] =
        ["open", "high", "low", "close", "volume"].map(|name| series(quote.get(name), name));
    let (open, high, low, close, volume) = (open?, high?, low?, close?, volume?);
    let adjclose = series(
        result.pointer("/indicators/adjclose/0/adjclose"),
        "adjclose",
    )?;
    timestamps
        .iter()
        .enumerate()
        .map(|(i, ts)| {
            Ok(Bar {
                ts: ts.as_i64().ok_or("a timestamp is not a number")?,
                open: open[i].as_f64(),
                high: high[i].as_f64(),
                low: low[i].as_f64(),
                close: close[i].as_f64(),
                adjclose: adjclose[i].as_f64(),
                volume: volume[i]
                    .as_i64()
                    .or_else(|| volume[i].as_f64().map(|v| v as i64)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bar(ts: i64, open: f64, high: f64, low: f64, close: f64, volume: i64) -> Bar {
        Bar {
            ts,
            open: Some(open),
            high: Some(high),
            low: Some(low),
            close: Some(close),
            adjclose: Some(close),
            volume: Some(volume),
        }
    }

    fn ts(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp()
    }

    #[test]
    fn the_fixture_chart_gives_its_bars_with_nulls_kept() {
        let path = format!(
            "{}/../tests/fixtures/api/yahoo-chart-v8-BTC-USD-2014-09-17..2014-10-16.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let bars = parse_chart(&doc).unwrap();
        assert_eq!(bars.len(), 30);
        assert_eq!(
            bars[0],
            Bar {
                ts: 1410912000,
                open: Some(465.864014),
                high: Some(468.174011),
                low: Some(452.421997),
                close: Some(457.334015),
                adjclose: Some(457.334015),
                volume: Some(21056800),
            }
        );
        let mut broken = doc.clone();
        broken["chart"]["result"][0]["indicators"]["quote"][0]["open"] = json!([1.0]);
        assert_eq!(
            parse_chart(&broken).unwrap_err(),
            "`open` does not have one value per timestamp"
        );
    }

    /// Yahoo's weekly chart of a stock mid-week: the week's bar, then today apart (yfinance's
    /// `fix_Yahoo_returning_live_separate`). One bar comes out, today's close its close.
    #[test]
    fn a_live_row_beside_the_weeks_or_months_bar_is_merged_into_it() {
        let week = BarSize::of("1wk").unwrap();
        let monday = ts("2026-11-30T14:30:00Z");
        let wednesday = ts("2026-12-02T20:00:00Z");
        let bars = vec![
            bar(monday - 7 * DAY, 10.0, 12.0, 9.0, 11.0, 100),
            bar(monday, 11.0, 13.0, 10.0, 12.0, 200),
            bar(wednesday, 12.0, 14.5, 9.5, 14.0, 50),
        ];
        let shaped = week.shape(bars.clone(), -5 * 3600);
        assert_eq!(
            shaped,
            vec![bars[0], bar(monday, 11.0, 14.5, 9.5, 14.0, 250)]
        );
        // The next week's first bar is a bar of its own.
        let next = vec![bars[1], bar(monday + 7 * DAY, 12.0, 13.0, 11.0, 12.5, 10)];
        assert_eq!(week.shape(next.clone(), -5 * 3600), next);

        let month = BarSize::of("1mo").unwrap();
        let first = ts("2026-12-01T05:00:00Z");
        let today = ts("2026-12-07T15:00:00Z");
        let shaped = month.shape(
            vec![
                bar(first, 1.0, 2.0, 0.5, 1.5, 10),
                bar(today, 1.5, 3.0, 1.0, 2.5, 5),
            ],
            -5 * 3600,
        );
        assert_eq!(shaped, vec![bar(first, 1.0, 3.0, 0.5, 2.5, 15)]);
        // A month's bar ends at the next month's start in the exchange's zone.
        assert_eq!(month.end_of(first, -5 * 3600), ts("2027-01-01T05:00:00Z"));

        // Today's daily bar sent twice: the later one is today's.
        let day = BarSize::of("1d").unwrap();
        let midnight = ts("2026-12-07T00:00:00Z");
        let shaped = day.shape(
            vec![
                bar(midnight, 1.0, 2.0, 0.5, 1.5, 10),
                bar(midnight + 3600, 1.0, 2.2, 0.5, 1.7, 12),
            ],
            0,
        );
        assert_eq!(shaped, vec![bar(midnight, 1.0, 2.2, 0.5, 1.7, 12)]);
    }

    /// Yahoo answers `interval=30m` with hourly bars; the source asks for 15m and pairs them
    /// on a grid that starts at the session's open.
    #[test]
    fn thirty_minute_bars_are_made_of_two_fifteen_minute_ones_from_the_open() {
        let size = BarSize::of("30m").unwrap();
        assert_eq!(size.asked, "15m");
        let open = ts("2026-12-07T14:30:00Z"); // 09:30 in New York
        let bars: Vec<Bar> = (0..5)
            .map(|i| {
                let p = 100.0 + i as f64;
                bar(open + i * 900, p, p + 1.0, p - 1.0, p + 0.5, 10)
            })
            .collect();
        let shaped = size.shape(bars, -5 * 3600);
        assert_eq!(
            shaped,
            vec![
                bar(open, 100.0, 102.0, 99.0, 101.5, 20),
                bar(open + 1800, 102.0, 104.0, 101.0, 103.5, 20),
                bar(open + 3600, 104.0, 105.0, 103.0, 104.5, 10),
            ]
        );
    }

    #[test]
    fn a_bar_is_final_by_the_markets_clock_not_the_machines() {
        let day = DAY;
        // Bitcoin, asked at 12:00 UTC: today's bar forms until midnight.
        let midnight = ts("2014-10-10T00:00:00Z");
        let meta = json!({
            "regularMarketTime": midnight + 12 * 3600,
            "currentTradingPeriod": {"regular": {"start": midnight, "end": midnight + day}},
        });
        let clock = MarketClock::of(Some(&meta), ts("2026-12-07T00:00:00Z"));
        assert!(!clock.is_final(midnight, midnight + day, day, false));
        assert!(clock.is_final(midnight - day, midnight, day, false));
        assert!(clock.is_final(midnight, midnight + day, day, true));

        // A stock: the daily bar starts at the open and is final at the close, not 24 h on.
        let open = ts("2026-12-07T14:30:00Z");
        let close = ts("2026-12-07T21:00:00Z");
        let trading = |time| {
            MarketClock::of(
                Some(&json!({
                    "regularMarketTime": time,
                    "currentTradingPeriod": {"regular": {"start": open, "end": close}},
                })),
                0,
            )
        };
        assert!(!trading(close - 60).is_final(open, open + day, day, false));
        assert!(trading(close).is_final(open, open + day, day, false));
        // The week's bar is not final at Monday's close.
        assert!(!trading(close).is_final(open, open + 7 * day, 7 * day, false));
        // Intraday: a bar is final once the market's time passed its end.
        assert!(trading(open + 1800).is_final(open, open + 900, 900, false));
        assert!(!trading(open + 600).is_final(open, open + 900, 900, false));

        // Without a meta, the machine's clock decides.
        let clock = MarketClock::of(None, midnight + day);
        assert!(clock.is_final(midnight, midnight + day, day, false));
    }
}
