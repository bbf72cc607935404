//! The command-line client: verbs over the REST API. Data goes to stdout in the chosen format;
//! errors go to stderr as one line (plus one per field problem). Exit 0 on success, 1 when the
//! server refuses or cannot be reached.

pub mod deploy;
pub mod job;
pub mod node;
pub mod project;
pub mod schedule;
pub mod workflow;

use std::{process::ExitCode, time::Duration};

use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::cli::{ClientArgs, Output};

/// What went wrong talking to the server, worded for the person at the terminal.
#[derive(Debug)]
pub struct ClientError(String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A REST client for one server.
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
}

impl Client {
    /// A client for the server at `addr`.
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        let base = url::Url::parse(addr)
            .map_err(|e| ClientError(format!("--addr `{addr}` is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError(format!(
                "--addr `{addr}` must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("orchion-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self { http, base })
    }

    /// Sends a request and decodes a JSON answer; a problem answer becomes its detail.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ClientError(format!("bad path {path}: {e}")))?;
        let mut request = self.http.request(method, url).query(query);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                // The innermost cause says what happened: refused, no route, a bad certificate.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(inner) = cause.source() {
                    cause = inner;
                }
                let hint = if e.is_connect() {
                    " (is `orchion dev` running? set --addr)"
                } else {
                    ""
                };
                format!("{cause}{hint}")
            };
            ClientError(format!("cannot reach Orchion at {}: {why}", self.base))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError(format!("reading the answer failed: {e}")))?;
        if status.is_success() {
            let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| {
                ClientError(format!(
                    "the server's answer is not what this client expects: {e}"
                ))
            });
        }
        Err(ClientError(problem_text(status, &bytes)))
    }
}

/// A problem+json answer as lines for stderr: the detail, then each field problem.
fn problem_text(status: StatusCode, bytes: &[u8]) -> String {
    let Ok(problem) = serde_json::from_slice::<Value>(bytes) else {
        return format!("the server answered {status}");
    };
    let mut text = problem["detail"]
        .as_str()
        .map_or_else(|| format!("the server answered {status}"), str::to_owned);
    if let Some(errors) = problem["errors"].as_array() {
        if let [error] = errors.as_slice() {
            // One problem: its detail is the answer's; say where it is.
            if let Some(pointer) = error["pointer"].as_str().filter(|p| !p.is_empty()) {
                text = format!("{pointer}: {text}");
            }
        } else {
            for error in errors {
                text.push_str(&format!(
                    "\n  {}: {}",
                    error["pointer"].as_str().unwrap_or(""),
                    error["detail"].as_str().unwrap_or("")
                ));
            }
        }
    }
    text
}

/// Prints a value as JSON or YAML, or as a table through `table`.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> Result<(), ClientError> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
        Output::Table => Ok(table(value).render()),
    }
    .map_err(|e| ClientError(format!("cannot format the result: {e}")))?;
    print!("{text}");
    Ok(())
}

/// Rows under a header, printed in aligned columns like `kubectl get`.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}   "));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(self.header.clone());
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// A page of a listing, as every list endpoint answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Client {
    /// Lists `path` with `filters` from `cursor`: one page, or every page when `all`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, Option<String>)],
        limit: Option<u32>,
        cursor: Option<String>,
        all: bool,
    ) -> Result<Listing<T>, ClientError> {
        let mut items = Vec::new();
        let mut cursor = cursor;
        loop {
            let mut query: Vec<(&str, String)> = filters
                .iter()
                .filter_map(|(name, value)| value.clone().map(|v| (*name, v)))
                .collect();
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let page: Listing<T> = self.call(Method::GET, path, &query, &[], None).await?;
            items.extend(page.items);
            cursor = page.next_cursor;
            if !all || cursor.is_none() {
                return Ok(Listing {
                    items,
                    next_cursor: cursor,
                });
            }
        }
    }
}

/// Prints a listing, and on a table where the next page starts.
pub fn print_listing<T: Serialize>(
    output: Output,
    listing: &Listing<T>,
    table: impl FnOnce(&[T]) -> Table,
) -> Result<(), ClientError> {
    print(output, listing, |l| table(&l.items))?;
    if let (Output::Table, Some(next)) = (output, &listing.next_cursor) {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}

/// Percent-encodes a path segment, so an id with `/` or `?` cannot address another route.
pub fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs a verb and turns its outcome into an exit status.
pub async fn finish(
    args: &ClientArgs,
    verb: impl AsyncFnOnce(&Client, Output) -> Result<(), ClientError>,
) -> ExitCode {
    let result = match Client::new(&args.addr) {
        Ok(client) => verb(&client, args.output).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
