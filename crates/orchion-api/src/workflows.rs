//! `/api/v1/workflow-types`: workflow definitions — DAGs of steps — stored and versioned.
//!
//! A definition is checked as a whole before anything is stored, and every problem is reported
//! at once with its JSON pointer: each step's executor spec, retry policy, timeouts and placement
//! (as a job's), duplicate names, unknown needs, cycles with their exact path, and templates
//! (`${{ steps.build.outputs.image }}`) that read a step which is not upstream. Fields holding a
//! template are checked for their shape only: their value is known when the step runs.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use orchion_domain::{Dag, FieldError, ProjectId, StepShape, ValidationErrors, WorkflowType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    extract::{JsonBody, QueryParams},
    jobs::{CreateJob, PlacementBody, RetryBody, TimeoutsBody},
    problem::{ApiError, Problem},
};

/// One step of a workflow.
#[derive(Debug, Deserialize, ToSchema)]
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
}

/// A workflow definition, JSON or YAML.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    #[schema(example = "code_review")]
    pub name: String,
    pub description: Option<String>,
    pub project_id: Option<String>,
    pub steps: Vec<StepDefinition>,
}

/// A stored workflow type.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowTypeBody {
    pub name: String,
    pub version: u32,
    pub project_id: Option<String>,
    /// The steps in waves: each wave needs only earlier waves, so its steps run in parallel.
    pub waves: Vec<Vec<String>>,
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
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
                    &format!("{prefix}/{}", key.replace('~', "~0").replace('/', "~1")),
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

/// Checks a definition as a whole; returns the graph, or every problem.
fn check(
    definition: WorkflowDefinition,
) -> Result<(String, Option<ProjectId>, Dag), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let name_ok = !definition.name.is_empty()
        && definition.name.len() <= 100
        && definition
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !name_ok {
        errors.push(FieldError::new(
            "name",
            "name must be 1 to 100 letters, digits, `_`, `-` or `.`",
        ));
    }
    let project_id = definition.project_id.as_deref().and_then(|raw| {
        raw.parse::<ProjectId>()
            .map_err(|e| errors.push(FieldError::new("project_id", e.to_string())))
            .ok()
    });
    let mut shapes = Vec::with_capacity(definition.steps.len());
    for (i, step) in definition.steps.into_iter().enumerate() {
        let prefix = format!("/steps/{i}");
        let mut found = Vec::new();
        templates(&step.spec, &format!("{prefix}/spec"), &mut found);
        for (field, template) in [("when", &step.when), ("for_each", &step.for_each)] {
            if let Some(template) = template {
                found.push((format!("{prefix}/{field}"), template.clone()));
            }
        }
        let job = CreateJob {
            name: None,
            project_id: None,
            executor: step.executor,
            spec: without_templates(&step.spec),
            priority: None,
            idempotency_key: None,
            retry: step.retry,
            timeouts: step.timeouts,
            placement: step.placement,
            concurrency: None,
            run_at: None,
        };
        if let Err(e) = job.into_new_job() {
            for mut error in e.0 {
                error.pointer = format!("{prefix}{}", error.pointer);
                // A templated field's value is known only when the step runs.
                if !found.iter().any(|(pointer, _)| *pointer == error.pointer) {
                    errors.push(error);
                }
            }
        }
        shapes.push(StepShape {
            name: step.name,
            needs: step.needs,
            templates: found,
        });
    }
    match Dag::new(&shapes) {
        Ok(dag) if errors.0.is_empty() => Ok((definition.name, project_id, dag)),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.0.extend(e.0);
            Err(errors)
        }
    }
}

fn body(workflow: WorkflowType, dag: &Dag) -> WorkflowTypeBody {
    WorkflowTypeBody {
        waves: dag
            .waves()
            .into_iter()
            .map(|wave| wave.into_iter().map(str::to_owned).collect())
            .collect(),
        definition: serde_json::from_str(&workflow.definition).unwrap_or_default(),
        name: workflow.name,
        version: workflow.version,
        project_id: workflow.project_id.map(|p| p.to_string()),
        created_at: workflow.created_at,
    }
}

/// Stores a workflow definition (JSON, or YAML with `Content-Type: application/yaml`) as a new
/// version of its name — or returns the latest version if it is the same definition.
#[utoipa::path(post, path = "/api/v1/workflow-types", tag = "workflows", request_body = WorkflowDefinition,
    responses((status = 201, body = WorkflowTypeBody, description = "A new version"),
        (status = 200, body = WorkflowTypeBody, description = "The same as the latest version"),
        (status = 400, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn put_workflow_type(
    State(state): State<AppState>,
    body_in: JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<WorkflowTypeBody>), ApiError> {
    let raw = body_in.value;
    let definition: WorkflowDefinition = serde_path_to_error::deserialize(&raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let pointer = if path == "." {
            inner
                .split('`')
                .nth(1)
                .map(|f| format!("/{f}"))
                .unwrap_or_default()
        } else {
            format!("/{}", path.replace('.', "/"))
        };
        ApiError::InvalidBody {
            pointer,
            detail: format!("workflow definition: {inner}"),
        }
    })?;
    let (name, project_id, dag) = check(definition)?;
    if let Some(project) = project_id {
        if let Err(orchion_store::StoreError::NotFound { .. }) =
            state.store.get_project(project).await
        {
            return Err(ApiError::Validation(ValidationErrors(vec![
                FieldError::new("project_id", format!("project `{project}` does not exist")),
            ])));
        }
    }
    let stored = state
        .store
        .put_workflow_type(&name, project_id, &raw.to_string())
        .await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body(stored.value, &dag))))
}

/// Which version to get.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// The latest when absent.
    pub version: Option<u32>,
}

/// Gets a workflow type: the latest version, or `?version=N`.
#[utoipa::path(get, path = "/api/v1/workflow-types/{name}", tag = "workflows",
    params(("name" = String, Path, description = "The workflow type's name"), VersionQuery),
    responses((status = 200, body = WorkflowTypeBody), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn get_workflow_type(
    State(state): State<AppState>,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<VersionQuery>,
) -> Result<Json<WorkflowTypeBody>, ApiError> {
    let workflow = state.store.get_workflow_type(&name, query.version).await?;
    let definition: WorkflowDefinition = serde_json::from_str(&workflow.definition)
        .map_err(|e| {
            tracing::error!(error = %e, name = %name, "a stored workflow definition does not parse");
            ApiError::Internal
        })?;
    let (_, _, dag) = check(definition).map_err(|e| {
        tracing::error!(error = %e, name = %name, "a stored workflow definition no longer validates");
        ApiError::Internal
    })?;
    Ok(Json(body(workflow, &dag)))
}
