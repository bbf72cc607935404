//! The work queue's three hot writes on PostgreSQL — enqueue, claim, finish — in SQL through
//! sqlx, a few multi-row statements per transaction.
//!
//! SQLite runs the same steps on its writer thread (`sqlite/queue.rs`); both share every
//! decision in them: which jobs are new (`enqueue_outcomes`), which tasks a node takes
//! (`select_claims`, `plan_claims`) and how reported attempts end (`judge_reports`).

use std::collections::HashMap;

use orchion_domain::{Capacity, Job, NewJob, RunId, TaskId, TaskStatus};
use uuid::Uuid;

use sqlx::PgConnection;

use super::{
    PostgresStore, TASK_LOCK, TASK_LOCK_SKIP, append_events, finish_attempts, insert_tasks,
};
use crate::{
    AttemptReport, ClaimRequest, ClaimedTask, Completed, Created, IdempotencyKey, JOB_CREATE_SCOPE,
    StoreError, is_unique_violation,
    jobs::{
        Enqueued, INSERT_CHUNK, MAX_CLAIM_SCAN, PendingEvent, TaskInsert, enqueue_outcomes,
        enqueue_results, free_capacity, judge_reports, micros, need_resources, plan_claims,
        scan_limit, select_claims,
    },
    queries::{
        FIND_IDEMPOTENCY_KEY,
        bound::{insert_idempotency_key, resolve_idempotency},
    },
};

