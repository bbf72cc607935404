//! Workflow types: versioned definitions, the [`WorkflowTypeStore`] half of the store, written
//! once for every backend. Storing a definition equal to the latest version is a no-op, so
//! applying the same file twice makes one version.

use async_trait::async_trait;
use orchion_domain::{ProjectId, WorkflowType};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Created, StoreError,
    backend::{Statement, StoreBackend, Tx},
    error::missing_project,
    events::{PendingEvent, kind},
    idempotency::retry_lost_race,
};

/// Workflow definitions. A supertrait of [`crate::Store`].
#[async_trait]
pub trait WorkflowTypeStore: Send + Sync {
    /// Stores a workflow definition under `name` as a new version, unless it equals the latest
    /// version, which is then returned (`created: false`).
    async fn put_workflow_type(
        &self,
        name: &str,
        project_id: Option<ProjectId>,
        definition: &str,
    ) -> Result<Created<WorkflowType>, StoreError>;

    /// A workflow type: `version`, or the latest when `None`.
    async fn get_workflow_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<WorkflowType, StoreError>;
}

const WORKFLOW_TYPE_COLUMNS: &str = "name, version, project_id, definition, created_at";

#[async_trait]
impl<B: StoreBackend> WorkflowTypeStore for B {
    async fn put_workflow_type(
        &self,
        name: &str,
        project_id: Option<ProjectId>,
        definition: &str,
    ) -> Result<Created<WorkflowType>, StoreError> {
        let value: serde_json::Value = serde_json::from_str(definition)
            .map_err(|e| StoreError::Corrupt(format!("workflow definition: {e}")))?;
        let value = &value;
        // Another replica may store a version meanwhile: the retry looks again.
        retry_lost_race(true, || async move {
            let mut tx = self.begin().await?;
            let latest: Option<WorkflowTypeRow> = tx
                .fetch_optional(
                    Statement::new(format!(
                        "SELECT {WORKFLOW_TYPE_COLUMNS} FROM workflow_types \
                         WHERE name = $1 ORDER BY version DESC LIMIT 1"
                    ))
                    .bind(name),
                )
                .await?;
            if let Some(latest) = latest.as_ref().filter(|l| l.definition.0 == *value) {
                tx.rollback().await?;
                return Ok(Created {
                    value: WorkflowType::from(latest.clone()),
                    created: false,
                });
            }
            let version = latest.map_or(1, |l| l.version + 1);
            let now = crate::now();
            tx.execute(
                Statement::new(
                    "INSERT INTO workflow_types (project_id, name, version, definition, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(project_id.map(|p| p.as_uuid()))
                .bind(name)
                .bind(version)
                .bind(value)
                .bind(now),
            )
            .await
            .map_err(|e| missing_project(e, project_id))?;
            tx.append_event(PendingEvent {
                kind: kind::WORKFLOW_TYPE_CREATED,
                subject: format!("{name}@{version}"),
                project_id,
                data: serde_json::json!({ "name": name, "version": version }),
            })
            .await?;
            tx.commit().await?;
            Ok(Created {
                value: WorkflowType {
                    name: name.to_owned(),
                    version: u32::try_from(version).unwrap_or(0),
                    project_id,
                    definition: value.to_string(),
                    created_at: now,
                },
                created: true,
            })
        })
        .await
    }

    async fn get_workflow_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<WorkflowType, StoreError> {
        self.read_optional::<WorkflowTypeRow>(
            Statement::new(format!(
                "SELECT {WORKFLOW_TYPE_COLUMNS} FROM workflow_types \
                 WHERE name = $1 AND ($2 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
            ))
            .bind(name)
            .bind(version.map(|v| i32::try_from(v).unwrap_or(i32::MAX))),
        )
        .await?
        .map(WorkflowType::from)
        .ok_or_else(|| StoreError::NotFound {
            kind: "workflow type",
            id: match version {
                Some(v) => format!("{name}@{v}"),
                None => name.to_owned(),
            },
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct WorkflowTypeRow {
    name: String,
    version: i32,
    project_id: Option<Uuid>,
    definition: sqlx::types::Json<serde_json::Value>,
    created_at: OffsetDateTime,
}

impl From<WorkflowTypeRow> for WorkflowType {
    fn from(row: WorkflowTypeRow) -> Self {
        WorkflowType {
            name: row.name,
            version: u32::try_from(row.version).unwrap_or(0),
            project_id: row.project_id.map(ProjectId::from_uuid),
            definition: row.definition.0.to_string(),
            created_at: row.created_at,
        }
    }
}
