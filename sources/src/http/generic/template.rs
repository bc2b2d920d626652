//! The request's templates: `{offset.NAME}` placeholders, URL and JSON filling, `Link` and page-number steps.

use super::*;

pub(super) fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Names used as `{offset.NAME}` in `text`.
pub(super) fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{offset.") {
        rest = &rest[at + "{offset.".len()..];
        match rest.find('}') {
            Some(end) => {
                names.push(&rest[..end]);
                rest = &rest[end..];
            }
            None => break,
        }
    }
    names
}

/// `text` with each `{offset.NAME}` replaced by the field's value (URL-encoded if `encode`).
pub(super) fn fill(text: &str, fields: &IndexMap<String, String>, encode: bool) -> String {
    let mut out = text.to_string();
    for (name, value) in fields {
        let value = if encode {
            url_encode(value)
        } else {
            value.clone()
        };
        out = out.replace(&format!("{{offset.{name}}}"), &value);
    }
    out
}

pub(super) fn url_encode(text: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", [("v", text)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| text.to_string())
}

/// `url` with query parameter `param` set to `value`.
pub(super) fn with_param(url: &reqwest::Url, param: &str, value: &str) -> String {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != param)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = url.clone();
    url.set_query(None);
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &kept {
            pairs.append_pair(k, v);
        }
        pairs.append_pair(param, value);
    }
    url.to_string()
}

/// A JSON value as text: strings as they are, anything else as JSON.
pub(super) fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn fill_json(value: &Value, fields: &IndexMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(fill(s, fields, false)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_json(v, fields)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_json(v, fields)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `rel="next"` URL of one `Link` header value.
/// The `rel="next"` target of a `Link` header (RFC 8288): links are `<URI>; params`, separated
/// by commas outside the brackets (a URI may hold commas); `rel` may list several types.
pub(super) fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // This link's parameters run to the next `<` (the next link's start).
        let params_end = after.find('<').unwrap_or(after.len());
        let params = &after[..params_end];
        let is_next = params.split(';').any(|p| {
            let Some((name, value)) = p.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = after;
    }
}

pub(super) fn url_without_query(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| shown(&u))
        .unwrap_or_default()
}

/// `url` with the number in query parameter `param` advanced by `by`.
pub(super) fn step(url: &str, param: &str, by: u64) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let now: u64 = url
        .query_pairs()
        .find(|(k, _)| k == param)
        .and_then(|(_, v)| v.parse().ok())?;
    Some(with_param(&url, param, &(now + by).to_string()))
}
