//! The workflow engine: starts runs of stored workflow types and moves them on as their steps
//! finish.
//!
//! It is level-triggered. [`plan`] is a pure function of a run's pinned definition, its input
//! and its tasks: which steps are ready (and their rendered jobs), which are skipped, and
//! whether the run has ended. [`Workflows::advance`] writes that plan; the store ignores steps
//! already written and ends a run only by compare-and-set, so advancing twice, or from two
//! replicas, is harmless. The engine advances a run at once when one of its steps finishes
//! (through the work queue), and every running run once a second, which also recovers runs
//! whose step ended by lease expiry or across a restart.
//!
//! Step semantics: a step runs when every step it needs succeeded. A step whose `when` is false
//! is skipped, and so is every step that needs a failed, cancelled or skipped step. A `for_each`
//! step runs one task per element (`name[i]`) and succeeds when all do; later steps read its
//! outputs as a list. A step whose templates cannot be resolved fails without running.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use orchion_domain::{
    FieldError, NewJob, Phase, ProjectId, RunId, RunStatus, StepKey, StepTask, TaskStatus,
    ValidationErrors, WorkflowRun, WorkflowRunRecord,
};
use orchion_spec::{Scope, Workflow, WorkflowDefinition};
use orchion_store::{Created, IdempotencyKey, NewStep, NewWorkflowRun, Store, StoreError};
use serde_json::Value;

use tokio::sync::Notify;

use crate::{
    WorkQueue,
    background::{Cause, Reconciler},
};

/// How often every running run is looked at, besides the look each finished step triggers.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);

/// What can go wrong starting or changing a run.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run's input or request is invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// A stored definition no longer compiles: a bug, or a store edited by hand.
    #[error("workflow type {name} version {version} does not compile: {errors}")]
    Corrupt {
        name: String,
        version: u32,
        errors: ValidationErrors,
    },
}

/// A request to start a run.
#[derive(Debug, Clone)]
pub struct StartRun {
    /// The run's display name; the workflow type's name when `None`.
    pub name: Option<String>,
    pub workflow: String,
    /// The latest when `None`.
    pub version: Option<u32>,
    pub project_id: Option<ProjectId>,
    pub input: Value,
    /// The W3C `traceparent` of the request that starts it (captured at the edge); its steps
    /// join that trace.
    pub trace_parent: Option<String>,
}

/// A request to start a run as a client sends it: checked as a whole by
/// [`Workflows::start_request`], every problem at once.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub name: Option<String>,
    pub workflow: String,
    pub version: Option<u32>,
    /// A project's id, as text.
    pub project_id: Option<String>,
    /// A JSON object, or null for none.
    pub input: Value,
    /// The W3C `traceparent` of the request (captured at the edge).
    pub trace_parent: Option<String>,
    /// The project the requester is confined to, if any: a workflow type of another project is
    /// reported exactly as one that does not exist.
    pub confined_to: Option<ProjectId>,
}

/// Where a step stands, derived from its tasks and those of the steps it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Waiting for the steps it needs.
    Pending,
    /// Its tasks are queued or running.
    Active,
    Succeeded,
    Failed,
    Cancelled,
    /// Will not run: its `when` is false, or a step it needs did not succeed.
    Skipped,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Active => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::Skipped => "skipped",
        }
    }

    fn is_final(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Active)
    }

    fn blocks(self) -> bool {
        matches!(
            self,
            StepState::Failed | StepState::Cancelled | StepState::Skipped
        )
    }
}

/// What to do with a run now.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each step's state, in definition order.
    pub steps: Vec<(String, StepState)>,
    /// While a failed or cancelled run is rolled back: the state of each succeeded step's
    /// rollback, in definition order.
    pub rollbacks: Vec<(String, StepState)>,
    /// Steps that became ready (or that fail or succeed without running).
    pub create: Vec<NewStep>,
    /// The run has ended with this status.
    pub finish: Option<RunStatus>,
}

