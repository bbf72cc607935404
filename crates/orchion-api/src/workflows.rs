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
use orchion_domain::{Dag, WorkflowType};
use orchion_rest::WorkflowTypeBody;
use orchion_spec::WorkflowDefinition;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::{
    AppState,
    extract::{JsonBody, QueryParams},
    problem::{ApiError, Problem},
};

fn body(workflow: WorkflowType, dag: &Dag) -> WorkflowTypeBody {
    let mut definition = serde_json::from_str(&workflow.definition).unwrap_or_default();
    orchion_spec::secret::redact_definition(&mut definition);
    WorkflowTypeBody {
        waves: dag
            .waves()
            .into_iter()
            .map(|wave| wave.into_iter().map(str::to_owned).collect())
            .collect(),
        definition,
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
    caller: Caller,
    body_in: JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<WorkflowTypeBody>), ApiError> {
    let raw = body_in.value;
    let definition: WorkflowDefinition = serde_path_to_error::deserialize(&raw).map_err(|e| {
        let inner = e.inner().to_string();
        ApiError::InvalidBody {
            pointer: orchion_spec::pointer_of(e.path(), &inner),
            detail: format!("workflow definition: {inner}"),
        }
    })?;
    // A deployment engine runs only a deployment's resources.
    let engines: Vec<orchion_domain::FieldError> = definition
        .steps
        .iter()
        .enumerate()
        .flat_map(|(i, step)| {
            let own = orchion_spec::engine_refused(&step.executor, &format!("/steps/{i}"));
            let rollback = step.rollback.as_ref().and_then(|r| {
                orchion_spec::engine_refused(&r.executor, &format!("/steps/{i}/rollback"))
            });
            own.into_iter().chain(rollback)
        })
        .collect();
    if !engines.is_empty() {
        return Err(ApiError::Validation(orchion_domain::ValidationErrors(
            engines,
        )));
    }
    let workflow = definition.compile()?;
    let (name, dag) = (workflow.name, workflow.dag);
    let project_id = caller.project_for(workflow.project_id)?;
    // A name belongs to one project: a new version stays where the first one is.
    match state.store.get_workflow_type(&name, None).await {
        Ok(latest) if latest.project_id.is_some_and(|p| p != project_id) => {
            return Err(ApiError::Conflict(format!(
                "the workflow type name `{name}` is taken by another project; choose another name"
            )));
        }
        Ok(_) | Err(orchion_store::StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let project_id = Some(project_id);
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

/// The workflow type (a version, or the latest), if the caller may see it; a 404 otherwise.
pub(crate) async fn visible_type(
    state: &AppState,
    caller: &Caller,
    name: &str,
    version: Option<u32>,
) -> Result<WorkflowType, ApiError> {
    let workflow = state.store.get_workflow_type(name, version).await?;
    let shown = version.map_or_else(|| name.to_owned(), |v| format!("{name}@{v}"));
    caller.visible(workflow.project_id, "workflow type", shown, workflow)
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
    caller: Caller,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<VersionQuery>,
) -> Result<Json<WorkflowTypeBody>, ApiError> {
    let workflow = visible_type(&state, &caller, &name, query.version).await?;
    let definition: WorkflowDefinition = serde_json::from_str(&workflow.definition)
        .map_err(|e| {
            tracing::error!(error = %e, name = %name, "a stored workflow definition does not parse");
            ApiError::Internal
        })?;
    let dag = definition.compile().map(|w| w.dag).map_err(|e| {
        tracing::error!(error = %e, name = %name, "a stored workflow definition no longer validates");
        ApiError::Internal
    })?;
    Ok(Json(body(workflow, &dag)))
}
