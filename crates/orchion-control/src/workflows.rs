//! The workflow engine: starts runs of stored workflow types and moves them on as their steps
//! finish.
//!
//! It is level-triggered. [`plan`] is a pure function of a run's pinned definition, its input
//! and its tasks: which steps are ready (and their rendered jobs), which are skipped, and
//! whether the run has ended. [`Workflows::advance`] writes that plan; the store ignores steps
//! already written and ends a run only by compare-and-set, so advancing twice, or from two
//! replicas, is harmless. The engine keeps each run's plan ([`Progress`]) and moves it on at
//! once when one of its steps finishes (the work queue names the tasks), reading those tasks
//! alone; a run whose revision (the store's count of its changes) moved past what the plan
//! accounts for is read whole again. A sweep at start, every [`SWEEP_INTERVAL`] and after the
//! reaper lost attempts finds the runs that changed with no one telling (a lease expired, a
//! replica stopped between a result and its run's advance).
//!
//! Step semantics: a step runs when every step it needs succeeded. A step whose `when` is false
//! is skipped, and so is every step that needs a failed, cancelled or skipped step. A `for_each`
//! step runs one task per element (`name[i]`) and succeeds when all do; later steps read its
//! outputs as a list. A step whose templates cannot be resolved fails without running.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use orchion_domain::{
    FieldError, NewJob, ProjectId, RunId, RunStatus, StepKey, TaskId, TaskStatus, ValidationErrors,
    WorkflowRun, WorkflowRunRecord,
};
use orchion_spec::{Scope, Workflow, WorkflowDefinition};
use orchion_store::{Created, IdempotencyKey, NewStep, NewWorkflowRun, Store, StoreError};
use serde_json::Value;

use tokio::sync::Notify;

use crate::{
    WorkQueue,
    background::{Cause, Reconciler},
};

/// How often the engine looks again at the runs it must (behind the store, or whose advance
/// failed), besides the look each finished step triggers.
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
    rendered_step(key, &step.job, Err(error))
}

/// The step `key` to write once its job was rendered: queued to run, or failed (its job as
/// written, `base`) with the reason it could not be rendered.
fn rendered_step(key: StepKey, base: &NewJob, rendered: Result<NewJob, String>) -> NewStep {
    match rendered {
        Ok(job) => NewStep {
            step: key,
            job,
            status: TaskStatus::Queued,
            outputs: None,
            error: None,
        },
        Err(error) => NewStep {
            step: key,
            job: base.clone(),
            status: TaskStatus::Failed,
            outputs: None,
            error: Some(error),
        },
    }
}

/// What `run` should do next, given its definition and its tasks. Pure: [`Progress`] made
/// from every task at once.
pub fn plan(workflow: &Arc<Workflow>, record: &WorkflowRunRecord) -> Plan {
    Progress::new(
        workflow.clone(),
        record.run.clone(),
        record.tasks.iter().map(|task| Seen {
            step: task.step.clone(),
            status: task.task.state.status,
            outputs: task.task.outputs.clone(),
        }),
    )
    .into_plan()
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
        create.push(rendered_step(
            StepKey::step(&step.name),
            &step.job,
            render_job(
                &step.job,
                &step.spec,
                format!("{}/{}", workflow.name, step.name),
                run,
                &scope,
            ),
        ));
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
        let name = format!("{}/{key}", workflow.name);
        create.push(rendered_step(
            key,
            &step.job,
            render_job(&step.job, &step.spec, name, run, &scope),
        ));
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
    /// The plans of the runs this engine moved on last, by run: taken out while one is being
    /// moved on, so a failure leaves none half-changed.
    plans: Mutex<HashMap<RunId, Progress>>,
    /// Runs to look at again on the next pass: behind the store's revision, or whose advance
    /// failed.
    recheck: Mutex<HashSet<RunId>>,
    /// Each running run's revision when the sweep last saw it, and when it swept.
    swept: Mutex<(HashMap<RunId, u64>, Option<Instant>)>,
    /// With several replicas, the sweep over every running run is one replica's duty; `None`
    /// runs it here always.
    periodic_pass: Option<crate::replicas::Duty>,
    reads: Reads,
}

