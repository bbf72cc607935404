//! The `http` executor: one HTTP request; the response body is the task's output. Requests
//! reach public addresses, and what the task's project is allowed (`egress.rs`), checked on
//! the resolved address of the URL and of every redirect; no proxy is used, since a proxy
//! would resolve the name where the check cannot see it.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Context, Executor, HttpSpec, Outcome, OutputLine, parse_checked};

/// The largest response body kept: the rest is not read.
const MAX_BODY: usize = 1024 * 1024;

/// The most redirects followed.
const MAX_REDIRECTS: usize = 10;

pub(crate) struct Http;

/// A client that reaches only what `egress` allows, for one task.
fn client(egress: &crate::Egress) -> reqwest::Result<reqwest::Client> {
    let redirects = egress.clone();
    reqwest::Client::builder()
        .user_agent(concat!("orchion-agent/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .dns_resolver(egress.resolver())
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            // A name is checked when it resolves; an address here.
            match redirects.refuse_url(attempt.url()) {
                Some(why) => {
                    let to = attempt.url().to_string();
                    attempt.error(format!("egress refused for the redirect to {to}: {why}"))
                }
                None => attempt.follow(),
            }
        }))
        .build()
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
        let failed = |error: String| Outcome::Failed {
            exit_code: None,
            error,
            output: None,
        };
        let url = match reqwest::Url::parse(&spec.url) {
            Ok(url) => url,
            Err(e) => return failed(format!("`{}` is not a URL: {e}", spec.url)),
        };
        if let Some(why) = context.egress.refuse_url(&url) {
            return failed(format!("egress refused for {method} {url}: {why}"));
        }
        let client = match client(&context.egress) {
            Ok(client) => client,
            Err(e) => return failed(format!("cannot make an HTTP client: {e}")),
        };
        let mut request = client.request(method.clone(), url).timeout(timeout);
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
        say(&context, format!("{method} {}", spec.url)).await;
        let response = tokio::select! {
            response = request.send() => response,
            () = context.cancel.cancelled() => return Outcome::Cancelled,
        };
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Outcome::TimedOut,
            Err(e) => {
                // The resolver's or redirect policy's refusal is the error's cause.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                return failed(format!("{method} {} failed: {why}", spec.url));
            }
        };
        let status = response.status();
        let body = tokio::select! {
            body = read_capped(response) => body,
            () = context.cancel.cancelled() => return Outcome::Cancelled,
        };
        let body = match body {
            Ok((bytes, cut)) => {
                if cut {
                    say(
                        &context,
                        format!("the response body is longer than {MAX_BODY} bytes: the rest was not read"),
                    )
                    .await;
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(e) => format!("[the response body could not be read: {e}]"),
        };
        say(&context, format!("HTTP {status}")).await;
        let expected = if spec.expected_status.is_empty() {
            status.is_success()
        } else {
            spec.expected_status.contains(&status.as_u16())
        };
        if expected {
            // The body as JSON when it is JSON, else as text.
            let parsed = serde_json::from_str::<serde_json::Value>(&body)
                .unwrap_or_else(|_| serde_json::Value::String(body.clone()));
            let mut outputs = serde_json::json!({ "status": status.as_u16(), "body": parsed });
            // The server keeps at most MAX_OUTPUTS_BYTES of outputs: past it, the body is only
            // in the output (the task's log of what came back).
            if outputs.to_string().len() > crate::MAX_OUTPUTS_BYTES {
                outputs = serde_json::json!({ "status": status.as_u16(), "body": null, "body_too_large": true });
            }
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

/// A `system` line in the task's log.
async fn say(context: &Context, line: String) {
    let _ = context
        .output
        .send(OutputLine {
            stream: "system",
            line,
            at: time::OffsetDateTime::now_utc(),
        })
        .await;
}

/// The response body, read chunk by chunk up to [`MAX_BODY`] bytes, never whole; `true` when
/// there was more.
async fn read_capped(mut response: reqwest::Response) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}
