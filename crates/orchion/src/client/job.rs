//! `orchion job submit|ls|get|cancel|retry|logs`.

use std::{io::Read, process::ExitCode, time::Duration};

use orchion_client::{
    Client, Paging,
    rest::{JobBody, LogLineBody},
};
use serde_json::{Map, Value, json};

use super::{CliError, Table, finish, print, print_listing, timestamp};
use crate::cli::{JobArgs, JobCommand, Output};

fn table(jobs: &[JobBody]) -> Table {
    let mut table = Table::new(vec![
        "ID", "NAME", "EXECUTOR", "STATUS", "ATTEMPTS", "CREATED", "FINISHED",
    ]);
    for j in jobs {
        table.row(vec![
            j.id.clone(),
            j.name.clone(),
            j.executor.clone(),
            j.status.clone(),
            format!("{}/{}", j.attempt_count, j.max_attempts),
            timestamp(j.created_at),
            j.finished_at.map(timestamp).unwrap_or_default(),
        ]);
    }
    table
}

fn one(output: Output, job: &JobBody) -> Result<(), CliError> {
    print(output, job, |j| table(std::slice::from_ref(j)))
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Reads a job document from a file (or stdin), JSON or YAML.
pub(crate) fn read_job_file(path: &std::path::Path) -> Result<Value, CliError> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError(format!("cannot read the job from stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?
    };
    // JSON is YAML, so one parser reads both; the server checks the content.
    serde_yaml_ng::from_str(&text)
        .map_err(|e| CliError(format!("{} is not JSON or YAML: {e}", path.display())))
}

/// The job a verb describes: from `-f FILE`, or a shell command given after `--`.
pub(crate) fn job_document(
    file: Option<&std::path::Path>,
    command: &[String],
) -> Result<Map<String, Value>, CliError> {
    match (file, command.split_first()) {
        (Some(path), _) => match read_job_file(path)? {
            Value::Object(map) => Ok(map),
            _ => Err(CliError("a job file holds one object".into())),
        },
        (None, Some((program, rest))) => {
            let mut map = Map::new();
            map.insert("executor".into(), json!("shell"));
            map.insert("spec".into(), json!({"command": program, "args": rest}));
            Ok(map)
        }
        (None, None) => Err(CliError(
            "give a command after `--` (e.g. `-- echo hi`) or a job with -f FILE".into(),
        )),
    }
}

/// Follows a job until it ends, printing each change of status on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<JobBody, CliError> {
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let job = client.job(id).await?;
        let seen = (job.status.clone(), job.attempt_count);
        if last.as_ref() != Some(&seen) {
            let node = job
                .node_id
                .as_deref()
                .map(|n| format!(" on node {n}"))
                .unwrap_or_default();
            eprintln!(
                "[{:>6.1}s] {} (attempt {} of {}){node}",
                started.elapsed().as_secs_f64(),
                job.status,
                job.attempt_count,
                job.max_attempts
            );
            last = Some(seen);
        }
        if is_terminal(&job.status) {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints log lines as the task wrote them: stderr lines to stderr, the others to stdout.
fn print_lines(lines: &[LogLineBody]) {
    for line in lines {
        match line.stream.as_str() {
            "stderr" => eprintln!("{}", line.line),
            _ => println!("{}", line.line),
        }
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
                let job = client
                    .submit_job(&Value::Object(body), idempotency_key.as_deref())
                    .await?;
                if !wait {
                    return one(output, &job);
                }
                eprintln!("submitted job {}", job.id);
                let done = wait_for(client, &job.id).await?;
                outcome_failed = done.status != "succeeded";
                one(output, &done)
            }
            JobCommand::Ls {
                status,
                executor,
                limit,
                cursor,
                all,
            } => {
                let paging = Paging { limit, cursor, all };
                let listing = client.jobs(status, executor, paging).await?;
                print_listing(output, &listing, table)
            }
            JobCommand::Get { id } => one(output, &client.job(&id).await?),
            JobCommand::Cancel { id } => one(output, &client.cancel_job(&id).await?),
            JobCommand::Retry { id } => one(output, &client.retry_job(&id).await?),
            JobCommand::Logs { id, follow } => {
                let mut after = 0i64;
                loop {
                    let page = client.job_logs(&id, after, Some(5000)).await?;
                    print_lines(&page.lines);
                    after = page.next_after;
                    if !page.lines.is_empty() {
                        continue;
                    }
                    if !follow {
                        return Ok(());
                    }
                    if is_terminal(&client.job(&id).await?.status) {
                        // One last read: lines written just before the end.
                        let page = client.job_logs(&id, after, None).await?;
                        print_lines(&page.lines);
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
