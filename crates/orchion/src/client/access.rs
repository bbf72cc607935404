//! `orchion token`, `orchion join-token` and `orchion audit`.

use std::process::ExitCode;

use orchion_client::Paging;
use orchion_client::rest::{
    AuditList, CapacityBody, CreateJoinToken, CreateToken, JoinTokenBody, TokenBody,
};

use crate::{
    cli::{AuditArgs, AuditCommand, JoinTokenArgs, JoinTokenCommand, TokenArgs, TokenCommand},
    client::{Table, finish, print, print_listing, timestamp},
};

fn token_table(tokens: &[TokenBody]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "ROLE",
        "PROJECT",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            t.name.clone(),
            t.role.clone(),
            t.project_id.clone().unwrap_or_else(|| "*".into()),
            t.expires_at.map_or_else(|| "never".into(), timestamp),
            t.last_used_at.map_or_else(|| "-".into(), timestamp),
            state(t.revoked_at.is_some(), t.expires_at),
        ]);
    }
    table
}

/// `orchion token …`.
pub async fn run_tokens(args: TokenArgs) -> ExitCode {
    finish(&args.client, async move |client, output| {
        match args.command {
            TokenCommand::Create {
                name,
                role,
                project,
                ttl,
            } => {
                let created = client
                    .create_token(&CreateToken {
                        name,
                        role,
                        project_id: project,
                        ttl,
                    })
                    .await?;
                print(output, &created, |c| {
                    let mut table = Table::new(vec!["ID", "ROLE", "TOKEN (shown this once)"]);
                    table.row(vec![
                        c.token.id.clone(),
                        c.token.role.clone(),
                        c.token_text.clone(),
                    ]);
                    table
                })
            }
            TokenCommand::Ls { limit, cursor, all } => {
                let listing = client.tokens(Paging { limit, cursor, all }).await?;
                print_listing(output, &listing, token_table)
            }
            TokenCommand::Revoke { id } => {
                let token = client.revoke_token(&id).await?;
                print(output, &token, |t| token_table(std::slice::from_ref(t)))
            }
        }
    })
    .await
}

fn state(revoked: bool, expires_at: Option<time::OffsetDateTime>) -> String {
    if revoked {
        "revoked".into()
    } else if expires_at.is_some_and(|e| e <= time::OffsetDateTime::now_utc()) {
        "expired".into()
    } else {
        "active".into()
    }
}

fn join_token_table(tokens: &[JoinTokenBody]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "LABELS",
        "MAX CAPACITY",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    for t in tokens {
        let labels = t.labels.as_ref().map_or_else(
            || "any".into(),
            |labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
        let capacity = t.max_capacity.as_ref().map_or_else(
            || "any".into(),
            |c| {
                format!(
                    "{}m cpu, {} B, {} gpu",
                    c.cpu_millis, c.memory_bytes, c.gpus
                )
            },
        );
        table.row(vec![
            t.id.clone(),
            t.name.clone(),
            labels,
            capacity,
            t.expires_at.map_or_else(|| "never".into(), timestamp),
            t.last_used_at.map_or_else(|| "-".into(), timestamp),
            state(t.revoked_at.is_some(), t.expires_at),
        ]);
    }
    table
}

/// `orchion join-token …`.
pub async fn run_join_tokens(args: JoinTokenArgs) -> ExitCode {
    finish(&args.client, async move |client, output| {
        match args.command {
            JoinTokenCommand::Create {
                name,
                ttl,
                labels,
                max_cpu_millis,
                max_memory_bytes,
                max_gpus,
            } => {
                let max_capacity = match (max_cpu_millis, max_memory_bytes, max_gpus) {
                    (Some(cpu_millis), Some(memory_bytes), Some(gpus)) => Some(CapacityBody {
                        cpu_millis,
                        memory_bytes,
                        gpus,
                    }),
                    _ => None,
                };
                let created = client
                    .create_join_token(&CreateJoinToken {
                        name,
                        ttl,
                        labels: (!labels.is_empty()).then(|| labels.into_iter().collect()),
                        max_capacity,
                    })
                    .await?;
                print(output, &created, |c| {
                    let mut table = Table::new(vec!["ID", "NAME", "JOIN TOKEN (shown this once)"]);
                    table.row(vec![
                        c.token.id.clone(),
                        c.token.name.clone(),
                        c.token_text.clone(),
                    ]);
                    table
                })
            }
            JoinTokenCommand::Ls { limit, cursor, all } => {
                let listing = client.join_tokens(Paging { limit, cursor, all }).await?;
                print_listing(output, &listing, join_token_table)
            }
            JoinTokenCommand::Revoke { id } => {
                let token = client.revoke_join_token(&id).await?;
                print(output, &token, |t| {
                    join_token_table(std::slice::from_ref(t))
                })
            }
        }
    })
    .await
}

/// `orchion audit ls`.
pub async fn run_audit(args: AuditArgs) -> ExitCode {
    finish(&args.client, async move |client, output| {
        match args.command {
            AuditCommand::Ls {
                actor,
                method,
                route,
                resource,
                since,
                after,
                limit,
            } => {
                let filters = [
                    ("actor", actor),
                    ("method", method),
                    ("route", route),
                    ("resource", resource),
                    ("since", since),
                ];
                let page = client.audit(&filters, after, Some(limit)).await?;
                print(output, &page, |page: &AuditList| {
                    let mut table = Table::new(vec![
                        "SEQ", "AT", "ACTOR", "ROLE", "CLIENT", "METHOD", "ROUTE", "RESOURCE",
                        "STATUS",
                    ]);
                    for e in &page.items {
                        table.row(vec![
                            e.seq.to_string(),
                            timestamp(e.at),
                            e.actor.clone(),
                            e.role.clone().unwrap_or_else(|| "-".into()),
                            e.client.clone(),
                            e.method.clone(),
                            e.route.clone(),
                            e.resource.clone(),
                            e.status.map_or_else(|| "-".into(), |s| s.to_string()),
                        ]);
                    }
                    table
                })?;
                if let Some(next) = page.next_after {
                    eprintln!("more: --after {next}");
                }
                Ok(())
            }
        }
    })
    .await
}