/// The outputs a finished task produced (an empty object when none).
fn outputs_of(task: &StepTask) -> Value {
    task.task
        .outputs
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// `base` with `spec` rendered in (checked as its executor checks a job's spec), named `name`
/// and owned by the run's project.
fn render_job(
    base: &NewJob,
    spec: &Value,
    name: String,
    run: &WorkflowRun,
    scope: &Scope<'_>,
) -> Result<NewJob, String> {
    let rendered = orchion_spec::render_spec(&base.executor, spec, scope)?;
    let spec = orchion_spec::validate(&base.executor, &rendered).map_err(|errors| {
        let messages: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {}", e.pointer, e.message))
            .collect();
        format!("the rendered spec is invalid: {}", messages.join("; "))
    })?;
    let mut job = base.clone();
    job.spec = spec;
    job.project_id = run.project_id;
    job.name = name;
    job.trace_parent = run.trace_parent.clone();
    Ok(job)
}

fn failed_step(key: StepKey, step: &orchion_spec::Step, error: String) -> NewStep {
    NewStep {
        step: key,
        job: step.job.clone(),
        status: TaskStatus::Failed,
        outputs: None,
        error: Some(error),
    }
}

/// What `run` should do next, given its definition and its tasks. Pure.
pub fn plan(workflow: &Workflow, record: &WorkflowRunRecord) -> Plan {
    let run = &record.run;
    if run.held {
        // Waiting for its turn: nothing starts; cancelled, it ends at once.
        let state = if run.cancel_requested {
            StepState::Skipped
        } else {
            StepState::Pending
        };
        return Plan {
            steps: workflow
                .steps
                .iter()
                .map(|s| (s.name.clone(), state))
                .collect(),
            rollbacks: Vec::new(),
            create: Vec::new(),
            finish: run.cancel_requested.then_some(RunStatus::Cancelled),
        };
    }
    let input: Value = serde_json::from_str(&run.input).unwrap_or(Value::Null);
    let mut by_step: HashMap<&str, Vec<(Option<usize>, &StepTask)>> = HashMap::new();
    let mut rollback_tasks: HashMap<&str, &StepTask> = HashMap::new();
    for task in &record.tasks {
        let key = &task.step;
        match key.phase {
            Phase::Run => by_step
                .entry(&key.name)
                .or_default()
                .push((key.index, task)),
            Phase::Rollback => {
                rollback_tasks.insert(&key.name, task);
            }
        }
    }
    for tasks in by_step.values_mut() {
        tasks.sort_by_key(|(index, _)| *index);
    }
    let mut states: HashMap<&str, StepState> = HashMap::new();
    let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
    let mut create = Vec::new();
    for wave in workflow.dag.waves() {
        for name in wave {
            let Some(step) = workflow.step(name) else {
                continue;
            };
            let state = if let Some(tasks) = by_step.get(name) {
                let statuses: Vec<TaskStatus> =
                    tasks.iter().map(|(_, t)| t.task.state.status).collect();
                if statuses.iter().any(|s| !s.is_terminal()) {
                    StepState::Active
                } else if statuses.iter().all(|s| *s == TaskStatus::Succeeded) {
                    let value = if step.for_each.is_some() {
                        // An empty fan-out is recorded as one task with an empty list.
                        match tasks.as_slice() {
                            [(None, task)] => outputs_of(task),
                            _ => Value::Array(tasks.iter().map(|(_, t)| outputs_of(t)).collect()),
                        }
                    } else {
                        tasks.first().map_or(Value::Null, |(_, t)| outputs_of(t))
                    };
                    outputs.insert(name.to_owned(), value);
                    StepState::Succeeded
                } else if statuses.contains(&TaskStatus::Failed) {
                    StepState::Failed
                } else {
                    StepState::Cancelled
                }
            } else {
                let needs: Vec<StepState> = step
                    .needs
                    .iter()
                    .map(|n| {
                        states
                            .get(n.as_str())
                            .copied()
                            .unwrap_or(StepState::Pending)
                    })
                    .collect();
                if needs.iter().any(|s| s.blocks()) || run.cancel_requested {
                    StepState::Skipped
                } else if needs.iter().any(|s| !s.is_final()) {
                    StepState::Pending
                } else {
                    ready(workflow, run, step, &input, &outputs, &mut create)
                }
            };
            states.insert(name, state);
        }
    }
    let steps: Vec<(String, StepState)> = workflow
        .steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                states
                    .get(s.name.as_str())
                    .copied()
                    .unwrap_or(StepState::Pending),
            )
        })
        .collect();
    let forward_done = create.is_empty() && steps.iter().all(|(_, s)| s.is_final());
    let went_wrong = run.cancel_requested
        || steps
            .iter()
            .any(|(_, s)| matches!(s, StepState::Failed | StepState::Cancelled));
    let rollbacks = if forward_done && went_wrong && workflow.rollback {
        roll_back(
            workflow,
            run,
            &input,
            &outputs,
            &states,
            &rollback_tasks,
            &mut create,
        )
    } else {
        Vec::new()
    };
    let status = if run.cancel_requested {
        RunStatus::Cancelled
    } else if went_wrong {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    let finish = (create.is_empty() && forward_done && rollbacks.iter().all(|(_, s)| s.is_final()))
        .then_some(status);
    Plan {
        steps,
        rollbacks,
        create,
        finish,
    }
}

