//! `orchion schedule create|ls|rm`.

use std::process::ExitCode;

use orchion_client::{Client, Paging, rest::ScheduleBody};
use serde_json::json;

use super::{Table, finish, job::job_document, print, print_listing, timestamp};
use crate::cli::{ScheduleArgs, ScheduleCommand};

fn table(schedules: &[ScheduleBody]) -> Table {
    let mut table = Table::new(vec!["ID", "NAME", "CRON", "TIMEZONE", "NEXT", "LAST JOB"]);
    for s in schedules {
        table.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            s.next_fire_at.map(timestamp).unwrap_or_default(),
            s.last_job_id.clone().unwrap_or_default(),
        ]);
    }
    table
}

/// Runs a `schedule` verb.
pub async fn run(args: ScheduleArgs) -> ExitCode {
    let command = args.command;
    finish(
        &args.client,
        async move |client: &Client, output| match command {
            ScheduleCommand::Create {
                name,
                cron,
                timezone,
                overlap,
                misfire,
                file,
                command,
            } => {
                let job = job_document(file.as_deref(), &command)?;
                let mut body = json!({"name": name, "cron": cron, "job": job});
                for (key, value) in [
                    ("timezone", timezone),
                    ("overlap", overlap),
                    ("misfire", misfire),
                ] {
                    if let Some(value) = value {
                        body[key] = json!(value);
                    }
                }
                let schedule = client.create_schedule(&body).await?;
                print(output, &schedule, |s| table(std::slice::from_ref(s)))
            }
            ScheduleCommand::Ls { limit, cursor } => {
                let paging = Paging {
                    limit,
                    cursor,
                    all: false,
                };
                let listing = client.schedules(paging).await?;
                print_listing(output, &listing, table)
            }
            ScheduleCommand::Rm { id } => {
                client.delete_schedule(&id).await?;
                eprintln!("deleted schedule {id}");
                Ok(())
            }
        },
    )
    .await
}
