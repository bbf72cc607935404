//! `orchion deploy apply|get|ls|rm`.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use reqwest::Method;
use serde_json::Value;

use super::{
    Client, ClientError, Listing, Table, finish, job::read_job_file, print, print_listing,
    url_segment,
};
use crate::cli::{DeployArgs, DeployCommand};

fn list_table(deployments: &[Value]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "COMPOSER",
        "ENVIRONMENT",
        "STATUS",
        "PHASE",
        "CREATED",
    ]);
    for d in deployments {
        let text = |key: &str| d[key].as_str().unwrap_or("").to_owned();
        table.row(vec![
            text("id"),
            text("composer"),
            text("environment"),
            text("status"),
            text("phase"),
            text("created_at"),
        ]);
    }
    table
}

/// One row per resource, and the deployment's error under them.
fn resources_table(deployment: &Value) -> Table {
    let mut table = Table::new(vec!["RESOURCE", "ENGINE", "STATUS", "PROGRESS", "ERROR"]);
    for r in deployment["resources"].as_array().into_iter().flatten() {
        let text = |key: &str| r[key].as_str().unwrap_or("").to_owned();
        table.row(vec![
            text("name"),
            text("engine"),
            text("status"),
            text("progress"),
            text("error").chars().take(80).collect(),
        ]);
    }
    table
}

fn path(id: &str) -> String {
    format!("/api/v1/deployments/{}", url_segment(id))
}

/// Follows a deployment until its phase is complete, printing each resource's moves on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<Value, ClientError> {
    let started = std::time::Instant::now();
    let mut seen: HashMap<String, String> = HashMap::new();
    loop {
        let deployment: Value = client.call(Method::GET, &path(id), &[], &[], None).await?;
        for r in deployment["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("").to_owned();
            let status = r["status"].as_str().unwrap_or("").to_owned();
            if seen.get(&name) != Some(&status) {
                eprintln!(
                    "[{:>6.1}s] {name} ({}): {status}",
                    started.elapsed().as_secs_f64(),
                    r["engine"].as_str().unwrap_or("")
                );
                seen.insert(name, status);
            }
        }
        if deployment["phase"] == "complete" {
            eprintln!(
                "[{:>6.1}s] deployment {}",
                started.elapsed().as_secs_f64(),
                deployment["status"].as_str().unwrap_or("")
            );
            if let Some(error) = deployment["error"].as_str() {
                eprintln!("{error}");
            }
            return Ok(deployment);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a `deploy` verb.
pub async fn run(args: DeployArgs) -> ExitCode {
    let command = args.command;
    let mut outcome_failed = false;
    let code = finish(
        &args.client,
        async |client: &Client, output| match command {
            DeployCommand::Apply { file, wait } => {
                let request = read_job_file(&file)?;
                let deployment: Value = client
                    .call(
                        Method::POST,
                        "/api/v1/deployments",
                        &[],
                        &[],
                        Some(&request),
                    )
                    .await?;
                if !wait {
                    return print(output, &deployment, resources_table);
                }
                let id = deployment["id"].as_str().unwrap_or_default().to_owned();
                eprintln!("started deployment {id}");
                let done = wait_for(client, &id).await?;
                outcome_failed = done["status"] != "ready";
                print(output, &done, resources_table)
            }
            DeployCommand::Get { id } => {
                let deployment: Value =
                    client.call(Method::GET, &path(&id), &[], &[], None).await?;
                print(output, &deployment, resources_table)
            }
            DeployCommand::Ls {
                composer,
                environment,
                limit,
                cursor,
                all,
            } => {
                let listing: Listing<Value> = client
                    .list(
                        "/api/v1/deployments",
                        &[("composer", composer), ("environment", environment)],
                        limit,
                        cursor,
                        all,
                    )
                    .await?;
                print_listing(output, &listing, list_table)
            }
            DeployCommand::Rm { id, wait } => {
                let deployment: Value = client
                    .call(Method::DELETE, &path(&id), &[], &[], None)
                    .await?;
                if !wait {
                    return print(output, &deployment, resources_table);
                }
                let done = wait_for(client, &id).await?;
                outcome_failed =
                    !matches!(done["status"].as_str(), Some("rolled_back" | "cancelled"));
                print(output, &done, resources_table)
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