/// The store reads the engine made to move runs on, by kind.
#[derive(Debug, Default)]
pub struct Reads {
    /// A run's state and revision.
    pub head: AtomicU64,
    /// The tasks a result named.
    pub tasks: AtomicU64,
    /// A run's every task.
    pub whole: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Read {
    Head,
    Tasks,
    Whole,
}

impl Reads {
    fn count(&self, read: Read) {
        let (counter, kind) = match read {
            Read::Head => (&self.head, "head"),
            Read::Tasks => (&self.tasks, "tasks"),
            Read::Whole => (&self.whole, "whole"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        orchion_metrics::metrics()
            .engine_reads
            .with_label_values(&[kind])
            .inc();
    }
}

/// How many runs' plans the engine keeps; a run past it is read whole when it next moves.
pub const PLANS_KEPT: usize = 4096;

/// How long a plan may stay behind the store's revision, while the news of a change may still
/// be on its way, before the run is read whole again.
pub const BEHIND_GRACE: Duration = Duration::from_millis(100);

/// How often every running run's revision is compared with what this engine knows: for
/// changes no one told it of (a replica that stopped between recording a result and moving
/// its run on).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What the engine was told changed in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// These tasks of it changed.
    Tasks(Vec<TaskId>),
    /// Something may have; the store's revision says whether.
    Unknown,
}

impl Workflows {
    pub fn new(store: Arc<dyn Store>, work: Arc<WorkQueue>) -> Self {
        Self {
            store,
            work,
            compiled: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            recheck: Mutex::new(HashSet::new()),
            swept: Mutex::new((HashMap::new(), None)),
            periodic_pass: None,
            reads: Reads::default(),
        }
    }

    /// The store reads made so far to move runs on.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The sweep over every running run becomes `duty`: carried out by one replica at a time,
    /// not by each (runs moved on by their results are advanced wherever those arrive).
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

    /// The compiled definition `run` follows: its own (a deployment's: the one of the plan
    /// kept for it, else compiled), or its pinned workflow type version.
    pub async fn definition_of(&self, run: &WorkflowRun) -> Result<Arc<Workflow>, WorkflowError> {
        match &run.definition {
            Some(definition) => {
                if let Some(kept) = lock(&self.plans).get(&run.id) {
                    return Ok(kept.workflow().clone());
                }
                Ok(Arc::new(compile(&run.workflow, run.version, definition)?))
            }
            None => self.definition(&run.workflow, Some(run.version)).await,
        }
    }

