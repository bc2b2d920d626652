//! What every HTTP source shares: timeouts, retries with backoff and jitter, `Retry-After` and
//! `x-rate-limit-reset`, a request budget, and statuses checked before any body is read.
//!
//! - 2xx: the body is returned.
//! - A rate limit: 429, or a 403 that says so (GitHub answers its limits with 403 or 429, with
//!   `x-ratelimit-remaining: 0`, or `Retry-After` for its secondary limits): retried, see below.
//! - 401/403 otherwise: the run fails at once with one message naming the source, the endpoint
//!   and what to check; it is never retried (a loop printing `403` forever helps nobody).
//! - 408, 429, 5xx and network errors: retried after the server's `Retry-After` (seconds or an
//!   HTTP date), or, when its remaining count is 0 (or not sent), after its reset time:
//!   `x-rate-limit-reset` (X) or `x-ratelimit-reset` (GitHub), Unix seconds, or
//!   `ratelimit-reset` (the IETF draft), seconds from now; else after an exponential backoff
//!   with jitter (a 429 with requests remaining, such as X's TooManyConnections, is not made
//!   to wait until the window's reset); every wait is bounded by `backoff.max` and logged.
//! - Any other status: the run fails, with an excerpt of the body.

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_api::ConnectorError;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Connection, retry and rate settings of an HTTP source.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Longest wait for a connection to be set up.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Longest wait for a whole response (headers and body) once connected.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Attempts at one request before the run fails (network errors, 408, 429, 5xx); `0`
    /// retries for as long as the run lasts, which suits a source left running for weeks.
    #[serde(default)]
    pub max_retries: u32,
    /// Waits between retries when the server does not say how long to wait.
    #[serde(default)]
    pub backoff: Backoff,
    /// Most requests per minute this source sends, retries included, so a catch-up (backfill,
    /// pagination) stays within an API quota; unset sends as fast as the answers come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_minute: Option<u32>,
    /// The `User-Agent` sent: default `sluice/<version>`, or a browser's for `yahoo_finance`
    /// (Yahoo answers other agents 429, as yfinance and yahoo-finance2 found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            max_retries: 0,
            backoff: Backoff::default(),
            max_requests_per_minute: None,
            user_agent: None,
        }
    }
}

/// Sluice's own `User-Agent`.
pub const SLUICE_AGENT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// A current desktop browser's `User-Agent`, for services that refuse other clients.
pub const BROWSER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// Exponential backoff with full jitter: the n-th wait is random in [base·2ⁿ / 2, base·2ⁿ],
/// at most `max`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First wait.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial: Duration,
    /// Longest wait, also the longest a `Retry-After` or `x-rate-limit-reset` is obeyed.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}

/// An answered request: status (2xx, or one the caller takes itself), headers, body.
#[derive(Debug)]
pub struct Fetched {
    /// Where the answer came from, after any redirects.
    pub url: reqwest::Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A client for one source: its settings, request budget and what to call it in messages.
/// Clones share the budget.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    settings: HttpSettings,
    /// When the last requests were (or will be) sent, for `max_requests_per_minute`.
    sent: Arc<Mutex<VecDeque<Instant>>>,
    /// What to check when the API refuses the credentials (names the config fields).
    auth_hint: String,
    /// Where waiting out a rate limit shows (`THROTTLED` in the status, with a count).
    metrics: Option<Arc<dyn sluice_api::SourceStatus>>,
}

impl HttpClient {
    pub fn new(
        settings: HttpSettings,
        auth_hint: impl Into<String>,
    ) -> Result<Self, ConnectorError> {
        Self::build(settings, auth_hint, false)
    }

    /// Like [`HttpClient::new`], with a cookie jar: cookies a server sets (on redirects too)
    /// are sent back to it, by the domain and path rules of RFC 6265, as a browser does.
    pub fn keeping_cookies(
        settings: HttpSettings,
        auth_hint: impl Into<String>,
    ) -> Result<Self, ConnectorError> {
        Self::build(settings, auth_hint, true)
    }

