//! A run's plan, kept up to date by what changed.
//!
//! [`Progress`] holds what [`super::plan`] derives from a run's tasks — each step's state, the
//! outputs of the succeeded ones, the steps to write — and moves it on when tasks change: a
//! changed step is looked at again, and its dependents only if its state changed. So a step's
//! end costs what its dependents cost, not what the run does. [`super::plan`] is the same code
//! run over every step at once; the property test `an_advanced_plan_is_the_plan_of_its_tasks`
//! holds the two to one answer.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use orchion_domain::{Phase, RunStatus, StepKey, TaskStatus, WorkflowRun};
use orchion_spec::{Scope, Workflow};
use orchion_store::NewStep;
use serde_json::Value;

use super::{Plan, StepState, ready, render_job, rendered_step};

/// What the plan reads of one task: its key, its status and, once succeeded, its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub step: StepKey,
    pub status: TaskStatus,
    pub outputs: Option<String>,
}

impl From<orchion_store::StepProgress> for Seen {
    fn from(task: orchion_store::StepProgress) -> Self {
        Seen {
            step: task.step,
            status: task.status,
            outputs: task.outputs,
        }
    }
}

/// One task as the plan knows it.
#[derive(Debug, Clone)]
struct Known {
    status: TaskStatus,
    outputs: Option<String>,
}

/// A run's derived state. See the module's documentation.
#[derive(Debug, Clone)]
pub struct Progress {
    workflow: Arc<Workflow>,
    /// The run as read when this was made: its flags decide what is skipped and how it ends.
    pub(super) run: WorkflowRun,
    input: Value,
    /// Each step's run-phase tasks by fan-out element, by the step's position.
    tasks: Vec<BTreeMap<Option<usize>, Known>>,
    /// Each step's rollback task's status, by position.
    rollback_tasks: Vec<Option<TaskStatus>>,
    /// Each step's state, by position.
    states: Vec<StepState>,
    /// The outputs of each succeeded step, as templates read them.
    outputs: BTreeMap<String, Value>,
    /// A step whose tasks were planned (they are in `create`, or being written) but not yet
    /// seen, with the state its planning gave it.
    planned: Vec<Option<StepState>>,
    create: Vec<NewStep>,
    /// How many steps are not final; how many failed or were cancelled.
    unfinal: usize,
    wrong: usize,
    /// The run's revision this accounts for (see migration 0023).
    pub(super) revision: u64,
    /// Since when the store's revision has been ahead of `revision`: someone changed the run
    /// without telling this engine, or a result's news is on its way.
    pub(super) behind_since: Option<Instant>,
}

