//! `orchion deploy apply|get|ls|rm`.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use orchion_client::{Client, Paging, rest::DeploymentBody};

use super::{CliError, Table, finish, job::read_job_file, print, print_listing, timestamp};
use crate::cli::{DeployArgs, DeployCommand};

fn list_table(deployments: &[DeploymentBody]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "COMPOSER",
        "ENVIRONMENT",
        "STATUS",
        "PHASE",
        "CREATED",
    ]);
    for d in deployments {
        table.row(vec![
            d.id.clone(),
            d.composer.clone(),
            d.environment.clone(),
            d.status.clone(),
            d.phase.clone(),
            timestamp(d.created_at),
        ]);
    }
    table
}

/// One row per resource, and the deployment's error under them.
fn resources_table(deployment: &DeploymentBody) -> Table {
    let mut table = Table::new(vec!["RESOURCE", "ENGINE", "STATUS", "PROGRESS", "ERROR"]);
    for r in deployment.resources.iter().flatten() {
        table.row(vec![
            r.name.clone(),
            r.engine.clone(),
            r.status.clone(),
            r.progress.clone(),
            r.error.as_deref().unwrap_or("").chars().take(80).collect(),
        ]);
    }
    table
}

/// Follows a deployment until its phase is complete, printing each resource's moves on stderr.
async fn wait_for(client: &Client, id: &str) -> Result<DeploymentBody, CliError> {
    let started = std::time::Instant::now();
    let mut seen: HashMap<String, String> = HashMap::new();
    loop {
        let deployment = client.deployment(id).await?;
        for r in deployment.resources.iter().flatten() {
            if seen.get(&r.name) != Some(&r.status) {
                eprintln!(
                    "[{:>6.1}s] {} ({}): {}",
                    started.elapsed().as_secs_f64(),
                    r.name,
                    r.engine,
                    r.status
                );
                seen.insert(r.name.clone(), r.status.clone());
            }
        }
        if deployment.phase == "complete" {
            eprintln!(
                "[{:>6.1}s] deployment {}",
                started.elapsed().as_secs_f64(),
                deployment.status
            );
            if let Some(error) = &deployment.error {
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
                let deployment = client.apply_deployment(&request).await?;
                if !wait {
                    return print(output, &deployment, resources_table);
                }
                eprintln!("started deployment {}", deployment.id);
                let done = wait_for(client, &deployment.id).await?;
                outcome_failed = done.status != "ready";
                print(output, &done, resources_table)
            }
            DeployCommand::Get { id } => {
                print(output, &client.deployment(&id).await?, resources_table)
            }
            DeployCommand::Ls {
                composer,
                environment,
                limit,
                cursor,
                all,
            } => {
                let paging = Paging { limit, cursor, all };
                let listing = client.deployments(composer, environment, paging).await?;
                print_listing(output, &listing, list_table)
            }
            DeployCommand::Rm { id, wait } => {
                let deployment = client.delete_deployment(&id).await?;
                if !wait {
                    return print(output, &deployment, resources_table);
                }
                let done = wait_for(client, &id).await?;
                outcome_failed = !matches!(done.status.as_str(), "rolled_back" | "cancelled");
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