/// The rollback phase of a run that failed or was cancelled: each succeeded step with a
/// rollback is undone once every step that needs it has been undone (reverse dependency
/// order). Adds ready rollbacks to `create`; returns each one's state, in definition order.
fn roll_back(
    workflow: &Workflow,
    run: &WorkflowRun,
    input: &Value,
    outputs: &BTreeMap<String, Value>,
    states: &HashMap<&str, StepState>,
    rollback_tasks: &HashMap<&str, &StepTask>,
    create: &mut Vec<NewStep>,
) -> Vec<(String, StepState)> {
    let undoable = |name: &str| {
        workflow.step(name).is_some_and(|s| s.rollback.is_some())
            && states.get(name) == Some(&StepState::Succeeded)
    };
    let mut undo: HashMap<String, StepState> = HashMap::new();
    let mut waves = workflow.dag.waves();
    waves.reverse();
    for wave in waves {
        for name in wave {
            if !undoable(name) {
                continue;
            }
            let Some(rollback) = workflow.step(name).and_then(|s| s.rollback.as_ref()) else {
                continue;
            };
            let key = StepKey::rollback(name);
            let state = if let Some(task) = rollback_tasks.get(name) {
                match task.task.state.status {
                    TaskStatus::Succeeded => StepState::Succeeded,
                    TaskStatus::Failed => StepState::Failed,
                    TaskStatus::Cancelled => StepState::Cancelled,
                    _ => StepState::Active,
                }
            } else {
                // Wait for every step that needs this one and was itself undoable.
                let dependents: Vec<StepState> = workflow
                    .steps
                    .iter()
                    .filter(|d| d.needs.iter().any(|n| n == name) && undoable(&d.name))
                    .map(|d| undo.get(&d.name).copied().unwrap_or(StepState::Pending))
                    .collect();
                if dependents.iter().any(|s| s.blocks()) {
                    StepState::Skipped
                } else if dependents.iter().any(|s| !s.is_final()) {
                    StepState::Pending
                } else {
                    let scope = Scope {
                        input,
                        outputs,
                        item: None,
                        event: None,
                    };
                    create.push(
                        match render_job(
                            &rollback.job,
                            &rollback.spec,
                            format!("{}/{key}", workflow.name),
                            run,
                            &scope,
                        ) {
                            Ok(job) => NewStep {
                                step: key,
                                job,
                                status: TaskStatus::Queued,
                                outputs: None,
                                error: None,
                            },
                            Err(e) => NewStep {
                                step: key,
                                job: rollback.job.clone(),
                                status: TaskStatus::Failed,
                                outputs: None,
                                error: Some(e),
                            },
                        },
                    );
                    StepState::Active
                }
            };
            undo.insert(name.to_owned(), state);
        }
    }
    workflow
        .steps
        .iter()
        .filter_map(|s| undo.get(&s.name).map(|state| (s.name.clone(), *state)))
        .collect()
}

