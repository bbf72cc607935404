//! `orchion project create|get|ls|update|rm`.

use std::process::ExitCode;

use orchion_client::{
    Client, Paging,
    rest::{CreateProject, ProjectBody, UpdateProject},
};

use super::{CliError, Table, finish, print, print_listing, timestamp};
use crate::cli::{Output, ProjectArgs, ProjectCommand};

fn table(projects: &[ProjectBody]) -> Table {
    let mut table = Table::new(vec!["ID", "NAME", "TYPE", "STATUS", "CREATED"]);
    for p in projects {
        table.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.kind.clone(),
            p.status.clone(),
            timestamp(p.created_at),
        ]);
    }
    table
}

fn one(output: Output, project: &ProjectBody) -> Result<(), CliError> {
    print(output, project, |p| table(std::slice::from_ref(p)))
}

/// Runs a `project` verb.
pub async fn run(args: ProjectArgs) -> ExitCode {
    let command = args.command;
    finish(
        &args.client,
        async move |client: &Client, output| match command {
            ProjectCommand::Create {
                name,
                description,
                kind,
                idempotency_key,
            } => {
                let request = CreateProject {
                    name,
                    description,
                    kind,
                };
                let project = client
                    .create_project(&request, idempotency_key.as_deref())
                    .await?;
                one(output, &project)
            }
            ProjectCommand::Get { id } => one(output, &client.project(&id).await?),
            ProjectCommand::Ls {
                status,
                limit,
                cursor,
                all,
            } => {
                let paging = Paging { limit, cursor, all };
                let listing = client.projects(status, paging).await?;
                print_listing(output, &listing, table)
            }
            ProjectCommand::Update {
                id,
                name,
                description,
                kind,
                status,
            } => {
                let update = UpdateProject {
                    name,
                    description,
                    kind,
                    status,
                };
                one(output, &client.update_project(&id, &update).await?)
            }
            ProjectCommand::Rm { id } => {
                client.delete_project(&id).await?;
                eprintln!("deleted project {id}");
                Ok(())
            }
        },
    )
    .await
}
