//! `orchion node ls|get|drain|rm`.

use std::process::ExitCode;

use orchion_client::{Client, Paging, rest::NodeBody};

use super::{CliError, Table, finish, print, print_listing, timestamp};
use crate::cli::{NodeArgs, NodeCommand, Output};

fn table(nodes: &[NodeBody]) -> Table {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "STATUS",
        "ADDRESS",
        "CPU",
        "MEMORY",
        "GPUS",
        "LABELS",
        "LAST HEARTBEAT",
    ]);
    for n in nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row(vec![
            n.id.clone(),
            n.name.clone(),
            n.status.clone(),
            n.address.clone(),
            format!("{}", n.capacity.cpu_millis as f64 / 1000.0),
            format!(
                "{:.1}Gi",
                n.capacity.memory_bytes as f64 / f64::from(1u32 << 30)
            ),
            n.capacity.gpus.to_string(),
            labels.join(","),
            timestamp(n.last_heartbeat_at),
        ]);
    }
    table
}

fn one(output: Output, node: &NodeBody) -> Result<(), CliError> {
    print(output, node, |n| table(std::slice::from_ref(n)))
}

/// Runs a `node` verb.
pub async fn run(args: NodeArgs) -> ExitCode {
    let command = args.command;
    finish(
        &args.client,
        async move |client: &Client, output| match command {
            NodeCommand::Ls {
                status,
                label,
                limit,
                cursor,
                all,
            } => {
                let paging = Paging { limit, cursor, all };
                let listing = client.nodes(status, label, paging).await?;
                print_listing(output, &listing, table)
            }
            NodeCommand::Get { id } => one(output, &client.node(&id).await?),
            NodeCommand::Drain { id } => one(output, &client.drain_node(&id).await?),
            NodeCommand::Rm { id } => {
                client.delete_node(&id).await?;
                eprintln!("deleted node {id}");
                Ok(())
            }
        },
    )
    .await
}
