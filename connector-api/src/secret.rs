//! A string that never shows up in logs, status output or `Debug` dumps.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret value (password, token). Prints as `***`; read it with [`Secret::expose`].
///
/// Any scalar is taken as its text: `MYSQL_PASSWORD=20240917` interpolated into YAML reads as
/// a number, and is still the password. (Quote it in YAML, `"${MYSQL_PASSWORD}"`, where leading
/// zeros matter: YAML reads `0012` as the number 12.) No deserialization error shows the value.
/// Serializes as `***` too (the REST API shows configs by serializing them); nothing writes a
/// config back out where the value would be needed.
#[derive(Clone, PartialEq, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret as text")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Secret, E> {
        std::str::from_utf8(v)
            .map(|s| Secret(s.to_string()))
            .map_err(|_| E::custom("a secret must be UTF-8 text"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Secret, E> {
        Ok(Secret(String::new()))
    }
}

/// `text` with the password of every `scheme://user:password@host` in it replaced by `***`:
/// for URLs, and for messages of client libraries that quote them, before they are shown.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == ')')
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// True for client settings (librdkafka properties, connection options) whose value is
/// secret by their name: passwords, secrets, JAAS configs, tokens, private keys.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "token",
        "key.pem",
        "private",
    ]
    .iter()
    .any(|part| name.contains(part))
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_stars() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn any_scalar_is_taken_as_text_and_errors_never_show_the_value() {
        for (yaml, text) in [
            ("20240917", "20240917"),
            ("\"0012\"", "0012"),
            ("12.5", "12.5"),
            ("true", "true"),
            ("pw", "pw"),
        ] {
            let s: Secret = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(s.expose(), text);
        }
        let s: Secret = serde_json::from_value(serde_json::json!(20240917)).unwrap();
        assert_eq!(s.expose(), "20240917");
        let e = serde_yaml::from_str::<Secret>("[sentinel-8675309]").unwrap_err();
        assert!(!e.to_string().contains("8675309"), "{e}");
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("http://elastic:s3cret@localhost:9200/x?y=1"),
            "http://elastic:***@localhost:9200/x?y=1"
        );
        assert_eq!(
            redact_url("mysql://sluice:p@ss@127.0.0.1/db"),
            "mysql://sluice:***@127.0.0.1/db"
        );
        assert_eq!(redact_url("mysql://sluice@h/db"), "mysql://sluice@h/db");
        assert_eq!(redact_url("http://h:9200/a@b"), "http://h:9200/a@b");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("error for url (http://u:pw@h:1/) and mysql://a:b@c/d"),
            "error for url (http://u:***@h:1/) and mysql://a:***@c/d"
        );
    }

    #[test]
    fn client_settings_named_as_secrets_are_recognised() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "sasl.jaas.config",
            "sasl.oauthbearer.token.endpoint.url",
            "client.secret",
        ] {
            assert!(is_secret_setting(name), "{name}");
        }
        assert!(!is_secret_setting("compression.type"));
    }
}
