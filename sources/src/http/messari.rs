//! `type: messari` — crypto asset prices from Messari, one flat record per asset per poll.
//!
//! **Record** (the seed's fields, flat; `null` where Messari has no value): `asset` (as listed
//! in `assets`), `symbol`, `name`, `slug`, `time` (the price's time, RFC 3339), `price_usd`,
//! `price_btc`, `price_eth`, `volume_24h`, `percent_change_usd_1h`, `percent_change_usd_24h`,
//! `percent_change_btc_24h`, `percent_change_eth_24h`, `ohlcv_1h_{open,high,low,close,volume}`,
//! `ohlcv_24h_{open,high,low,close,volume}`. **Key**: the symbol (`BTC`). **Record time**: the
//! price's time.
//!
//! **v2** (`GET /metrics/v2/assets/details`), as Messari's published OpenAPI (MessariKit's
//! `services/asset/openapi.yaml`, `AssetV2MarketData`) has it: `priceUsd`, `priceBtc`,
//! `priceEth`, `volume24Hour`, `ohlcv1HourUsd`, `ohlcv24HourUsd`. It has no percent changes:
//! `percent_change_usd_1h` and `_24h` are computed from the hour's and the day's candle (open to
//! close, in percent), the BTC and ETH ones are `null`. `priceAt` (the price's time) is in
//! Messari's docs but not in that schema: when an answer lacks it, the time is the answer's
//! (its `Date` header) and a poll whose price and volume did not change is skipped. Assets are
//! asked for 20 per request (the documented maximum), as `assets` (the docs' parameter) and as
//! `slugs`/`ids` (the OpenAPI's).
//!
//! **Offset**: per asset (source partition `messari:{asset}`), the price time of the last
//! delivered record. A poll whose price time did not move past it is skipped and counted, so a
//! 3 s poll of a price that changes every minute makes no duplicates, and neither does a restart.

use super::client::{at_base, excerpt, Fetched, HttpClient, HttpSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_api::{
    async_trait, BadInput, ConnectorError, FieldError, Payload, Record, Secret, Source,
    SourceBuildContext, SourceConfig, SourceRecord,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Polls Messari for the market data of some assets.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessariSourceConfig {
    /// Assets by Messari slug or id (`bitcoin`, `ethereum`); with `api: v1` also symbols (`btc`).
    pub assets: Vec<String>,
    /// `v2`: `GET /metrics/v2/assets/details?assets=…`, every asset in one request (Messari's
    /// current API). `v1`: the retired `GET /api/v1/assets/{asset}/metrics/market-data`, one
    /// request per asset, as the seed used it (self-hosted mirrors and recordings still serve it).
    #[serde(default)]
    pub api: Api,
    /// Messari API key, sent as `X-Messari-API-Key`. Never logged or stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Where the API is (a mirror, a proxy, a test server); default the host of `api`:
    /// `https://api.messari.io` for v2, `https://data.messari.io` for v1 (the seed's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Wait between polls (the seed polled every 3 s).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Requests per minute your Messari plan allows: start-up warns when `interval` and the
    /// assets ask for more. Default: Messari's documented limits, for v2 200 per minute (the
    /// global limit of the unpaid, Lite and Pro plans; Enterprise has 600), for the v1 API 20
    /// per minute without a key and 30 with a free key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_requests_per_minute: Option<u32>,
    /// Timeouts, retries, backoff and the request budget.
    #[serde(default)]
    pub http: HttpSettings,
}

/// Messari API version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    #[default]
    V2,
    V1,
}

impl MessariSourceConfig {
    /// `base_url`, or the host of the API version asked for.
    fn base_url(&self) -> &str {
        match (&self.base_url, self.api) {
            (Some(url), _) if !url.trim().is_empty() => url,
            (_, Api::V2) => "https://api.messari.io",
            (_, Api::V1) => "https://data.messari.io",
        }
    }
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}

#[sluice_api::source("messari")]
impl SourceConfig for MessariSourceConfig {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.assets.is_empty() || self.assets.iter().any(|a| a.trim().is_empty()) {
            errors.push(FieldError::new(
                "assets",
                "must name at least one asset, none empty",
            ));
        }
        if let Err(e) = reqwest::Url::parse(self.base_url()) {
            errors.push(FieldError::new("base_url", format!("not a URL: {e}")));
        }
        if self.interval.is_zero() {
            errors.push(FieldError::new("interval", "must be longer than 0"));
        }
        FieldError::all(errors)
    }

    async fn build(&self, ctx: SourceBuildContext) -> Result<Box<dyn Source>, ConnectorError> {
        let per_poll = match self.api {
            Api::V2 => self.assets.len().div_ceil(ASSETS_PER_REQUEST),
            Api::V1 => self.assets.len(),
        };
        let wanted = 60.0 / self.interval.as_secs_f64() * per_poll as f64;
        let allowed = self.plan_requests_per_minute.unwrap_or(match self.api {
            Api::V2 => 200,
            Api::V1 if self.api_key.is_some() => 30,
            Api::V1 => 20,
        });
        if wanted > f64::from(allowed) {
            tracing::warn!(
                component = %ctx.component,
                "polling every {:?} for {} asset(s) sends {wanted:.0} requests per minute, over the {allowed} per minute of the plan (`plan_requests_per_minute`): Messari will answer 429 and the source will wait as it is told",
                self.interval,
                self.assets.len()
            );
        }
        let last_time = self
            .assets
            .iter()
            .filter_map(|asset| {
                let time = ctx.offsets.get(&partition(asset))?.as_str()?;
                Some((asset.clone(), time.to_string()))
            })
            .collect();
        Ok(Box::new(MessariSource {
            client: HttpClient::new(self.http.clone(), "`api_key` (sent as X-Messari-API-Key)")?
                .reporting_to(ctx.status.clone()),
            config: self.clone(),
            last_time,
            last_values: HashMap::new(),
            due: None,
            buffered: VecDeque::new(),
        }))
    }
}

