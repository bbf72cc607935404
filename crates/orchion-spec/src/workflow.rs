//! The workflow definition language: steps with `needs`, each a job's definition whose spec may
//! hold templates (`${{ input.x }}`, `${{ steps.build.outputs.image }}`, `${{ item }}`), run
//! only `when` a condition holds, or once per element of a `for_each` list.
//!
//! [`WorkflowDefinition::compile`] checks a definition as a whole and reports every problem with
//! its JSON pointer; [`render`], [`condition`] and [`items`] evaluate templates against a
//! [`Scope`] when a step becomes ready.

use std::collections::BTreeMap;

use orchion_domain::{
    Dag, FieldError, Literal, NewJob, Piece, ProjectId, Reference, StepShape, ValidationErrors,
    parse_template,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::job::{CreateJob, PlacementBody, RetryBody, TimeoutsBody};

/// One step of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique in the workflow: letters, digits, `_`, `-`.
    pub name: String,
    /// Steps that must succeed first.
    #[serde(default)]
    pub needs: Vec<String>,
    pub executor: String,
    /// The executor's spec; strings may hold `${{ input.x }}`, `${{ steps.s.outputs.x }}`
    /// and `${{ item }}` templates.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub retry: Option<RetryBody>,
    pub timeouts: Option<TimeoutsBody>,
    pub placement: Option<PlacementBody>,
    /// Run the step only when this template is true.
    pub when: Option<String>,
    /// Fan out: one task per element of this template's list.
    pub for_each: Option<String>,
    /// What undoes this step once it succeeded, should the run fail or be cancelled (a saga's
    /// compensation): run in reverse order of `needs`, after every step that needs this one
    /// has been undone.
    pub rollback: Option<RollbackDefinition>,
}

/// The task that undoes a succeeded step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackDefinition {
    pub executor: String,
    /// Templates read the run input and the outputs of the step's upstream steps.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub retry: Option<RetryBody>,
    pub timeouts: Option<TimeoutsBody>,
}

/// A workflow definition, JSON or YAML.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    #[schema(example = "code_review")]
    pub name: String,
    pub description: Option<String>,
    pub project_id: Option<String>,
    pub steps: Vec<StepDefinition>,
    /// Whether a failed or cancelled run undoes its succeeded steps (those with a `rollback`).
    /// Default true.
    pub rollback: Option<bool>,
}

/// A checked workflow: its graph, and each step ready to be rendered into a job.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub project_id: Option<ProjectId>,
    pub dag: Dag,
    /// In definition order.
    pub steps: Vec<Step>,
    /// A failed or cancelled run runs its succeeded steps' rollbacks.
    pub rollback: bool,
}

/// One checked step.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub needs: Vec<String>,
    pub executor: String,
    /// The spec as written, templates unresolved.
    pub spec: Value,
    /// Everything but the spec, checked: retry, timeouts, placement.
    pub job: NewJob,
    pub when: Option<String>,
    pub for_each: Option<String>,
    pub rollback: Option<Rollback>,
}

/// A checked rollback: its job (everything but the spec), and the spec as written.
#[derive(Debug, Clone)]
pub struct Rollback {
    pub executor: String,
    pub spec: Value,
    pub job: NewJob,
}

impl Workflow {
    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.dag.position(name).map(|i| &self.steps[i])
    }
}