impl PostgresStore {
    pub(crate) async fn enqueue(
        &self,
        jobs: Vec<(NewJob, Option<IdempotencyKey>)>,
    ) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut retried = false;
        loop {
            let now = crate::now();
            let ids: Vec<(RunId, TaskId)> =
                jobs.iter().map(|_| (RunId::new(), TaskId::new())).collect();
            let attempt: Result<Vec<Enqueued>, StoreError> = async {
                let mut tx = self.begin().await?;
                // Decide each job's fate first: an earlier job under its key (stored, or
                // earlier in this batch), a key conflict, or new.
                let mut stored = HashMap::new();
                for key in jobs.iter().filter_map(|(_, k)| k.as_ref()) {
                    if !stored.contains_key(key.key.as_str()) {
                        let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(FIND_IDEMPOTENCY_KEY)
                            .bind(JOB_CREATE_SCOPE)
                            .bind(&key.key)
                            .fetch_optional(&mut *tx)
                            .await?;
                        stored.insert(key.key.as_str(), row);
                    }
                }
                let outcomes = enqueue_outcomes(&jobs, &ids, |key| {
                    resolve_idempotency(stored.get(key.key.as_str()).cloned().flatten(), key)
                })?;
                let new: Vec<usize> = (0..jobs.len())
                    .filter(|&i| matches!(outcomes[i], Enqueued::New))
                    .collect();
                // Then write the new ones, a few statements for the whole batch.
                for chunk in new.chunks(INSERT_CHUNK) {
                    let mut runs = sqlx::QueryBuilder::new(
                        "INSERT INTO runs (id, project_id, kind, name, created_at) ",
                    );
                    runs.push_values(chunk, |mut row, &i| {
                        let (job, _) = &jobs[i];
                        row.push_bind(ids[i].0.as_uuid())
                            .push_bind(job.project_id.map(|p| p.as_uuid()))
                            .push_bind("job")
                            .push_bind(job.name.as_str())
                            .push_bind(now);
                    });
                    runs.build().execute(&mut *tx).await?;
                    let rows: Vec<TaskInsert<'_>> = chunk
                        .iter()
                        .map(|&i| TaskInsert {
                            id: ids[i].1.as_uuid(),
                            run_id: ids[i].0.as_uuid(),
                            step: "job",
                            job: &jobs[i].0,
                            status: TaskStatus::Queued,
                            outputs: None,
                            error: None,
                        })
                        .collect();
                    insert_tasks(&mut tx, &rows, now).await?;
                }
                let mut events = Vec::with_capacity(new.len());
                for &i in &new {
                    let (job, idempotency) = &jobs[i];
                    let run_id = ids[i].0;
                    if let Some(key) = idempotency {
                        insert_idempotency_key(JOB_CREATE_SCOPE, key, run_id.as_uuid(), now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    events.push(PendingEvent::job_created(run_id, job));
                }
                append_events(&mut tx, &events).await?;
                self.commit(tx).await?;
                Ok(outcomes)
            }
            .await;
            let outcomes = match attempt {
                Ok(outcomes) => outcomes,
                // Another replica committed one of the keys meanwhile: the retry finds it.
                Err(e)
                    if !retried
                        && jobs.iter().any(|(_, k)| k.is_some())
                        && is_unique_violation(&e) =>
                {
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return Ok(enqueue_results(self, outcomes, jobs, ids, now).await);
        }
    }

    pub(crate) async fn claim(&self, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError> {
        if claim.max == 0 || claim.executors.is_empty() {
            return Ok(Vec::new());
        }
        let now = claim.now;
        let mut tx = self.begin().await?;
        // Read a little more of the queue than asked for; should placement or concurrency
        // limits leave the claim short while more of the queue is there, read further.
        let mut scan = claim.max.saturating_add(8);
        let mut candidates =
            claim_candidates(&mut tx, micros(now), &claim.executors, scan_limit(scan)).await?;
        if candidates.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        // What the node's running tasks use, read only once a candidate needs resources.
        let mut free: Option<Capacity> = None;
        let mut running_per_key: HashMap<String, u32> = HashMap::new();
        let chosen = loop {
            if free.is_none() && need_resources(&candidates) {
                let used = sqlx::query_as(
                    "SELECT CAST(sum(cpu_millis) AS BIGINT), CAST(sum(memory_bytes) AS BIGINT), CAST(sum(gpus) AS BIGINT) FROM tasks WHERE status = 'running' AND node_id = $1",
                )
                .bind(claim.node_id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
                free = Some(free_capacity(claim.capacity, used));
            }
            let mut keys: Vec<&str> = candidates
                .iter()
                .filter_map(|c| c.concurrency_key.as_deref())
                .filter(|k| !running_per_key.contains_key(*k))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                lock_concurrency_key(&mut tx, key).await?;
                let (running,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM tasks WHERE status = 'running' AND concurrency_key = $1",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                running_per_key.insert(key.to_owned(), u32::try_from(running).unwrap_or(u32::MAX));
            }
            let chosen = select_claims(
                &candidates,
                &claim.labels,
                free.unwrap_or(claim.capacity),
                running_per_key.clone(),
                claim.max,
            );
            if chosen.len() >= claim.max || candidates.len() < scan || scan >= MAX_CLAIM_SCAN {
                break chosen;
            }
            scan = scan.saturating_mul(4).min(MAX_CLAIM_SCAN);
            candidates =
                claim_candidates(&mut tx, micros(now), &claim.executors, scan_limit(scan)).await?;
        };
        let (claimed, events) = plan_claims(&candidates, &chosen, claim)?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(claimed);
        }
        // One statement for all the claimed tasks, one for their attempts. A claim takes a
        // queued task to running with one more attempt (`TaskState::next` above); each
        // lease runs for the task's own heartbeat timeout. The tasks are found by id alone:
        // the candidate query locked them, so they are still queued, and a `status`
        // condition here let a planner with stale statistics scan the whole queue through a
        // partial index instead of looking the ids up.
        let mut update = sqlx::QueryBuilder::new(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, node_id = ",
        );
        update
            .push_bind(claim.node_id.as_uuid())
            .push(", lease_expires_us = ")
            .push_bind(micros(now))
            .push(" + heartbeat_ms * 1000, started_at = COALESCE(started_at, ")
            .push_bind(now)
            .push(") WHERE id IN (");
        let mut ids = update.separated(", ");
        for c in &claimed {
            ids.push_bind(c.task_id.as_uuid());
        }
        update.push(")");
        let updated = update.build().execute(&mut *tx).await?.rows_affected();
        if updated != claimed.len() as u64 {
            return Err(StoreError::Conflict(format!(
                "claimed {} tasks but {updated} were still queued",
                claimed.len()
            )));
        }
        let mut attempts = sqlx::QueryBuilder::new(
            "INSERT INTO attempts (task_id, number, node_id, status, started_at) ",
        );
        attempts.push_values(&claimed, |mut row, c| {
            row.push_bind(c.task_id.as_uuid())
                .push_bind(i32::try_from(c.attempt).unwrap_or(i32::MAX))
                .push_bind(claim.node_id.as_uuid())
                .push_bind("running")
                .push_bind(now);
        });
        attempts.build().execute(&mut *tx).await?;
        append_events(&mut tx, &events).await?;
        self.commit(tx).await?;
        Ok(claimed)
    }

    pub(crate) async fn finish(
        &self,
        reports: Vec<AttemptReport>,
    ) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let now = crate::now();
        let ids: Vec<Uuid> = reports.iter().map(|r| r.task.as_uuid()).collect();
        let tasks = task_rows(&mut tx, &ids).await?;
        let (results, plans) = judge_reports(&tasks, reports, now)?;
        finish_attempts(&mut tx, &plans).await?;
        let events: Vec<PendingEvent> = plans.into_iter().map(|p| p.event).collect();
        append_events(&mut tx, &events).await?;
        self.commit(tx).await?;
        Ok(results)
    }
}

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age, skipping
/// any another replica is claiming.
async fn claim_candidates(
    conn: &mut PgConnection,
    now_us: i64,
    executors: &[String],
    limit: i64,
) -> Result<Vec<crate::jobs::TaskRow>, StoreError> {
    // Read the queue in the queue index's order and stop at the limit, whatever the planner's
    // statistics say. A queue's size swings faster than autovacuum analyzes: planned with
    // statistics from when the queue was empty, this query sorted the whole backlog on every
    // claim (260 ms with 40,000 queued) until the next ANALYZE, up to a minute later.
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *conn)
        .await?;
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

/// The tasks of `ids` that exist, by id, locked for a change where the backend locks
/// rows (in id order, so two transactions cannot deadlock on them).
async fn task_rows(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> Result<std::collections::HashMap<uuid::Uuid, crate::jobs::TaskRow>, crate::StoreError> {
    let mut rows = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let mut query = sqlx::QueryBuilder::new(format!(
            "SELECT {} FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id IN (",
            crate::jobs::TASK_COLUMNS
        ));
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        query.push(format!(") ORDER BY t.id{TASK_LOCK}"));
        for row in query
            .build_query_as::<crate::jobs::TaskRow>()
            .fetch_all(&mut *conn)
            .await?
        {
            rows.insert(row.id, row);
        }
    }
    Ok(rows)
}
