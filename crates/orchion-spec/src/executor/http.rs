//! The `http` executor's spec: one request.

use std::{collections::BTreeMap, time::Duration};

use orchion_domain::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};

/// What an `http` job sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `GET`, `POST`, … (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// An `http://` or `https://` URL.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, sent as is.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON request body, sent with `content-type: application/json`; instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Status codes that mean success (default: any 2xx).
    #[serde(default)]
    pub expected_status: Vec<u16>,
    /// How long the request may take (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

fn default_method() -> String {
    "GET".into()
}

impl HttpSpec {
    pub fn check(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let field = |name: &str, message: String| FieldError {
            pointer: format!("/spec/{name}"),
            message,
        };
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => errors.push(field(
                "url",
                format!(
                    "spec.url scheme `{}` is not supported: use http or https",
                    url.scheme()
                ),
            )),
            Err(e) => errors.push(field("url", format!("spec.url is not a URL: {e}"))),
        }
        if self.body.is_some() && self.json.is_some() {
            errors.push(field(
                "json",
                "spec.json and spec.body are two ways to send a body: give one".into(),
            ));
        }
        if http::Method::from_bytes(self.method.as_bytes()).is_err() || self.method.is_empty() {
            errors.push(field(
                "method",
                format!("spec.method `{}` is not an HTTP method", self.method),
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                errors.push(field(
                    "headers",
                    format!("spec.headers `{name}` is not a valid header"),
                ));
            }
        }
        if self
            .expected_status
            .iter()
            .any(|s| !(100..=599).contains(s))
        {
            errors.push(field(
                "expected_status",
                "spec.expected_status holds codes from 100 to 599".into(),
            ));
        }
        if self
            .timeout
            .is_some_and(|t| t.is_zero() || t > Duration::from_secs(24 * 3600))
        {
            errors.push(field(
                "timeout",
                "spec.timeout must be more than 0 and at most 24h".into(),
            ));
        }
        errors.into_result(())
    }
}