/// Every string in `value` holding a template, with its pointer under `prefix`.
fn templates(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::String(s) if s.contains("${{") => {
            out.push((prefix.to_owned(), s.clone()))
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                templates(item, &format!("{prefix}/{i}"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                templates(
                    item,
                    &format!("{prefix}/{}", orchion_domain::pointer_escape(key)),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// `value` with every template replaced by a placeholder of the same type (a string).
fn without_templates(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) if s.contains("${{") => {
            serde_json::Value::String("templated".into())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(without_templates).collect())
        }
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_templates(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl WorkflowDefinition {
    /// Checks the definition as a whole; returns the workflow, or every problem found.
    pub fn compile(self) -> Result<Workflow, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 100
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !name_ok {
            errors.push(FieldError::new(
                "name",
                "name must be 1 to 100 letters, digits, `_`, `-` or `.`",
            ));
        }
        let project_id = self.project_id.as_deref().and_then(|raw| {
            raw.parse::<ProjectId>()
                .map_err(|e| errors.push(FieldError::new("project_id", e.to_string())))
                .ok()
        });
        let mut shapes = Vec::with_capacity(self.steps.len());
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.into_iter().enumerate() {
            let prefix = format!("/steps/{i}");
            let mut found = Vec::new();
            templates(&step.spec, &format!("{prefix}/spec"), &mut found);
            for (field, template) in [("when", &step.when), ("for_each", &step.for_each)] {
                if let Some(template) = template {
                    found.push((format!("{prefix}/{field}"), template.clone()));
                }
            }
            let uses_item = found.iter().any(|(_, t)| {
                parse_template(t).is_ok_and(|pieces| {
                    pieces
                        .iter()
                        .any(|p| matches!(p.reference(), Some(Reference::Item(_))))
                })
            });
            if uses_item && step.for_each.is_none() {
                errors.push(FieldError {
                    pointer: format!("{prefix}/spec"),
                    message: format!(
                        "step `{}` reads `item`, which only a step with `for_each` has",
                        step.name
                    ),
                });
            }
            let job = check_job(
                &prefix,
                &step.name,
                JobParts {
                    executor: &step.executor,
                    spec: &step.spec,
                    retry: step.retry,
                    timeouts: step.timeouts,
                    placement: step.placement,
                },
                &found,
                &mut errors,
            );
            let rollback = step.rollback.and_then(|r| {
                let prefix = format!("{prefix}/rollback");
                let mut own = Vec::new();
                templates(&r.spec, &format!("{prefix}/spec"), &mut own);
                if step.for_each.is_some() {
                    errors.push(FieldError {
                        pointer: prefix.clone(),
                        message: format!(
                            "step `{}` fans out with for_each and cannot have a rollback",
                            step.name
                        ),
                    });
                }
                let job = check_job(
                    &prefix,
                    &step.name,
                    JobParts {
                        executor: &r.executor,
                        spec: &r.spec,
                        retry: r.retry,
                        timeouts: r.timeouts,
                        placement: None,
                    },
                    &own,
                    &mut errors,
                );
                found.extend(own);
                job.map(|job| Rollback {
                    executor: r.executor,
                    spec: r.spec,
                    job,
                })
            });
            shapes.push(StepShape {
                name: step.name.clone(),
                needs: step.needs.clone(),
                templates: found,
            });
            if let Some(job) = job {
                steps.push(Step {
                    name: step.name,
                    needs: step.needs,
                    executor: step.executor,
                    spec: step.spec,
                    job,
                    when: step.when,
                    for_each: step.for_each,
                    rollback,
                });
            }
        }
        match Dag::new(&shapes) {
            Ok(dag) if errors.0.is_empty() => Ok(Workflow {
                name: self.name,
                project_id,
                dag,
                steps,
                rollback: self.rollback.unwrap_or(true),
            }),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.0.extend(e.0);
                Err(errors)
            }
        }
    }
}

/// A job as a step or a rollback declares it.
struct JobParts<'a> {
    executor: &'a str,
    spec: &'a Value,
    retry: Option<RetryBody>,
    timeouts: Option<TimeoutsBody>,
    placement: Option<PlacementBody>,
}

/// Checks a step's (or rollback's) job; errors go to `errors` with pointers under `prefix`.
/// The spec is checked by its executor with templates as placeholders, so an error at a
/// templated field (one of `templated`) waits for the value it gets when the step runs;
/// everything else is checked as a job's.
fn check_job(
    prefix: &str,
    name: &str,
    parts: JobParts<'_>,
    templated: &[(String, String)],
    errors: &mut ValidationErrors,
) -> Option<NewJob> {
    errors.0.extend(crate::executor::refuse_script_templates(
        parts.executor,
        parts.spec,
        prefix,
    ));
    if let Err(e) = crate::executor::validate(parts.executor, &without_templates(parts.spec)) {
        for mut error in e.0 {
            error.pointer = format!("{prefix}{}", error.pointer);
            if !templated
                .iter()
                .any(|(pointer, _)| *pointer == error.pointer)
            {
                errors.push(error);
            }
        }
    }
    let job = CreateJob {
        name: Some(name.to_owned()),
        project_id: None,
        executor: "noop".into(),
        spec: Value::Object(Default::default()),
        priority: None,
        idempotency_key: None,
        retry: parts.retry,
        timeouts: parts.timeouts,
        placement: parts.placement,
        concurrency: None,
        run_at: None,
    };
    match job.into_new_job() {
        Ok((mut job, _)) => {
            job.executor = parts.executor.to_owned();
            Some(job)
        }
        Err(e) => {
            for mut error in e.0 {
                error.pointer = format!("{prefix}{}", error.pointer);
                errors.push(error);
            }
            None
        }
    }
}

/// What templates can read when a step is rendered.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The run's input.
    pub input: &'a Value,
    /// The outputs of finished steps, by step name (a `for_each` step's: a list, in order).
    pub outputs: &'a BTreeMap<String, Value>,
    /// The element of a `for_each` fan-out.
    pub item: Option<&'a Value>,
    /// The webhook event's payload, when a rule renders a run's input.
    pub event: Option<&'a Value>,
}

impl Scope<'_> {
    fn resolve(&self, reference: &Reference) -> Result<&Value, String> {
        let (root, path, name) = match reference {
            Reference::Input(path) => (Some(self.input), path, "input".to_owned()),
            Reference::Item(path) => (self.item, path, "item".to_owned()),
            Reference::Event(path) => (self.event, path, "event".to_owned()),
            Reference::StepOutput { step, path } => (
                self.outputs.get(step),
                path,
                format!("steps.{step}.outputs"),
            ),
        };
        let mut value = root.ok_or_else(|| format!("`{name}` is not available here"))?;
        let mut at = name;
        for key in path {
            let next = match value {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            value = next.ok_or_else(|| format!("`{at}` has no `{key}`"))?;
            at = format!("{at}.{key}");
        }
        Ok(value)
    }
}

/// Whether a value counts as true in a `when`: not `false`, `null`, `0`, `""`, `"false"`,
/// `"0"`, or an empty list or object.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !(s.is_empty() || s == "false" || s == "0"),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

fn equals(value: &Value, literal: &Literal) -> bool {
    match (value, literal) {
        (Value::String(s), Literal::String(l)) => s == l,
        (Value::Number(n), Literal::Number(l)) => n.as_f64() == Some(*l),
        // Outputs written as text (`ok=3` in $ORCHION_OUTPUTS) compare with numbers too.
        (Value::String(s), Literal::Number(l)) => s.trim().parse::<f64>().ok() == Some(*l),
        (Value::Bool(b), Literal::Bool(l)) => b == l,
        (Value::String(s), Literal::Bool(l)) => s == if *l { "true" } else { "false" },
        (Value::Null, Literal::Null) => true,
        _ => false,
    }
}

fn piece_value(piece: &Piece, scope: &Scope<'_>) -> Result<Value, String> {
    match piece {
        Piece::Text(text) => Ok(Value::String(text.clone())),
        Piece::Reference(reference) => scope.resolve(reference).cloned(),
        Piece::Comparison {
            reference,
            equal,
            literal,
        } => Ok(Value::Bool(
            equals(scope.resolve(reference)?, literal) == *equal,
        )),
    }
}

fn render_text(text: &str, scope: &Scope<'_>) -> Result<Value, String> {
    let pieces = parse_template(text)?;
    // A string that is one expression becomes its value, of whatever type.
    if let [piece] = pieces.as_slice() {
        if !matches!(piece, Piece::Text(_)) {
            return piece_value(piece, scope);
        }
    }
    let mut out = String::new();
    for piece in &pieces {
        match piece_value(piece, scope)? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(Value::String(out))
}

/// `value` with every template resolved. The error names the template's JSON pointer.
pub fn render(value: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    fn walk(value: &Value, pointer: &str, scope: &Scope<'_>) -> Result<Value, String> {
        match value {
            Value::String(s) if s.contains("${{") => {
                render_text(s, scope).map_err(|e| format!("{pointer}: {e}"))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| walk(item, &format!("{pointer}/{i}"), scope))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let at = format!("{pointer}/{}", orchion_domain::pointer_escape(k));
                    Ok((k.clone(), walk(v, &at, scope)?))
                })
                .collect::<Result<_, String>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }
    walk(value, "spec", scope)
}

/// What a value spliced into a URL's host or query is encoded as: everything but RFC 3986's
/// unreserved characters, so it stays one label or one query value.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a value spliced into a URL's path is encoded as: as [`URL_COMPONENT`], keeping `/`, so
/// `acme/shop` stays two segments.
const URL_PATH: &percent_encoding::AsciiSet = &URL_COMPONENT.remove(b'/');

/// A step's (or job's) `spec` for `executor` with every template resolved, as [`render`]
/// does, except in an `http` spec's `url`: there a template's value is percent-encoded. In the
/// query (and fragment) and the host everything but unreserved characters is encoded, so
/// `a&admin=1` stays one query value; in the path `/` is kept, and a value with a `.` or `..`
/// segment (which would climb the path) fails the step. A template at the very start of the
/// URL supplies its scheme and host, and is its value as it is.
pub fn render_spec(executor: &str, spec: &Value, scope: &Scope<'_>) -> Result<Value, String> {
    let mut rendered = render(spec, scope)?;
    if executor != "http" {
        return Ok(rendered);
    }
    if let Some(url) = spec
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.contains("${{"))
    {
        rendered["url"] =
            Value::String(render_url(url, scope).map_err(|e| format!("spec/url: {e}"))?);
    }
    Ok(rendered)
}

