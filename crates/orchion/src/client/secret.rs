//! `orchion secret set|ls|rm`: a project's secrets. A value is sent once and never printed.

use std::{io::Read as _, process::ExitCode};

use orchion_client::{Client, rest::SecretBody};

use super::{CliError, Table, finish, print, timestamp};
use crate::cli::{Output, SecretArgs, SecretCommand};

fn table(secrets: &[SecretBody]) -> Table {
    let mut table = Table::new(vec!["NAME", "VERSION", "UPDATED", "UPDATED BY", "CREATED"]);
    for s in secrets {
        table.row(vec![
            s.name.clone(),
            s.version.to_string(),
            timestamp(s.updated_at),
            s.updated_by.clone(),
            timestamp(s.created_at),
        ]);
    }
    table
}

/// The project a verb is about: the one named, else the token's own, else `default`.
async fn project(client: &Client, named: Option<String>) -> Result<String, CliError> {
    if let Some(named) = named {
        return Ok(named);
    }
    let session = client.session().await?;
    Ok(session
        .project_id
        .unwrap_or_else(|| orchion_domain::ProjectId::DEFAULT.to_string()))
}

/// The value to set: the file's bytes exactly, or stdin with one trailing newline dropped.
fn value(from_file: Option<&std::path::Path>, name: &str) -> Result<String, CliError> {
    if let Some(path) = from_file {
        return std::fs::read_to_string(path)
            .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())));
    }
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        eprint!("Value of {name} (then Enter, and Ctrl-D): ");
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError(format!("cannot read the value from stdin: {e}")))?;
    if let Some(stripped) = text.strip_suffix('\n') {
        text = stripped.strip_suffix('\r').unwrap_or(stripped).to_owned();
    }
    Ok(text)
}

/// Runs a `secret` verb.
pub async fn run(args: SecretArgs) -> ExitCode {
    let (command, named) = (args.command, args.project);
    finish(
        &args.client,
        async move |client: &Client, output: Output| {
            let project = project(client, named).await?;
            match command {
                SecretCommand::Set { name, from_file } => {
                    let value = value(from_file.as_deref(), &name)?;
                    let secret = client.set_secret(&project, &name, &value).await?;
                    if output == Output::Table {
                        eprintln!(
                            "set secret {} in project {} (version {})",
                            secret.name, secret.project_id, secret.version
                        );
                        Ok(())
                    } else {
                        print(output, &secret, |s| table(std::slice::from_ref(s)))
                    }
                }
                SecretCommand::Ls => {
                    let list = client.secrets(&project).await?;
                    print(output, &list, |l| table(&l.items))
                }
                SecretCommand::Rm { name } => {
                    client.delete_secret(&project, &name).await?;
                    eprintln!("removed secret {name} from project {project}");
                    Ok(())
                }
            }
        },
    )
    .await
}
