//! The cookie and crumb Yahoo ties some requests to, got as a browser gets them: the cookie
//! from the consent host (following its redirects with a cookie jar), the consent form agreed
//! to where Yahoo shows one (the EU's GDPR wall: `guce.yahoo.com` → `consent.yahoo.com`, the
//! flow yfinance's "csrf" strategy follows), then the crumb from `/v1/test/getcrumb`.

use super::super::client::{at_base, endpoint, excerpt, shown, HttpClient};
use sluice_api::ConnectorError;

/// A consent form: where it posts, and the fields a browser sends when "agree" is clicked.
#[derive(Debug, PartialEq)]
pub(super) struct ConsentForm {
    pub action: reqwest::Url,
    pub fields: Vec<(String, String)>,
}

/// A crumb for the cookies now in `client`'s jar, after agreeing to Yahoo's consent form if
/// the consent host shows one.
pub(super) async fn crumb(
    client: &HttpClient,
    consent_url: &str,
    base_url: &str,
) -> Result<String, ConnectorError> {
    let consent = reqwest::Url::parse(consent_url).map_err(|e| {
        ConnectorError::user(format!("`consent_url`: {e}")).with_field("consent_url")
    })?;
    // Outside the EU the consent host answers 404 with the cookie set: any answer will do.
    let page = client
        .fetch_taking(&endpoint("GET", &consent), &[404], |c| {
            c.get(consent.clone())
        })
        .await?;
    if let Some(form) = consent_form(&String::from_utf8_lossy(&page.body), &page.url, &consent) {
        tracing::info!(
            "Yahoo shows its consent form ({}): agreeing, as a browser's user does, to get the cookie",
            shown(&form.action)
        );
        let fields = form.fields;
        client
            .fetch_taking(&endpoint("POST", &form.action), &[404], |c| {
                c.post(form.action.clone()).form(&fields)
            })
            .await?;
    }
    let crumb_url = at_base(base_url, "/v1/test/getcrumb")?;
    let answer = client
        .fetch_taking(&endpoint("GET", &crumb_url), &[401, 403], |c| {
            c.get(crumb_url.clone())
        })
        .await?;
    let crumb = String::from_utf8_lossy(&answer.body).trim().to_string();
    if !answer.status.is_success() {
        return Err(ConnectorError::user(format!(
            "{} answered {}: Yahoo did not take the cookie from {} ({}); if Yahoo shows a consent page in this region, it may have changed",
            endpoint("GET", &crumb_url),
            answer.status,
            shown(&consent),
            excerpt(&answer.body)
        ))
        .with_field("consent_url"));
    }
    if crumb.is_empty() || crumb.contains('<') || crumb.contains('{') {
        return Err(ConnectorError::external(format!(
            "{} gave no crumb: {}",
            endpoint("GET", &crumb_url),
            excerpt(&answer.body)
        )));
    }
    Ok(crumb)
}