/// Most assets one v2 details request may name (Messari's documented maximum).
const ASSETS_PER_REQUEST: usize = 20;

fn partition(asset: &str) -> String {
    format!("messari:{asset}")
}

struct MessariSource {
    config: MessariSourceConfig,
    client: HttpClient,
    /// Asset → price time of the last record delivered (or stored by an earlier run).
    last_time: HashMap<String, String>,
    /// Asset → price and volume of the last record delivered, for answers without a price
    /// time.
    last_values: HashMap<String, (Value, Value)>,
    due: Option<tokio::time::Instant>,
    buffered: VecDeque<SourceRecord>,
}

#[async_trait]
impl Source for MessariSource {
    async fn poll(&mut self, max: usize) -> Result<Option<Vec<SourceRecord>>, ConnectorError> {
        if self.buffered.is_empty() {
            if let Some(due) = self.due {
                tokio::time::sleep_until(due).await;
            }
            self.due = Some(tokio::time::Instant::now() + self.config.interval);
            match self.config.api {
                Api::V2 => self.poll_v2().await?,
                Api::V1 => {
                    for asset in self.config.assets.clone() {
                        self.poll_v1(&asset).await?;
                    }
                }
            }
        }
        let take = max.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..take).collect()))
    }
}

impl MessariSource {
    async fn get(&mut self, url: reqwest::Url) -> Result<Fetched, ConnectorError> {
        let shown = super::client::endpoint("GET", &url);
        let key = self.config.api_key.clone();
        let fetched = self
            .client
            .fetch(&shown, |client| {
                let request = client.get(url.clone()).header("Accept", "application/json");
                match &key {
                    Some(key) => request.header("X-Messari-API-Key", key.expose()),
                    None => request,
                }
            })
            .await?;
        Ok(fetched)
    }

    async fn poll_v2(&mut self) -> Result<(), ConnectorError> {
        let assets = self.config.assets.clone();
        for chunk in assets.chunks(ASSETS_PER_REQUEST) {
            self.poll_v2_chunk(chunk).await?;
        }
        Ok(())
    }

