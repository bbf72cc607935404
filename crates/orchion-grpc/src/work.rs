//! `orchion.v1.WorkService`: claims, lease extensions, logs and results, over the work queue.

use std::{sync::Arc, time::Duration};

use orchion_control::{AttemptResult, Secrets, WorkError, WorkQueue};
use orchion_domain::{AttemptOutcome, NodeId, TaskId};
use orchion_proto::v1::{self as pb, work_service_server::WorkService as WorkServiceApi};
use orchion_spec::executor::KubernetesPolicy;
use orchion_store::{LeaseState, NewLogLine, StoreError};
use tonic::{Request, Response, Status};

use crate::{bearer, parse_node_id, status_of};

/// The most log lines one call may carry.
const MAX_LINES_PER_CALL: usize = 10_000;

/// The most results one call may carry.
const MAX_RESULTS_PER_CALL: usize = 1000;

/// The `orchion.v1.WorkService` implementation.
pub struct WorkService {
    queue: Arc<WorkQueue>,
    egress: EgressAllow,
    secrets: Option<Arc<Secrets>>,
    kubernetes: Option<Arc<KubernetesPolicy>>,
}

impl WorkService {
    /// Tasks handed out reach public addresses only.
    pub fn new(queue: Arc<WorkQueue>) -> Self {
        Self {
            queue,
            egress: EgressAllow::default(),
            secrets: None,
            kubernetes: None,
        }
    }

    /// `kubernetes` tasks handed out are checked against `policy` first: one naming what its
    /// project may not use is refused (and fails), whichever way it was made.
    pub fn with_kubernetes(self, policy: Arc<KubernetesPolicy>) -> Self {
        Self {
            kubernetes: Some(policy),
            ..self
        }
    }

    /// Why a claimed task may not run as it is, if it may not: a `kubernetes` one naming what
    /// its project may not use.
    fn refusal(&self, task: &orchion_store::ClaimedTask) -> Option<String> {
        let policy = self
            .kubernetes
            .as_ref()
            .filter(|_| task.executor == "kubernetes")?;
        let refusals = policy.refusals_of(task.project_id, &task.spec);
        (!refusals.is_empty()).then(|| {
            refusals
                .into_iter()
                .map(|r| r.message)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Tasks handed out carry the values of the secrets their specs refer to. Without, a task
    /// that refers to one is refused its secrets (and fails).
    pub fn with_secrets(self, secrets: Arc<Secrets>) -> Self {
        Self {
            secrets: Some(secrets),
            ..self
        }
    }

    /// Tasks handed out may also reach what `egress` allows their project.
    pub fn with_egress(self, egress: EgressAllow) -> Self {
        Self { egress, ..self }
    }
}

/// Where tasks' HTTP requests may go besides public addresses (`egress.allow`, and
/// `egress.projects.<project>.allow` for one project's): networks, addresses and host names,
/// handed to the agent with each task.
#[derive(Debug, Clone, Default)]
pub struct EgressAllow {
    all: Vec<String>,
    projects: std::collections::HashMap<orchion_domain::ProjectId, Vec<String>>,
    forward: Option<Forward>,
}

/// `/enqueue`'s forwards: `http` tasks of `project` POSTing to exactly `url` may reach `host`.
#[derive(Debug, Clone)]
pub struct Forward {
    pub project: orchion_domain::ProjectId,
    pub url: String,
    pub host: String,
}

impl EgressAllow {
    pub fn new(
        all: Vec<String>,
        projects: std::collections::HashMap<orchion_domain::ProjectId, Vec<String>>,
        forward: Option<Forward>,
    ) -> Self {
        Self {
            all,
            projects,
            forward,
        }
    }

    /// What one task may reach: everyone's allowances, its project's, and for a forward of
    /// `/enqueue` the configured worker's host (no other task of the project gets it).
    fn for_task(&self, task: &orchion_store::ClaimedTask) -> Vec<String> {
        let own = task.project_id.and_then(|p| self.projects.get(&p));
        let mut allowed: Vec<String> = self
            .all
            .iter()
            .chain(own.into_iter().flatten())
            .cloned()
            .collect();
        if let Some(forward) = &self.forward
            && task.project_id == Some(forward.project)
            && task.executor == "http"
            && serde_json::from_str::<serde_json::Value>(&task.spec)
                .is_ok_and(|spec| spec["url"] == forward.url.as_str())
        {
            allowed.push(forward.host.clone());
        }
        allowed
    }
}

fn parse_task_id(raw: &str) -> Result<TaskId, Status> {
    raw.parse::<TaskId>()
        .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))
}

/// One reported result, checked; the error names the field.
fn attempt_result(result: pb::TaskResult) -> Result<AttemptResult, String> {
    let task = result
        .task_id
        .parse::<TaskId>()
        .map_err(|e| format!("task_id: {e}"))?;
    let outcome = match pb::TaskOutcome::try_from(result.outcome) {
        Ok(pb::TaskOutcome::Succeeded) => AttemptOutcome::Succeeded,
        Ok(pb::TaskOutcome::Failed) => AttemptOutcome::Failed {
            exit_code: result.exit_code,
            error: if result.error.is_empty() {
                "failed".to_owned()
            } else {
                orchion_spec::without_nul(result.error.chars().take(4096).collect())
            },
        },
        Ok(pb::TaskOutcome::Cancelled) => AttemptOutcome::Cancelled,
        Ok(pb::TaskOutcome::TimedOut) => AttemptOutcome::TimedOut,
        Ok(pb::TaskOutcome::Unspecified) | Err(_) => {
            return Err(format!("outcome: {} is not a TaskOutcome", result.outcome));
        }
    };
    let outputs = match result.outputs {
        Some(text) if text.len() > orchion_store::MAX_OUTPUT_BYTES => {
            return Err(format!(
                "outputs: {} bytes; at most {}",
                text.len(),
                orchion_store::MAX_OUTPUT_BYTES
            ));
        }
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            // What a task printed is kept, but never a NUL, which PostgreSQL cannot store.
            Ok(value @ serde_json::Value::Object(_))
                if orchion_spec::find_nul(&value).is_some() =>
            {
                Some(orchion_spec::json_without_nul(value).to_string())
            }
            Ok(serde_json::Value::Object(_)) => Some(text),
            _ => return Err("outputs: not a JSON object".to_owned()),
        },
        None => None,
    };
    Ok(AttemptResult {
        task,
        attempt: result.attempt,
        outcome,
        output: result.output.map(orchion_spec::without_nul),
        outputs,
    })
}

