//! The `shell` executor's spec: a command, its arguments and environment.

use std::collections::BTreeMap;

use orchion_domain::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};

/// What a `shell` job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSpec {
    /// The program, found on `PATH` when it has no `/`.
    pub command: String,
    /// Arguments; numbers and booleans (a workflow template's value, say) count as their text.
    #[serde(default, deserialize_with = "texts")]
    pub args: Vec<String>,
    /// Added to the agent's environment; numbers and booleans count as their text.
    #[serde(default, deserialize_with = "text_map")]
    pub env: BTreeMap<String, String>,
    /// Where the process starts; the agent's working directory when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// A string, or a number or boolean as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    String(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        match text {
            Text::String(s) => s,
            Text::Number(n) => n.to_string(),
            Text::Bool(b) => b.to_string(),
        }
    }
}

pub(crate) fn texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Text>::deserialize(d)?
        .into_iter()
        .map(String::from)
        .collect())
}

pub(crate) fn text_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::<String, Text>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, String::from(v)))
        .collect())
}

impl ShellSpec {
    pub fn check(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.command.trim().is_empty() || self.command.contains('\0') {
            errors.push(FieldError {
                pointer: "/spec/command".into(),
                message: "spec.command must be a program name or path".into(),
            });
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            errors.push(FieldError {
                pointer: "/spec/args".into(),
                message: "spec.args must not contain NUL characters".into(),
            });
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                errors.push(FieldError {
                    pointer: format!("/spec/env/{key}"),
                    message: format!(
                        "spec.env name `{}` is not a valid variable name",
                        key.escape_debug()
                    ),
                });
            }
        }
        errors.into_result(())
    }
}
