//! A local server answering like the third-party APIs the HTTP sources read, from the fixtures in
//! `tests/fixtures/api/`, with faults to inject:
//! - `GET /items?cursor=…`: records `{id, n, at}` numbered from 0, `page_size` per page,
//!   `{"data": [...], "meta": {"next": TOKEN|null}}`; the token is the next record's number;
//! - `GET /api/v1/assets/{asset}/metrics/market-data` (Messari v1, the seed's layout) and
//!   `GET /metrics/v2/assets/details?assets=…` (v2): the fixtures, with the price time moved
//!   one second forward every `price_every` requests;
//! - every request must carry `required_header` (401 otherwise, with a JSON error body);
//! - the first `busy_first` requests are answered 429 with `Retry-After: 1`;
//! - the page starting at record `malformed_at` is answered once with a body that is not JSON.

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
    /// The page starting at this record is answered once with a body that is not JSON.
    pub malformed_at: Option<u64>,
    /// Messari's price time moves one second every this many requests (0: every request).
    pub price_every: u32,
    /// Milliseconds to wait before answering a page of `/items`.
    pub page_delay_ms: u64,
}

#[derive(Default)]
struct Log {
    requests: Vec<(Instant, StatusCode, String)>,
    malformed_sent: bool,
    price_requests: u32,
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
            .with_state(state.clone());
        let url = super::es_mock::serve(app);
        ApiMock { url, state }
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

async fn messari_v2(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let assets = query.get("assets").cloned().unwrap_or_default();
    if let Err(refused) = gate(
        &state,
        &headers,
        format!("/metrics/v2/assets/details?assets={assets}"),
    ) {
        return *refused;
    }
    let doc = priced(
        &state,
        "messari-v2-assets-details.json",
        "/data/0/marketData/priceAt",
    );
    axum::Json(doc).into_response()
}
