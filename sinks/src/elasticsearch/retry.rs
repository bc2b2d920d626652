//! What an answer of Elasticsearch means: done, try again, or refused for good.

use serde_json::Value;
use std::time::Duration;

/// The fate of one `_bulk` item.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Done,
    /// Overloaded or unavailable (429, `es_rejected_execution_exception`, 5xx): send it again.
    Retry(String),
    /// Refused for its content (mapping or parse error…).
    Refused(String),
    /// Refused because of how the sink is set up (credentials, privileges, a missing or
    /// read-only index): no document is at fault, so the batch fails with the message.
    Setup(String),
}

/// Error types of `_bulk` items that are about the cluster or the credentials, not the document.
const SETUP_ERRORS: &[&str] = &[
    "security_exception",
    "cluster_block_exception",
    "index_not_found_exception",
    "index_closed_exception",
    "authorization_exception",
];

/// Reads one item of a `_bulk` response (`{"index": {"status": 201, …}}`).
pub fn item_verdict(item: &Value) -> Verdict {
    let Some((action, result)) = item.as_object().and_then(|o| o.iter().next()) else {
        return Verdict::Retry("malformed bulk item in the response".into());
    };
    let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
    let error = result.get("error");
    if error.is_none() && (200..300).contains(&status) {
        return Verdict::Done;
    }
    // A delete of a missing document is what the tombstone asked for.
    if status == 404 && error.is_none() {
        return Verdict::Done;
    }
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let reason = error
        .and_then(|e| e.get("reason"))
        .and_then(Value::as_str)
        .map(|r| format!("{kind}: {r}"))
        .unwrap_or_else(|| format!("status {status}"));
    // `create` of an id that exists: the document was written before (a replay).
    if action == "create" && status == 409 {
        return Verdict::Done;
    }
    if status == 429 || kind == "es_rejected_execution_exception" || status >= 500 {
        Verdict::Retry(reason)
    } else if matches!(status, 401 | 403) || SETUP_ERRORS.contains(&kind) {
        Verdict::Setup(format!("{reason} (status {status})"))
    } else {
        Verdict::Refused(format!("{reason} (status {status})"))
    }
}

/// Whether a whole-request HTTP status may pass.
pub fn status_retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Exponential backoff with ±25 % jitter.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial.saturating_mul(1 << attempt.min(16)).min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = (nanos % 500) as f64 / 1000.0 - 0.25; // -0.25 .. +0.25
    base.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retries_the_items_that_failed_with_429_and_refuses_mapping_errors() {
        assert_eq!(
            item_verdict(&json!({"index": {"status": 201}})),
            Verdict::Done
        );
        let busy = json!({"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}});
        assert!(matches!(item_verdict(&busy), Verdict::Retry(_)));
        let mapping = json!({"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [Close] of type [double]"}}});
        match item_verdict(&mapping) {
            Verdict::Refused(r) => {
                assert!(r.contains("mapper_parsing_exception") && r.contains("Close"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            item_verdict(&json!({"delete": {"status": 404, "result": "not_found"}})),
            Verdict::Done
        );
    }

    #[test]
    fn a_create_conflict_is_a_document_already_written() {
        let conflict = json!({"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "[x]: version conflict, document already exists"}}});
        assert_eq!(item_verdict(&conflict), Verdict::Done);
        // On `index` or `update` a 409 is not expected to mean the same.
        let update = json!({"update": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "conflict"}}});
        assert!(matches!(item_verdict(&update), Verdict::Refused(_)));
    }

    #[test]
    fn errors_about_the_setup_are_not_bad_documents() {
        for (status, kind) in [
            (403, "security_exception"),
            (401, "security_exception"),
            (403, "cluster_block_exception"),
            (404, "index_not_found_exception"),
        ] {
            let item =
                json!({"index": {"status": status, "error": {"type": kind, "reason": "no"}}});
            assert!(
                matches!(item_verdict(&item), Verdict::Setup(_)),
                "{status} {kind}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        assert!(backoff(0, i, m) <= Duration::from_millis(125));
        assert!(backoff(3, i, m) >= Duration::from_millis(600));
        assert!(backoff(30, i, m) <= Duration::from_millis(2500));
    }
}
