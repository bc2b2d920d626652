//! A local server answering like the third-party APIs the HTTP sources read, from the fixtures in
//! `tests/fixtures/api/`, with faults to inject:
//! - `GET /items?cursor=…`: records `{id, n, at}` numbered from 0, `page_size` per page,
//!   `{"data": [...], "meta": {"next": TOKEN|null}}`; the token is the next record's number;
//! - `GET /api/v1/assets/{asset}/metrics/market-data` (Messari v1, the seed's layout) and
//!   `GET /metrics/v2/assets/details?assets=…` (v2): the fixtures, with the price time moved
//!   one second forward every `price_every` requests;
//! - every request must carry `required_header` (401 otherwise, with a JSON error body);
//! - while an outage is set ([`ApiMock::set_outage`]), every request gets its status;
//! - the first `busy_first` requests are answered 429 with `Retry-After: 1`, the next
//!   `github_limit_first` 403 with GitHub's spent-limit headers (remaining 0, reset 1 s on);
//! - the page starting at record `malformed_at` is answered once with a body that is not JSON;
//! - Yahoo: every request without a browser's `User-Agent` is answered 429 "Too Many
//!   Requests", as Yahoo does; `GET /consent` sets the cookie (answering 404, as Yahoo's
//!   consent host does) or, with `consent_wall` (the EU), redirects to a consent form whose
//!   POST (with its csrfToken and session, "agree") redirects through `/copyConsent`, which
//!   sets the cookie and redirects to the `originalDoneUrl` posted; `GET /v1/test/getcrumb`
//!   gives a crumb for the cookie (401 without it); `GET /v8/finance/chart/{symbol}` answers
//!   the BTC-USD fixture's bars in `[period1, period2)` to anyone (Yahoo's v8 chart needs no
//!   crumb today) or, with `crumb_required`, only with the cookie and current crumb (401
//!   "Invalid Crumb" otherwise, and once the crumb has served `crumb_lasts` charts); 404 with
//!   Yahoo's error body for other symbols. With a market time set
//!   ([`ApiMock::set_market_time`]) the chart is as Yahoo answers at that time: bars up to it,
//!   the one forming then with a close 1,000 above its final one, and the meta's
//!   `regularMarketTime` and `currentTradingPeriod`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Default)]
pub struct ApiFaults {
    /// Records `/items` serves in all.
    pub records: u64,
    pub page_size: u64,
    /// `(name, value)` every request must carry.
    pub required_header: Option<(String, String)>,
    /// The first this many requests are answered 429 with `Retry-After: 1`.
    pub busy_first: u32,
    /// The first this many requests are answered as GitHub answers a spent primary limit:
    /// 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (Unix seconds) 1 s ahead.
    /// Every answer carries `x-ratelimit-remaining` (> 0 when not spent).
    pub github_limit_first: u32,
    /// The page starting at this record is answered once with a body that is not JSON.
    pub malformed_at: Option<u64>,
    /// Messari's price time moves one second every this many requests (0: every request).
    pub price_every: u32,
    /// Milliseconds to wait before answering a page of `/items`.
    pub page_delay_ms: u64,
    /// Yahoo: the chart needs the cookie and a crumb (as Yahoo's did until 2024).
    pub crumb_required: bool,
    /// Yahoo: the crumb stops being valid after this many chart requests (0: never).
    pub crumb_lasts: u32,
    /// Yahoo: the consent host shows the EU's consent form before it sets the cookie.
    pub consent_wall: bool,
    /// Yahoo: a bar for today is added to BTC-USD's chart, its close moving every 2 requests.
    pub live_bar: bool,
}

#[derive(Default)]
struct Log {
    requests: Vec<(Instant, StatusCode, String)>,
    malformed_sent: bool,
    price_requests: u32,
    /// Yahoo: crumbs handed out, and chart requests with the current one.
    crumbs: u32,
    charts_with_crumb: u32,
    /// While set, every request is refused with this status (see [`ApiMock::set_outage`]).
    outage: Option<StatusCode>,
    /// Yahoo: the market's time the chart is answered at (see [`ApiMock::set_market_time`]).
    market_time: Option<i64>,
    /// Yahoo: where `/copyConsent` sends the browser, as posted with the consent.
    consent_done: Option<String>,
}

type Shared = Arc<(Mutex<Log>, ApiFaults)>;

pub struct ApiMock {
    pub url: String,
    state: Shared,
}

