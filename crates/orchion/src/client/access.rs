//! `orchion token` and `orchion audit`.

use std::process::ExitCode;

use orchion_client::Paging;
use orchion_client::rest::{AuditList, CreateToken, TokenBody};

use crate::{
    cli::{AuditArgs, AuditCommand, TokenArgs, TokenCommand},
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
            if t.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .into(),
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
                            e.status.to_string(),
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
