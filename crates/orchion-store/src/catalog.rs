//! Projects, nodes and the event log in the store, written once for both backends as
//! [`impl_catalog_store!`], expanded in each backend module beside what differs there:
//! `begin`/`commit`, the read pool, `append_event`, `find_idempotent`, and `ROW_LOCK` (how a row
//! read for a change is locked: `FOR UPDATE` on PostgreSQL, nothing on SQLite, whose one writer
//! connection serializes changes). Names in the macro resolve in the backend module.

/// `CatalogStore` for one backend. See the module documentation.
macro_rules! impl_catalog_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::CatalogStore for $store {
    async fn create_project(
        &self,
        project: Project,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created<Project>, StoreError> {
        let mut retried = false;
        loop {
            let attempt: Result<Option<uuid::Uuid>, StoreError> = async {
                let mut tx = self.begin().await?;
                if let Some(key) = &idempotency {
                    if let Some(existing) = find_idempotent(&mut tx, PROJECT_CREATE_SCOPE, key).await? {
                        return Ok(Some(existing));
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
                Ok(None)
            }
            .await;
            return match attempt {
                Ok(None) => Ok(Created { value: project, created: true }),
                Ok(Some(existing)) => Ok(Created {
                    value: self.get_project(ProjectId::from_uuid(existing)).await?,
                    created: false,
                }),
                // Another replica committed the same key meanwhile: the retry finds it.
                Err(e) if idempotency.is_some() && !retried && crate::is_unique_violation(&e) => {
                    retried = true;
                    continue;
                }
                Err(e) => Err(e),
            };
        }
    }

    async fn get_project(&self, id: ProjectId) -> Result<Project, StoreError> {
        sqlx::query_as::<_, ProjectRow>(SELECT_PROJECT)
            .bind(id.as_uuid())
            .fetch_optional(self.read_pool())
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
            .fetch_all(self.read_pool())
            .await?;
        page_of(rows, page, |p: &Project| p.id.as_uuid())
    }

    async fn update_project(
        &self,
        id: ProjectId,
        update: ProjectUpdate,
    ) -> Result<Project, StoreError> {
        let mut tx = self.begin().await?;
        let current: Project = sqlx::query_as::<_, ProjectRow>(&format!("{SELECT_PROJECT}{ROW_LOCK}"))
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
            .fetch_all(self.read_pool())
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

    async fn last_event_seq(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(LAST_EVENT_SEQ)
            .fetch_one(self.read_pool())
            .await?)
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.read_pool())
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

        }
    };
}
pub(crate) use impl_catalog_store;
