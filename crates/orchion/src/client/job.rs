//! `orchion job submit|ls|get|cancel|retry|logs`.

use std::{io::Read, process::ExitCode, time::Duration};

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Client, ClientError, Listing, Table, finish, print, print_listing, url_segment};
use crate::cli::{JobArgs, JobCommand, Output};

fn table(jobs: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID", "NAME", "EXECUTOR", "STATUS", "ATTEMPTS", "CREATED", "FINISHED",
    ]);
    for j in jobs {
        let text = |key: &str| j[key].as_str().unwrap_or("").to_owned();
        table.row(vec![
            text("id"),
            text("name"),
            text("executor"),
            text("status"),
            format!("{}/{}", j["attempt_count"], j["max_attempts"]),
            text("created_at"),
            text("finished_at"),
        ]);
    }
    table
}

fn one(output: Output, job: &Value) -> Result<(), ClientError> {
    print(output, job, |j| table(std::slice::from_ref(j)))
}

fn job_path(id: &str) -> String {
    format!("/api/v1/jobs/{}", url_segment(id))
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Reads a job document from a file (or stdin), JSON or YAML.
pub(crate) fn read_job_file(path: &std::path::Path) -> Result<Value, ClientError> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| ClientError(format!("cannot read the job from stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| ClientError(format!("cannot read {}: {e}", path.display())))?
    };
    // JSON is YAML, so one parser reads both; the server checks the content.
    serde_yaml_ng::from_str(&text)
        .map_err(|e| ClientError(format!("{} is not JSON or YAML: {e}", path.display())))
}

/// The job a verb describes: from `-f FILE`, or a shell command given after `--`.
pub(crate) fn job_document(
    file: Option<&std::path::Path>,
    command: &[String],
) -> Result<Map<String, Value>, ClientError> {
    match (file, command.split_first()) {
        (Some(path), _) => match read_job_file(path)? {
            Value::Object(map) => Ok(map),
            _ => Err(ClientError("a job file holds one object".into())),
        },
        (None, Some((program, rest))) => {
            let mut map = Map::new();
            map.insert("executor".into(), json!("shell"));
            map.insert("spec".into(), json!({"command": program, "args": rest}));
            Ok(map)
        }
        (None, None) => Err(ClientError(
            "give a command after `--` (e.g. `-- echo hi`) or a job with -f FILE".into(),
        )),
    }
}

/// Follows a job until it ends, printing each change of status on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<Value, ClientError> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let job: Value = client
            .call(Method::GET, &job_path(id), &[], &[], None)
            .await?;
        let status = job["status"].as_str().unwrap_or("").to_owned();
        let attempt = job["attempt_count"].as_u64().unwrap_or(0);
        let seen = format!("{status}/{attempt}");
        if seen != last {
            let node = job["node_id"]
                .as_str()
                .map(|n| format!(" on node {n}"))
                .unwrap_or_default();
            eprintln!(
                "[{:>6.1}s] {status} (attempt {attempt} of {}){node}",
                started.elapsed().as_secs_f64(),
                job["max_attempts"]
            );
            last = seen;
        }
        if is_terminal(&status) {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a `job` verb.
pub async fn run(args: JobArgs) -> ExitCode {
    let command = args.command;
    let mut outcome_failed = false;
    let code = finish(
        &args.client,
        async |client: &Client, output| match command {
            JobCommand::Submit {
                file,
                priority,
                labels,
                idempotency_key,
                max_attempts,
                wait,
                command,
            } => {
                let mut body = job_document(file.as_deref(), &command)?;
                if let Some(p) = priority {
                    body.insert("priority".into(), json!(p));
                }
                if let Some(n) = max_attempts {
                    body.insert("retry".into(), json!({"max_attempts": n}));
                }
                if !labels.is_empty() {
                    let labels: Map<String, Value> =
                        labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
                    body.insert("placement".into(), json!({"labels": labels}));
                }
                let headers: Vec<(&str, String)> = idempotency_key
                    .map(|k| ("Idempotency-Key", k))
                    .into_iter()
                    .collect();
                let job: Value = client
                    .call(
                        Method::POST,
                        "/api/v1/jobs",
                        &[],
                        &headers,
                        Some(&Value::Object(body)),
                    )
                    .await?;
                if !wait {
                    return one(output, &job);
                }
                let id = job["id"].as_str().unwrap_or_default().to_owned();
                eprintln!("submitted job {id}");
                let done = wait_for(client, &id).await?;
                outcome_failed = done["status"] != "succeeded";
                one(output, &done)
            }
            JobCommand::Ls {
                status,
                executor,
                limit,
                cursor,
                all,
            } => {
                let listing: Listing<Value> = client
                    .list(
                        "/api/v1/jobs",
                        &[("status", status), ("executor", executor)],
                        limit,
                        cursor,
                        all,
                    )
                    .await?;
                print_listing(output, &listing, table)
            }
            JobCommand::Get { id } => {
                let job: Value = client
                    .call(Method::GET, &job_path(&id), &[], &[], None)
                    .await?;
                one(output, &job)
            }
            JobCommand::Cancel { id } => {
                let job: Value = client
                    .call(
                        Method::POST,
                        &format!("{}/cancel", job_path(&id)),
                        &[],
                        &[],
                        None,
                    )
                    .await?;
                one(output, &job)
            }
            JobCommand::Retry { id } => {
                let job: Value = client
                    .call(
                        Method::POST,
                        &format!("{}/retry", job_path(&id)),
                        &[],
                        &[],
                        None,
                    )
                    .await?;
                one(output, &job)
            }
            JobCommand::Logs { id, follow } => {
                let mut after = 0i64;
                loop {
                    let query = [("after", after.to_string()), ("limit", "5000".to_owned())];
                    let page: Value = client
                        .call(
                            Method::GET,
                            &format!("{}/logs", job_path(&id)),
                            &query,
                            &[],
                            None,
                        )
                        .await?;
                    let lines = page["lines"].as_array().cloned().unwrap_or_default();
                    for line in &lines {
                        let text = line["line"].as_str().unwrap_or("");
                        match line["stream"].as_str() {
                            Some("stderr") => eprintln!("{text}"),
                            _ => println!("{text}"),
                        }
                    }
                    after = page["next_after"].as_i64().unwrap_or(after);
                    if !lines.is_empty() {
                        continue;
                    }
                    if !follow {
                        return Ok(());
                    }
                    let job: Value = client
                        .call(Method::GET, &job_path(&id), &[], &[], None)
                        .await?;
                    if is_terminal(job["status"].as_str().unwrap_or("")) {
                        // One last read: lines written just before the end.
                        let page: Value = client
                            .call(
                                Method::GET,
                                &format!("{}/logs", job_path(&id)),
                                &[("after", after.to_string())],
                                &[],
                                None,
                            )
                            .await?;
                        for line in page["lines"].as_array().cloned().unwrap_or_default() {
                            println!("{}", line["line"].as_str().unwrap_or(""));
                        }
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
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