/// A step whose needs all succeeded: decides `when`, fans out, renders; adds what to write to
/// `create` and returns the step's state.
fn ready(
    workflow: &Workflow,
    run: &WorkflowRun,
    step: &orchion_spec::Step,
    input: &Value,
    outputs: &BTreeMap<String, Value>,
    create: &mut Vec<NewStep>,
) -> StepState {
    let scope = Scope {
        input,
        outputs,
        item: None,
        event: None,
    };
    if let Some(when) = &step.when {
        match orchion_spec::condition(when, &scope) {
            Ok(true) => {}
            Ok(false) => return StepState::Skipped,
            Err(e) => {
                create.push(failed_step(StepKey::step(&step.name), step, e));
                return StepState::Failed;
            }
        }
    }
    let Some(for_each) = &step.for_each else {
        create.push(
            match render_job(
                &step.job,
                &step.spec,
                format!("{}/{}", workflow.name, step.name),
                run,
                &scope,
            ) {
                Ok(job) => NewStep {
                    step: StepKey::step(&step.name),
                    job,
                    status: TaskStatus::Queued,
                    outputs: None,
                    error: None,
                },
                Err(e) => failed_step(StepKey::step(&step.name), step, e),
            },
        );
        return StepState::Active;
    };
    let items = match orchion_spec::items(for_each, &scope) {
        Ok(items) => items,
        Err(e) => {
            create.push(failed_step(StepKey::step(&step.name), step, e));
            return StepState::Failed;
        }
    };
    if items.is_empty() {
        create.push(NewStep {
            step: StepKey::step(&step.name),
            job: step.job.clone(),
            status: TaskStatus::Succeeded,
            outputs: Some("[]".into()),
            error: None,
        });
        // Succeeded once written; the next pass reads its (empty) outputs from the task.
        return StepState::Active;
    }
    for (i, item) in items.iter().enumerate() {
        let scope = Scope {
            item: Some(item),
            ..scope
        };
        let key = StepKey::element(&step.name, i);
        create.push(
            match render_job(
                &step.job,
                &step.spec,
                format!("{}/{key}", workflow.name),
                run,
                &scope,
            ) {
                Ok(job) => NewStep {
                    step: key,
                    job,
                    status: TaskStatus::Queued,
                    outputs: None,
                    error: None,
                },
                Err(e) => failed_step(key, step, e),
            },
        );
    }
    StepState::Active
}

/// Parses and checks a stored definition; a failure means the store holds what was never
/// accepted (a bug, or a store edited by hand).
fn compile(name: &str, version: u32, text: &str) -> Result<Workflow, WorkflowError> {
    let corrupt = |errors| WorkflowError::Corrupt {
        name: name.to_owned(),
        version,
        errors,
    };
    let definition: WorkflowDefinition = serde_json::from_str(text).map_err(|e| {
        corrupt(ValidationErrors(vec![orchion_domain::FieldError::new(
            "definition",
            e.to_string(),
        )]))
    })?;
    definition.compile().map_err(corrupt)
}

/// Starts and advances workflow runs.
pub struct Workflows {
    store: Arc<dyn Store>,
    work: Arc<WorkQueue>,
    /// Compiled definitions by (name, version): stored versions never change.
    compiled: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
    /// With several replicas, the periodic look at every running run is one replica's duty;
    /// `None` runs it here always.
    periodic_pass: Option<crate::replicas::Duty>,
}

