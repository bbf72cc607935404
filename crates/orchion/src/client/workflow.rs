//! `orchion workflow-type apply|get` and `orchion run start|ls|get|cancel|retry|logs`.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use orchion_client::{
    Client, Paging,
    rest::{StartWorkflow, WorkflowRunBody, WorkflowTypeBody},
};
use serde_json::{Value, json};

use super::{CliError, Table, finish, job::read_job_file, print, print_listing, timestamp};
use crate::cli::{Output, RunArgs, RunCommand, WorkflowTypeArgs, WorkflowTypeCommand};

fn type_table(workflow: &WorkflowTypeBody) -> Table {
    let mut table = Table::new(vec!["NAME", "VERSION", "STEPS", "WAVES", "CREATED"]);
    let waves: Vec<String> = workflow.waves.iter().map(|wave| wave.join(",")).collect();
    table.row(vec![
        workflow.name.clone(),
        workflow.version.to_string(),
        workflow.definition["steps"]
            .as_array()
            .map_or(0, Vec::len)
            .to_string(),
        waves.join(" → "),
        timestamp(workflow.created_at),
    ]);
    table
}

/// Runs a `workflow-type` verb.
pub async fn run_types(args: WorkflowTypeArgs) -> ExitCode {
    let command = args.command;
    finish(
        &args.client,
        async |client: &Client, output| match command {
            WorkflowTypeCommand::Apply { file } => {
                let definition = read_job_file(&file)?;
                let stored = client.apply_workflow_type(&definition).await?;
                print(output, &stored, type_table)
            }
            WorkflowTypeCommand::Get { name, type_version } => {
                let stored = client.workflow_type(&name, type_version).await?;
                print(output, &stored, type_table)
            }
        },
    )
    .await
}

fn runs_table(runs: &[WorkflowRunBody]) -> Table {
    let mut table = Table::new(vec![
        "ID", "NAME", "TYPE", "VERSION", "STATUS", "CREATED", "FINISHED",
    ]);
    for r in runs {
        table.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.workflow_type.clone(),
            r.version.to_string(),
            r.status.clone(),
            timestamp(r.created_at),
            r.finished_at.map(timestamp).unwrap_or_default(),
        ]);
    }
    table
}

/// A run's steps: one row each, with its tasks' attempts and, for a failed step, why.
fn steps_table(run: &WorkflowRunBody) -> Table {
    let mut table = Table::new(vec!["STEP", "STATUS", "TASKS", "ATTEMPTS", "ERROR"]);
    for step in run.steps.iter().flatten() {
        let attempts: usize = step.tasks.iter().map(|t| t.attempts.len()).sum();
        let error = step
            .tasks
            .iter()
            .find_map(|t| t.error.as_deref())
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        table.row(vec![
            step.name.clone(),
            step.status.clone(),
            step.tasks.len().to_string(),
            attempts.to_string(),
            error,
        ]);
    }
    table
}

/// The `--input` value: a JSON object inline, or `@FILE` (JSON or YAML; `@-` for stdin).
fn input_value(raw: Option<&str>) -> Result<Value, CliError> {
    match raw {
        None => Ok(json!({})),
        Some(path) if path.starts_with('@') => read_job_file(std::path::Path::new(&path[1..])),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            CliError(format!(
                "--input is not JSON ({e}); give a JSON object or @FILE"
            ))
        }),
    }
}

/// Follows a run until it ends, printing each step's moves on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<WorkflowRunBody, CliError> {
    let started = std::time::Instant::now();
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    loop {
        let run = client.run(id).await?;
        for step in run.steps.iter().flatten() {
            let tasks = step.tasks.len();
            let shown = (step.status.clone(), tasks);
            if seen.get(&step.name) != Some(&shown) {
                let detail = match (step.status.as_str(), tasks) {
                    ("pending", _) => String::new(),
                    (_, n) if n > 1 => format!(" ({n} tasks)"),
                    _ => String::new(),
                };
                eprintln!(
                    "[{:>6.1}s] {}: {}{detail}",
                    started.elapsed().as_secs_f64(),
                    step.name,
                    step.status
                );
                seen.insert(step.name.clone(), shown);
            }
        }
        if run.status != "running" {
            eprintln!(
                "[{:>6.1}s] run {}",
                started.elapsed().as_secs_f64(),
                run.status
            );
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a `run` verb.
pub async fn run_runs(args: RunArgs) -> ExitCode {
    let command = args.command;
    let mut outcome_failed = false;
    let code = finish(
        &args.client,
        async |client: &Client, output: Output| match command {
            RunCommand::Start {
                workflow_type,
                input,
                name,
                type_version,
                project,
                idempotency_key,
                wait,
            } => {
                let start = StartWorkflow {
                    name,
                    workflow_type,
                    version: type_version,
                    project_id: project,
                    input: input_value(input.as_deref())?,
                };
                let run = client.start_run(&start, idempotency_key.as_deref()).await?;
                if !wait {
                    return print(output, &run, steps_table);
                }
                eprintln!("started run {}", run.id);
                let done = wait_for(client, &run.id).await?;
                outcome_failed = done.status != "succeeded";
                print(output, &done, steps_table)
            }
            RunCommand::Ls {
                status,
                workflow_type,
                project,
                limit,
                cursor,
                all,
            } => {
                let paging = Paging { limit, cursor, all };
                let listing = client.runs(status, workflow_type, project, paging).await?;
                print_listing(output, &listing, runs_table)
            }
            RunCommand::Get { id } => print(output, &client.run(&id).await?, steps_table),
            RunCommand::Cancel { id } => print(output, &client.cancel_run(&id).await?, steps_table),
            RunCommand::Retry { id, wait } => {
                let run = client.retry_run(&id).await?;
                if !wait {
                    return print(output, &run, steps_table);
                }
                let done = wait_for(client, &id).await?;
                outcome_failed = done.status != "succeeded";
                print(output, &done, steps_table)
            }
            RunCommand::Logs { id, step } => {
                for task in client.run_logs(&id, step).await?.tasks {
                    for line in &task.lines {
                        match line.stream.as_str() {
                            "stderr" => eprintln!("[{}] {}", task.step, line.line),
                            _ => println!("[{}] {}", task.step, line.line),
                        }
                    }
                }
                Ok(())
            }
        },
    )
    .await;
    if code == ExitCode::SUCCESS && outcome_failed {
        ExitCode::FAILURE
    } else {
        code
    }
}
