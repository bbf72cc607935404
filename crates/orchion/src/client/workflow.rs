//! `orchion workflow-type apply|get` and `orchion run start|ls|get|cancel|retry|logs`.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};

use super::{
    Client, ClientError, Listing, Table, finish, job::read_job_file, print, print_listing,
    url_segment,
};
use crate::cli::{Output, RunArgs, RunCommand, WorkflowTypeArgs, WorkflowTypeCommand};

fn type_table(workflow: &Value) -> Table {
    let mut table = Table::new(vec!["NAME", "VERSION", "STEPS", "WAVES", "CREATED"]);
    let waves: Vec<String> = workflow["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|wave| {
            wave.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    table.row(vec![
        workflow["name"].as_str().unwrap_or("").to_owned(),
        workflow["version"].to_string(),
        workflow["definition"]["steps"]
            .as_array()
            .map_or(0, Vec::len)
            .to_string(),
        waves.join(" → "),
        workflow["created_at"].as_str().unwrap_or("").to_owned(),
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
                let stored: Value = client
                    .call(
                        Method::POST,
                        "/api/v1/workflow-types",
                        &[],
                        &[],
                        Some(&definition),
                    )
                    .await?;
                print(output, &stored, type_table)
            }
            WorkflowTypeCommand::Get { name, type_version } => {
                let query: Vec<(&str, String)> = type_version
                    .map(|v| ("version", v.to_string()))
                    .into_iter()
                    .collect();
                let stored: Value = client
                    .call(
                        Method::GET,
                        &format!("/api/v1/workflow-types/{}", url_segment(&name)),
                        &query,
                        &[],
                        None,
                    )
                    .await?;
                print(output, &stored, type_table)
            }
        },
    )
    .await
}

fn runs_table(runs: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID", "NAME", "TYPE", "VERSION", "STATUS", "CREATED", "FINISHED",
    ]);
    for r in runs {
        let text = |key: &str| r[key].as_str().unwrap_or("").to_owned();
        table.row(vec![
            text("id"),
            text("name"),
            text("type"),
            r["version"].to_string(),
            text("status"),
            text("created_at"),
            text("finished_at"),
        ]);
    }
    table
}

/// A run's steps: one row each, with its tasks' attempts and, for a failed step, why.
fn steps_table(run: &Value) -> Table {
    let mut table = Table::new(vec!["STEP", "STATUS", "TASKS", "ATTEMPTS", "ERROR"]);
    for step in run["steps"].as_array().into_iter().flatten() {
        let tasks = step["tasks"].as_array().cloned().unwrap_or_default();
        let attempts: usize = tasks
            .iter()
            .map(|t| t["attempts"].as_array().map_or(0, Vec::len))
            .sum();
        let error = tasks
            .iter()
            .find_map(|t| t["error"].as_str())
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        table.row(vec![
            step["name"].as_str().unwrap_or("").to_owned(),
            step["status"].as_str().unwrap_or("").to_owned(),
            tasks.len().to_string(),
            attempts.to_string(),
            error,
        ]);
    }
    table
}

fn run_path(id: &str) -> String {
    format!("/api/v1/workflows/{}", url_segment(id))
}

/// The `--input` value: a JSON object inline, or `@FILE` (JSON or YAML; `@-` for stdin).
fn input_value(raw: Option<&str>) -> Result<Value, ClientError> {
    match raw {
        None => Ok(json!({})),
        Some(path) if path.starts_with('@') => read_job_file(std::path::Path::new(&path[1..])),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            ClientError(format!(
                "--input is not JSON ({e}); give a JSON object or @FILE"
            ))
        }),
    }
}

/// Follows a run until it ends, printing each step's moves on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<Value, ClientError> {
    let started = std::time::Instant::now();
    let mut seen: HashMap<String, String> = HashMap::new();
    loop {
        let run: Value = client
            .call(Method::GET, &run_path(id), &[], &[], None)
            .await?;
        for step in run["steps"].as_array().into_iter().flatten() {
            let name = step["name"].as_str().unwrap_or("").to_owned();
            let status = step["status"].as_str().unwrap_or("").to_owned();
            let tasks = step["tasks"].as_array().map_or(0, Vec::len);
            let shown = format!("{status}/{tasks}");
            if seen.get(&name) != Some(&shown) {
                let detail = match (status.as_str(), tasks) {
                    ("pending", _) => String::new(),
                    (_, n) if n > 1 => format!(" ({n} tasks)"),
                    _ => String::new(),
                };
                eprintln!(
                    "[{:>6.1}s] {name}: {status}{detail}",
                    started.elapsed().as_secs_f64()
                );
                seen.insert(name, shown);
            }
        }
        if run["status"] != "running" {
            eprintln!(
                "[{:>6.1}s] run {}",
                started.elapsed().as_secs_f64(),
                run["status"].as_str().unwrap_or("")
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
                let body = json!({
                    "type": workflow_type,
                    "input": input_value(input.as_deref())?,
                    "name": name,
                    "version": type_version,
                    "project_id": project,
                });
                let headers: Vec<(&str, String)> = idempotency_key
                    .map(|k| ("Idempotency-Key", k))
                    .into_iter()
                    .collect();
                let run: Value = client
                    .call(
                        Method::POST,
                        "/api/v1/workflows",
                        &[],
                        &headers,
                        Some(&body),
                    )
                    .await?;
                if !wait {
                    return print(output, &run, steps_table);
                }
                let id = run["id"].as_str().unwrap_or_default().to_owned();
                eprintln!("started run {id}");
                let done = wait_for(client, &id).await?;
                outcome_failed = done["status"] != "succeeded";
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
                let listing: Listing<Value> = client
                    .list(
                        "/api/v1/workflows",
                        &[
                            ("status", status),
                            ("type", workflow_type),
                            ("project_id", project),
                        ],
                        limit,
                        cursor,
                        all,
                    )
                    .await?;
                print_listing(output, &listing, runs_table)
            }
            RunCommand::Get { id } => {
                let run: Value = client
                    .call(Method::GET, &run_path(&id), &[], &[], None)
                    .await?;
                print(output, &run, steps_table)
            }
            RunCommand::Cancel { id } => {
                let run: Value = client
                    .call(
                        Method::POST,
                        &format!("{}/cancel", run_path(&id)),
                        &[],
                        &[],
                        None,
                    )
                    .await?;
                print(output, &run, steps_table)
            }
            RunCommand::Retry { id, wait } => {
                let run: Value = client
                    .call(
                        Method::POST,
                        &format!("{}/retry", run_path(&id)),
                        &[],
                        &[],
                        None,
                    )
                    .await?;
                if !wait {
                    return print(output, &run, steps_table);
                }
                let done = wait_for(client, &id).await?;
                outcome_failed = done["status"] != "succeeded";
                print(output, &done, steps_table)
            }
            RunCommand::Logs { id, step } => {
                let query: Vec<(&str, String)> = step.map(|s| ("step", s)).into_iter().collect();
                let logs: Value = client
                    .call(
                        Method::GET,
                        &format!("{}/logs", run_path(&id)),
                        &query,
                        &[],
                        None,
                    )
                    .await?;
                for task in logs["tasks"].as_array().into_iter().flatten() {
                    let step = task["step"].as_str().unwrap_or("");
                    for line in task["lines"].as_array().into_iter().flatten() {
                        let text = line["line"].as_str().unwrap_or("");
                        match line["stream"].as_str() {
                            Some("stderr") => eprintln!("[{step}] {text}"),
                            _ => println!("[{step}] {text}"),
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