impl Workflows {
    pub fn new(store: Arc<dyn Store>, work: Arc<WorkQueue>) -> Self {
        Self {
            store,
            work,
            compiled: Mutex::new(HashMap::new()),
            periodic_pass: None,
        }
    }

    /// The periodic pass over every running run becomes `duty`: carried out by one replica at
    /// a time, not by each (runs moved on by their results are advanced wherever those arrive).
    pub fn with_periodic_pass(self, duty: crate::replicas::Duty) -> Self {
        Self {
            periodic_pass: Some(duty),
            ..self
        }
    }

    /// The compiled definition of `name` at `version` (the latest when `None`).
    pub async fn definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Workflow>, WorkflowError> {
        if let Some(version) = version {
            if let Some(workflow) = self.cached(name, version) {
                return Ok(workflow);
            }
        }
        let stored = self.store.get_workflow_type(name, version).await?;
        self.type_definition(&stored)
    }

    /// A stored workflow type, compiled; each version is compiled once, since it never changes.
    fn type_definition(
        &self,
        stored: &orchion_domain::WorkflowType,
    ) -> Result<Arc<Workflow>, WorkflowError> {
        if let Some(workflow) = self.cached(&stored.name, stored.version) {
            return Ok(workflow);
        }
        let workflow = Arc::new(compile(&stored.name, stored.version, &stored.definition)?);
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((stored.name.clone(), stored.version), workflow.clone());
        Ok(workflow)
    }