    fn build(
        settings: HttpSettings,
        auth_hint: impl Into<String>,
        cookies: bool,
    ) -> Result<Self, ConnectorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(settings.user_agent.as_deref().unwrap_or(SLUICE_AGENT))
            .cookie_store(cookies)
            .build()
            .map_err(|e| ConnectorError::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            settings,
            sent: Arc::default(),
            auth_hint: auth_hint.into(),
            metrics: None,
        })
    }

    /// Shows in `metrics` when the client waits out a rate limit.
    pub fn reporting_to(mut self, metrics: Option<Arc<dyn sluice_api::SourceStatus>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shows (or stops showing) the source as waiting out a rate limit, for waits the
    /// caller does itself (a stream's reconnects).
    pub fn show_throttled(&self, now: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.set_throttled(now);
        }
    }

    /// Sends the request `build` makes (again for each attempt) to `endpoint` (a description
    /// for messages: method and URL without query or credentials) and returns a 2xx answer.
    pub async fn fetch(
        &self,
        endpoint: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Fetched, ConnectorError> {
        self.fetch_taking(endpoint, &[], build).await
    }

    /// Like [`HttpClient::fetch`], but answers with a status in `taken` are returned as they
    /// are, for the caller to handle (Yahoo's 401 "Invalid Crumb" asks for a new crumb).
    pub async fn fetch_taking(
        &self,
        endpoint: &str,
        taken: &[u16],
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Fetched, ConnectorError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.spend_budget().await;
            let failure = match build(&self.client).send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let url = response.url().clone();
                    if status.is_success() || taken.contains(&status.as_u16()) {
                        self.show_throttled(false);
                        match response.bytes().await {
                            Ok(body) => {
                                return Ok(Fetched {
                                    url,
                                    status,
                                    headers,
                                    body: body.to_vec(),
                                })
                            }
                            Err(e) => Failure::Network(describe(e)),
                        }
                    } else {
                        let body = response.bytes().await.unwrap_or_default();
                        self.refusal(endpoint, status, &headers, &body)?
                    }
                }
                Err(e) => Failure::Network(describe(e)),
            };
            let (reason, told) = match failure {
                Failure::Network(reason) => (reason, None),
                Failure::Status(reason, told) => (reason, told),
                Failure::RateLimited(reason, told) => {
                    self.show_throttled(true);
                    (reason, told)
                }
            };
            if self.settings.max_retries > 0 && attempt >= self.settings.max_retries {
                return Err(ConnectorError::transient(format!(
                    "{endpoint}: {reason}; gave up after {attempt} attempts (`max_retries`)"
                )));
            }
            let wait = told
                .unwrap_or_else(|| self.settings.backoff.delay(attempt))
                .min(self.settings.backoff.max);
            tracing::warn!(%endpoint, attempt, "{reason}; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// What a non-2xx answer means: retry (with the wait the server asked for), or fail.
    fn refusal(
        &self,
        endpoint: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Failure, ConnectorError> {
        let code = status.as_u16();
        if code == 429 || (code == 403 && rate_limit_spent(headers)) {
            return Ok(Failure::RateLimited(
                format!("{endpoint} answered {status}: the API's rate limit is spent"),
                server_wait(headers, SystemTime::now()),
            ));
        }
        if code == 403 && allowance_spent(body) {
            return Err(ConnectorError::user(format!(
                "{endpoint} answered {status}: the account's usage cap or credits are spent, the credentials are not at fault ({})",
                excerpt(body)
            )));
        }
        if code == 401 || code == 403 {
            return Err(ConnectorError::user(format!(
                "{endpoint} answered {status}: the credentials were refused; check {} ({})",
                self.auth_hint,
                excerpt(body)
            )));
        }
        if code == 408 || code == 429 || status.is_server_error() {
            return Ok(Failure::Status(
                format!("{endpoint} answered {status}"),
                server_wait(headers, SystemTime::now()),
            ));
        }
        Err(ConnectorError::external(format!(
            "{endpoint} answered {status}: {}",
            excerpt(body)
        )))
    }

    /// Waits until sending one more request keeps within `max_requests_per_minute`: at most
    /// that many in any minute.
    async fn spend_budget(&self) {
        let Some(per_minute) = self
            .settings
            .max_requests_per_minute
            .filter(|n| *n > 0)
            .map(|n| n as usize)
        else {
            return;
        };
        let window = Duration::from_secs(60);
        let wait = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            while sent.front().is_some_and(|t| *t + window <= now) {
                sent.pop_front();
            }
            let at = match sent.len().checked_sub(per_minute) {
                Some(i) => (sent[i] + window).max(now),
                None => now,
            };
            sent.push_back(at);
            at - now
        };
        if !wait.is_zero() {
            tracing::debug!(?wait, "request budget spent; waiting");
            tokio::time::sleep(wait).await;
        }
    }
}

enum Failure {
    Network(String),
    /// The reason, and the wait the server asked for.
    Status(String, Option<Duration>),
    /// A rate limit: the reason, and the wait the server asked for.
    RateLimited(String, Option<Duration>),
}

/// Whether an error body in problem-details form (`title`, `detail`, `type`, as X sends them)
/// says the account's allowance is spent (a usage cap, pay-per-use credits) rather than the
/// credentials refused.
pub fn allowance_spent(body: &[u8]) -> bool {
    let Ok(problem) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    ["title", "detail", "type"].iter().any(|field| {
        problem[field].as_str().is_some_and(|text| {
            let text = text.to_ascii_lowercase();
            text.contains("usage") || text.contains("credit")
        })
    })
}

/// A header's value as text.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The remaining count of the rate-limit window, under X's, GitHub's or the IETF draft's name.
fn remaining(headers: &HeaderMap) -> Option<u64> {
    [
        "x-rate-limit-remaining",
        "x-ratelimit-remaining",
        "ratelimit-remaining",
    ]
    .iter()
    .find_map(|name| header(headers, name)?.parse().ok())
}

/// Whether a 403 says a rate limit is spent rather than credentials refused: no requests
/// remain in the window, or the server says when to retry (GitHub's secondary limits).
fn rate_limit_spent(headers: &HeaderMap) -> bool {
    remaining(headers) == Some(0) || header(headers, "retry-after").is_some()
}

