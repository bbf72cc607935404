//! The SQLite backend: one file in WAL mode, one writer connection whose transactions start with
//! `BEGIN IMMEDIATE` (so a writer never fails midway on a lock), and a pool of read-only
//! connections that read concurrently with it.
//!
//! `synchronous=NORMAL`: a commit is in the WAL before the call returns, so a killed process
//! loses nothing; an OS crash or power cut may lose the last commits.

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
    SqliteConnection,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
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

/// A store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    commits: std::sync::Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url` (`sqlite:PATH`), with up to
    /// `readers` concurrent read connections.
    pub async fn open(url: &str, readers: u32) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::InvalidUrl(
                "an in-memory SQLite database is not durable; name a file, e.g. sqlite:orchion.db"
                    .into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            commits: Default::default(),
        })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.readers
    }

    async fn commit(&self, tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn append_event(
    conn: &mut SqliteConnection,
    kind: &str,
    subject: String,
    project: Option<ProjectId>,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (at, kind, subject, project_id, data) VALUES ($1, $2, $3, $4, $5)",
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
    conn: &mut SqliteConnection,
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

/// Row locks: none on SQLite, whose one writer connection already serializes every change.
const TASK_LOCK: &str = "";
const TASK_LOCK_SKIP: &str = "";

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age.
async fn claim_candidates(
    conn: &mut SqliteConnection,
    now_us: i64,
    executors: &[String],
    limit: i64,
) -> Result<Vec<crate::jobs::TaskRow>, StoreError> {
    let sql = format!(
        "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id \
         WHERE t.status = 'queued' AND t.run_after_us <= $1 \
         AND t.executor IN (SELECT value FROM json_each($2)) \
         ORDER BY t.priority DESC, t.enqueued_us, t.id LIMIT $3",
        crate::jobs::TASK_COLUMNS
    );
    Ok(sqlx::query_as::<_, crate::jobs::TaskRow>(&sql)
        .bind(now_us)
        .bind(Json(executors))
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Nothing to lock: the single writer serializes claims.
async fn lock_concurrency_key(_conn: &mut SqliteConnection, _key: &str) -> Result<(), StoreError> {
    Ok(())
}

crate::jobs::impl_job_store!(SqliteStore);

crate::jobs::job_helpers!(SqliteConnection);

fn project_not_found(id: ProjectId) -> StoreError {
    StoreError::NotFound {
        kind: "project",
        id: id.to_string(),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn create_project(
        &self,
        project: Project,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Project>, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(key) = &idempotency {
            if let Some(existing) = find_idempotent(&mut tx, PROJECT_CREATE_SCOPE, key).await? {
                tx.rollback().await?;
                let value = self.get_project(ProjectId::from_uuid(existing)).await?;
                return Ok(Created {
                    value,
                    created: false,
                });
            }
        }
        bound::insert_project(&project).execute(&mut *tx).await?;
        if let Some(key) = &idempotency {
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
            project_event_data(&project),
        )
        .await?;
        self.commit(tx).await?;
        Ok(Created {
            value: project,
            created: true,
        })
    }

    async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        sqlx::query_as::<_, ProjectRow>(SELECT_PROJECT)
            .bind(id.as_uuid())
            .fetch_optional(&self.readers)
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
            .fetch_all(&self.readers)
            .await?;
        page_of(rows, page, |p: &Project| p.id.as_uuid())
    }

    async fn update_project(
        &self,
        id: ProjectId,
        update: ProjectUpdate,
    ) -> Result<Project, StoreError> {
        let mut tx = self.begin().await?;
        let current: Project = sqlx::query_as::<_, ProjectRow>(SELECT_PROJECT)
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
            .fetch_all(&self.readers)
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
            .fetch_all(&self.readers)
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}