    /// One details request for at most [`ASSETS_PER_REQUEST`] assets.
    async fn poll_v2_chunk(&mut self, assets: &[String]) -> Result<(), ConnectorError> {
        let mut url = at_base(self.config.base_url(), "/metrics/v2/assets/details")?;
        let (ids, slugs): (Vec<&String>, Vec<&String>) =
            assets.iter().partition(|a| looks_like_uuid(a));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("assets", &assets.join(","));
            for (name, list) in [("slugs", &slugs), ("ids", &ids)] {
                if !list.is_empty() {
                    let joined: Vec<&str> = list.iter().map(|a| a.as_str()).collect();
                    query.append_pair(name, &joined.join(","));
                }
            }
        }
        let answer = self.get(url).await?;
        let answered_at = answer_time(&answer.headers);
        let body = answer.body;
        let details =
            serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|doc| match doc.get("data") {
                    Some(Value::Array(items)) => Some(items.clone()),
                    _ => None,
                });
        let Some(details) = details else {
            let bad = format!(
                "the response is not Messari's asset details (`data`: [..]): {}",
                excerpt(&body)
            );
            self.bad(&assets[0], bad, body);
            return Ok(());
        };
        for asset in assets {
            let found = details.iter().find(|d| {
                ["slug", "id", "symbol"].iter().any(|f| {
                    d.get(*f)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.eq_ignore_ascii_case(asset))
                })
            });
            match found {
                Some(detail) => match flat_v2(asset, detail, &answered_at) {
                    Ok(record) => self.offer(asset, record),
                    Err(message) => {
                        let raw = detail.to_string().into_bytes();
                        self.bad(asset, message, raw)
                    }
                },
                None => tracing::warn!(%asset, "Messari's answer has no asset `{asset}`"),
            }
        }
        Ok(())
    }

    async fn poll_v1(&mut self, asset: &str) -> Result<(), ConnectorError> {
        let url = at_base(
            self.config.base_url(),
            &format!("/api/v1/assets/{asset}/metrics/market-data"),
        )?;
        let body = self.get(url).await?.body;
        let flat = serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("the response is not JSON ({e}): {}", excerpt(&body)))
            .and_then(|doc| flat_v1(asset, &doc).map_err(|m| format!("{m}: {}", excerpt(&body))));
        match flat {
            Ok(record) => self.offer(asset, record),
            Err(message) => self.bad(asset, message, body),
        }
        Ok(())
    }

    /// Buffers `value` unless its price time did not move past the last one delivered (or,
    /// for an answer without a price time, its price and volume did not change).
    fn offer(&mut self, asset: &str, (value, timed): (Value, bool)) {
        let time = value["time"].as_str().unwrap_or_default().to_string();
        let partition: Arc<str> = partition(asset).into();
        let values = (value["price_usd"].clone(), value["volume_24h"].clone());
        let unchanged = !timed && self.last_values.get(asset) == Some(&values);
        self.last_values.insert(asset.to_string(), values);
        if let Some(last) = self.last_time.get(asset) {
            if unchanged || later(&time, last) != Some(true) {
                self.buffered.push_back(SourceRecord {
                    partition,
                    offset: Value::String(last.clone()),
                    position: None,
                    payload: Payload::Skipped {
                        reason: if unchanged {
                            format!("the price of `{asset}` did not change (no price time)")
                        } else {
                            format!("the price time of `{asset}` did not move past {last}")
                        },
                    },
                });
                return;
            }
        }
        let mut record = Record::new(value);
        record.key = record.value["symbol"]
            .as_str()
            .map(|s| s.as_bytes().to_vec());
        record.timestamp = crate::shared::time_millis(&Value::String(time.clone()));
        self.last_time.insert(asset.to_string(), time.clone());
        // Price times grow per asset and are the same on every run: the position for
        // `exactly_once` (an answer's own time is not the same on every run: none).
        let position = record
            .timestamp
            .filter(|_| timed)
            .and_then(|t| u64::try_from(t).ok());
        self.buffered.push_back(SourceRecord {
            partition,
            offset: Value::String(time),
            position,
            payload: Payload::Record(record),
        });
    }

    fn bad(&mut self, asset: &str, message: String, raw: Vec<u8>) {
        let offset = self
            .last_time
            .get(asset)
            .map_or(Value::Null, |t| Value::String(t.clone()));
        self.buffered.push_back(SourceRecord {
            partition: partition(asset).into(),
            offset,
            position: None,
            payload: Payload::Bad(BadInput {
                raw,
                message: format!("messari `{asset}`: {message}"),
                location: format!("{} ({asset})", self.config.base_url()),
                ..BadInput::default()
            }),
        });
    }
}

