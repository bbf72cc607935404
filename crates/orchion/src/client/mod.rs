//! The command-line client: verbs over the REST API. Data goes to stdout in the chosen format;
//! errors go to stderr as one line (plus one per field problem). Exit 0 on success, 1 when the
//! server refuses or cannot be reached.

pub mod access;
pub mod contexts;
pub mod deploy;
pub mod job;
pub mod node;
pub mod project;
pub mod schedule;
pub mod secret;
pub mod workflow;

use std::process::ExitCode;

use orchion_client::{Client, Listing};
use serde::Serialize;

use crate::cli::{ClientArgs, Output};

/// Why a verb failed, worded for the person at the terminal: the server's answer, or a local
/// problem (a file that does not read, a flag that does not parse).
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<orchion_client::Error> for CliError {
    fn from(e: orchion_client::Error) -> Self {
        CliError(e.to_string())
    }
}

/// A time as the API writes it (RFC 3339), for a table cell.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Prints a value as JSON or YAML, or as a table through `table`.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> Table,
) -> Result<(), CliError> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
        Output::Table => Ok(table(value).render()),
    }
    .map_err(|e| CliError(format!("cannot format the result: {e}")))?;
    print!("{text}");
    Ok(())
}

/// Rows under a header, printed in aligned columns like `kubectl get`.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}   "));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(self.header.clone());
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// Prints a listing, and on a table where the next page starts.
pub fn print_listing<T: Serialize>(
    output: Output,
    listing: &Listing<T>,
    table: impl FnOnce(&[T]) -> Table,
) -> Result<(), CliError> {
    print(output, listing, |l| table(&l.items))?;
    if let (Output::Table, Some(next)) = (output, &listing.next_cursor) {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}

/// Runs a verb and turns its outcome into an exit status.
pub async fn finish(
    args: &ClientArgs,
    verb: impl AsyncFnOnce(&Client, Output) -> Result<(), CliError>,
) -> ExitCode {
    let result = match contexts::resolve(args).and_then(|target| target.client()) {
        Ok(client) => verb(&client, args.output).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
