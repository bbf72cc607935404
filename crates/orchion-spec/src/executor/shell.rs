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
    /// The task's environment, besides `PATH`, `HOME` and `LANG` (the agent's) and Orchion's
    /// `ORCHION_*` variables; numbers and booleans count as their text.
    #[serde(default, deserialize_with = "text_map")]
    pub env: BTreeMap<String, String>,
    /// Where the process starts; the attempt's own private directory when absent.
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

/// Programs that run their argument after `-c` as shell code.
const SHELLS: [&str; 7] = ["sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"];

/// Interpreters and the flags whose next argument is code they run.
const INTERPRETERS: [(&str, &[&str]); 11] = [
    ("python", &["-c"]),
    ("python3", &["-c"]),
    ("python2", &["-c"]),
    ("node", &["-e", "--eval", "-p", "--print"]),
    ("nodejs", &["-e", "--eval", "-p", "--print"]),
    ("deno", &["eval"]),
    ("perl", &["-e", "-E"]),
    ("ruby", &["-e"]),
    ("php", &["-r"]),
    ("pwsh", &["-c", "-Command"]),
    ("powershell", &["-c", "-Command"]),
];

/// What a refused template says to do instead.
pub const SCRIPT_TEMPLATE_REFUSED: &str = "a `${{ … }}` expression inside a script is run as code, so a value with quotes or `$(…)` in it runs commands: pass the value through `env` instead (`\"env\": {\"TITLE\": \"${{ event.issue.title }}\"}`) and read it in the script as \"$TITLE\"";

/// The index of every argument in `args` that `command` runs as code (the script of `sh -c`,
/// `bash -ec`, `python -c`, `node -e`, …) and that holds a `${{` template: a template there is
/// spliced into code before it runs, so the definition is refused.
pub fn script_templates(command: &str, args: &[serde_json::Value]) -> Vec<usize> {
    let program = command.rsplit('/').next().unwrap_or(command);
    let text = |i: usize| args.get(i).and_then(serde_json::Value::as_str);
    let is_script_flag = |arg: &str| {
        if SHELLS.contains(&program) {
            // `-c`, or a cluster of short flags with `c` in it (`-ec`, `-xc`).
            arg.starts_with('-') && !arg.starts_with("--") && arg[1..].contains('c')
        } else {
            INTERPRETERS
                .iter()
                .find(|(name, _)| *name == program)
                .is_some_and(|(_, flags)| flags.contains(&arg))
        }
    };
    let mut found = Vec::new();
    for i in 0..args.len() {
        let Some(arg) = text(i) else { continue };
        if is_script_flag(arg) && text(i + 1).is_some_and(|code| code.contains("${{")) {
            found.push(i + 1);
        }
        // An interpreter's `--eval=code` in one argument.
        if arg.contains("${{")
            && (arg.starts_with("--eval=") || arg.starts_with("--print="))
            && !SHELLS.contains(&program)
        {
            found.push(i);
        }
    }
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::script_templates;

    fn args(v: serde_json::Value) -> Vec<serde_json::Value> {
        v.as_array().unwrap().clone()
    }

    #[test]
    fn templates_in_scripts_are_found() {
        let t = "echo ${{ event.issue.title }}";
        assert_eq!(script_templates("sh", &args(json!(["-c", t]))), [1]);
        assert_eq!(
            script_templates("/bin/bash", &args(json!(["-euc", t]))),
            [1]
        );
        assert_eq!(script_templates("python3", &args(json!(["-c", t]))), [1]);
        assert_eq!(script_templates("node", &args(json!(["--eval", t]))), [1]);
        assert_eq!(
            script_templates("node", &args(json!([format!("--eval={t}")]))),
            [0]
        );
        assert_eq!(script_templates("perl", &args(json!(["-w", "-e", t]))), [2]);
    }

    #[test]
    fn values_passed_as_arguments_or_plain_scripts_are_not() {
        let t = "${{ input.file }}";
        // An argument after the script is a positional parameter ($1), not code.
        assert!(script_templates("sh", &args(json!(["-c", "wc -l \"$1\"", "sh", t]))).is_empty());
        assert!(script_templates("cat", &args(json!(["-c", t]))).is_empty());
        assert!(script_templates("bash", &args(json!(["-c", "echo \"$TITLE\""]))).is_empty());
        assert!(script_templates("python3", &args(json!(["script.py", t]))).is_empty());
        assert!(script_templates("bash", &args(json!(["--norc", t]))).is_empty());
    }
}
