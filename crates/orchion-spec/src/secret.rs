//! Secret references in specs: `{"secret": "NAME"}` where a value may come from the project's
//! secrets instead of being written out. Where a reference may stand depends on the executor
//! ([`slots`]): the values of a `shell` or `kubernetes` job's `env`, an `http` job's `headers`
//! and `body`, and anywhere inside a deployment engine's `config`.
//!
//! A spec is stored and shown with its references; the server finds the names a claimed task
//! needs ([`secret_names`]), and the agent puts the values in ([`resolve_secrets`]) just before
//! the task runs, so a value exists only in the claim and in the agent's memory. Literal `env`
//! and `headers` values are shown as [`REDACTED`] in answers ([`redact`]).

use std::collections::{BTreeMap, BTreeSet};

use orchion_domain::{FieldError, ValidationErrors, pointer_escape as escape};
use serde_json::Value;

use crate::executor::ENGINES;

/// What a literal `env` or `headers` value is shown as in answers.
pub const REDACTED: &str = "REDACTED";

/// The longest secret name.
pub const MAX_SECRET_NAME: usize = 128;

/// Where in an executor's spec a reference may stand.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Each value of the object at this field (`env`, `headers`); redacted when literal.
    Values(&'static str),
    /// The field itself (`body`).
    Field(&'static str),
    /// Any object inside this field (`config`), at any depth.
    Within(&'static str),
}

fn slots(executor: &str) -> &'static [Slot] {
    match executor {
        "shell" | "kubernetes" => &[Slot::Values("env")],
        "http" => &[Slot::Values("headers"), Slot::Field("body")],
        engine if ENGINES.contains(&engine) => &[Slot::Within("config")],
        _ => &[],
    }
}

/// Checks a secret's name: 1 to 128 of `A-Z a-z 0-9 _ -`, starting with a letter or `_`
/// (so it reads the same in a URL, a shell and a log).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("a secret name must not be empty".into());
    };
    if name.len() > MAX_SECRET_NAME {
        return Err(format!(
            "a secret name is at most {MAX_SECRET_NAME} characters"
        ));
    }
    if !(first.is_ascii_alphabetic() || first == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "secret name `{}` must start with a letter or `_` and hold only letters, digits, `_` and `-`",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The name `value` refers to when it is a reference (`{"secret": "NAME"}`, nothing else in
/// the object), whether or not the name is a valid one.
fn reference(value: &Value) -> Option<&str> {
    let object = value.as_object()?;
    match (object.len(), object.get("secret")) {
        (1, Some(Value::String(name))) => Some(name),
        _ => None,
    }
}

/// One place a reference stands in a spec, and the name it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// A JSON pointer under `/spec`, as problems name it.
    pub pointer: String,
    pub name: String,
}

/// Calls `visit` with every value in the spec's slots that is an object with a `secret` field
/// (a reference, or a malformed one), and its pointer.
fn each_slot_object(executor: &str, spec: &mut Value, visit: &mut dyn FnMut(&mut Value, String)) {
    // Inside a `config`, where an object with a `secret` field may be the engine's own data,
    // only the exact form `{"secret": "NAME"}` is a reference.
    fn within(value: &mut Value, pointer: String, visit: &mut dyn FnMut(&mut Value, String)) {
        if reference(value).is_some() {
            visit(value, pointer);
            return;
        }
        match value {
            Value::Object(object) => {
                for (key, inner) in object {
                    within(inner, format!("{pointer}/{}", escape(key)), visit);
                }
            }
            Value::Array(items) => {
                for (i, inner) in items.iter_mut().enumerate() {
                    within(inner, format!("{pointer}/{i}"), visit);
                }
            }
            _ => {}
        }
    }
    let is_candidate = |v: &Value| v.as_object().is_some_and(|o| o.contains_key("secret"));
    for slot in slots(executor) {
        match *slot {
            Slot::Values(field) => {
                if let Some(Value::Object(values)) = spec.get_mut(field) {
                    for (key, value) in values.iter_mut() {
                        if is_candidate(value) {
                            visit(value, format!("/spec/{field}/{}", escape(key)));
                        }
                    }
                }
            }
            Slot::Field(field) => {
                if let Some(value) = spec.get_mut(field).filter(|v| is_candidate(v)) {
                    visit(value, format!("/spec/{field}"));
                }
            }
            Slot::Within(field) => {
                if let Some(value) = spec.get_mut(field) {
                    within(value, format!("/spec/{field}"), visit);
                }
            }
        }
    }
}

/// Every reference in `spec` (of `executor`), checked: a malformed one (`{"secret": 5}`, an
/// extra field, a name outside the grammar) is a problem at its pointer.
pub fn secret_uses(executor: &str, spec: &Value) -> Result<Vec<SecretUse>, ValidationErrors> {
    if !mentions_secret(spec) {
        return Ok(Vec::new());
    }
    let mut spec = spec.clone();
    let mut uses = Vec::new();
    let mut errors = ValidationErrors::default();
    each_slot_object(
        executor,
        &mut spec,
        &mut |value, pointer| match reference(value).map(|name| (name, check_secret_name(name))) {
            Some((name, Ok(()))) => uses.push(SecretUse {
                pointer,
                name: name.to_owned(),
            }),
            Some((_, Err(why))) => errors.push(FieldError {
                pointer: format!("{pointer}/secret"),
                message: why,
            }),
            None => errors.push(FieldError {
                pointer,
                message: "a secret reference is `{\"secret\": \"NAME\"}` and nothing else".into(),
            }),
        },
    );
    errors.into_result(uses)
}

/// Whether any object in `spec` has a `secret` field: a cheap walk that spares the usual spec
/// the copy [`secret_uses`] makes.
fn mentions_secret(spec: &Value) -> bool {
    fn any(value: &Value) -> bool {
        match value {
            Value::Object(o) => o.contains_key("secret") || o.values().any(any),
            Value::Array(items) => items.iter().any(any),
            _ => false,
        }
    }
    any(spec)
}

/// `spec` with every reference replaced by an empty text, so the executor's typed spec (whose
/// values are texts) can check the rest; [`restore`] puts them back in the canonical form.
pub(crate) fn placeholders(executor: &str, spec: &Value) -> Value {
    let mut spec = spec.clone();
    each_slot_object(executor, &mut spec, &mut |value, _| {
        *value = Value::String(String::new());
    });
    spec
}

/// Puts the references of `uses` back into a canonical spec made from [`placeholders`].
pub(crate) fn restore(canonical: &mut Value, uses: &[SecretUse]) {
    for used in uses {
        let pointer = used.pointer.strip_prefix("/spec").unwrap_or(&used.pointer);
        if let Some(value) = canonical.pointer_mut(pointer) {
            *value = serde_json::json!({ "secret": used.name });
        }
    }
}

/// The names of the secrets a stored spec (canonical JSON text) refers to; none for a spec
/// that is not JSON. Cheap for the usual spec, which never says `"secret"`.
pub fn secret_names(executor: &str, spec: &str) -> BTreeSet<String> {
    if !spec.contains("\"secret\"") {
        return BTreeSet::new();
    }
    let Ok(mut value) = serde_json::from_str::<Value>(spec) else {
        return BTreeSet::new();
    };
    let mut names = BTreeSet::new();
    each_slot_object(executor, &mut value, &mut |value, _| {
        if let Some(name) = reference(value) {
            names.insert(name.to_owned());
        }
    });
    names
}

/// A stored spec (canonical JSON text) with each reference replaced by its secret's value, for
/// the executor to run. `Err` names a secret `values` lacks.
pub fn resolve_secrets(
    executor: &str,
    spec: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, String> {
    if !spec.contains("\"secret\"") {
        return Ok(spec.to_owned());
    }
    let mut value: Value =
        serde_json::from_str(spec).map_err(|e| format!("the task's spec is not JSON: {e}"))?;
    let mut missing = None;
    each_slot_object(executor, &mut value, &mut |slot, _| {
        if let Some(name) = reference(slot) {
            match values.get(name) {
                Some(secret) => *slot = Value::String(secret.clone()),
                None => missing = Some(name.to_owned()),
            }
        }
    });
    match missing {
        Some(name) => Err(format!("secret `{name}` was not handed out with the task")),
        None => Ok(value.to_string()),
    }
}

/// `spec` as answers show it: literal values of `env` and `headers` replaced by [`REDACTED`],
/// references kept (they name a secret, never hold it).
pub fn redact(executor: &str, spec: &mut Value) {
    for slot in slots(executor) {
        if let Slot::Values(field) = *slot
            && let Some(Value::Object(values)) = spec.get_mut(field)
        {
            for value in values.values_mut() {
                if reference(value).is_none() {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
    }
}

/// A stored spec (canonical JSON text) as answers show it: parsed, then [`redact`]ed.
pub fn shown_spec(executor: &str, spec: &str) -> Value {
    let mut value = serde_json::from_str(spec).unwrap_or(Value::Null);
    redact(executor, &mut value);
    value
}

/// A workflow definition as answers show it: each step's spec (and its rollback's) [`redact`]ed.
pub fn redact_definition(definition: &mut Value) {
    let Some(steps) = definition.get_mut("steps").and_then(Value::as_array_mut) else {
        return;
    };
    for step in steps {
        let executor = step["executor"].as_str().unwrap_or_default().to_owned();
        if let Some(spec) = step.get_mut("spec") {
            redact(&executor, spec);
        }
        if let Some(rollback) = step.get_mut("rollback") {
            let executor = rollback["executor"]
                .as_str()
                .unwrap_or(&executor)
                .to_owned();
            if let Some(spec) = rollback.get_mut("spec") {
                redact(&executor, spec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate;

    #[test]
    fn secret_names_follow_one_grammar() {
        for good in ["TOKEN", "_x", "db-password", "a1"] {
            assert_eq!(check_secret_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a/b",
            "${{ inputs.x }}",
            "ä",
            &"a".repeat(129),
        ] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_are_found_only_where_an_executor_takes_them() {
        let shell = json!({"command": "x", "env": {"A": {"secret": "a"}, "B": "b"},
                           "args": [{"secret": "no"}]});
        let uses = secret_uses("shell", &shell).unwrap();
        assert_eq!(
            uses,
            vec![SecretUse {
                pointer: "/spec/env/A".into(),
                name: "a".into()
            }]
        );
        let http = json!({"url": "http://x", "headers": {"authorization": {"secret": "h"}},
                          "body": {"secret": "b"}});
        let names: Vec<_> = secret_uses("http", &http)
            .unwrap()
            .into_iter()
            .map(|u| u.pointer)
            .collect();
        assert_eq!(names, ["/spec/headers/authorization", "/spec/body"]);
        let engine = json!({"config": {"vars": [{"password": {"secret": "pw"}}]}});
        assert_eq!(
            secret_uses("terraform", &engine).unwrap()[0].pointer,
            "/spec/config/vars/0/password"
        );
        assert!(
            secret_uses("noop", &json!({"outputs": {"x": {"secret": "a"}}}))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_references_are_named() {
        let spec = json!({"command": "x", "env": {
            "A": {"secret": 5}, "B": {"secret": "b", "key": "k"}, "C": {"secret": "1bad"}}});
        let errors = secret_uses("shell", &spec).unwrap_err();
        let pointers: Vec<_> = errors.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/spec/env/A", "/spec/env/B", "/spec/env/C/secret"]
        );
    }

    #[test]
    fn validation_keeps_references_in_the_canonical_spec() {
        let spec = validate(
            "http",
            &json!({"url": "http://x", "headers": {"x-token": {"secret": "t"}, "accept": "a/b"},
                    "body": {"secret": "b"}}),
        )
        .unwrap();
        let spec: Value = serde_json::from_str(&spec).unwrap();
        assert_eq!(spec["headers"]["x-token"], json!({"secret": "t"}));
        assert_eq!(spec["headers"]["accept"], "a/b");
        assert_eq!(spec["body"], json!({"secret": "b"}));
        let err = validate(
            "shell",
            &json!({"command": "x", "env": {"A": {"secret": ""}}}),
        )
        .unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/env/A/secret");
    }

    #[test]
    fn resolving_puts_values_in_and_names_what_is_missing() {
        let spec = r#"{"command":"x","env":{"A":{"secret":"a"},"B":"b"}}"#;
        let values = BTreeMap::from([("a".to_owned(), "s3cret".to_owned())]);
        let resolved: Value =
            serde_json::from_str(&resolve_secrets("shell", spec, &values).unwrap()).unwrap();
        assert_eq!(resolved["env"], json!({"A": "s3cret", "B": "b"}));
        assert_eq!(
            secret_names("shell", spec),
            BTreeSet::from(["a".to_owned()])
        );
        let err = resolve_secrets("shell", spec, &BTreeMap::new()).unwrap_err();
        assert!(err.contains("`a`"), "{err}");
        assert_eq!(resolve_secrets("noop", "{}", &values).unwrap(), "{}");
    }

    #[test]
    fn http_and_engine_references_are_resolved_where_they_stand() {
        let values = BTreeMap::from([("t".to_owned(), "v\"al".to_owned())]);
        let http = r#"{"url":"http://x","headers":{"authorization":{"secret":"t"}},"body":{"secret":"t"}}"#;
        let resolved: Value =
            serde_json::from_str(&resolve_secrets("http", http, &values).unwrap()).unwrap();
        assert_eq!(resolved["headers"]["authorization"], "v\"al");
        assert_eq!(resolved["body"], "v\"al");
        let engine = r#"{"config":{"vars":[{"pw":{"secret":"t"}}],"secret":{"enabled":true}}}"#;
        let resolved: Value =
            serde_json::from_str(&resolve_secrets("helm", engine, &values).unwrap()).unwrap();
        assert_eq!(resolved["config"]["vars"][0]["pw"], "v\"al");
        assert_eq!(
            resolved["config"]["secret"],
            json!({"enabled": true}),
            "an engine's own data"
        );
    }

    #[test]
    fn answers_redact_literals_and_keep_references() {
        let mut spec = json!({"url": "http://x", "headers": {"authorization": "Bearer x",
                              "x-t": {"secret": "t"}}, "body": "kept"});
        redact("http", &mut spec);
        assert_eq!(
            spec["headers"],
            json!({"authorization": REDACTED, "x-t": {"secret": "t"}})
        );
        assert_eq!(spec["body"], "kept");
    }
}
