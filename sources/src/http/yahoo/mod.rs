//! `type: yahoo_finance` — price bars from Yahoo Finance's chart API: a backfill from `start`,
//! then new bars as they come.
//!
//! **Record** (the layout of the seeds' CSV, so the same sinks and mappings serve both): `Date`
//! (`YYYY-MM-DD` in the exchange's time zone for daily and longer bars, RFC 3339 in UTC for
//! intraday ones), `Open`, `High`, `Low`, `Close`, `Adj Close`, `Volume` (each `null` where
//! Yahoo has none), `symbol`, and `final`: `false` for the bar still forming (today's daily bar),
//! which is sent again with the same key each time it changes, so an upserting sink converges.
//! **Key**: `symbol|Date`. **Record time**: the bar's start.
//!
//! **Offset**: per symbol (source partition `yahoo:{symbol}:{interval}`), the start (Unix
//! seconds) of the last *final* bar delivered. A restart asks from that bar on (bounds are
//! inclusive) and skips it and anything before, so final bars are neither missed nor repeated;
//! the forming bar is sent again. With `exactly_once`, set `live_bar: false`: a forming bar has
//! no stable place in the input.
//!
//! **Requests**: `GET {base_url}/v8/finance/chart/{symbol}?period1&period2&interval&events=div,splits`,
//! in chunks Yahoo accepts (1m: 8 days; 2m–90m: 60 days; 60m/1h: 730 days), with a browser's
//! `User-Agent` and a cookie jar. The chart answers without a crumb today; when Yahoo refuses
//! (401), the source gets a cookie and a crumb as a browser does ([`session`]: the consent
//! host, its consent form in the EU, `/v1/test/getcrumb`) and sends the crumb from then on,
//! renewed once whenever Yahoo answers 401 "Invalid Crumb".
//!
//! **Final bars** are decided by what Yahoo says ([`bars`]): a later bar exists, the market's
//! last trade (`meta.regularMarketTime`) is past the bar's end, or the session it belongs to
//! (`meta.currentTradingPeriod`) has closed; a stock's daily bar is final at the close.

mod bars;
mod session;

use super::client::{at_base, endpoint, excerpt, Fetched, HttpClient, HttpSettings};
use crate::shared::NullRows;
use bars::{parse_chart, Bar, BarSize, MarketClock, DAY};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_api::{
    async_trait, BadInput, ConnectorError, FieldError, Payload, Record, Source, SourceBuildContext,
    SourceConfig, SourceRecord,
};
use std::collections::VecDeque;
use std::time::Duration;

/// Reads price bars from Yahoo Finance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YahooFinanceSourceConfig {
    /// Ticker symbols (`BTC-USD`, `AAPL`), each its own source partition.
    pub symbols: Vec<String>,
    /// Bar size: `1m`, `2m`, `5m`, `15m`, `30m`, `60m`, `90m`, `1h`, `1d`, `5d`, `1wk`, `1mo`, `3mo`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// First day to read on a first run (`YYYY-MM-DD`, UTC). Intraday bars reach back only so
    /// far (1m: 30 days; 2m–90m: 60 days; 60m/1h: 730 days): an earlier start is moved up, with a
    /// warning.
    pub start: String,
    /// How often to ask for new bars once the backfill is done.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Send the bar still forming (today's daily bar), marked `final: false`, each time it
    /// changes.
    #[serde(default = "yes")]
    pub live_bar: bool,
    /// Bars whose every price and volume is `null`: `keep` them, `skip` them (counted), or
    /// send them to the dead-letter topic (`dead_letter`), as the CSV source does.
    #[serde(default)]
    pub all_null_rows: NullRows,
    /// Where the chart API is (a proxy, a test server).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The host that sets the cookie the crumb is tied to.
    #[serde(default = "default_consent_url")]
    pub consent_url: String,
    /// Timeouts, retries, backoff and the request budget.
    #[serde(default)]
    pub http: HttpSettings,
}

fn default_interval() -> String {
    "1d".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(300)
}
fn yes() -> bool {
    true
}
fn default_base_url() -> String {
    "https://query2.finance.yahoo.com".into()
}
fn default_consent_url() -> String {
    "https://fc.yahoo.com".into()
}