    /// Starts a deployment: a run of the workflow its resources make (checked by the caller
    /// with [`orchion_spec::DeploymentRequest::compile`]), with its first resources. The same
    /// request again gets the deployment it started (`created: false`).
    pub async fn start_deployment(
        &self,
        request: &orchion_spec::DeploymentRequest,
        workflow: Workflow,
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
        let first = Progress::new(Arc::new(workflow), run.clone(), []).into_plan();
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
        let first = Progress::new(workflow, run.clone(), []).into_plan();
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

    /// Writes what the run should do next, its plan read whole from the store.
    pub async fn advance(&self, id: RunId) -> Result<(), WorkflowError> {
        self.forget(id);
        self.advance_told(id, Told::Unknown).await
    }

    /// Forgets the plan kept for `id`: the next look reads the run whole.
    fn forget(&self, id: RunId) {
        lock(&self.plans).remove(&id);
    }

    /// Moves `id` on by what changed: the plan kept for it takes in the tasks `told` names
    /// (a read of those alone) when it accounts for every change the store counted; otherwise
    /// — no plan kept, the run's flags changed, or changes no one told of — the run is read
    /// whole. Writes what the plan says, and repeats while that settles steps (a step that
    /// fails without running lets its dependents be skipped at once).
    pub async fn advance_told(&self, id: RunId, told: Told) -> Result<(), WorkflowError> {
        let (mut tasks, unknown) = match told {
            Told::Tasks(tasks) => (Some(tasks), false),
            Told::Unknown => (None, true),
        };
        let mut read_whole = false;
        loop {
            let head = self.store.workflow_run_head(id).await?;
            self.reads.count(Read::Head);
            if head.run.status.is_terminal() {
                self.forget(id);
                return Ok(());
            }
            let kept = lock(&self.plans)
                .remove(&id)
                .filter(|p| !read_whole && p.made_for(&head.run));
            let mut progress = match kept {
                Some(mut progress) => {
                    if let Some(told) = tasks.take() {
                        let seen = self
                            .store
                            .workflow_run_steps(id, Some(told.as_slice()))
                            .await?;
                        self.reads.count(Read::Tasks);
                        progress.revision += progress.apply(seen.into_iter().map(Seen::from));
                    }
                    progress
                }
                None => {
                    let workflow = self.definition_of(&head.run).await?;
                    let seen = self.store.workflow_run_steps(id, None).await?;
                    self.reads.count(Read::Whole);
                    read_whole = true;
                    tasks = None;
                    let mut progress =
                        Progress::new(workflow, head.run.clone(), seen.into_iter().map(Seen::from));
                    progress.revision = head.revision;
                    progress
                }
            };
            let behind = progress.revision != head.revision;
            let behind_for = if behind {
                progress
                    .behind_since
                    .get_or_insert_with(Instant::now)
                    .elapsed()
            } else {
                progress.behind_since = None;
                Duration::ZERO
            };
            let (create, finish) = progress.take_plan();
            if behind && !read_whole && finish.is_some() {
                // A run is ended only by a plan that knows every change (another replica may
                // have retried it meanwhile): read whole first.
                read_whole = true;
                continue;
            }
            if create.is_empty() && finish.is_none() {
                if behind && !read_whole {
                    // Nothing to do by what this plan knows, and it does not know everything:
                    // told nothing, or long enough for news on its way, the run is read whole.
                    if unknown || behind_for >= BEHIND_GRACE {
                        read_whole = true;
                        continue;
                    }
                    lock(&self.recheck).insert(id);
                }
                self.keep(id, progress);
                return Ok(());
            }
            let queued = create.iter().any(|s| s.status == TaskStatus::Queued);
            let settled = create.iter().any(|s| s.status.is_terminal());
            let written: Vec<Seen> = create
                .iter()
                .map(|s| Seen {
                    step: s.step.clone(),
                    status: s.status,
                    outputs: s.outputs.clone(),
                })
                .collect();
            let Some(advanced) = self.store.advance_workflow_run(id, create, finish).await? else {
                // It ended meanwhile (elsewhere, or cancelled).
                self.forget(id);
                return Ok(());
            };
            if queued {
                self.work.work_changed();
            }
            if let Some(status) = finish {
                let metrics = orchion_metrics::metrics();
                metrics
                    .workflows_finished
                    .with_label_values(&[status.as_str()])
                    .inc();
                let took = orchion_store::now() - head.run.created_at;
                metrics
                    .workflows_duration
                    .with_label_values(&[status.as_str()])
                    .observe(took.as_seconds_f64().max(0.0));
                if let Some(released) = advanced.released {
                    // Its turn came: it starts now, not at the next sweep.
                    Box::pin(self.advance(released)).await?;
                }
                return Ok(());
            }
            // The store counted this write; the tasks it wrote are no change of theirs.
            progress.revision += 1;
            progress.apply(written);
            self.keep(id, progress);
            if !settled {
                return Ok(());
            }
            read_whole = false;
        }
    }

    /// Keeps `progress` as the plan of `id`, forgetting some other plan when too many are kept.
    fn keep(&self, id: RunId, progress: Progress) {
        let mut plans = lock(&self.plans);
        if plans.len() >= PLANS_KEPT && !plans.contains_key(&id) {
            if let Some(&other) = plans.keys().next() {
                plans.remove(&other);
            }
        }
        plans.insert(id, progress);
    }

    /// The runs whose revision changed since the last sweep and is not the one their kept plan
    /// accounts for. The first sweep (at start) finds every running run.
    async fn sweep(&self) -> Result<Vec<RunId>, StoreError> {
        let running = self.store.running_workflow_revisions().await?;
        let plans = lock(&self.plans);
        let mut swept = lock(&self.swept);
        let mut changed = Vec::new();
        let mut seen = HashMap::with_capacity(running.len());
        for (id, revision) in running {
            let known = swept.0.get(&id) == Some(&revision)
                || plans.get(&id).is_some_and(|p| p.revision == revision);
            if !known {
                changed.push(id);
            }
            seen.insert(id, revision);
        }
        *swept = (seen, Some(Instant::now()));
        Ok(changed)
    }

    fn sweep_due(&self) -> bool {
        lock(&self.swept)
            .1
            .is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL)
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

/// The engine: runs move on as their steps finish (the work queue wakes it, naming the tasks),
/// and each [`PASS_INTERVAL`] it looks again at the runs it must: those behind the store's
/// revision, those whose advance failed, and — after the reaper lost attempts, and every
/// [`SWEEP_INTERVAL`] — those whose revision moved without its knowing. A run that fails to
/// advance is logged; the next pass tries again.
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
        let mut runs: HashMap<RunId, Told> = self
            .work
            .take_finished_runs()
            .into_iter()
            .map(|(id, tasks)| (id, Told::Tasks(tasks)))
            .collect();
        let reaped = self.work.take_reaped();
        if cause == Cause::Period || reaped {
            for id in std::mem::take(&mut *lock(&self.recheck)) {
                runs.entry(id).or_insert(Told::Unknown);
            }
            let ours = match &self.periodic_pass {
                Some(duty) => duty.held().await,
                None => true,
            };
            if reaped || (ours && self.sweep_due()) {
                for id in self.sweep().await? {
                    runs.insert(id, Told::Unknown);
                }
            }
        }
        let looked = runs.len();
        for (id, told) in runs {
            if let Err(e) = self.advance_told(id, told).await {
                lock(&self.recheck).insert(id);
                tracing::warn!(run_id = %id, error = %e, "advancing a workflow run failed; the next pass tries again");
            }
        }
        Ok(looked)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

mod progress;
pub use progress::{Progress, Seen};
