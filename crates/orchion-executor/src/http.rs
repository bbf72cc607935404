//! The `http` executor: one HTTP request; the response body is the task's output.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Context, Executor, HttpSpec, Outcome, OutputLine, parse_checked};

/// The largest response body kept.
const MAX_BODY: usize = 1024 * 1024;

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