#[sluice_api::source("yahoo_finance")]
impl SourceConfig for YahooFinanceSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.symbols.is_empty() || self.symbols.iter().any(|s| s.trim().is_empty()) {
            errors.push(FieldError::new(
                "symbols",
                "must name at least one symbol, none empty",
            ));
        }
        if BarSize::of(&self.interval).is_none() {
            errors.push(FieldError::new(
                "interval",
                format!(
                    "`{}` is not a bar size Yahoo serves (1m, 2m, 5m, 15m, 30m, 60m, 90m, 1h, 1d, 5d, 1wk, 1mo, 3mo)",
                    self.interval
                ),
            ));
        }
        if chrono::NaiveDate::parse_from_str(&self.start, "%Y-%m-%d").is_err() {
            errors.push(FieldError::new("start", "must be a date, `YYYY-MM-DD`"));
        }
        for (field, url) in [
            ("base_url", &self.base_url),
            ("consent_url", &self.consent_url),
        ] {
            if let Err(e) = reqwest::Url::parse(url) {
                errors.push(FieldError::new(field, format!("not a URL: {e}")));
            }
        }
        if self.poll_interval.is_zero() {
            errors.push(FieldError::new("poll_interval", "must be longer than 0"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let size = BarSize::of(&self.interval).ok_or_else(|| {
            ConnectorError::user(format!("unknown bar size `{}`", self.interval))
                .with_field("interval")
        })?;
        let mut start = chrono::NaiveDate::parse_from_str(&self.start, "%Y-%m-%d")
            .map_err(|e| ConnectorError::user(format!("`start`: {e}")).with_field("start"))?
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp());
        if let Some(reach) = size.reach {
            let earliest = now() - reach + DAY;
            if start < earliest {
                tracing::warn!(component = %ctx.component, "Yahoo keeps {} bars for {} days only: starting at {} instead of {}", self.interval, reach / DAY, date_of(earliest, 0), self.start);
                start = earliest;
            }
        }
        let symbols = self
            .symbols
            .iter()
            .map(|symbol| {
                let last_final = ctx
                    .offsets
                    .get(&partition(symbol, &self.interval))
                    .and_then(Value::as_i64);
                Progress {
                    symbol: symbol.clone(),
                    last_final,
                    from: last_final.unwrap_or(start),
                    caught_up: false,
                    live: None,
                }
            })
            .collect();
        Ok(Box::new(YahooSource {
            client: HttpClient::keeping_cookies(
                HttpSettings {
                    // Yahoo answers 429 to agents that are not a browser's.
                    user_agent: Some(
                        self.http
                            .user_agent
                            .clone()
                            .unwrap_or_else(|| super::client::BROWSER_AGENT.to_string()),
                    ),
                    ..self.http.clone()
                },
                "that Yahoo serves this network (it refuses some)",
            )?
            .reporting_to(ctx.status.clone()),
            config: self.clone(),
            size,
            symbols,
            turn: 0,
            crumb: None,
            crumb_needed: false,
            due: None,
            buffered: VecDeque::new(),
        }))
    }
}

