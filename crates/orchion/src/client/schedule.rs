//! `orchion schedule create|ls|rm`.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Listing, Table, finish, job::job_document, print, print_listing, url_segment};
use crate::cli::{ScheduleArgs, ScheduleCommand};

fn table(schedules: &[Value]) -> Table {
    let mut table = Table::new(vec!["ID", "NAME", "CRON", "TIMEZONE", "NEXT", "LAST JOB"]);
    for s in schedules {
        let text = |key: &str| s[key].as_str().unwrap_or("").to_owned();
        table.row(vec![
            text("id"),
            text("name"),
            text("cron"),
            text("timezone"),
            text("next_fire_at"),
            text("last_job_id"),
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
                let schedule: Value = client
                    .call(Method::POST, "/api/v1/schedules", &[], &[], Some(&body))
                    .await?;
                print(output, &schedule, |s| table(std::slice::from_ref(s)))
            }
            ScheduleCommand::Ls { limit, cursor } => {
                let listing: Listing<Value> = client
                    .list("/api/v1/schedules", &[], limit, cursor, false)
                    .await?;
                print_listing(output, &listing, table)
            }
            ScheduleCommand::Rm { id } => {
                let path = format!("/api/v1/schedules/{}", url_segment(&id));
                client
                    .call::<Value>(Method::DELETE, &path, &[], &[], None)
                    .await?;
                eprintln!("deleted schedule {id}");
                Ok(())
            }
        },
    )
    .await
}