impl ApiMock {
    pub fn start(faults: ApiFaults) -> Self {
        let state: Shared = Arc::new((Mutex::new(Log::default()), faults));
        let app = Router::new()
            .route("/items", get(items))
            .route(
                "/api/v1/assets/{asset}/metrics/market-data",
                get(messari_v1),
            )
            .route("/metrics/v2/assets/details", get(messari_v2))
            .route("/consent", get(yahoo_consent))
            .route(
                "/v2/collectConsent",
                get(yahoo_consent_form).post(yahoo_collect_consent),
            )
            .route("/copyConsent", get(yahoo_copy_consent))
            .route("/v1/test/getcrumb", get(yahoo_crumb))
            .route("/v8/finance/chart/{symbol}", get(yahoo_chart))
            .with_state(state.clone());
        let url = super::es_mock::serve(app);
        ApiMock { url, state }
    }

    /// From now on every request is refused with `status` (a revoked key: 401), until called
    /// with `None`.
    pub fn set_outage(&self, status: Option<StatusCode>) {
        self.state.0.lock().unwrap().outage = status;
    }

    /// Yahoo: answer charts as at `time` (Unix seconds), the market's clock.
    pub fn set_market_time(&self, time: i64) {
        self.state.0.lock().unwrap().market_time = Some(time);
    }

    /// (time, status, path and query) of every request so far.
    pub fn requests(&self) -> Vec<(Instant, StatusCode, String)> {
        self.state.0.lock().unwrap().requests.clone()
    }
}

/// The answer to a request that passed the auth and busy checks, or the refusal.
fn gate(state: &Shared, headers: &HeaderMap, what: String) -> Result<(), Box<Response>> {
    let mut log = state.0.lock().unwrap();
    let faults = &state.1;
    if let Some(status) = log.outage {
        log.requests.push((Instant::now(), status, what));
        let body =
            json!({"status": {"error_code": status.as_u16(), "error_message": "key revoked"}});
        return Err(Box::new((status, body.to_string()).into_response()));
    }
    if let Some((name, value)) = &faults.required_header {
        let given = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        if given != Some(value.as_str()) {
            log.requests
                .push((Instant::now(), StatusCode::UNAUTHORIZED, what));
            let body = json!({"status": {"error_code": 401, "error_message": "invalid API key"}});
            return Err(Box::new(
                (StatusCode::UNAUTHORIZED, body.to_string()).into_response(),
            ));
        }
    }
    let busy = log.requests.len() < faults.busy_first as usize;
    if busy {
        log.requests
            .push((Instant::now(), StatusCode::TOO_MANY_REQUESTS, what));
        return Err(Box::new(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "{\"error\": \"rate limited\"}",
            )
                .into_response(),
        ));
    }
    if log.requests.len() < (faults.busy_first + faults.github_limit_first) as usize {
        log.requests
            .push((Instant::now(), StatusCode::FORBIDDEN, what));
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() + 1)
            .to_string();
        let body = json!({
            "message": "API rate limit exceeded for 127.0.0.1.",
            "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
        });
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                [
                    ("x-ratelimit-limit", "60".to_string()),
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-reset", reset),
                ],
                body.to_string(),
            )
                .into_response(),
        ));
    }
    log.requests.push((Instant::now(), StatusCode::OK, what));
    Ok(())
}

async fn items(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let from: u64 = query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if let Err(refused) = gate(&state, &headers, format!("/items?cursor={from}")) {
        return *refused;
    }
    let faults = &state.1;
    if faults.page_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.page_delay_ms)).await;
    }
    if faults.malformed_at == Some(from) {
        let mut log = state.0.lock().unwrap();
        if !std::mem::replace(&mut log.malformed_sent, true) {
            return (StatusCode::OK, "<html>upstream proxy error</html>").into_response();
        }
    }
    let to = (from + faults.page_size).min(faults.records);
    let data: Vec<Value> = (from..to)
        .map(|n| json!({"id": format!("item-{n}"), "n": n, "at": 1_700_000_000 + n}))
        .collect();
    let next = (to < faults.records).then(|| to.to_string());
    axum::Json(json!({"data": data, "meta": {"next": next}})).into_response()
}