fn partition(symbol: &str, interval: &str) -> String {
    format!("yahoo:{symbol}:{interval}")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `Date` of a bar starting at `ts`: the day in the exchange's zone (`gmtoffset` seconds).
fn date_of(ts: i64, gmtoffset: i64) -> String {
    chrono::DateTime::from_timestamp(ts + gmtoffset, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Where one symbol is.
struct Progress {
    symbol: String,
    /// Start of the last final bar delivered.
    last_final: Option<i64>,
    /// `period1` of the next request.
    from: i64,
    /// The backfill reached now; new bars are asked for every `poll_interval`.
    caught_up: bool,
    /// The forming bar last sent: its start and record.
    live: Option<(i64, Value)>,
}

struct YahooSource {
    config: YahooFinanceSourceConfig,
    /// Keeps Yahoo's cookies (the consent's, the crumb's).
    client: HttpClient,
    size: BarSize,
    symbols: Vec<Progress>,
    /// The symbol asked for next.
    turn: usize,
    /// The crumb sent with each chart request, once Yahoo asked for one.
    crumb: Option<String>,
    crumb_needed: bool,
    due: Option<tokio::time::Instant>,
    buffered: VecDeque<SourceRecord>,
}

#[async_trait]
impl Source for YahooSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        while self.buffered.is_empty() {
            if self.symbols.iter().all(|p| p.caught_up) {
                let poll_interval = self.config.poll_interval;
                let due = *self
                    .due
                    .get_or_insert_with(|| tokio::time::Instant::now() + poll_interval);
                tokio::time::sleep_until(due).await;
                self.due = None;
                for progress in &mut self.symbols {
                    progress.caught_up = false;
                }
            }
            let at = self.turn % self.symbols.len();
            self.turn += 1;
            if !self.symbols[at].caught_up {
                self.read_chunk(at).await?;
            }
        }
        let take = max.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

impl YahooSource {
    /// The chart of `symbol` from `from` (inclusive) to `to` (exclusive): without a crumb
    /// until Yahoo asks for one, then with a crumb, renewed once if Yahoo refuses it.
    async fn chart(&mut self, symbol: &str, from: i64, to: i64) -> Result<Fetched, ConnectorError> {
        let path = format!("/v8/finance/chart/{}", url_path_segment(symbol));
        let mut renewed = false;
        loop {
            if self.crumb_needed && self.crumb.is_none() {
                self.crumb = Some(
                    session::crumb(
                        &self.client,
                        &self.config.consent_url,
                        &self.config.base_url,
                    )
                    .await?,
                );
            }
            let mut url = at_base(&self.config.base_url, &path)?;
            url.query_pairs_mut()
                .append_pair("period1", &from.to_string())
                .append_pair("period2", &to.to_string())
                .append_pair("interval", self.size.asked)
                .append_pair("events", "div,splits");
            if let Some(crumb) = &self.crumb {
                url.query_pairs_mut().append_pair("crumb", crumb);
            }
            let answer = self
                .client
                .fetch_taking(&endpoint("GET", &url), &[401, 404], |c| c.get(url.clone()))
                .await?;
            match answer.status.as_u16() {
                401 if !self.crumb_needed => {
                    tracing::info!(%symbol, "Yahoo asks for a crumb ({}): getting a cookie and a crumb as a browser does", excerpt(&answer.body));
                    self.crumb_needed = true;
                }
                401 if !renewed => {
                    tracing::info!(%symbol, "Yahoo refused the crumb ({}); getting a new one", excerpt(&answer.body));
                    self.crumb = None;
                    renewed = true;
                }
                401 => {
                    return Err(ConnectorError::user(format!(
                        "{} answered 401 with a new crumb too: {}",
                        endpoint("GET", &url),
                        excerpt(&answer.body)
                    )))
                }
                _ => return Ok(answer),
            }
        }
    }

    /// Asks for the next chunk of symbol `at` and buffers its new bars.
    async fn read_chunk(&mut self, at: usize) -> Result<(), ConnectorError> {
        let now = now();
        let from = self.symbols[at].from;
        let to = (from + self.size.chunk).min(now + self.size.seconds);
        let symbol = self.symbols[at].symbol.clone();
        let answer = self.chart(&symbol, from, to).await?;
        let doc: Value = match serde_json::from_slice(&answer.body) {
            Ok(doc) => doc,
            Err(e) => {
                let message = format!("the chart is not JSON ({e}): {}", excerpt(&answer.body));
                self.bad(at, message, answer.body);
                self.symbols[at].caught_up = true;
                return Ok(());
            }
        };
        if let Some(error) = doc.pointer("/chart/error").filter(|e| !e.is_null()) {
            return Err(ConnectorError::user(format!(
                "Yahoo has no chart for `{symbol}`: {} — {}",
                error["code"].as_str().unwrap_or("error"),
                error["description"].as_str().unwrap_or_default()
            ))
            .with_field("symbols"));
        }
        let bars = match parse_chart(&doc) {
            Ok(bars) => bars,
            Err(message) => {
                self.bad(at, message, answer.body);
                self.symbols[at].caught_up = true;
                return Ok(());
            }
        };
        let meta = doc.pointer("/chart/result/0/meta");
        let gmtoffset = meta
            .and_then(|m| m.get("gmtoffset"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let clock = MarketClock::of(meta, now);
        let bars = self.size.shape(bars, gmtoffset);
        for (i, bar) in bars.iter().enumerate() {
            let end = self.size.end_of(bar.ts, gmtoffset);
            let is_final = clock.is_final(bar.ts, end, self.size.seconds, i + 1 < bars.len());
            self.offer(at, *bar, gmtoffset, is_final);
        }
        let progress = &mut self.symbols[at];
        if to > now {
            progress.caught_up = true;
            progress.from = progress.last_final.unwrap_or(progress.from);
        } else {
            progress.from = to;
        }
        Ok(())
    }

    /// Buffers `bar` if it is new: a final bar after the last one, or a changed forming bar.
    fn offer(&mut self, at: usize, bar: Bar, gmtoffset: i64, is_final: bool) {
        let daily = self.size.seconds >= DAY;
        let progress = &mut self.symbols[at];
        if progress.last_final.is_some_and(|last| bar.ts <= last) {
            return;
        }
        if !is_final && !self.config.live_bar {
            return;
        }
        let date = if daily {
            date_of(bar.ts, gmtoffset)
        } else {
            chrono::DateTime::from_timestamp(bar.ts, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        };
        let value = json!({
            "Date": date,
            "Open": bar.open, "High": bar.high, "Low": bar.low, "Close": bar.close,
            "Adj Close": bar.adjclose, "Volume": bar.volume,
            "symbol": progress.symbol, "final": is_final,
        });
        let partition = partition(&progress.symbol, &self.config.interval);
        let offset = progress.last_final.map_or(Value::Null, Value::from);
        if !is_final {
            if progress
                .live
                .as_ref()
                .is_some_and(|(ts, v)| *ts == bar.ts && *v == value)
            {
                return; // the forming bar did not change
            }
            progress.live = Some((bar.ts, value.clone()));
        }
        let all_null = bar.is_empty();
        if is_final {
            progress.last_final = Some(bar.ts);
        }
        let offset = if is_final {
            Value::from(bar.ts)
        } else {
            offset
        };
        let key = format!("{}|{date}", progress.symbol);
        let payload = match self.config.all_null_rows {
            NullRows::Skip if all_null => Payload::Skipped {
                reason: format!("{key}: every price and the volume are null"),
            },
            NullRows::DeadLetter if all_null => Payload::Bad(BadInput {
                raw: value.to_string().into_bytes(),
                message: "every price and the volume are null".into(),
                location: key.clone(),
                key: Some(key.clone().into_bytes()),
                timestamp: Some(bar.ts * 1000),
            }),
            _ => {
                let mut record = Record::new(value).with_key(key);
                record.timestamp = Some(bar.ts * 1000);
                Payload::Record(record)
            }
        };
        self.buffered.push_back(SourceRecord {
            partition: partition.into(),
            offset,
            position: is_final
                .then_some(bar.ts)
                .and_then(|t| u64::try_from(t).ok()),
            payload,
        });
    }

    fn bad(&mut self, at: usize, message: String, raw: Vec<u8>) {
        let progress = &self.symbols[at];
        self.buffered.push_back(SourceRecord {
            partition: partition(&progress.symbol, &self.config.interval).into(),
            offset: progress.last_final.map_or(Value::Null, Value::from),
            position: None,
            payload: Payload::Bad(BadInput {
                raw,
                message: format!("yahoo_finance `{}`: {message}", progress.symbol),
                location: format!(
                    "{}/v8/finance/chart/{}",
                    self.config.base_url, progress.symbol
                ),
                ..BadInput::default()
            }),
        });
    }
}

/// A symbol as one URL path segment (`/`, spaces and the like escaped).
fn url_path_segment(symbol: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a constant URL");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(symbol);
    }
    url.path().trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_one_path_segment() {
        assert_eq!(url_path_segment("BTC-USD"), "BTC-USD");
        assert_eq!(url_path_segment("^GSPC"), "^GSPC");
        assert_eq!(url_path_segment("A B"), "A%20B");
        assert_eq!(url_path_segment("A/B"), "A%2FB");
    }
}
