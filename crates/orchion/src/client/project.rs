//! `orchion project create|get|ls|update|rm`.

use std::process::ExitCode;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Client, ClientError, Listing, Table, finish, print, print_listing, url_segment};
use crate::cli::{Output, ProjectArgs, ProjectCommand};

/// A project as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
struct Project {
    id: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    created_at: String,
    updated_at: String,
}

fn table(projects: &[Project]) -> Table {
    let mut table = Table::new(vec!["ID", "NAME", "TYPE", "STATUS", "CREATED"]);
    for p in projects {
        table.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.kind.clone(),
            p.status.clone(),
            p.created_at.clone(),
        ]);
    }
    table
}

fn one(output: Output, project: &Project) -> Result<(), ClientError> {
    print(output, project, |p| table(std::slice::from_ref(p)))
}

fn project_path(id: &str) -> String {
    format!("/api/v1/projects/{}", url_segment(id))
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
                let mut body = Map::new();
                body.insert("name".into(), json!(name));
                if let Some(d) = description {
                    body.insert("description".into(), json!(d));
                }
                if let Some(k) = kind {
                    body.insert("type".into(), json!(k));
                }
                let headers: Vec<(&str, String)> = idempotency_key
                    .map(|k| ("Idempotency-Key", k))
                    .into_iter()
                    .collect();
                let project: Project = client
                    .call(
                        Method::POST,
                        "/api/v1/projects",
                        &[],
                        &headers,
                        Some(&Value::Object(body)),
                    )
                    .await?;
                one(output, &project)
            }
            ProjectCommand::Get { id } => {
                let project: Project = client
                    .call(Method::GET, &project_path(&id), &[], &[], None)
                    .await?;
                one(output, &project)
            }
            ProjectCommand::Ls {
                status,
                limit,
                cursor,
                all,
            } => {
                let listing: Listing<Project> = client
                    .list(
                        "/api/v1/projects",
                        &[("status", status)],
                        limit,
                        cursor,
                        all,
                    )
                    .await?;
                print_listing(output, &listing, table)
            }
            ProjectCommand::Update {
                id,
                name,
                description,
                kind,
                status,
            } => {
                let mut body = Map::new();
                for (key, value) in [
                    ("name", name),
                    ("description", description),
                    ("type", kind),
                    ("status", status),
                ] {
                    if let Some(value) = value {
                        body.insert(key.into(), json!(value));
                    }
                }
                let project: Project = client
                    .call(
                        Method::PUT,
                        &project_path(&id),
                        &[],
                        &[],
                        Some(&Value::Object(body)),
                    )
                    .await?;
                one(output, &project)
            }
            ProjectCommand::Rm { id } => {
                client
                    .call::<Value>(Method::DELETE, &project_path(&id), &[], &[], None)
                    .await?;
                eprintln!("deleted project {id}");
                Ok(())
            }
        },
    )
    .await
}