/// True when RFC 3339 time `a` is later than `b`; `None` when either is not a time.
fn later(a: &str, b: &str) -> Option<bool> {
    let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
    Some(a > b)
}

/// A number, or null.
fn number(value: Option<&Value>) -> Value {
    match value {
        Some(v @ Value::Number(_)) => v.clone(),
        _ => Value::Null,
    }
}

/// `ohlcv_{window}_{open,…}` from an `{open,high,low,close,volume}` object (or null).
fn ohlcv(out: &mut Map<String, Value>, window: &str, candle: Option<&Value>) {
    for part in ["open", "high", "low", "close", "volume"] {
        out.insert(
            format!("ohlcv_{window}_{part}"),
            number(candle.and_then(|c| c.get(part))),
        );
    }
}

/// The time as RFC 3339 in UTC, or why it is not one.
fn utc(time: Option<&Value>, field: &str) -> Result<String, String> {
    let text = time
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no price time (`{field}`)"))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        })
        .map_err(|e| format!("`{field}` is not an RFC 3339 time ({e}): {text}"))
}

/// Where one API version keeps the record's fields.
struct Layout {
    /// The market data object's name (in the asset's object, or `data` for v1).
    market: &'static str,
    time: &'static str,
    price_usd: &'static str,
    /// (our field, theirs) for the other numbers of the market data; ours that are not listed
    /// are computed from the candles or `null`.
    numbers: &'static [(&'static str, &'static str)],
    ohlcv_1h: &'static str,
    ohlcv_24h: &'static str,
}

/// Fields of the record besides the asset's names, its time and the candles, in order.
const NUMBERS: [&str; 8] = [
    "price_usd",
    "price_btc",
    "price_eth",
    "volume_24h",
    "percent_change_usd_1h",
    "percent_change_usd_24h",
    "percent_change_btc_24h",
    "percent_change_eth_24h",
];

/// v2, as Messari's published OpenAPI has `AssetV2MarketData`.
const V2: Layout = Layout {
    market: "marketData",
    time: "priceAt",
    price_usd: "priceUsd",
    numbers: &[
        ("price_btc", "priceBtc"),
        ("price_eth", "priceEth"),
        ("volume_24h", "volume24Hour"),
    ],
    ohlcv_1h: "ohlcv1HourUsd",
    ohlcv_24h: "ohlcv24HourUsd",
};

const V1: Layout = Layout {
    market: "market_data",
    time: "last_trade_at",
    price_usd: "price_usd",
    numbers: &[
        ("price_btc", "price_btc"),
        ("price_eth", "price_eth"),
        ("volume_24h", "volume_last_24_hours"),
        ("percent_change_usd_1h", "percent_change_usd_last_1_hour"),
        ("percent_change_usd_24h", "percent_change_usd_last_24_hours"),
        ("percent_change_btc_24h", "percent_change_btc_last_24_hours"),
        ("percent_change_eth_24h", "percent_change_eth_last_24_hours"),
    ],
    ohlcv_1h: "ohlcv_last_1_hour",
    ohlcv_24h: "ohlcv_last_24_hour",
};