/// The consent form on `page` (fetched from `url`), if it is one: a form holding a
/// `csrfToken` input. Its hidden inputs are sent as they are, with `agree=agree` (Yahoo's
/// "Accept all" button, which yfinance sends twice as the page does) and `originalDoneUrl`
/// pointing back at the consent host, so the redirects end where they began.
pub(super) fn consent_form(
    page: &str,
    url: &reqwest::Url,
    done: &reqwest::Url,
) -> Option<ConsentForm> {
    let lower = page.to_ascii_lowercase();
    let mut from = 0;
    while let Some(start) = lower[from..].find("<form").map(|i| from + i) {
        let end = lower[start..]
            .find("</form")
            .map_or(page.len(), |i| start + i);
        from = end;
        let form = &page[start..end];
        let inputs: Vec<Vec<(String, String)>> = tags(form, "input").collect();
        let has_token = inputs
            .iter()
            .any(|attrs| attr(attrs, "name").is_some_and(|n| n == "csrfToken"));
        if !has_token {
            continue;
        }
        let form_tag = tags(form, "form").next().unwrap_or_default();
        let session = inputs
            .iter()
            .find(|a| attr(a, "name").is_some_and(|n| n == "sessionId"))
            .and_then(|a| attr(a, "value"))
            .unwrap_or_default();
        let action = match attr(&form_tag, "action").filter(|a| !a.is_empty()) {
            Some(action) => url.join(action).ok()?,
            None => url
                .join(&format!("/v2/collectConsent?sessionId={session}"))
                .ok()?,
        };
        let mut fields: Vec<(String, String)> = inputs
            .iter()
            .filter(|a| attr(a, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")))
            .filter_map(|a| Some((attr(a, "name")?.to_string(), attr(a, "value")?.to_string())))
            .filter(|(name, _)| name != "originalDoneUrl")
            .collect();
        fields.push(("agree".into(), "agree".into()));
        fields.push(("agree".into(), "agree".into()));
        fields.push(("originalDoneUrl".into(), done.to_string()));
        return Some(ConsentForm { action, fields });
    }
    None
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The attributes of each `<name …>` tag in `html`, values unquoted and their entities
/// (`&amp;`, `&quot;`, `&#39;`, `&lt;`, `&gt;`) decoded.
fn tags<'a>(html: &'a str, name: &'a str) -> impl Iterator<Item = Vec<(String, String)>> + 'a {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{name}");
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find(&open).map(|i| at + i) {
        at = i + open.len();
        let boundary = lower[at..].chars().next();
        if boundary.is_some_and(|c| c.is_whitespace() || c == '>' || c == '/') {
            starts.push(at);
        }
    }
    starts
        .into_iter()
        .map(move |start| attributes(&html[start..]))
}

/// `name="value"` pairs up to the tag's `>`.
fn attributes(rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|(_, c)| c.is_whitespace() || *c == '/')
        {
            chars.next();
        }
        let Some(&(i, c)) = chars.peek() else {
            return out;
        };
        if c == '>' {
            return out;
        }
        let name_start = i;
        while chars
            .peek()
            .is_some_and(|(_, c)| !c.is_whitespace() && !matches!(c, '=' | '>' | '/'))
        {
            chars.next();
        }
        let name_end = chars.peek().map_or(rest.len(), |(i, _)| *i);
        let name = rest[name_start..name_end].to_string();
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '=') {
            chars.next();
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                chars.next();
            }
            match chars.peek().map(|(_, c)| *c) {
                Some(quote @ ('"' | '\'')) => {
                    chars.next();
                    for (_, c) in chars.by_ref() {
                        if c == quote {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '>')
                    {
                        value.push(c);
                    }
                }
            }
        }
        if name.is_empty() {
            chars.next();
            continue;
        }
        out.push((name, decode_entities(&value)));
    }
}

fn decode_entities(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Yahoo's consent page (consent.yahoo.com/v2/collectConsent), trimmed.
    const PAGE: &str = r#"<!doctype html><html><body>
        <form method="post" class="consent-form" action="/v2/collectConsent?sessionId=3_cc-session_abc">
          <input type="hidden" name="csrfToken" value="tok&amp;en-1">
          <input type="hidden" name='sessionId' value='3_cc-session_abc'/>
          <input type="hidden" name="originalDoneUrl" value="https://finance.yahoo.com/">
          <input type="hidden" name="namespace" value="yahoo">
          <button type="submit" name="agree" value="agree">Accept all</button>
          <button type="submit" name="reject" value="reject">Reject all</button>
        </form></body></html>"#;

    #[test]
    fn the_consent_form_is_found_and_agreed_to_with_its_hidden_fields() {
        let page_url =
            reqwest::Url::parse("https://consent.yahoo.com/v2/collectConsent?sessionId=x").unwrap();
        let done = reqwest::Url::parse("https://fc.yahoo.com/").unwrap();
        let form = consent_form(PAGE, &page_url, &done).expect("a consent form");
        assert_eq!(
            form.action.as_str(),
            "https://consent.yahoo.com/v2/collectConsent?sessionId=3_cc-session_abc"
        );
        let field = |name: &str| -> Vec<&str> {
            form.fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(field("csrfToken"), ["tok&en-1"]);
        assert_eq!(field("sessionId"), ["3_cc-session_abc"]);
        assert_eq!(field("namespace"), ["yahoo"]);
        assert_eq!(field("agree"), ["agree", "agree"]);
        assert_eq!(field("originalDoneUrl"), ["https://fc.yahoo.com/"]);
        assert!(field("reject").is_empty());

        // Not a consent page: no form with a csrfToken.
        assert_eq!(
            consent_form(
                "<html><form action=/search><input name=q></form></html>",
                &page_url,
                &done
            ),
            None
        );
        assert_eq!(
            consent_form("<html>not here</html>", &page_url, &done),
            None
        );
    }
}
