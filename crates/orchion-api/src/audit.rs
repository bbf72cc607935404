//! `GET /api/v1/audit`: the audit log, for admins of every project.

use axum::{Json, extract::State};
use orchion_domain::{AuditEntry, AuditFilter};
use orchion_rest::{AuditBody, AuditList};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::{
    AppState,
    extract::QueryParams,
    problem::{ApiError, Problem},
};

/// An audit entry as the API shows it.
fn audit_body(e: AuditEntry) -> AuditBody {
    AuditBody {
        seq: e.seq,
        at: e.at,
        actor: e.actor,
        role: e.role.map(|r| r.as_str().to_owned()),
        project_id: e.project.map(|p| p.to_string()),
        client: e.client,
        method: e.method,
        route: e.route,
        resource: e.resource,
        status: e.status,
        request_id: e.request_id,
    }
}

/// Filters and paging for reading the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAudit {
    /// Entries of this actor (`token:<id>`, `anonymous`).
    pub actor: Option<String>,
    /// Entries of this HTTP method (`POST`).
    pub method: Option<String>,
    /// Entries whose route starts with this (`/api/v1/jobs`).
    pub route: Option<String>,
    /// Entries that name this id.
    pub resource: Option<String>,
    /// Entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// The `next_after` of the previous page.
    pub after: Option<i64>,
    /// At most this many (1 to 500, default 100).
    pub limit: Option<u32>,
}

/// Reads the audit log, oldest first: every state-changing request, who made it and how it
/// ended.
#[utoipa::path(get, path = "/api/v1/audit", tag = "access", params(ListAudit),
    responses((status = 200, body = AuditList), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_audit(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<ListAudit>,
) -> Result<Json<AuditList>, ApiError> {
    let since = query
        .since
        .map(|s| {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).map_err(
                |e| ApiError::InvalidParameter {
                    name: "since".into(),
                    detail: format!(
                        "since is not an RFC 3339 time such as 2026-12-01T10:00:00Z: {e}"
                    ),
                },
            )
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > orchion_store::MAX_AUDIT_PAGE {
        return Err(ApiError::InvalidParameter {
            name: "limit".into(),
            detail: format!("limit must be 1 to {}", orchion_store::MAX_AUDIT_PAGE),
        });
    }
    let filter = AuditFilter {
        actor: query.actor.filter(|a| !a.is_empty()),
        method: query.method.map(|m| m.to_ascii_uppercase()),
        route_prefix: query.route.filter(|r| !r.is_empty()),
        resource: query.resource.filter(|r| !r.is_empty()),
        since,
    };
    let entries = state.store.list_audit(&filter, query.after, limit).await?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditList {
        items: entries.into_iter().map(audit_body).collect(),
        next_after,
    }))
}
