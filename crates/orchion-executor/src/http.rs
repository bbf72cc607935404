//! The `http` executor: one HTTP request; the response body is the task's output.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use orchion_domain::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};

use crate::{Context, Executor, Outcome, OutputLine, parse_checked};

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

/// The largest response body kept.
const MAX_BODY: usize = 1024 * 1024;

impl HttpSpec {
    pub(crate) fn check(&self) -> Result<(), ValidationErrors> {
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
        if reqwest::Method::from_bytes(self.method.as_bytes()).is_err() || self.method.is_empty() {
            errors.push(field(
                "method",
                format!("spec.method `{}` is not an HTTP method", self.method),
            ));
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
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

pub(crate) struct Http {
    client: reqwest::Client,
}

impl Http {
    pub(crate) fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .user_agent(concat!("orchion-agent/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl Executor for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn run(&self, spec: &str, context: Context) -> Outcome {
        let spec: HttpSpec = match parse_checked(spec) {
            Ok(spec) => spec,
            Err(error) => {
                return Outcome::Failed {
                    exit_code: None,
                    error,
                    output: None,
                };
            }
        };
        let method =
            reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let timeout = spec.timeout.unwrap_or(Duration::from_secs(30));
        let timeout = context.deadline.map_or(timeout, |d| d.min(timeout));
        let mut request = self
            .client
            .request(method.clone(), &spec.url)
            .timeout(timeout);
        for (name, value) in &spec.headers {
            request = request.header(name, value);
        }
        if let Some(traceparent) = context.env.get("TRACEPARENT") {
            request = request.header("traceparent", traceparent);
        }
        if let Some(json) = &spec.json {
            request = request.json(json);
        }
        if let Some(body) = spec.body {
            request = request.body(body);
        }
        let _ = context
            .output
            .send(OutputLine {
                stream: "system",
                line: format!("{method} {}", spec.url),
                at: time::OffsetDateTime::now_utc(),
            })
            .await;
        let response = tokio::select! {
            response = request.send() => response,
            () = context.cancel.cancelled() => return Outcome::Cancelled,
        };
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Outcome::TimedOut,
            Err(e) => {
                return Outcome::Failed {
                    exit_code: None,
                    error: format!("{method} {} failed: {e}", spec.url),
                    output: None,
                };
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(bytes) => String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned(),
            Err(e) => format!("[the response body could not be read: {e}]"),
        };
        let _ = context
            .output
            .send(OutputLine {
                stream: "system",
                line: format!("HTTP {status}"),
                at: time::OffsetDateTime::now_utc(),
            })
            .await;
        let expected = if spec.expected_status.is_empty() {
            status.is_success()
        } else {
            spec.expected_status.contains(&status.as_u16())
        };
        if expected {
            // The body as JSON when it is JSON, else as text.
            let parsed = serde_json::from_str::<serde_json::Value>(&body)
                .unwrap_or_else(|_| serde_json::Value::String(body.clone()));
            let outputs = serde_json::json!({ "status": status.as_u16(), "body": parsed });
            Outcome::Succeeded {
                output: Some(body),
                outputs: Some(outputs.to_string()),
            }
        } else {
            Outcome::Failed {
                exit_code: None,
                error: format!("{method} {} answered {status}", spec.url),
                output: Some(body),
            }
        }
    }
}