/// The wait a server asks for: `Retry-After` (seconds or an HTTP date); else, when no requests
/// remain in the window (or the count is not sent), until its reset: `x-rate-limit-reset` (X)
/// or `x-ratelimit-reset` (GitHub) in Unix seconds, `ratelimit-reset` (IETF draft) in seconds
/// from now. A reset with requests remaining (X's 429 TooManyConnections) asks for no wait.
pub fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(value) = header(headers, "retry-after") {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    if remaining(headers).is_some_and(|n| n > 0) {
        return None;
    }
    let epoch = ["x-rate-limit-reset", "x-ratelimit-reset"]
        .iter()
        .find_map(|name| header(headers, name)?.parse::<u64>().ok());
    if let Some(reset) = epoch {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
        return Some(at.duration_since(now).unwrap_or_default());
    }
    let seconds = header(headers, "ratelimit-reset")?.parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds))
}

/// A network error's message with its causes, without the URL (it may carry a query key).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The start of a body, for messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None if text.is_empty() => "empty body".into(),
        None => text.to_string(),
    }
}

/// `METHOD scheme://host/path` of a URL: no query, no credentials.
pub fn endpoint(method: &str, url: &reqwest::Url) -> String {
    format!("{method} {}", shown(url))
}

/// `scheme://host/path` of a URL, for messages: no query, no credentials.
pub fn shown(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// `path` under a source's `base_url`.
pub fn at_base(base_url: &str, path: &str) -> Result<reqwest::Url, ConnectorError> {
    let base = base_url.trim_end_matches('/');
    reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| {
        ConnectorError::user(format!("`base_url` makes no URL: {e}")).with_field("base_url")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_and_x_rate_limit_reset_give_the_wait() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        assert_eq!(server_wait(&headers, now), None);
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1700000042"));
        assert_eq!(server_wait(&headers, now), Some(Duration::from_secs(42)));
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(7))).unwrap(),
        );
        assert_eq!(server_wait(&headers, now), Some(Duration::from_secs(7)));
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(server_wait(&headers, now), Some(Duration::from_secs(3)));
        // A date already past: no wait.
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(server_wait(&headers, now), Some(Duration::ZERO));
    }

    /// X's 429 TooManyConnections comes with requests remaining: its reset time (15 minutes
    /// away) is not a wait. GitHub's names and the IETF draft's are read; a reset is a wait
    /// only once nothing remains.
    #[test]
    fn a_reset_time_is_a_wait_only_once_the_window_is_spent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        let x = headers(&[
            ("x-rate-limit-remaining", "49"),
            ("x-rate-limit-reset", "1700000899"),
        ]);
        assert_eq!(server_wait(&x, now), None);
        let x_spent = headers(&[
            ("x-rate-limit-remaining", "0"),
            ("x-rate-limit-reset", "1700000899"),
        ]);
        assert_eq!(server_wait(&x_spent, now), Some(Duration::from_secs(899)));
        let github = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000060"),
        ]);
        assert_eq!(server_wait(&github, now), Some(Duration::from_secs(60)));
        assert!(rate_limit_spent(&github));
        let ietf = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "30")]);
        assert_eq!(server_wait(&ietf, now), Some(Duration::from_secs(30)));
        let secondary = headers(&[("retry-after", "5")]);
        assert!(rate_limit_spent(&secondary));
        assert!(!rate_limit_spent(&headers(&[(
            "x-ratelimit-remaining",
            "4999"
        )])));
    }

    /// X's problem details for a spent allowance are told apart from refused credentials.
    #[test]
    fn a_spent_usage_cap_is_not_refused_credentials() {
        let capped = br#"{"title":"UsageCapExceeded","detail":"Usage cap exceeded: Monthly product cap","type":"https://api.twitter.com/2/problems/usage-capped"}"#;
        let credits = br#"{"title":"CreditsDepleted","detail":"Your enrolled account does not have any credits","type":"about:blank"}"#;
        let refused = br#"{"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}"#;
        assert!(allowance_spent(capped) && allowance_spent(credits));
        assert!(!allowance_spent(refused) && !allowance_spent(b"Forbidden"));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_max() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            for _ in 0..50 {
                let d = backoff.delay(attempt).as_millis();
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} ms");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_budget_spaces_requests_to_at_most_n_in_any_minute() {
        let client = HttpClient::new(
            HttpSettings {
                max_requests_per_minute: Some(2),
                ..HttpSettings::default()
            },
            "",
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        let mut sent_at = Vec::new();
        for _ in 0..5 {
            client.spend_budget().await;
            sent_at.push(started.elapsed().as_secs());
        }
        assert_eq!(sent_at, [0, 0, 60, 60, 120]);
    }

    #[test]
    fn endpoints_shown_in_messages_carry_no_query_and_no_credentials() {
        let url = reqwest::Url::parse("https://u:p@api.example.com/v1/x?api_key=s3cret").unwrap();
        assert_eq!(endpoint("GET", &url), "GET https://api.example.com/v1/x");
    }
}
