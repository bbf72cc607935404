//! A typed client for Orchion's REST API (`/api/v1`). Answers decode into the wire types of
//! `orchion-rest`, the same types the server answers with; a refused request becomes an
//! [`Error::Refused`] carrying the server's problem details.
//!
//! Documents a person writes (a job, a workflow definition, a deployment) travel as JSON values:
//! the server checks them as a whole and names every problem, which a client-side type would
//! only hide behind its own, less precise, errors.

use std::time::Duration;

use orchion_rest::{
    DeploymentBody, JobBody, LogPage, NodeBody, Problem, ProjectBody, RunLogs, ScheduleBody,
    StartWorkflow, UpdateProject, WorkflowRunBody, WorkflowTypeBody,
};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use url::Url;

pub use orchion_rest as rest;

/// What went wrong talking to the server, worded for the person at the terminal.
#[derive(Debug)]
pub enum Error {
    /// The server address is not an `http://` or `https://` URL.
    Address(String),
    /// The server could not be reached, or did not answer in time.
    Unreachable { base: Url, why: String },
    /// The server refused the request; `problem` is its explanation when it gave one.
    Refused {
        status: StatusCode,
        problem: Option<Box<Problem>>,
    },
    /// The server's answer is not what this client expects.
    Answer(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Address(why) | Error::Answer(why) => f.write_str(why),
            Error::Unreachable { base, why } => write!(f, "cannot reach Orchion at {base}: {why}"),
            Error::Refused { status, problem } => {
                match problem {
                    Some(problem) => f.write_str(&problem_text(problem))?,
                    None => write!(f, "the server answered {status}")?,
                }
                if *status == StatusCode::UNAUTHORIZED {
                    f.write_str("\n  sign in with `orchion login`, or set ORCHION_TOKEN")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

/// A problem as lines for a terminal: the detail, then each field problem.
fn problem_text(problem: &Problem) -> String {
    match problem.errors.as_slice() {
        // One problem: its detail is the answer's; say where it is.
        [error] if !error.pointer.is_empty() => format!("{}: {}", error.pointer, problem.detail),
        [_] | [] => problem.detail.clone(),
        errors => {
            let mut text = problem.detail.clone();
            for error in errors {
                text.push_str(&format!("\n  {}: {}", error.pointer, error.detail));
            }
            text
        }
    }
}

/// A page of a listing, as every list endpoint answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which page of a listing to read.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// At most this many per page (the server's default when absent).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Read on until the last page.
    pub all: bool,
}

/// Percent-encodes a path segment, so an id with `/` or `?` cannot address another route.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A REST client for one server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client for the server at `addr` (`http://127.0.0.1:8080`), sending `token` (an API
    /// token) with every request.
    pub fn new(addr: &str, token: Option<&str>) -> Result<Self, Error> {
        Self::with_ca(addr, token, None)
    }

    /// As [`Client::new`], trusting only the authority `ca` (PEM) for an `https://` server;
    /// `None`: the usual web roots.
    pub fn with_ca(addr: &str, token: Option<&str>, ca: Option<&[u8]>) -> Result<Self, Error> {
        let base = Url::parse(addr)
            .map_err(|e| Error::Address(format!("--addr `{addr}` is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Address(format!(
                "--addr `{addr}` must be an http:// or https:// URL"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Address("the token is not valid header text".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca {
            let certificate = reqwest::Certificate::from_pem(pem).map_err(|e| {
                Error::Address(format!("the CA file is not a PEM certificate: {e}"))
            })?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(certificate);
        }
        let http = builder
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("orchion-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Address(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self { http, base })
    }

    /// Sends a request and decodes a JSON answer (`null` for an empty one).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        idempotency_key: Option<&str>,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Error::Address(format!("bad path {path}: {e}")))?;
        let mut request = self.http.request(method, url).query(query);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::Answer(format!("reading the answer failed: {e}")))?;
        if !status.is_success() {
            return Err(Error::Refused {
                status,
                problem: serde_json::from_slice(&bytes).ok(),
            });
        }
        let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Answer(format!(
                "the server's answer is not what this client expects: {e}"
            ))
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            // The innermost cause says what happened: refused, no route, a bad certificate.
            let mut cause: &dyn std::error::Error = e;
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
        Error::Unreachable {
            base: self.base.clone(),
            why,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::GET, path, &[], None, None::<&Value>)
            .await
    }

    /// A `POST` without a body: the verbs (`cancel`, `retry`, `drain`).
    async fn post_verb<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::POST, path, &[], None, None::<&Value>)
            .await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::DELETE, path, &[], None, None::<&Value>)
            .await
    }

    /// Lists `path` with `filters`: one page, or every page when `paging.all`.
    async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, Option<String>)],
        paging: Paging,
    ) -> Result<Listing<T>, Error> {
        let mut items = Vec::new();
        let mut cursor = paging.cursor;
        loop {
            let mut query: Vec<(&str, String)> = filters
                .iter()
                .filter_map(|(name, value)| value.clone().map(|v| (*name, v)))
                .collect();
            if let Some(limit) = paging.limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let page: Listing<T> = self
                .call(Method::GET, path, &query, None, None::<&Value>)
                .await?;
            items.extend(page.items);
            cursor = page.next_cursor;
            if !paging.all || cursor.is_none() {
                return Ok(Listing {
                    items,
                    next_cursor: cursor,
                });
            }
        }
    }
}

