//! The PostgreSQL backend: a connection pool shared by any number of server replicas.
//!
//! Replicas race, so every read-modify-write locks what it reads (`FOR UPDATE`), and a create
//! that loses an idempotency-key race to another replica returns the winner's resource.

use std::{
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use orchion_domain::{
    Node, NodeId, NodeStatus, Page, PageRequest, Project, ProjectFilter, ProjectId, ProjectUpdate,
};
use sqlx::{
    PgConnection,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    types::Json,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Backend, Created, Event, IdempotencyKey, NodeStateChange, PROJECT_CREATE_SCOPE, Store,
    StoreError, StoredNode, kind,
    queries::*,
    rows::{
        EventRow, NodeRow, ProjectRow, node_registered_event_data, node_status_event_data, page_of,
        project_event_data,
    },
};

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    commits: std::sync::Arc<AtomicU64>,
}

impl PostgresStore {
    /// Connects to `url` with up to `max_connections` connections and migrates the schema.
    /// Migrations take an advisory lock, so replicas starting together migrate once.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            commits: Default::default(),
        })
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn try_create_project(
        &self,
        project: &Project,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(key) = idempotency {
            if let Some(existing) = find_idempotent(&mut tx, PROJECT_CREATE_SCOPE, key).await? {
                return Ok(Some(existing));
            }
        }
        bound::insert_project(project).execute(&mut *tx).await?;
        if let Some(key) = idempotency {
            bound::insert_idempotency_key(
                PROJECT_CREATE_SCOPE,
                key,
                project.id.as_uuid(),
                project.created_at,
            )
            .execute(&mut *tx)
            .await?;
        }
        append_event(
            &mut tx,
            kind::PROJECT_CREATED,
            project.id.to_string(),
            Some(project.id),
            project_event_data(project),
        )
        .await?;
        self.commit(tx).await?;
        Ok(None)
    }
}

async fn append_event(
    conn: &mut PgConnection,
    kind: &str,
    subject: String,
    project: Option<ProjectId>,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH s AS (UPDATE event_sequence SET last = last + 1 RETURNING last) \
         INSERT INTO events (seq, at, kind, subject, project_id, data) \
         SELECT last, $1, $2, $3, $4, $5 FROM s",
    )
    .bind(crate::now())
    .bind(kind)
    .bind(subject)
    .bind(project.map(|p| p.as_uuid()))
    .bind(Json(data))
    .execute(conn)
    .await?;
    Ok(())
}

/// The resource an idempotency key already names, or `None` when the key is new.
async fn find_idempotent(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
) -> Result<Option<Uuid>, StoreError> {
    let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(FIND_IDEMPOTENCY_KEY)
        .bind(scope)
        .bind(&key.key)
        .fetch_optional(conn)
        .await?;
    bound::resolve_idempotency(row, key)
}