/// The flat record of one v2 asset detail (`marketData` in camelCase), and whether its time
/// is the price's (else `answered_at`, the answer's).
fn flat_v2(asset: &str, detail: &Value, answered_at: &str) -> Result<(Value, bool), String> {
    flat(asset, detail, detail, &V2, "marketData", Some(answered_at))
}

/// The flat record of a v1 market-data answer: `data{symbol,…,market_data}` or the seed's
/// `data{Asset{symbol,…}, market_data}`.
fn flat_v1(asset: &str, doc: &Value) -> Result<(Value, bool), String> {
    let data = doc
        .get("data")
        .filter(|d| d.is_object())
        .ok_or("no `data` object")?;
    let about = data.get("Asset").filter(|a| a.is_object()).unwrap_or(data);
    flat(asset, about, data, &V1, "data.market_data", None)
}

/// Percent change from a candle's open to its close, or null.
fn change(candle: Option<&Value>) -> Value {
    let part = |name: &str| candle.and_then(|c| c.get(name)).and_then(Value::as_f64);
    match (part("open"), part("close")) {
        (Some(open), Some(close)) if open != 0.0 => json!((close - open) / open * 100.0),
        _ => Value::Null,
    }
}

/// The seed's flat record from `about` (symbol, name, slug) and the market data in `holder`,
/// laid out as `layout` says; `path` names the market data in messages. Without a price time,
/// `fallback_time` (the answer's) is used when given, and the second value is false.
fn flat(
    asset: &str,
    about: &Value,
    holder: &Value,
    layout: &Layout,
    path: &str,
    fallback_time: Option<&str>,
) -> Result<(Value, bool), String> {
    let market = holder
        .get(layout.market)
        .filter(|m| m.is_object())
        .ok_or_else(|| format!("no `{path}` object"))?;
    let time_field = format!("{path}.{}", layout.time);
    let (time, timed) = match (market.get(layout.time), fallback_time) {
        (None | Some(Value::Null), Some(fallback)) => (fallback.to_string(), false),
        (given, _) => (utc(given, &time_field)?, true),
    };
    let price = number(market.get(layout.price_usd));
    if price.is_null() {
        return Err(format!("no `{path}.{}`", layout.price_usd));
    }
    let mut out = Map::new();
    out.insert("asset".into(), json!(asset));
    for field in ["symbol", "name", "slug"] {
        out.insert(
            field.into(),
            about.get(field).cloned().unwrap_or(Value::Null),
        );
    }
    out.insert("time".into(), json!(time));
    let candle_1h = market.get(layout.ohlcv_1h);
    let candle_24h = market.get(layout.ohlcv_24h);
    for ours in NUMBERS {
        let value = match layout.numbers.iter().find(|(o, _)| *o == ours) {
            _ if ours == "price_usd" => price.clone(),
            Some((_, theirs)) => number(market.get(*theirs)),
            None if ours == "percent_change_usd_1h" => change(candle_1h),
            None if ours == "percent_change_usd_24h" => change(candle_24h),
            None => Value::Null,
        };
        out.insert(ours.into(), value);
    }
    ohlcv(&mut out, "1h", candle_1h);
    ohlcv(&mut out, "24h", candle_24h);
    Ok((Value::Object(out), timed))
}