fn job_path(id: &str) -> String {
    format!("/api/v1/jobs/{}", segment(id))
}

fn node_path(id: &str) -> String {
    format!("/api/v1/nodes/{}", segment(id))
}

fn project_path(id: &str) -> String {
    format!("/api/v1/projects/{}", segment(id))
}

fn run_path(id: &str) -> String {
    format!("/api/v1/workflows/{}", segment(id))
}

fn deployment_path(id: &str) -> String {
    format!("/api/v1/deployments/{}", segment(id))
}

/// Jobs.
impl Client {
    /// Enqueues a job document (as `POST /api/v1/jobs` takes it).
    pub async fn submit_job(
        &self,
        job: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<JobBody, Error> {
        self.call(
            Method::POST,
            "/api/v1/jobs",
            &[],
            idempotency_key,
            Some(job),
        )
        .await
    }

    /// A job with its attempts.
    pub async fn job(&self, id: &str) -> Result<JobBody, Error> {
        self.get(&job_path(id)).await
    }

    /// Jobs with `status` and `executor` (either may be absent).
    pub async fn jobs(
        &self,
        status: Option<String>,
        executor: Option<String>,
        paging: Paging,
    ) -> Result<Listing<JobBody>, Error> {
        let filters = [("status", status), ("executor", executor)];
        self.list("/api/v1/jobs", &filters, paging).await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<JobBody, Error> {
        self.post_verb(&format!("{}/cancel", job_path(id))).await
    }

    pub async fn retry_job(&self, id: &str) -> Result<JobBody, Error> {
        self.post_verb(&format!("{}/retry", job_path(id))).await
    }

    /// Up to `limit` log lines after sequence number `after`.
    pub async fn job_logs(
        &self,
        id: &str,
        after: i64,
        limit: Option<u32>,
    ) -> Result<LogPage, Error> {
        let mut query = vec![("after", after.to_string())];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let path = format!("{}/logs", job_path(id));
        self.call(Method::GET, &path, &query, None, None::<&Value>)
            .await
    }
}

/// Nodes.
impl Client {
    /// Nodes with `status` and all the labels of `label` (`key=value[,…]`).
    pub async fn nodes(
        &self,
        status: Option<String>,
        label: Option<String>,
        paging: Paging,
    ) -> Result<Listing<NodeBody>, Error> {
        let filters = [("status", status), ("label", label)];
        self.list("/api/v1/nodes", &filters, paging).await
    }

    pub async fn node(&self, id: &str) -> Result<NodeBody, Error> {
        self.get(&node_path(id)).await
    }

    pub async fn drain_node(&self, id: &str) -> Result<NodeBody, Error> {
        self.post_verb(&format!("{}/drain", node_path(id))).await
    }

    pub async fn delete_node(&self, id: &str) -> Result<(), Error> {
        self.delete::<Value>(&node_path(id)).await.map(drop)
    }
}

/// Projects.
impl Client {
    pub async fn create_project(
        &self,
        project: &orchion_rest::CreateProject,
        idempotency_key: Option<&str>,
    ) -> Result<ProjectBody, Error> {
        let path = "/api/v1/projects";
        self.call(Method::POST, path, &[], idempotency_key, Some(project))
            .await
    }

    /// Who the client's token acts for.
    pub async fn session(&self) -> Result<orchion_rest::SessionBody, Error> {
        self.get("/api/v1/session").await
    }

    /// Makes an API token; its text is in the answer only.
    pub async fn create_token(
        &self,
        request: &orchion_rest::CreateToken,
    ) -> Result<orchion_rest::CreatedToken, Error> {
        self.call(Method::POST, "/api/v1/tokens", &[], None, Some(request))
            .await
    }

    pub async fn tokens(&self, paging: Paging) -> Result<Listing<orchion_rest::TokenBody>, Error> {
        self.list("/api/v1/tokens", &[], paging).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<orchion_rest::TokenBody, Error> {
        self.delete(&format!("/api/v1/tokens/{}", segment(id)))
            .await
    }

    pub async fn create_join_token(
        &self,
        request: &orchion_rest::CreateJoinToken,
    ) -> Result<orchion_rest::CreatedJoinToken, Error> {
        self.call(
            Method::POST,
            "/api/v1/join-tokens",
            &[],
            None,
            Some(request),
        )
        .await
    }

    pub async fn join_tokens(
        &self,
        paging: Paging,
    ) -> Result<Listing<orchion_rest::JoinTokenBody>, Error> {
        self.list("/api/v1/join-tokens", &[], paging).await
    }

    pub async fn revoke_join_token(&self, id: &str) -> Result<orchion_rest::JoinTokenBody, Error> {
        self.delete(&format!("/api/v1/join-tokens/{}", segment(id)))
            .await
    }

    /// A page of the audit log after `after`, filtered.
    pub async fn audit(
        &self,
        filters: &[(&str, Option<String>)],
        after: Option<i64>,
        limit: Option<u32>,
    ) -> Result<orchion_rest::AuditList, Error> {
        let mut query: Vec<(&str, String)> = filters
            .iter()
            .filter_map(|(name, value)| value.clone().map(|v| (*name, v)))
            .collect();
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.call(Method::GET, "/api/v1/audit", &query, None, None::<&Value>)
            .await
    }

    pub async fn project(&self, id: &str) -> Result<ProjectBody, Error> {
        self.get(&project_path(id)).await
    }

    /// Projects with `status` (`active` or `archived`).
    pub async fn projects(
        &self,
        status: Option<String>,
        paging: Paging,
    ) -> Result<Listing<ProjectBody>, Error> {
        self.list("/api/v1/projects", &[("status", status)], paging)
            .await
    }

    pub async fn update_project(
        &self,
        id: &str,
        update: &UpdateProject,
    ) -> Result<ProjectBody, Error> {
        self.call(Method::PUT, &project_path(id), &[], None, Some(update))
            .await
    }

    pub async fn delete_project(&self, id: &str) -> Result<(), Error> {
        self.delete::<Value>(&project_path(id)).await.map(drop)
    }
}

/// A project's secrets.
impl Client {
    /// Sets a secret's value (made, or its next version).
    pub async fn set_secret(
        &self,
        project: &str,
        name: &str,
        value: &str,
    ) -> Result<orchion_rest::SecretBody, Error> {
        let body = orchion_rest::SetSecret {
            value: value.to_owned(),
        };
        self.call(
            Method::PUT,
            &secret_path(project, name),
            &[],
            None,
            Some(&body),
        )
        .await
    }

    /// A project's secrets, without their values.
    pub async fn secrets(&self, project: &str) -> Result<orchion_rest::SecretList, Error> {
        self.get(&format!("{}/secrets", project_path(project)))
            .await
    }

    pub async fn delete_secret(&self, project: &str, name: &str) -> Result<(), Error> {
        self.delete::<Value>(&secret_path(project, name))
            .await
            .map(drop)
    }
}

fn secret_path(project: &str, name: &str) -> String {
    format!("{}/secrets/{}", project_path(project), segment(name))
}

/// Schedules.
impl Client {
    /// Creates a schedule (as `POST /api/v1/schedules` takes it: its job is a job document).
    pub async fn create_schedule(&self, schedule: &Value) -> Result<ScheduleBody, Error> {
        let path = "/api/v1/schedules";
        self.call(Method::POST, path, &[], None, Some(schedule))
            .await
    }

    pub async fn schedules(&self, paging: Paging) -> Result<Listing<ScheduleBody>, Error> {
        self.list("/api/v1/schedules", &[], paging).await
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<(), Error> {
        let path = format!("/api/v1/schedules/{}", segment(id));
        self.delete::<Value>(&path).await.map(drop)
    }
}

/// Workflow types and runs.
impl Client {
    /// Stores a workflow definition as a new version of its name (or finds it unchanged).
    pub async fn apply_workflow_type(&self, definition: &Value) -> Result<WorkflowTypeBody, Error> {
        let path = "/api/v1/workflow-types";
        self.call(Method::POST, path, &[], None, Some(definition))
            .await
    }

    /// A workflow type: the latest version, or `version`.
    pub async fn workflow_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<WorkflowTypeBody, Error> {
        let query: Vec<(&str, String)> = version
            .map(|v| ("version", v.to_string()))
            .into_iter()
            .collect();
        let path = format!("/api/v1/workflow-types/{}", segment(name));
        self.call(Method::GET, &path, &query, None, None::<&Value>)
            .await
    }

    pub async fn start_run(
        &self,
        start: &StartWorkflow,
        idempotency_key: Option<&str>,
    ) -> Result<WorkflowRunBody, Error> {
        let path = "/api/v1/workflows";
        self.call(Method::POST, path, &[], idempotency_key, Some(start))
            .await
    }

    /// A run with its steps.
    pub async fn run(&self, id: &str) -> Result<WorkflowRunBody, Error> {
        self.get(&run_path(id)).await
    }

    /// Runs with `status`, of `workflow_type`, in `project` (each may be absent).
    pub async fn runs(
        &self,
        status: Option<String>,
        workflow_type: Option<String>,
        project: Option<String>,
        paging: Paging,
    ) -> Result<Listing<WorkflowRunBody>, Error> {
        let filters = [
            ("status", status),
            ("type", workflow_type),
            ("project_id", project),
        ];
        self.list("/api/v1/workflows", &filters, paging).await
    }

    pub async fn cancel_run(&self, id: &str) -> Result<WorkflowRunBody, Error> {
        self.post_verb(&format!("{}/cancel", run_path(id))).await
    }

    pub async fn retry_run(&self, id: &str) -> Result<WorkflowRunBody, Error> {
        self.post_verb(&format!("{}/retry", run_path(id))).await
    }

    /// The logs of a run's tasks: of one step (`build`, or `build[2]`), or of all.
    pub async fn run_logs(&self, id: &str, step: Option<String>) -> Result<RunLogs, Error> {
        let query: Vec<(&str, String)> = step.map(|s| ("step", s)).into_iter().collect();
        let path = format!("{}/logs", run_path(id));
        self.call(Method::GET, &path, &query, None, None::<&Value>)
            .await
    }
}

/// Deployments.
impl Client {
    /// Starts a deployment (as `POST /api/v1/deployments` takes it).
    pub async fn apply_deployment(&self, request: &Value) -> Result<DeploymentBody, Error> {
        let path = "/api/v1/deployments";
        self.call(Method::POST, path, &[], None, Some(request))
            .await
    }

    /// A deployment with its resources.
    pub async fn deployment(&self, id: &str) -> Result<DeploymentBody, Error> {
        self.get(&deployment_path(id)).await
    }

    /// Deployments of `composer` to `environment` (either may be absent).
    pub async fn deployments(
        &self,
        composer: Option<String>,
        environment: Option<String>,
        paging: Paging,
    ) -> Result<Listing<DeploymentBody>, Error> {
        let filters = [("composer", composer), ("environment", environment)];
        self.list("/api/v1/deployments", &filters, paging).await
    }

    /// Rolls a deployment back (its resources are destroyed in reverse order).
    pub async fn delete_deployment(&self, id: &str) -> Result<DeploymentBody, Error> {
        self.delete(&deployment_path(id)).await
    }
}

#[cfg(test)]
mod tests {
    use orchion_rest::FieldProblem;

    use super::*;

    fn problem(detail: &str, errors: &[(&str, &str)]) -> Problem {
        Problem {
            kind: "urn:orchion:problem:validation".into(),
            title: "Validation failed".into(),
            status: 422,
            detail: detail.into(),
            code: "validation".into(),
            errors: errors
                .iter()
                .map(|(pointer, detail)| FieldProblem {
                    pointer: (*pointer).into(),
                    detail: (*detail).into(),
                })
                .collect(),
            more_errors: 0,
        }
    }

    #[test]
    fn a_problem_reads_as_its_detail_then_one_line_per_field() {
        assert_eq!(problem_text(&problem("not found", &[])), "not found");
        assert_eq!(
            problem_text(&problem("name is empty", &[("/name", "name is empty")])),
            "/name: name is empty"
        );
        assert_eq!(
            problem_text(&problem("2 problems", &[("/a", "bad a"), ("/b", "bad b")])),
            "2 problems\n  /a: bad a\n  /b: bad b"
        );
    }

    #[test]
    fn an_id_cannot_address_another_route() {
        assert_eq!(segment("a/../b?x"), "a%2F..%2Fb%3Fx");
    }

    #[test]
    fn an_address_must_be_http() {
        assert!(matches!(
            Client::new("ftp://x", None),
            Err(Error::Address(_))
        ));
        assert!(matches!(
            Client::new("not a url", None),
            Err(Error::Address(_))
        ));
        assert!(Client::new("http://127.0.0.1:1", Some("orc_x")).is_ok());
    }
}