/// The fixture `name` with the price time advanced by the requests so far.
fn priced(state: &Shared, name: &str, pointer: &str) -> Value {
    let path = format!("{}/tests/fixtures/api/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect(&path))
        .expect("fixture is JSON");
    let requests = {
        let mut log = state.0.lock().unwrap();
        log.price_requests += 1;
        log.price_requests - 1
    };
    let step = requests / state.1.price_every.max(1);
    let base = chrono::DateTime::parse_from_rfc3339("2023-01-09T09:18:16Z").unwrap();
    let time = (base + chrono::Duration::seconds(i64::from(step)))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for at in doc.pointer_mut(pointer).into_iter() {
        *at = json!(time);
    }
    // The price moves too (by up to 1 %, unchanged at the first step), so that aggregates of
    // prices (candles) differ from one another.
    let price = pointer.rsplit_once('/').map(|(parent, _)| {
        let field = if parent.contains("marketData") {
            "priceUsd"
        } else {
            "price_usd"
        };
        format!("{parent}/{field}")
    });
    if let Some(usd) = price.and_then(|p| doc.pointer_mut(&p)) {
        if let Some(base) = usd.as_f64() {
            *usd = json!(base * (1.0 + 0.001 * f64::from(step * 37 % 11)));
        }
    }
    doc
}

async fn messari_v1(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(asset): Path<String>,
) -> Response {
    if let Err(refused) = gate(&state, &headers, format!("/api/v1/assets/{asset}")) {
        return *refused;
    }
    let doc = priced(
        &state,
        "messari-v1-market-data-btc.seed-variant.json",
        "/data/market_data/last_trade_at",
    );
    axum::Json(doc).into_response()
}

/// Messari v2's asset details: the assets named by `slugs`/`ids` (the published OpenAPI) or
/// `assets` (the docs), at most 20 (400 otherwise, and 400 when none is named); the fixture's
/// entries, and for other slugs a copy of Bitcoin's under that slug.
async fn messari_v2(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut named: Vec<String> = Vec::new();
    for param in ["slugs", "ids", "assets"] {
        for asset in query
            .get(param)
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
        {
            if !asset.is_empty() && !named.iter().any(|n| n == asset) {
                named.push(asset.to_string());
            }
        }
    }
    let what = format!("/metrics/v2/assets/details?assets={}", named.join(","));
    if named.is_empty() || named.len() > 20 {
        state
            .0
            .lock()
            .unwrap()
            .requests
            .push((Instant::now(), StatusCode::BAD_REQUEST, what));
        let body = json!({"error": "between 1 and 20 assets must be given", "data": null});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if let Err(refused) = gate(&state, &headers, what) {
        return *refused;
    }
    let doc = priced(
        &state,
        "messari-v2-assets-details.json",
        "/data/0/marketData/priceAt",
    );
    let entries = doc["data"].as_array().cloned().unwrap_or_default();
    let data: Vec<Value> = named
        .iter()
        .map(|asset| {
            let known = entries.iter().find(|e| {
                e["slug"].as_str() == Some(asset.as_str())
                    || e["id"].as_str() == Some(asset.as_str())
            });
            known.cloned().unwrap_or_else(|| {
                let mut copy = entries[0].clone();
                copy["slug"] = json!(asset);
                copy["symbol"] = json!(asset.to_uppercase());
                copy["id"] = json!(format!("id-{asset}"));
                copy
            })
        })
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

const YAHOO_COOKIE: &str = "A3=d=sluice-test";

/// Yahoo's answer to a client that is not a browser (yfinance's and yahoo-finance2's issues:
/// "Too Many Requests" to anything without a browser's `User-Agent`), if this is one.
fn not_a_browser(state: &Shared, headers: &HeaderMap, what: &str) -> Option<Response> {
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if agent.starts_with("Mozilla/5.0") {
        return None;
    }
    state.0.lock().unwrap().requests.push((
        Instant::now(),
        StatusCode::TOO_MANY_REQUESTS,
        what.to_string(),
    ));
    Some((StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response())
}

fn logged(state: &Shared, status: StatusCode, what: &str) {
    state
        .0
        .lock()
        .unwrap()
        .requests
        .push((Instant::now(), status, what.to_string()));
}

/// The cookie Yahoo's crumb is tied to: host-only here (Yahoo's says `Domain=.yahoo.com`,
/// which a cookie jar rightly refuses for 127.0.0.1).
fn yahoo_cookie() -> String {
    format!("{YAHOO_COOKIE}; Expires=Fri, 01 Jan 2100 00:00:00 GMT; Path=/")
}

const CONSENT_SESSION: &str = "3_cc-session_5f1e";
const CONSENT_CSRF: &str = "csrf-9Tq2";

async fn yahoo_consent(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = not_a_browser(&state, &headers, "/consent") {
        return refused;
    }
    if state.1.consent_wall && !has_cookie(&headers) {
        logged(&state, StatusCode::FOUND, "/consent");
        return (
            StatusCode::FOUND,
            [
                (
                    "location",
                    format!("/v2/collectConsent?sessionId={CONSENT_SESSION}"),
                ),
                ("set-cookie", "GUCS=pending; Path=/".to_string()),
            ],
        )
            .into_response();
    }
    logged(&state, StatusCode::NOT_FOUND, "/consent");
    (
        StatusCode::NOT_FOUND,
        [("set-cookie", yahoo_cookie())],
        "<html>not here</html>",
    )
        .into_response()
}

async fn yahoo_consent_form(State(state): State<Shared>) -> Response {
    logged(&state, StatusCode::OK, "GET /v2/collectConsent");
    let page = format!(
        r#"<!doctype html><html><body><form method="post" class="consent-form" action="/v2/collectConsent?sessionId={CONSENT_SESSION}">
<input type="hidden" name="csrfToken" value="{CONSENT_CSRF}">
<input type="hidden" name="sessionId" value="{CONSENT_SESSION}">
<input type="hidden" name="originalDoneUrl" value="https://finance.yahoo.com/">
<input type="hidden" name="namespace" value="yahoo">
<button type="submit" name="agree" value="agree">Accept all</button>
<button type="submit" name="reject" value="reject">Reject all</button>
</form></body></html>"#
    );
    (StatusCode::OK, [("content-type", "text/html")], page).into_response()
}

/// The consent POST: refused (400) without the form's token and session, the pre-consent
/// cookie and "agree"; else on to `/copyConsent`, as Yahoo does.
async fn yahoo_collect_consent(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = reqwest::Url::parse(&format!("http://form/?{body}")).unwrap();
    let fields: Vec<(String, String)> = form.query_pairs().into_owned().collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let pre_consent = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("GUCS=pending"));
    let done = field("originalDoneUrl").unwrap_or_default().to_string();
    let ok = field("csrfToken") == Some(CONSENT_CSRF)
        && field("sessionId") == Some(CONSENT_SESSION)
        && field("agree") == Some("agree")
        && pre_consent
        // The stand-in only sends a browser back to itself.
        && done.starts_with("http://127.0.0.1:");
    if !ok {
        logged(&state, StatusCode::BAD_REQUEST, "POST /v2/collectConsent");
        return (StatusCode::BAD_REQUEST, "consent refused").into_response();
    }
    logged(&state, StatusCode::FOUND, "POST /v2/collectConsent");
    state.0.lock().unwrap().consent_done = Some(done);
    (
        StatusCode::FOUND,
        [(
            "location",
            format!("/copyConsent?sessionId={CONSENT_SESSION}"),
        )],
    )
        .into_response()
}

async fn yahoo_copy_consent(State(state): State<Shared>) -> Response {
    let done = state.0.lock().unwrap().consent_done.clone();
    let Some(done) = done else {
        logged(&state, StatusCode::BAD_REQUEST, "/copyConsent");
        return (StatusCode::BAD_REQUEST, "no consent").into_response();
    };
    logged(&state, StatusCode::FOUND, "/copyConsent");
    (
        StatusCode::FOUND,
        [("location", done), ("set-cookie", yahoo_cookie())],
    )
        .into_response()
}

fn has_cookie(headers: &HeaderMap) -> bool {
    headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split("; ").any(|part| part == YAHOO_COOKIE))
}

async fn yahoo_crumb(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = not_a_browser(&state, &headers, "/v1/test/getcrumb") {
        return refused;
    }
    let mut log = state.0.lock().unwrap();
    if !has_cookie(&headers) {
        log.requests.push((
            Instant::now(),
            StatusCode::UNAUTHORIZED,
            "/v1/test/getcrumb".into(),
        ));
        return (StatusCode::UNAUTHORIZED, "{\"error\": \"no cookie\"}").into_response();
    }
    log.crumbs += 1;
    log.charts_with_crumb = 0;
    log.requests
        .push((Instant::now(), StatusCode::OK, "/v1/test/getcrumb".into()));
    format!("crumb-{}", log.crumbs).into_response()
}

async fn yahoo_chart(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(symbol): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let what = format!("/v8/finance/chart/{symbol}");
    if let Some(refused) = not_a_browser(&state, &headers, &what) {
        return refused;
    }
    let mut log = state.0.lock().unwrap();
    let current = format!("crumb-{}", log.crumbs);
    let expired = state.1.crumb_lasts > 0 && log.charts_with_crumb >= state.1.crumb_lasts;
    let refused = !has_cookie(&headers) || query.get("crumb") != Some(&current) || expired;
    if state.1.crumb_required && refused {
        log.requests
            .push((Instant::now(), StatusCode::UNAUTHORIZED, what));
        let body = json!({"finance": {"result": null, "error": {"code": "Unauthorized", "description": "Invalid Crumb"}}});
        return (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
    }
    log.charts_with_crumb += 1;
    let path = format!("{}/tests/fixtures/api", env!("CARGO_MANIFEST_DIR"));
    if symbol != "BTC-USD" {
        log.requests
            .push((Instant::now(), StatusCode::NOT_FOUND, what));
        let body = std::fs::read_to_string(format!("{path}/yahoo-chart-v8-error.json")).unwrap();
        return (StatusCode::NOT_FOUND, body).into_response();
    }
    let chart_requests = log
        .requests
        .iter()
        .filter(|r| r.2.starts_with("/v8/") && r.1 == StatusCode::OK)
        .count();
    log.requests.push((Instant::now(), StatusCode::OK, what));
    let market_time = log.market_time;
    drop(log);
    let mut doc: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{path}/yahoo-chart-v8-BTC-USD-2014-09-17..2014-10-16.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let number = |name: &str| {
        query
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let (from, to) = (number("period1"), number("period2"));
    let result = &mut doc["chart"]["result"][0];
    let mut timestamps: Vec<i64> = result["timestamp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    let quote = result["indicators"]["quote"][0].clone();
    let mut series: Vec<(String, Vec<Value>)> = ["open", "high", "low", "close", "volume"]
        .iter()
        .map(|k| (k.to_string(), quote[*k].as_array().unwrap().clone()))
        .collect();
    let mut adjclose = result["indicators"]["adjclose"][0]["adjclose"]
        .as_array()
        .unwrap()
        .clone();
    if let Some(time) = market_time {
        // As Yahoo answers at `time`: bars up to it, the one forming then not yet final.
        let day = time - time.rem_euclid(86_400);
        let meta = &mut result["meta"];
        meta["regularMarketTime"] = json!(time);
        meta["currentTradingPeriod"] = json!({
            "regular": {"timezone": "UTC", "start": day, "end": day + 86_400, "gmtoffset": 0}
        });
        let shown = timestamps.iter().filter(|t| **t <= time).count();
        timestamps.truncate(shown);
        for (_, values) in &mut series {
            values.truncate(shown);
        }
        adjclose.truncate(shown);
        if timestamps.last() == Some(&day) {
            let live = |v: &Value| json!(v.as_f64().unwrap() + 1000.0);
            for (name, values) in &mut series {
                if name == "close" || name == "high" {
                    let last = values.last_mut().unwrap();
                    *last = live(last);
                }
            }
            let last = adjclose.last_mut().unwrap();
            *last = live(last);
        }
    } else if state.1.live_bar {
        let today = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        let close = 100.0 + (chart_requests / 2) as f64;
        timestamps.push(today);
        for (name, values) in &mut series {
            values.push(if name == "volume" {
                json!(1000)
            } else {
                json!(close)
            });
        }
        adjclose.push(json!(close));
    }
    let keep: Vec<usize> = (0..timestamps.len())
        .filter(|i| timestamps[*i] >= from && timestamps[*i] < to)
        .collect();
    let pick = |values: &[Value]| Value::Array(keep.iter().map(|i| values[*i].clone()).collect());
    if keep.is_empty() {
        result.as_object_mut().unwrap().remove("timestamp");
        result["indicators"] = json!({"quote": [{}], "adjclose": [{}]});
    } else {
        result["timestamp"] = json!(keep.iter().map(|i| timestamps[*i]).collect::<Vec<_>>());
        for (name, values) in &series {
            result["indicators"]["quote"][0][name.as_str()] = pick(values);
        }
        result["indicators"]["adjclose"][0]["adjclose"] = pick(&adjclose);
    }
    axum::Json(doc).into_response()
}
