//! `/api/v1/deployments` and `/api/v1/engines`, in the deployment service's shapes: resources
//! with dependencies, applied in dependency order by their engines, rolled back in reverse
//! order when one fails or the deployment is deleted.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use orchion_domain::{Deployment, DeploymentFilter};
use orchion_rest::{DeploymentBody, DeploymentList, EngineBody, EngineList, ResourceStatus};
use orchion_spec::DeploymentRequest;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::respond::Created;
use crate::{
    AppState,
    extract::{JsonBody, QueryParams, decode, page_request},
    problem::{ApiError, Problem},
};

async fn deployment_body(
    state: &AppState,
    deployment: Deployment,
    with_resources: bool,
) -> Result<DeploymentBody, ApiError> {
    let record = state.store.get_workflow_run(deployment.run_id).await?;
    let workflow = state
        .workflows
        .definition_of(&record.run)
        .await
        .map_err(crate::runs::workflow_error)?;
    let plan = orchion_control::plan(&workflow, &record);
    let projected = orchion_control::deployment_status(&plan, &record);
    let request: DeploymentRequest = serde_json::from_str(&deployment.request).map_err(|e| {
        tracing::error!(error = %e, id = %deployment.id, "a stored deployment request does not parse");
        ApiError::Internal
    })?;
    let specs: std::collections::HashMap<&str, &orchion_spec::ResourceRequest> = request
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let resources = projected
        .resources
        .into_iter()
        .map(|resource| {
            let spec = specs.get(resource.name.as_str());
            ResourceStatus {
                engine: spec.map(|r| r.engine.clone()).unwrap_or_default(),
                catalog_ref: spec.map(|r| r.catalog_ref.clone()).unwrap_or_default(),
                name: resource.name,
                progress: resource.progress.to_owned(),
                status: resource.status.to_owned(),
                outputs: resource.outputs,
                error: resource.error,
                attempts: resource.attempts,
            }
        })
        .collect();
    let (status, phase, error) = (projected.status, projected.phase, projected.error);
    let run = &record.run;
    Ok(DeploymentBody {
        id: deployment.id,
        composer: deployment.composer,
        environment: deployment.environment,
        status: status.to_owned(),
        phase: phase.to_owned(),
        error,
        run_id: deployment.run_id.to_string(),
        created_at: deployment.created_at,
        finished_at: run.finished_at,
        resources: with_resources.then_some(resources),
    })
}

/// The deployment with this id, if the caller may see its run; a 404 otherwise.
async fn visible_deployment(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Deployment, ApiError> {
    let deployment = state.store.get_deployment(id).await?;
    if caller.0.is_unconfined() {
        return Ok(deployment);
    }
    let run = state.store.workflow_run_head(deployment.run_id).await?;
    caller.visible(run.run.project_id, "deployment", id, deployment)
}

/// Starts a deployment. Every problem with it is reported at once (422), and nothing is
/// deployed. One deployment per composer and environment runs at a time: a second one is
/// accepted as `queued` and starts when the first ends. The same request again (the same id
/// and body) is answered as the first was, with `Idempotent-Replayed: true` and the
/// deployment it started; another body under a taken id is 409.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = DeploymentRequest,
    responses((status = 201, body = DeploymentBody), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let raw = body.value;
    let request: DeploymentRequest = decode(raw.clone(), "")?.value;
    let (workflow, definition) = request
        .compile(|engine| state.engines.get(engine).copied().unwrap_or(true))
        .map_err(ApiError::Validation)?;
    let deployment = state
        .workflows
        .start_deployment(
            &request,
            workflow,
            &definition,
            &raw,
            caller.project_for(None)?,
            orchion_otel::traceparent(),
        )
        .await
        .map_err(crate::runs::workflow_error)?;
    let location = format!("/api/v1/deployments/{}", deployment.value.id);
    let body = deployment_body(&state, deployment.value, true).await?;
    Ok(Created::or_replayed(body, location, deployment.created).into_response())
}

/// A deployment, its overall status and phase, and each resource's status, engine, progress
/// and outputs.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = DeploymentBody), (status = 404, body = Problem)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentBody>, ApiError> {
    let deployment = visible_deployment(&state, &caller, &id).await?;
    Ok(Json(deployment_body(&state, deployment, true).await?))
}

/// Cancels a deployment and rolls back what it applied, in reverse dependency order. On a
/// finished deployment, this destroys its resources.
#[utoipa::path(delete, path = "/api/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 202, body = DeploymentBody), (status = 404, body = Problem)))]
pub async fn delete_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeploymentBody>), ApiError> {
    let deployment = visible_deployment(&state, &caller, &id).await?;
    state
        .workflows
        .undo(deployment.run_id)
        .await
        .map_err(crate::runs::workflow_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(deployment_body(&state, deployment, true).await?),
    ))
}

/// Filters for listing deployments.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeployments {
    pub composer: Option<String>,
    pub environment: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists deployments, oldest first.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(ListDeployments),
    responses((status = 200, body = DeploymentList), (status = 400, body = Problem)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListDeployments>,
) -> Result<Json<DeploymentList>, ApiError> {
    let page = page_request(query.limit, query.cursor)?;
    let filter = DeploymentFilter {
        composer: query.composer,
        environment: query.environment,
        project_id: caller.0.project,
    };
    let page = state.store.list_deployments(&filter, page).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for deployment in page.items {
        items.push(deployment_body(&state, deployment, false).await?);
    }
    Ok(Json(DeploymentList {
        items,
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// Each deployment engine: enabled or not, and how many live agents can run it.
#[utoipa::path(get, path = "/api/v1/engines", tag = "deployments",
    responses((status = 200, body = EngineList)))]
pub async fn list_engines(State(state): State<AppState>) -> Json<EngineList> {
    let offering = state.nodes.executors_offered();
    let items = orchion_spec::ENGINES
        .iter()
        .map(|name| {
            let enabled = state.engines.get(*name).copied().unwrap_or(true);
            let agents = offering.get(*name).copied().unwrap_or(0);
            EngineBody {
                name: (*name).to_owned(),
                enabled,
                agents,
                health: match (enabled, agents) {
                    (false, _) => "disabled",
                    (true, 0) => "unavailable",
                    (true, _) => "healthy",
                }
                .to_owned(),
            }
        })
        .collect();
    Json(EngineList { items })
}
