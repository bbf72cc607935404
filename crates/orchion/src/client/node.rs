//! `orchion node ls|get|drain|rm`.

use std::process::ExitCode;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Client, ClientError, Listing, Table, finish, print, print_listing, url_segment};
use crate::cli::{NodeArgs, NodeCommand, Output};

/// A node as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
struct Node {
    id: String,
    name: String,
    address: String,
    labels: std::collections::BTreeMap<String, String>,
    capacity: Capacity,
    executors: Vec<String>,
    version: String,
    status: String,
    registered_at: String,
    last_heartbeat_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Capacity {
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: u32,
}

fn table(nodes: &[Node]) -> Table {
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
            n.last_heartbeat_at.clone(),
        ]);
    }
    table
}

fn one(output: Output, node: &Node) -> Result<(), ClientError> {
    print(output, node, |n| table(std::slice::from_ref(n)))
}

fn node_path(id: &str) -> String {
    format!("/api/v1/nodes/{}", url_segment(id))
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
                let listing: Listing<Node> = client
                    .list(
                        "/api/v1/nodes",
                        &[("status", status), ("label", label)],
                        limit,
                        cursor,
                        all,
                    )
                    .await?;
                print_listing(output, &listing, table)
            }
            NodeCommand::Get { id } => {
                let node: Node = client
                    .call(Method::GET, &node_path(&id), &[], &[], None)
                    .await?;
                one(output, &node)
            }
            NodeCommand::Drain { id } => {
                let path = format!("{}/drain", node_path(&id));
                let node: Node = client.call(Method::POST, &path, &[], &[], None).await?;
                one(output, &node)
            }
            NodeCommand::Rm { id } => {
                client
                    .call::<Value>(Method::DELETE, &node_path(&id), &[], &[], None)
                    .await?;
                eprintln!("deleted node {id}");
                Ok(())
            }
        },
    )
    .await
}