fn render_url(url: &str, scope: &Scope<'_>) -> Result<String, String> {
    let pieces = parse_template(url)?;
    let mut out = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        let value = match piece_value(piece, scope)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if i == 0 || matches!(piece, Piece::Text(_)) {
            out.push_str(&value);
            continue;
        }
        let in_path = !out.contains(['?', '#'])
            && out
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
        if in_path {
            if value
                .split('/')
                .any(|segment| segment == "." || segment == "..")
            {
                return Err(format!(
                    "the value `{value}` has a `.` or `..` segment, which would climb the URL's path"
                ));
            }
            out.extend(percent_encoding::utf8_percent_encode(&value, URL_PATH));
        } else {
            out.extend(percent_encoding::utf8_percent_encode(&value, URL_COMPONENT));
        }
    }
    Ok(out)
}

/// Whether a `when` condition holds.
pub fn condition(text: &str, scope: &Scope<'_>) -> Result<bool, String> {
    render_text(text, scope)
        .map(|v| truthy(&v))
        .map_err(|e| format!("when: {e}"))
}

/// The elements a `for_each` fans out over: the template must resolve to a list.
pub fn items(text: &str, scope: &Scope<'_>) -> Result<Vec<Value>, String> {
    match render_text(text, scope).map_err(|e| format!("for_each: {e}"))? {
        Value::Array(items) => Ok(items),
        other => Err(format!(
            "for_each: `{text}` is {}, not a list",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Object(_) => "an object",
                Value::Array(_) => "a list",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope<'a>(
        input: &'a Value,
        outputs: &'a BTreeMap<String, Value>,
        item: Option<&'a Value>,
    ) -> Scope<'a> {
        Scope {
            input,
            outputs,
            item,
            event: None,
        }
    }

    #[test]
    fn values_spliced_into_an_http_url_stay_one_component() {
        let input = json!({"repo": "acme/shop", "name": "x?drain=1#", "q": "a/b&c=d e",
                           "climb": "../admin", "tenant": "eu", "base": "https://api.example.com"});
        let outputs = BTreeMap::new();
        let s = scope(&input, &outputs, None);
        let spec = json!({"method": "GET",
                          "url": "https://${{ input.tenant }}.example.com/repos/${{ input.repo }}/${{ input.name }}?q=${{ input.q }}",
                          "headers": {"x-name": "${{ input.name }}"}});
        let rendered = render_spec("http", &spec, &s).unwrap();
        assert_eq!(
            rendered["url"],
            "https://eu.example.com/repos/acme/shop/x%3Fdrain%3D1%23?q=a%2Fb%26c%3Dd%20e"
        );
        // Elsewhere in the spec a value is itself; a template opening the URL gives its host.
        assert_eq!(rendered["headers"]["x-name"], "x?drain=1#");
        let based = json!({"url": "${{ input.base }}/repos/${{ input.repo }}"});
        assert_eq!(
            render_spec("http", &based, &s).unwrap()["url"],
            "https://api.example.com/repos/acme/shop"
        );
        // A value that would climb the path fails the step, naming it.
        let climbing = json!({"url": "${{ input.base }}/repos/${{ input.climb }}/x"});
        let error = render_spec("http", &climbing, &s).unwrap_err();
        assert!(
            error.starts_with("spec/url: the value `../admin`"),
            "{error}"
        );
        // Another executor's spec is rendered as it is.
        assert_eq!(
            render_spec("shell", &based, &s).unwrap(),
            render(&based, &s).unwrap()
        );
    }

    #[test]
    fn a_template_inside_a_script_is_refused_when_defined() {
        let definition: WorkflowDefinition = serde_json::from_value(json!({
            "name": "greet",
            "steps": [
                {"name": "unsafe", "executor": "shell",
                 "spec": {"command": "sh", "args": ["-c", "echo ${{ input.title }}"]}},
                {"name": "safe", "executor": "shell",
                 "spec": {"command": "sh", "args": ["-c", "echo \"$TITLE\""],
                          "env": {"TITLE": "${{ input.title }}"}}},
            ]
        }))
        .unwrap();
        let errors = definition.compile().unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].pointer, "/steps/0/spec/args/1");
        assert!(
            errors.0[0].message.contains("pass the value through `env`"),
            "{errors}"
        );
    }

    #[test]
    fn templates_resolve_to_values_or_text() {
        let input = json!({"repo": "orchion", "replicas": 3});
        let outputs = BTreeMap::from([(
            "build".to_owned(),
            json!({"image": "reg/app:1", "tags": ["a", "b"]}),
        )]);
        let item = json!({"region": "eu"});
        let s = scope(&input, &outputs, Some(&item));
        let spec = json!({
            "image": "${{ steps.build.outputs.image }}",
            "args": ["--replicas", "${{ input.replicas }}", "repo=${{ input.repo }}"],
            "first_tag": "${{ steps.build.outputs.tags.0 }}",
            "region": "${{ item.region }}",
            "count": "${{input.replicas}}",
            "plain": 7,
        });
        assert_eq!(
            render(&spec, &s).unwrap(),
            json!({
                "image": "reg/app:1",
                "args": ["--replicas", 3, "repo=orchion"],
                "first_tag": "a",
                "region": "eu",
                "count": 3,
                "plain": 7,
            })
        );
        let missing = render(
            &json!({"env": {"IMAGE": "${{ steps.build.outputs.digest }}"}}),
            &s,
        )
        .unwrap_err();
        assert_eq!(
            missing,
            "spec/env/IMAGE: `steps.build.outputs` has no `digest`"
        );
    }

    #[test]
    fn conditions_and_fan_out_lists() {
        let input = json!({"deploy": "false", "regions": ["eu", "us"], "n": 2});
        let outputs = BTreeMap::from([("test".to_owned(), json!({"result": "ok", "count": "3"}))]);
        let s = scope(&input, &outputs, None);
        assert!(condition("${{ steps.test.outputs.result == 'ok' }}", &s).unwrap());
        assert!(!condition("${{ steps.test.outputs.result != 'ok' }}", &s).unwrap());
        assert!(condition("${{ steps.test.outputs.count == 3 }}", &s).unwrap());
        assert!(!condition("${{ input.deploy }}", &s).unwrap());
        assert!(condition("${{ input.regions }}", &s).unwrap());
        assert_eq!(
            items("${{ input.regions }}", &s).unwrap(),
            [json!("eu"), json!("us")]
        );
        assert_eq!(
            items("${{ input.n }}", &s).unwrap_err(),
            "for_each: `${{ input.n }}` is a number, not a list"
        );
        assert!(condition("${{ steps.other.outputs.x }}", &s).is_err());
    }

    #[test]
    fn a_definition_compiles_or_lists_every_problem() {
        let definition: WorkflowDefinition = serde_json::from_value(json!({
            "name": "review",
            "steps": [
                {"name": "fetch", "executor": "noop", "spec": {}},
                {"name": "check", "executor": "shell", "needs": ["fetch"],
                 "spec": {"command": "${{ item }}"}},
                {"name": "lint", "executor": "teleport", "needs": ["fetch"], "spec": {}},
            ]
        }))
        .unwrap();
        let errors = definition.compile().unwrap_err();
        let pointers: Vec<&str> = errors.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/steps/1/spec", "/steps/2/executor"]);
        let ok: WorkflowDefinition = serde_json::from_value(json!({
            "name": "review",
            "steps": [
                {"name": "fetch", "executor": "noop", "spec": {}},
                {"name": "check", "executor": "shell", "needs": ["fetch"], "for_each": "${{ input.files }}",
                 "spec": {"command": "lint", "args": ["${{ item }}"]}},
            ]
        }))
        .unwrap();
        let workflow = ok.compile().unwrap();
        assert_eq!(workflow.dag.waves(), [vec!["fetch"], vec!["check"]]);
        assert_eq!(workflow.step("check").unwrap().job.name, "check");
        // A step whose spec is invalid until its templates are filled in is kept, unchecked
        // where it is templated.
        let templated: WorkflowDefinition = serde_json::from_value(json!({
            "name": "call",
            "steps": [{"name": "get", "executor": "http", "spec": {"url": "${{ input.url }}"},
                       "retry": {"max_attempts": 2}}]
        }))
        .unwrap();
        let workflow = templated.compile().unwrap();
        assert_eq!(workflow.steps.len(), 1);
        let get = workflow.step("get").unwrap();
        assert_eq!(
            (get.job.executor.as_str(), get.job.retry.max_attempts),
            ("http", 2)
        );
    }
}
