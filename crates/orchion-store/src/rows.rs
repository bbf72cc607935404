//! Rows as both backends return them, and their conversion into domain values. Decoding is
//! shared: sqlx decodes these column types the same way from SQLite and PostgreSQL.

use orchion_domain::{Page, PageRequest, Project, ProjectId, ProjectStatus};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Event, StoreError};

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ProjectRow {
    id: Uuid,
    name: String,
    description: String,
    #[sqlx(rename = "type")]
    kind: String,
    status: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<ProjectRow> for Project {
    type Error = StoreError;

    fn try_from(row: ProjectRow) -> Result<Self, Self::Error> {
        Ok(Project {
            id: ProjectId::from_uuid(row.id),
            status: row
                .status
                .parse::<ProjectStatus>()
                .map_err(StoreError::Corrupt)?,
            name: row.name,
            description: row.description,
            kind: row.kind,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    at: OffsetDateTime,
    kind: String,
    subject: String,
    project_id: Option<Uuid>,
    data: sqlx::types::Json<serde_json::Value>,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            seq: row.seq,
            at: row.at,
            kind: row.kind,
            subject: row.subject,
            project_id: row.project_id.map(ProjectId::from_uuid),
            data: row.data.0,
        }
    }
}

/// Turns `limit + 1` rows fetched for a page into the page and its continuation cursor.
pub(crate) fn page_of<R, T>(
    rows: Vec<R>,
    page: PageRequest,
    id: impl Fn(&T) -> Uuid,
) -> Result<Page<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    let limit = page.limit as usize;
    let more = rows.len() > limit;
    let items = rows
        .into_iter()
        .take(limit)
        .map(T::try_from)
        .collect::<Result<Vec<T>, _>>()?;
    let next = if more {
        items.last().map(|last| orchion_domain::Cursor(id(last)))
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The data an event about a project carries: the project as it now is.
pub(crate) fn project_event_data(project: &Project) -> serde_json::Value {
    serde_json::json!({
        "name": project.name,
        "type": project.kind,
        "status": project.status.as_str(),
    })
}