/// Row locks: replicas change tasks concurrently, so a task is locked before it changes, and
/// scans that take work skip rows another replica holds.
const TASK_LOCK: &str = " FOR UPDATE OF t";
const TASK_LOCK_SKIP: &str = " FOR UPDATE OF t SKIP LOCKED";

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age, skipping
/// any another replica is claiming.
async fn claim_candidates(
    conn: &mut PgConnection,
    now_us: i64,
    executors: &[String],
    limit: i64,
) -> Result<Vec<crate::jobs::TaskRow>, StoreError> {
    let sql = format!(
        "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
         WHERE t.status = 'queued' AND t.run_after_us <= $1 AND t.executor = ANY($2) \
         ORDER BY t.priority DESC, t.enqueued_us, t.id LIMIT $3{TASK_LOCK_SKIP}",
        crate::jobs::TASK_COLUMNS
    );
    Ok(sqlx::query_as::<_, crate::jobs::TaskRow>(&sql)
        .bind(now_us)
        .bind(executors)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Serializes claims of one concurrency key across replicas until the transaction ends, so two
/// replicas cannot both see room under the limit.
async fn lock_concurrency_key(conn: &mut PgConnection, key: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

crate::jobs::impl_job_store!(PostgresStore);

crate::jobs::job_helpers!(PgConnection);

fn project_not_found(id: ProjectId) -> StoreError {
    StoreError::NotFound {
        kind: "project",
        id: id.to_string(),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_project(
        &self,
        project: Project,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Project>, StoreError> {
        let existing = match self
            .try_create_project(&project, idempotency.as_ref())
            .await
        {
            // Another replica committed the same key between our lookup and our insert: the
            // second attempt finds its resource.
            Err(error) if idempotency.is_some() && crate::is_unique_violation(&error) => {
                self.try_create_project(&project, idempotency.as_ref())
                    .await?
            }
            other => other?,
        };
        match existing {
            Some(id) => Ok(Created {
                value: self.get_project(ProjectId::from_uuid(id)).await?,
                created: false,
            }),
            None => Ok(Created {
                value: project,
                created: true,
            }),
        }
    }

    async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        sqlx::query_as::<_, ProjectRow>(SELECT_PROJECT)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| project_not_found(id))?
            .try_into()
    }

    async fn list_projects(
        &self,
        filter: ProjectFilter,
        page: PageRequest,
    ) -> Result<Page<Project>, StoreError> {
        let rows = sqlx::query_as::<_, ProjectRow>(LIST_PROJECTS)
            .bind(filter.status.map(|s| s.as_str()))
            .bind(page.after.map(|c| c.0))
            .bind(i64::from(page.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        page_of(rows, page, |p: &Project| p.id.as_uuid())
    }

    async fn update_project(
        &self,
        id: ProjectId,
        update: ProjectUpdate,
    ) -> Result<Project, StoreError> {
        let mut tx = self.begin().await?;
        let current: Project = sqlx::query_as::<_, ProjectRow>(
            "SELECT id, name, description, type, status, created_at, updated_at \
             FROM projects WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| project_not_found(id))?
        .try_into()?;
        let project = current.updated(update, crate::now());
        bound::update_project(&project).execute(&mut *tx).await?;
        append_event(
            &mut tx,
            kind::PROJECT_UPDATED,
            id.to_string(),
            Some(id),
            project_event_data(&project),
        )
        .await?;
        self.commit(tx).await?;
        Ok(project)
    }

    async fn delete_project(&self, id: ProjectId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query(DELETE_PROJECT)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(project_not_found(id));
        }
        append_event(
            &mut tx,
            kind::PROJECT_DELETED,
            id.to_string(),
            Some(id),
            serde_json::json!({}),
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn register_node(&self, node: &Node, credential_hash: &[u8]) -> Result<Node, StoreError> {
        let mut tx = self.begin().await?;
        bound::upsert_node(node, credential_hash)
            .execute(&mut *tx)
            .await?;
        let stored: StoredNode =
            sqlx::query_as::<_, NodeRow>(&format!("{NODE_COLUMNS_SELECT} WHERE id = $1"))
                .bind(node.id.as_uuid())
                .fetch_one(&mut *tx)
                .await?
                .try_into()?;
        append_event(
            &mut tx,
            kind::NODE_REGISTERED,
            node.id.to_string(),
            None,
            node_registered_event_data(&stored.node),
        )
        .await?;
        self.commit(tx).await?;
        Ok(stored.node)
    }

    async fn load_nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        sqlx::query_as::<_, NodeRow>(&format!("{NODE_COLUMNS_SELECT} ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(StoredNode::try_from)
            .collect()
    }

    async fn update_node_states(&self, changes: &[NodeStateChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for change in changes {
            let updated = bound::update_node_state(change)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let to = NodeStatus::of(change.liveness, change.draining);
            if updated > 0 && to != change.from {
                append_event(
                    &mut tx,
                    kind::NODE_STATUS_CHANGED,
                    change.id.to_string(),
                    None,
                    node_status_event_data(change.id, change.from, to),
                )
                .await?;
            }
        }
        self.commit(tx).await
    }

    async fn record_heartbeats(
        &self,
        beats: &[(NodeId, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (id, at) in beats {
            sqlx::query(UPDATE_NODE_HEARTBEAT)
                .bind(id.as_uuid())
                .bind(*at)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await
    }

    async fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query(DELETE_NODE)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound {
                kind: "node",
                id: id.to_string(),
            });
        }
        append_event(
            &mut tx,
            kind::NODE_DELETED,
            id.to_string(),
            None,
            serde_json::json!({ "node_id": id.to_string() }),
        )
        .await?;
        self.commit(tx).await
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