/// The one mapping from work errors to gRPC statuses.
fn work_status(error: WorkError) -> Status {
    match error {
        WorkError::Node(e) => status_of(e),
        WorkError::Store(StoreError::Stale(message)) => Status::failed_precondition(message),
        WorkError::Store(StoreError::NotFound { kind, id }) => {
            Status::not_found(format!("{kind} `{id}` does not exist"))
        }
        WorkError::Store(StoreError::Conflict(message)) => Status::failed_precondition(message),
        WorkError::Store(e) => status_of(orchion_control::RegistryError::Store(e)),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn time_of(at: Option<prost_types::Timestamp>) -> time::OffsetDateTime {
    at.and_then(|t| {
        time::OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()
            .and_then(|s| {
                s.replace_nanosecond(u32::try_from(t.nanos).unwrap_or(0))
                    .ok()
            })
    })
    .unwrap_or_else(orchion_store::now)
}

#[tonic::async_trait]
impl WorkServiceApi for WorkService {
    async fn claim_tasks(
        &self,
        request: Request<pb::ClaimTasksRequest>,
    ) -> Result<Response<pb::ClaimTasksResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let request = request.into_inner();
        let node = parse_node_id(&request.node_id)?;
        if request.max_tasks == 0 || request.max_tasks > 1000 {
            return Err(Status::invalid_argument(
                "max_tasks must be between 1 and 1000",
            ));
        }
        if request.executors.len() > 32 {
            return Err(Status::invalid_argument("at most 32 executors"));
        }
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let claimed = self
            .queue
            .claim(
                node,
                &credential,
                request.executors,
                request.max_tasks as usize,
                wait,
            )
            .await
            .map_err(work_status)?;
        let secrets = match &self.secrets {
            Some(secrets) => secrets.for_tasks(&claimed).await,
            None => claimed
                .iter()
                .map(|c| {
                    if orchion_spec::secret_names(&c.executor, &c.spec).is_empty() {
                        Ok(Default::default())
                    } else {
                        Err("this server holds no secrets key".to_owned())
                    }
                })
                .collect(),
        };
        Ok(Response::new(pb::ClaimTasksResponse {
            tasks: claimed
                .into_iter()
                .zip(secrets)
                .map(|(c, secrets)| {
                    let (secrets, refused) = match (self.refusal(&c), secrets) {
                        (Some(why), _) | (None, Err(why)) => (Default::default(), why),
                        (None, Ok(values)) => (values.into_iter().collect(), String::new()),
                    };
                    pb::TaskAssignment {
                        secrets,
                        refused,
                        egress_allow: self.egress.for_task(&c),
                        job_id: c.job_id.to_string(),
                        task_id: c.task_id.to_string(),
                        attempt: c.attempt,
                        executor: c.executor,
                        spec: c.spec,
                        lease_ms: millis(c.timeouts.heartbeat),
                        start_to_close_ms: c.timeouts.start_to_close.map_or(0, millis),
                        traceparent: c.traceparent.unwrap_or_default(),
                    }
                })
                .collect(),
        }))
    }

    async fn extend_leases(
        &self,
        request: Request<pb::ExtendLeasesRequest>,
    ) -> Result<Response<pb::ExtendLeasesResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let request = request.into_inner();
        let node: NodeId = parse_node_id(&request.node_id)?;
        if request.leases.len() > 10_000 {
            return Err(Status::invalid_argument("at most 10000 leases per call"));
        }
        let leases = request
            .leases
            .iter()
            .map(|l| Ok((parse_task_id(&l.task_id)?, l.attempt)))
            .collect::<Result<Vec<_>, Status>>()?;
        let states = self
            .queue
            .extend(node, &credential, &leases)
            .await
            .map_err(work_status)?;
        Ok(Response::new(pb::ExtendLeasesResponse {
            leases: request
                .leases
                .into_iter()
                .zip(states)
                .map(|(lease, state)| pb::LeaseStatus {
                    task_id: lease.task_id,
                    attempt: lease.attempt,
                    held: matches!(state, LeaseState::Held { .. }),
                    cancel_requested: matches!(
                        state,
                        LeaseState::Held {
                            cancel_requested: true
                        }
                    ),
                })
                .collect(),
        }))
    }

    async fn append_logs(
        &self,
        request: Request<pb::AppendLogsRequest>,
    ) -> Result<Response<pb::AppendLogsResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let request = request.into_inner();
        let node = parse_node_id(&request.node_id)?;
        let task = parse_task_id(&request.task_id)?;
        if request.lines.len() > MAX_LINES_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_LINES_PER_CALL} lines per call"
            )));
        }
        let lines: Vec<NewLogLine> = request
            .lines
            .into_iter()
            .map(|l| NewLogLine {
                stream: match l.stream.as_str() {
                    "stdout" | "stderr" => l.stream,
                    _ => "system".to_owned(),
                },
                line: orchion_spec::without_nul(l.line),
                at: time_of(l.at),
            })
            .collect();
        self.queue
            .append_logs(node, &credential, task, request.attempt, &lines)
            .await
            .map_err(work_status)?;
        Ok(Response::new(pb::AppendLogsResponse {}))
    }

    async fn complete_tasks(
        &self,
        request: Request<pb::CompleteTasksRequest>,
    ) -> Result<Response<pb::CompleteTasksResponse>, Status> {
        let credential = bearer(request.metadata())?.to_owned();
        let request = request.into_inner();
        let node = parse_node_id(&request.node_id)?;
        if request.results.len() > MAX_RESULTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "results: {} results in one call; at most {MAX_RESULTS_PER_CALL}",
                request.results.len()
            )));
        }
        let keys: Vec<(String, u32)> = request
            .results
            .iter()
            .map(|r| (r.task_id.clone(), r.attempt))
            .collect();
        let results = request
            .results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                attempt_result(r).map_err(|e| Status::invalid_argument(format!("results[{i}].{e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let statuses = self
            .queue
            .complete(node, &credential, results)
            .await
            .map_err(work_status)?;
        let mut acks = Vec::with_capacity(statuses.len());
        for ((task_id, attempt), status) in keys.into_iter().zip(statuses) {
            let (job_status, refused) = match status {
                Ok(done) => (done.status.as_str().to_owned(), String::new()),
                Err(StoreError::Stale(why) | StoreError::Conflict(why)) => (String::new(), why),
                Err(StoreError::NotFound { kind, id }) => {
                    (String::new(), format!("{kind} `{id}` does not exist"))
                }
                // Anything else may pass: the whole call fails, and the agent sends it again.
                Err(e) => return Err(work_status(WorkError::Store(e))),
            };
            acks.push(pb::TaskResultAck {
                task_id,
                attempt,
                job_status,
                refused,
            });
        }
        Ok(Response::new(pb::CompleteTasksResponse { results: acks }))
    }
}