/// Whether an asset is named by its Messari id (a UUID) rather than a slug.
fn looks_like_uuid(asset: &str) -> bool {
    let parts: Vec<&str> = asset.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// When an answer was made, by its `Date` header (else now), as RFC 3339 in UTC.
fn answer_time(headers: &reqwest::header::HeaderMap) -> String {
    let at = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `api: v1` alone asks the v1 host (the seed's `data.messari.io`), not v2's, which
    /// answers its paths 404; a `base_url` given wins for both.
    #[test]
    fn each_api_version_has_its_own_default_host() {
        let config = |yaml: &str| -> MessariSourceConfig { serde_yaml::from_str(yaml).unwrap() };
        assert_eq!(
            config("assets: [btc]\napi: v1").base_url(),
            "https://data.messari.io"
        );
        assert_eq!(
            config("assets: [bitcoin]").base_url(),
            "https://api.messari.io"
        );
        assert_eq!(
            config("assets: [btc]\napi: v1\nbase_url: http://127.0.0.1:9").base_url(),
            "http://127.0.0.1:9"
        );
    }

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../tests/fixtures/api/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
    }

    #[test]
    fn both_v1_layouts_become_the_same_flat_record() {
        let (flat, timed) = flat_v1("btc", &fixture("messari-v1-market-data-btc.json")).unwrap();
        let seed = flat_v1(
            "btc",
            &fixture("messari-v1-market-data-btc.seed-variant.json"),
        )
        .unwrap();
        assert_eq!((flat.clone(), timed), seed);
        assert!(timed);
        assert_eq!(flat["symbol"], "BTC");
        assert_eq!(flat["time"], "2023-01-09T09:18:16Z");
        assert_eq!(flat["price_usd"], json!(17202.845721661743));
        assert_eq!(flat["volume_24h"], json!(4775661151.531321));
        assert_eq!(flat["ohlcv_1h_open"], Value::Null);
        assert_eq!(flat["ohlcv_24h_close"], json!(16948.43577849905));
        assert_eq!(flat["percent_change_usd_24h"], json!(1.5010821440255844));
    }

    /// v2 as Messari's published schema has it: no percent changes (those of USD come from
    /// the candles, the others are null) and `priceAt` only sometimes; a missing price time
    /// is not a reason to dead-letter the asset, a missing price is.
    #[test]
    fn a_v2_detail_becomes_the_same_fields_and_a_missing_price_is_refused() {
        let doc = fixture("messari-v2-assets-details.json");
        let answered = "2026-12-07T22:00:00Z";
        let (flat, timed) = flat_v2("bitcoin", &doc["data"][0], answered).unwrap();
        assert!(timed);
        assert_eq!(flat["symbol"], "BTC");
        assert_eq!(flat["asset"], "bitcoin");
        assert_eq!(flat["time"], "2023-01-09T09:18:16Z");
        assert!(flat["price_usd"].is_f64());
        assert!(flat["ohlcv_24h_volume"].is_number());
        let day = (16948.43577849905 - 16948.15437781874) / 16948.15437781874 * 100.0;
        assert_eq!(flat["percent_change_usd_24h"], json!(day));
        assert_eq!(flat["percent_change_usd_1h"], Value::Null);
        assert_eq!(flat["percent_change_btc_24h"], Value::Null);
        let keys: Vec<&String> = flat.as_object().unwrap().keys().collect();
        let (v1, _) = flat_v1("btc", &fixture("messari-v1-market-data-btc.json")).unwrap();
        assert_eq!(keys, v1.as_object().unwrap().keys().collect::<Vec<_>>());

        let (eth, timed) = flat_v2("ethereum", &doc["data"][1], answered).unwrap();
        assert!(!timed);
        assert_eq!(eth["time"], answered);
        assert!(eth["percent_change_usd_1h"].is_f64(), "{eth}");

        let mut broken = doc["data"][0].clone();
        broken["marketData"]
            .as_object_mut()
            .unwrap()
            .remove("priceUsd");
        assert_eq!(
            flat_v2("bitcoin", &broken, answered).unwrap_err(),
            "no `marketData.priceUsd`"
        );
        assert!(looks_like_uuid("1e31218a-e44e-4285-820c-8282ee222035"));
        assert!(!looks_like_uuid("bitcoin"));
    }

    #[test]
    fn price_times_compare_as_times() {
        assert_eq!(
            later("2023-01-09T09:18:17Z", "2023-01-09T09:18:16Z"),
            Some(true)
        );
        assert_eq!(
            later("2023-01-09T10:18:16+01:00", "2023-01-09T09:18:16Z"),
            Some(false)
        );
        assert_eq!(later("soon", "2023-01-09T09:18:16Z"), None);
    }
}