    fn cached(&self, name: &str, version: u32) -> Option<Arc<Workflow>> {
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_owned(), version))
            .cloned()
    }

    /// The compiled definition `run` follows: its own (a deployment's, compiled each time:
    /// it is small, and caching one per run would grow without bound), or its pinned workflow
    /// type version.
    pub async fn definition_of(&self, run: &WorkflowRun) -> Result<Arc<Workflow>, WorkflowError> {
        match &run.definition {
            Some(definition) => Ok(Arc::new(compile(&run.workflow, run.version, definition)?)),
            None => self.definition(&run.workflow, Some(run.version)).await,
        }
    }

    /// Starts a deployment: a run of the workflow its resources make (checked by the caller
    /// with [`orchion_spec::DeploymentRequest::compile`]), with its first resources. The same
    /// request again gets the deployment it started (`created: false`).
    pub async fn start_deployment(
        &self,
        request: &orchion_spec::DeploymentRequest,
        workflow: &Workflow,
        definition: &Value,
        raw: &Value,
        project_id: ProjectId,
        trace_parent: Option<String>,
    ) -> Result<Created<orchion_domain::Deployment>, WorkflowError> {
        let run = WorkflowRun {
            id: RunId::new(),
            name: request.id.clone(),
            project_id: Some(project_id),
            workflow: "deployment".into(),
            version: 0,
            input: "{}".into(),
            definition: Some(definition.to_string()),
            status: RunStatus::Running,
            cancel_requested: false,
            held: false,
            created_at: orchion_store::now(),
            finished_at: None,
            trace_parent,
        };
        let first = plan(
            workflow,
            &WorkflowRunRecord {
                run: run.clone(),
                tasks: Vec::new(),
            },
        );
        let deployment = self
            .store
            .create_deployment(
                orchion_store::NewDeployment {
                    id: request.id.clone(),
                    composer: request.composer.clone(),
                    environment: request.environment.clone(),
                    request: raw.to_string(),
                },
                NewWorkflowRun {
                    name: run.name,
                    project_id: run.project_id,
                    workflow: run.workflow,
                    version: run.version,
                    input: run.input,
                    definition: run.definition,
                    trace_parent: run.trace_parent,
                },
                first.create,
            )
            .await?;
        if !deployment.created {
            return Ok(deployment);
        }
        orchion_metrics::metrics()
            .workflows_started
            .with_label_values(&["deployment"])
            .inc();
        self.work.work_changed();
        self.advance(deployment.value.run_id).await?;
        Ok(deployment)
    }

    /// Checks a client's request to start a run — its project id, name and input, and that the
    /// workflow type (and version) exists — reporting every problem at once, then starts it. A
    /// project that does not exist is refused by the store ([`StoreError::MissingReference`]).
    pub async fn start_request(
        &self,
        request: StartRequest,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<WorkflowRun>, WorkflowError> {
        let mut errors = ValidationErrors::default();
        let project_id = request.project_id.as_deref().and_then(|raw| {
            raw.parse::<ProjectId>()
                .map_err(|e| errors.push(FieldError::new("project_id", e.to_string())))
                .ok()
        });
        if let Some(name) = &request.name {
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "name",
                    "name must be 1 to 200 characters with no control characters",
                ));
            }
        }
        let input = match request.input {
            Value::Null => Value::Object(Default::default()),
            input @ Value::Object(_) => input,
            _ => {
                errors.push(FieldError::new("input", "input must be a JSON object"));
                Value::Null
            }
        };
        let stored = match self
            .store
            .get_workflow_type(&request.workflow, request.version)
            .await
            .and_then(|stored| match request.confined_to {
                Some(project) if stored.project_id != Some(project) => Err(StoreError::NotFound {
                    kind: "workflow type",
                    id: request.workflow.clone(),
                }),
                _ => Ok(stored),
            }) {
            Ok(stored) => Some(stored),
            Err(StoreError::NotFound { .. }) => {
                errors.push(match request.version {
                Some(v) => FieldError::new(
                    "version",
                    format!("workflow type `{}` has no version {v}", request.workflow),
                ),
                None => FieldError::new(
                    "type",
                    format!(
                        "workflow type `{}` does not exist: store it first with POST /api/v1/workflow-types",
                        request.workflow
                    ),
                ),
            });
                None
            }
            Err(e) => return Err(e.into()),
        };
        errors.into_result(()).map_err(WorkflowError::Invalid)?;
        // No problem was found, so neither was a missing workflow type.
        let Some(stored) = stored else {
            return Err(WorkflowError::Invalid(ValidationErrors::default()));
        };
        let run = StartRun {
            name: request.name,
            workflow: request.workflow,
            version: request.version,
            project_id,
            input,
            trace_parent: request.trace_parent,
        };
        self.start_stored(stored, run, idempotency).await
    }

    /// Starts a run of the latest (or the given) version, writing its first ready steps in the
    /// same transaction.
    pub async fn start(
        &self,
        request: StartRun,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<WorkflowRun>, WorkflowError> {
        let stored = self
            .store
            .get_workflow_type(&request.workflow, request.version)
            .await?;
        self.start_stored(stored, request, idempotency).await
    }

    /// [`Workflows::start`] for the workflow type version already read.
    async fn start_stored(
        &self,
        stored: orchion_domain::WorkflowType,
        request: StartRun,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<WorkflowRun>, WorkflowError> {
        let workflow = self.type_definition(&stored)?;
        let run = WorkflowRun {
            id: RunId::new(),
            name: request.name.unwrap_or_else(|| stored.name.clone()),
            project_id: request.project_id.or(stored.project_id),
            workflow: stored.name.clone(),
            version: stored.version,
            input: request.input.to_string(),
            definition: None,
            status: RunStatus::Running,
            cancel_requested: false,
            held: false,
            created_at: orchion_store::now(),
            finished_at: None,
            trace_parent: request.trace_parent,
        };
        let first = plan(
            &workflow,
            &WorkflowRunRecord {
                run: run.clone(),
                tasks: Vec::new(),
            },
        );
        let created = self
            .store
            .create_workflow_run(
                NewWorkflowRun {
                    name: run.name,
                    project_id: run.project_id,
                    workflow: run.workflow,
                    version: run.version,
                    input: run.input,
                    definition: None,
                    trace_parent: run.trace_parent,
                },
                first.create,
                idempotency,
            )
            .await?;
        if created.created {
            orchion_metrics::metrics()
                .workflows_started
                .with_label_values(&["workflow"])
                .inc();
            self.work.work_changed();
            // Steps that ended without running (or a run with nothing to do) move on now.
            self.advance(created.value.id).await?;
        }
        Ok(created)
    }

    /// Writes what the run should do next; repeats while that changes something (a step that
    /// fails without running lets its dependents be skipped at once).
    pub async fn advance(&self, id: RunId) -> Result<(), WorkflowError> {
        loop {
            let record = self.store.get_workflow_run(id).await?;
            if record.run.status.is_terminal() {
                return Ok(());
            }
            let workflow = self.definition_of(&record.run).await?;
            let plan = plan(&workflow, &record);
            if plan.create.is_empty() && plan.finish.is_none() {
                return Ok(());
            }
            let queued = plan.create.iter().any(|s| s.status == TaskStatus::Queued);
            let settled = plan.create.iter().any(|s| s.status.is_terminal());
            let finished = plan.finish;
            let ended_here = self
                .store
                .advance_workflow_run(id, plan.create, plan.finish)
                .await?;
            if let (Some(status), true) = (finished, ended_here) {
                let metrics = orchion_metrics::metrics();
                metrics
                    .workflows_finished
                    .with_label_values(&[status.as_str()])
                    .inc();
                let took = orchion_store::now() - record.run.created_at;
                metrics
                    .workflows_duration
                    .with_label_values(&[status.as_str()])
                    .observe(took.as_seconds_f64().max(0.0));
            }
            let finished = finished.is_some();
            if queued {
                self.work.work_changed();
            }
            if finished || !settled {
                return Ok(());
            }
        }
    }

    /// Cancels a running run: its queued and running tasks are cancelled, nothing new starts,
    /// and it ends `cancelled` once its tasks have stopped.
    pub async fn cancel(&self, id: RunId) -> Result<(), WorkflowError> {
        self.store.cancel_workflow_run(id).await?;
        self.advance(id).await
    }

    /// Undoes a run: cancels it if it runs, reopens it if it has finished, and rolls back its
    /// succeeded steps (those with a rollback) in reverse order. It ends `cancelled`.
    pub async fn undo(&self, id: RunId) -> Result<(), WorkflowError> {
        self.store.undo_workflow_run(id).await?;
        self.work.work_changed();
        self.advance(id).await
    }

    /// Runs the failed and cancelled steps of a failed or cancelled run again, and what they
    /// held back.
    pub async fn retry(&self, id: RunId) -> Result<(), WorkflowError> {
        self.store.retry_workflow_run(id).await?;
        self.work.work_changed();
        self.advance(id).await
    }
}

/// The engine: runs move on as their steps finish (the work queue wakes it), and every
/// [`PASS_INTERVAL`] each running run is looked at, for what no result announced (a lost
/// lease, a restart). A run that fails to advance is logged; the next pass tries again.
impl Reconciler for Workflows {
    fn name(&self) -> &'static str {
        "workflow_engine"
    }

    fn period(&self) -> Duration {
        PASS_INTERVAL
    }

    fn wake(&self) -> Option<&Notify> {
        Some(self.work.steps_finished())
    }

    async fn reconcile(
        &self,
        cause: Cause,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let mut runs = self.work.take_finished_runs();
        let ours = match &self.periodic_pass {
            Some(duty) => cause == Cause::Period && duty.held().await,
            None => cause == Cause::Period,
        };
        if ours {
            runs.extend(self.store.running_workflow_runs().await?);
        }
        for &id in &runs {
            if let Err(e) = self.advance(id).await {
                tracing::warn!(run_id = %id, error = %e, "advancing a workflow run failed; the next pass tries again");
            }
        }
        Ok(runs.len())
    }
}