/// The outputs a finished task produced (an empty object when none).
fn outputs_of(task: &Known) -> Value {
    task.outputs
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// Whether a task's change from `from` to `to` is one the store counts in the run's revision:
/// into, out of or between terminal statuses (the trigger of migration 0023). A task not seen
/// before was queued.
fn counted(from: Option<TaskStatus>, to: TaskStatus) -> bool {
    let from = from.unwrap_or(TaskStatus::Queued);
    from != to && (from.is_terminal() || to.is_terminal())
}

impl Progress {
    /// The plan of a run whose tasks are `tasks`, every step looked at.
    pub fn new(
        workflow: Arc<Workflow>,
        run: WorkflowRun,
        tasks: impl IntoIterator<Item = Seen>,
    ) -> Progress {
        let n = workflow.steps.len();
        let input = serde_json::from_str(&run.input).unwrap_or(Value::Null);
        let mut progress = Progress {
            workflow,
            run,
            input,
            tasks: vec![BTreeMap::new(); n],
            rollback_tasks: vec![None; n],
            states: vec![StepState::Pending; n],
            outputs: BTreeMap::new(),
            planned: vec![None; n],
            create: Vec::new(),
            unfinal: n,
            wrong: 0,
            revision: 0,
            behind_since: None,
        };
        for task in tasks {
            progress.record(task);
        }
        if progress.run.held {
            if progress.run.cancel_requested {
                progress.states.fill(StepState::Skipped);
                progress.unfinal = 0;
            }
            return progress;
        }
        let order: Vec<usize> = progress.workflow.dag.order().collect();
        for i in order {
            let state = progress.evaluate(i);
            progress.set_state(i, state);
        }
        progress
    }

    /// The definition the run follows.
    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.workflow
    }

    /// Whether the run's flags are still those this was made with.
    pub fn made_for(&self, run: &WorkflowRun) -> bool {
        self.run.cancel_requested == run.cancel_requested
            && self.run.held == run.held
            && self.run.status == run.status
    }

    /// Takes in changed tasks and moves the plan on: each changed step is looked at again,
    /// and the steps after it as far as states change. Returns how many of the changes the
    /// store counts in the run's revision.
    pub fn apply(&mut self, changed: impl IntoIterator<Item = Seen>) -> u64 {
        let mut counted_changes = 0;
        let mut dirty = BTreeSet::new();
        for task in changed {
            let Some(i) = self.workflow.dag.position(&task.step.name) else {
                continue;
            };
            let before = self.status_of(&task.step, i);
            if counted(before, task.status) {
                counted_changes += 1;
            }
            if task.step.phase == Phase::Run {
                self.planned[i] = None;
                dirty.insert((self.workflow.dag.rank(i), i));
            }
            self.record(task);
        }
        if !self.run.held {
            while let Some((_, i)) = dirty.pop_first() {
                let state = self.evaluate(i);
                if state != self.states[i] {
                    self.set_state(i, state);
                    for &d in self.workflow.dag.dependents_at(i) {
                        dirty.insert((self.workflow.dag.rank(d), d));
                    }
                }
            }
        }
        counted_changes
    }

    /// What to write now: the steps that became ready (taken: the caller writes them and
    /// [`Progress::apply`]s them), and the run's end, when it has ended.
    pub fn take_plan(&mut self) -> (Vec<NewStep>, Option<RunStatus>) {
        let rollbacks = self.roll_back();
        let create = std::mem::take(&mut self.create);
        let finish = self.finish(&create, &rollbacks);
        (create, finish)
    }

    /// The whole plan, for reading a run: every step's state, the rollbacks', what to write.
    pub fn into_plan(mut self) -> Plan {
        let rollbacks = self.roll_back();
        let create = std::mem::take(&mut self.create);
        let finish = self.finish(&create, &rollbacks);
        let steps = self
            .workflow
            .steps
            .iter()
            .zip(&self.states)
            .map(|(s, state)| (s.name.clone(), *state))
            .collect();
        Plan {
            steps,
            rollbacks,
            create,
            finish,
        }
    }

    fn status_of(&self, key: &StepKey, i: usize) -> Option<TaskStatus> {
        match key.phase {
            Phase::Run => self.tasks[i].get(&key.index).map(|t| t.status),
            Phase::Rollback => self.rollback_tasks[i],
        }
    }

    fn record(&mut self, task: Seen) {
        let Some(i) = self.workflow.dag.position(&task.step.name) else {
            return;
        };
        match task.step.phase {
            Phase::Run => {
                self.tasks[i].insert(
                    task.step.index,
                    Known {
                        status: task.status,
                        outputs: task.outputs,
                    },
                );
            }
            Phase::Rollback => self.rollback_tasks[i] = Some(task.status),
        }
    }

    fn set_state(&mut self, i: usize, state: StepState) {
        let before = std::mem::replace(&mut self.states[i], state);
        let wrong = |s: StepState| matches!(s, StepState::Failed | StepState::Cancelled);
        match (before.is_final(), state.is_final()) {
            (false, true) => self.unfinal -= 1,
            (true, false) => self.unfinal += 1,
            _ => {}
        }
        match (wrong(before), wrong(state)) {
            (false, true) => self.wrong += 1,
            (true, false) => self.wrong -= 1,
            _ => {}
        }
        if before == StepState::Succeeded && state != StepState::Succeeded {
            self.outputs.remove(self.workflow.steps[i].name.as_str());
        }
    }

    /// The state of the step at `i`, from its tasks, or from the steps it needs; a step that
    /// became ready is planned (its tasks added to `create`).
    fn evaluate(&mut self, i: usize) -> StepState {
        let workflow = self.workflow.clone();
        let step = &workflow.steps[i];
        let tasks = &self.tasks[i];
        if !tasks.is_empty() {
            if tasks.values().any(|t| !t.status.is_terminal()) {
                return StepState::Active;
            }
            if tasks.values().all(|t| t.status == TaskStatus::Succeeded) {
                let value = if step.for_each.is_some() {
                    // An empty fan-out is recorded as one task with an empty list.
                    match tasks.iter().next() {
                        Some((None, task)) if tasks.len() == 1 => outputs_of(task),
                        _ => Value::Array(tasks.values().map(outputs_of).collect()),
                    }
                } else {
                    tasks.values().next().map_or(Value::Null, outputs_of)
                };
                self.outputs.insert(step.name.clone(), value);
                return StepState::Succeeded;
            }
            if tasks.values().any(|t| t.status == TaskStatus::Failed) {
                return StepState::Failed;
            }
            return StepState::Cancelled;
        }
        if let Some(state) = self.planned[i] {
            return state;
        }
        let needs = workflow.dag.needs_at(i).iter().map(|&j| self.states[j]);
        if needs.clone().any(StepState::blocks) || self.run.cancel_requested {
            return StepState::Skipped;
        }
        if needs.clone().any(|s| !s.is_final()) {
            return StepState::Pending;
        }
        let before = self.create.len();
        let state = ready(
            &workflow,
            &self.run,
            step,
            &self.input,
            &self.outputs,
            &mut self.create,
        );
        if self.create.len() > before {
            self.planned[i] = Some(state);
        }
        state
    }

    /// Whether the run has ended, and how: every step final, nothing left to write, and the
    /// rollbacks (if any) done.
    fn finish(&self, create: &[NewStep], rollbacks: &[(String, StepState)]) -> Option<RunStatus> {
        if self.run.held {
            return self.run.cancel_requested.then_some(RunStatus::Cancelled);
        }
        let done =
            create.is_empty() && self.unfinal == 0 && rollbacks.iter().all(|(_, s)| s.is_final());
        done.then_some(if self.run.cancel_requested {
            RunStatus::Cancelled
        } else if self.wrong > 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        })
    }

    /// The rollback phase of a run that failed or was cancelled: each succeeded step with a
    /// rollback is undone once every step that needs it has been undone (reverse dependency
    /// order). Adds ready rollbacks to `create`; returns each one's state, in definition order.
    /// Nothing before the run's forward steps are all final.
    fn roll_back(&mut self) -> Vec<(String, StepState)> {
        let forward_done = self.create.is_empty() && self.unfinal == 0;
        let went_wrong = self.run.cancel_requested || self.wrong > 0;
        if self.run.held || !(forward_done && went_wrong && self.workflow.rollback) {
            return Vec::new();
        }
        let workflow = self.workflow.clone();
        let undoable = |i: usize| {
            workflow.steps[i].rollback.is_some() && self.states[i] == StepState::Succeeded
        };
        let mut undo: Vec<Option<StepState>> = vec![None; workflow.steps.len()];
        for wave in workflow.dag.wave_positions().iter().rev() {
            for &i in wave {
                if !undoable(i) {
                    continue;
                }
                let Some(rollback) = &workflow.steps[i].rollback else {
                    continue;
                };
                let key = StepKey::rollback(&workflow.steps[i].name);
                let state = match self.rollback_tasks[i] {
                    Some(TaskStatus::Succeeded) => StepState::Succeeded,
                    Some(TaskStatus::Failed) => StepState::Failed,
                    Some(TaskStatus::Cancelled) => StepState::Cancelled,
                    Some(_) => StepState::Active,
                    None => {
                        // Wait for every step that needs this one and was itself undoable.
                        let dependents = workflow
                            .dag
                            .dependents_at(i)
                            .iter()
                            .filter(|&&d| undoable(d))
                            .map(|&d| undo[d].unwrap_or(StepState::Pending));
                        if dependents.clone().any(StepState::blocks) {
                            StepState::Skipped
                        } else if dependents.clone().any(|s| !s.is_final()) {
                            StepState::Pending
                        } else {
                            let scope = Scope {
                                input: &self.input,
                                outputs: &self.outputs,
                                item: None,
                                event: None,
                            };
                            let name = format!("{}/{key}", workflow.name);
                            self.create.push(rendered_step(
                                key,
                                &rollback.job,
                                render_job(&rollback.job, &rollback.spec, name, &self.run, &scope),
                            ));
                            StepState::Active
                        }
                    }
                };
                undo[i] = Some(state);
            }
        }
        workflow
            .steps
            .iter()
            .zip(undo)
            .filter_map(|(s, state)| state.map(|state| (s.name.clone(), state)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use orchion_spec::WorkflowDefinition;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// A workflow of `needs.len()` no-op steps: step `i` needs the earlier steps `needs[i]`
    /// names (as bits), fans out over the input's items when `fans[i]`, and has a rollback
    /// when `undo[i]` (and does not fan out).
    fn workflow(needs: &[u8], fans: &[bool], undo: &[bool], rollback: bool) -> Arc<Workflow> {
        let steps: Vec<Value> = needs
            .iter()
            .enumerate()
            .map(|(i, bits)| {
                let needs: Vec<String> = (0..i)
                    .filter(|j| bits & (1 << j) != 0)
                    .map(|j| format!("s{j}"))
                    .collect();
                let mut step =
                    json!({"name": format!("s{i}"), "needs": needs, "executor": "noop", "spec": {}});
                if fans[i] {
                    step["for_each"] = json!("${{ input.items }}");
                } else if undo[i] {
                    step["rollback"] = json!({"executor": "noop", "spec": {}});
                }
                step
            })
            .collect();
        let definition = json!({"name": "p", "rollback": rollback, "steps": steps});
        Arc::new(
            serde_json::from_value::<WorkflowDefinition>(definition)
                .unwrap()
                .compile()
                .unwrap(),
        )
    }

    fn run(items: usize) -> WorkflowRun {
        WorkflowRun {
            id: orchion_domain::RunId::new(),
            name: "p".into(),
            project_id: None,
            workflow: "p".into(),
            version: 1,
            input: json!({"items": vec![0; items]}).to_string(),
            definition: None,
            status: RunStatus::Running,
            cancel_requested: false,
            held: false,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
            trace_parent: None,
        }
    }

    type Shown = (
        Vec<(String, StepState)>,
        Vec<(String, StepState)>,
        Vec<(String, TaskStatus)>,
        Option<RunStatus>,
    );

    fn shown(plan: Plan) -> Shown {
        (
            plan.steps,
            plan.rollbacks,
            plan.create
                .iter()
                .map(|s| (s.step.to_string(), s.status))
                .collect(),
            plan.finish,
        )
    }

    fn seen(step: &NewStep) -> Seen {
        Seen {
            step: step.step.clone(),
            status: step.status,
            outputs: step.outputs.clone(),
        }
    }

    proptest! {
        /// A plan moved on by each change is the plan made afresh from all the tasks, at every
        /// moment of a run: the steps' and rollbacks' states, what to write, and the end.
        #[test]
        fn an_advanced_plan_is_the_plan_of_its_tasks(
            needs in prop::collection::vec(any::<u8>(), 1..8),
            fans in prop::collection::vec(any::<bool>(), 8),
            undo in prop::collection::vec(any::<bool>(), 8),
            rollback in any::<bool>(),
            items in 0usize..3,
            ends in prop::collection::vec((any::<u8>(), 0u8..3), 0..40),
        ) {
            let workflow = workflow(&needs, &fans, &undo, rollback);
            let run = run(items);
            let mut tasks: Vec<Seen> = Vec::new();
            let mut progress = Progress::new(workflow.clone(), run.clone(), []);
            let mut ends = ends.into_iter();
            loop {
                let fresh = Progress::new(workflow.clone(), run.clone(), tasks.clone());
                prop_assert_eq!(shown(progress.clone().into_plan()), shown(fresh.into_plan()));
                let (create, finish) = progress.take_plan();
                if finish.is_some() {
                    break;
                }
                // The engine writes what it planned, and takes it in.
                let written: Vec<Seen> = create.iter().map(seen).collect();
                tasks.extend(written.iter().cloned());
                progress.apply(written);
                if !create.is_empty() {
                    continue;
                }
                // Then one active task ends.
                let active: Vec<usize> = (0..tasks.len())
                    .filter(|&i| !tasks[i].status.is_terminal())
                    .collect();
                let Some((pick, how)) = ends.next() else { break };
                let Some(&i) = active.get(usize::from(pick) % active.len().max(1)) else {
                    break;
                };
                tasks[i].status = match how {
                    0 => TaskStatus::Succeeded,
                    1 => TaskStatus::Failed,
                    _ => TaskStatus::Cancelled,
                };
                tasks[i].outputs = (how == 0).then(|| "{}".to_owned());
                let counted = progress.apply([tasks[i].clone()]);
                prop_assert_eq!(counted, 1);
            }
        }
    }
}
