//! The work queue's three hot writes on PostgreSQL — enqueue, claim, finish — a few multi-row
//! statements per transaction.
//!
//! SQLite runs the same steps on its writer thread (`sqlite/queue.rs`); both share every
//! decision in them: which jobs are new (`enqueue_outcomes`), which tasks a node takes
//! (`select_claims`, `plan_claims`) and how reported attempts end (`judge_reports`).

use std::collections::HashMap;

use orchion_domain::{Capacity, Job, RunId, TaskId, TaskStatus};
use uuid::Uuid;

use sqlx::PgConnection;

use super::PostgresStore;
use crate::{
    AttemptReport, ClaimRequest, ClaimedTask, Completed, Created, JobIntake, StoreError,
    backend::{Statement, StoreBackend, Tx, Value},
    codec::micros,
    events::PendingEvent,
    idempotency::{
        FIND_IDEMPOTENCY_KEY, JOB_CREATE_SCOPE, insert_key, resolve_idempotency, retry_lost_race,
    },
    jobs::enqueue_results,
    plan::{
        Enqueued, MAX_CLAIM_SCAN, enqueue_outcomes, free_capacity, judge_reports, need_resources,
        plan_claims, scan_limit, select_claims,
    },
    tasks::{
        INSERT_CHUNK, QUEUED_TASKS, TASK_COLUMNS, TASKS, TaskInsert, TaskRow, finish_attempts,
        insert_tasks,
    },
};

use super::PgTx;

type Jobs = Vec<JobIntake>;

pub(super) async fn enqueue(
    store: &PostgresStore,
    jobs: Jobs,
) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let keyed = jobs.iter().any(|j| j.idempotency.is_some());
    let batch = &jobs;
    // Another replica committed one of the keys meanwhile: the retry finds it.
    let (outcomes, ids, now) = retry_lost_race(keyed, || async move {
        let now = crate::now();
        let ids: Vec<(RunId, TaskId)> = batch
            .iter()
            .map(|_| (RunId::new(), TaskId::new()))
            .collect();
        let mut tx = store.begin().await?;
        let outcomes = enqueue_in(&mut tx, batch, &ids, now).await?;
        tx.commit().await?;
        Ok((outcomes, ids, now))
    })
    .await?;
    Ok(enqueue_results(store, outcomes, jobs, ids, now).await)
}

async fn enqueue_in(
    tx: &mut PgTx,
    jobs: &Jobs,
    ids: &[(RunId, TaskId)],
    now: time::OffsetDateTime,
) -> Result<Vec<Enqueued>, StoreError> {
    // Decide each job's fate first: an earlier job under its key (stored, or earlier in this
    // batch), a key conflict, or new.
    let mut stored = HashMap::new();
    for key in jobs.iter().filter_map(|j| j.idempotency.as_ref()) {
        if !stored.contains_key(key.key.as_str()) {
            let row: Option<(Vec<u8>, Uuid)> = tx
                .fetch_optional(
                    Statement::new(FIND_IDEMPOTENCY_KEY)
                        .bind(JOB_CREATE_SCOPE)
                        .bind(key.key.as_str()),
                )
                .await?;
            stored.insert(key.key.as_str(), row);
        }
    }
    let outcomes = enqueue_outcomes(jobs, ids, |key| {
        resolve_idempotency(stored.get(key.key.as_str()).cloned().flatten(), key)
    })?;
    let new: Vec<usize> = (0..jobs.len())
        .filter(|&i| matches!(outcomes[i], Enqueued::New))
        .collect();
    // Then write the new ones, a few statements for the whole batch.
    for chunk in new.chunks(INSERT_CHUNK) {
        let mut runs = Statement::new("INSERT INTO runs (id, project_id, kind, name, created_at) ");
        runs.push_values(chunk.iter().map(|&i| {
            let job = &jobs[i].job;
            [
                Value::from(ids[i].0.as_uuid()),
                job.project_id.map(|p| p.as_uuid()).into(),
                "job".into(),
                job.name.as_str().into(),
                now.into(),
            ]
        }));
        tx.execute(runs).await?;
        let rows: Vec<TaskInsert<'_>> = chunk
            .iter()
            .map(|&i| TaskInsert {
                id: ids[i].1.as_uuid(),
                run_id: ids[i].0.as_uuid(),
                step: crate::tasks::JOB_STEP,
                job: &jobs[i].job,
                status: TaskStatus::Queued,
                outputs: None,
                error: None,
            })
            .collect();
        insert_tasks(tx, &rows, now).await?;
    }
    let mut events = Vec::with_capacity(new.len());
    for &i in &new {
        let JobIntake {
            job, idempotency, ..
        } = &jobs[i];
        let run_id = ids[i].0;
        if let Some(key) = idempotency {
            tx.execute(insert_key(JOB_CREATE_SCOPE, key, run_id.as_uuid(), now))
                .await?;
        }
        events.push(PendingEvent::job_created(run_id, job));
    }
    tx.append_events(&events).await?;
    // The requests' audit entries, in the same transaction as their jobs.
    let audited: Vec<usize> = new
        .iter()
        .copied()
        .filter(|&i| jobs[i].audit.is_some())
        .collect();
    for chunk in audited.chunks(INSERT_CHUNK) {
        let mut audit = Statement::new(
            "INSERT INTO audit (at_us, actor, role, project_id, client, method, route, resource, \
             status, request_id) ",
        );
        audit.push_values(chunk.iter().filter_map(|&i| {
            let entry = jobs[i].audit.as_ref()?;
            Some([
                Value::from(crate::codec::micros(entry.at)),
                entry.actor.as_str().into(),
                entry.role.map(orchion_domain::Role::as_str).into(),
                entry.project.map(|p| p.as_uuid()).into(),
                entry.client.as_str().into(),
                entry.method.as_str().into(),
                entry.route.as_str().into(),
                ids[i].0.to_string().into(),
                Value::from(201i32),
                entry.request_id.as_str().into(),
            ])
        }));
        tx.execute(audit).await?;
    }
    Ok(outcomes)
}

pub(super) async fn claim(
    store: &PostgresStore,
    claim: &ClaimRequest,
) -> Result<Vec<ClaimedTask>, StoreError> {
    if claim.max == 0 || claim.executors.is_empty() {
        return Ok(Vec::new());
    }
    let now = claim.now;
    let mut tx = store.begin().await?;
    // Read a little more of the queue than asked for; should placement or concurrency limits
    // leave the claim short while more of the queue is there, read further.
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
            let used = tx
                .fetch_one(
                    Statement::new(
                        "SELECT CAST(sum(t.cpu_millis) AS BIGINT), CAST(sum(t.memory_bytes) AS BIGINT), CAST(sum(t.gpus) AS BIGINT) \
                         FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.node_id = $1",
                    )
                    .bind(claim.node_id.as_uuid()),
                )
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
            let (running,): (i64,) = tx
                .fetch_one(
                    Statement::new(
                        "SELECT count(*) FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE t.concurrency_key = $1",
                    )
                    .bind(key),
                )
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
    // One statement for all the claimed tasks, their places in the queue, their leases and
    // their attempts (one round trip), binding arrays so that its text is the same for any
    // number of tasks: one prepared statement, planned once per connection, where a list of
    // placeholders made a new one for every claim size and pushed the others out of the
    // connection's statement cache.
    // A claim takes a queued task to running with one more attempt (`TaskState::next` in
    // `plan_claims`); each lease runs for the task's own heartbeat timeout. The tasks are found
    // by id alone: the candidate query locked them, so they are still queued. No column the
    // update changes is indexed, so it stays on the task's page (HOT, migration 0028).
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.task_id.as_uuid()).collect();
    let numbers: Vec<i32> = claimed
        .iter()
        .map(|c| i32::try_from(c.attempt).unwrap_or(i32::MAX))
        .collect();
    let leases: Vec<i64> = claimed.iter().map(|c| micros(c.lease_expires_at)).collect();
    let executors: Vec<&str> = claimed.iter().map(|c| c.executor.as_str()).collect();
    let conn: &mut PgConnection = &mut tx;
    let (updated,): (i64,) = sqlx::query_as(
        "WITH c AS (SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int8[]) \
             AS c (task_id, number, executor, until)), \
         u AS (UPDATE tasks SET status = 'running', attempts = attempts + 1, \
             started_at = COALESCE(started_at, $6) WHERE id = ANY($1) RETURNING 1), \
         q AS (DELETE FROM task_queue WHERE task_id = ANY($1)), \
         l AS (INSERT INTO task_leases (task_id, node_id, executor, lease_expires_us) \
             SELECT task_id, $5, executor, until FROM c), \
         a AS (INSERT INTO attempts (task_id, number, node_id, status, started_at) \
             SELECT task_id, number, $5, 'running', $6 FROM c) \
         SELECT count(*) FROM u",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&executors)
    .bind(&leases)
    .bind(claim.node_id.as_uuid())
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    if updated != claimed.len() as i64 {
        return Err(StoreError::Conflict(format!(
            "claimed {} tasks but {updated} were still queued",
            claimed.len()
        )));
    }
    tx.append_events(&events).await?;
    tx.commit().await?;
    Ok(claimed)
}

pub(super) async fn finish(
    store: &PostgresStore,
    reports: Vec<AttemptReport>,
) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin().await?;
    let now = crate::now();
    let ids: Vec<Uuid> = reports.iter().map(|r| r.task.as_uuid()).collect();
    let tasks = task_rows(&mut tx, &ids).await?;
    let (results, plans) = judge_reports(&tasks, reports, now)?;
    finish_attempts(&mut tx, &plans).await?;
    let events: Vec<PendingEvent> = plans.into_iter().map(|p| p.event).collect();
    tx.append_events(&events).await?;
    tx.commit().await?;
    Ok(results)
}

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age, skipping
/// any another replica is claiming.
async fn claim_candidates(
    tx: &mut PgTx,
    now_us: i64,
    executors: &[String],
    limit: i64,
) -> Result<Vec<TaskRow>, StoreError> {
    // Read the queue in the queue index's order and stop at the limit, whatever the planner's
    // statistics say. A queue's size swings faster than autovacuum analyzes: planned with
    // statistics from when the queue was empty, this query sorted the whole backlog on every
    // claim (260 ms with 40,000 queued) until the next ANALYZE, up to a minute later.
    let conn: &mut PgConnection = tx;
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *conn)
        .await?;
    // Only the tasks are locked (locking the places in the queue too cost a write of each). A
    // task another replica claimed, cancelled or put back with a backoff meanwhile is read
    // locked as it is now, and the conditions on `t` leave it out.
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM {QUEUED_TASKS} \
         WHERE q.run_after_us <= $1 AND q.executor = ANY($2) \
         AND t.status = 'queued' AND t.run_after_us <= $1 \
         ORDER BY q.priority DESC, q.enqueued_us, q.task_id LIMIT $3 FOR UPDATE OF t SKIP LOCKED"
    );
    Ok(sqlx::query_as::<_, TaskRow>(&sql)
        .bind(now_us)
        .bind(executors)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Serializes claims of one concurrency key across replicas until the transaction ends, so two
/// replicas cannot both see room under the limit.
async fn lock_concurrency_key(tx: &mut PgTx, key: &str) -> Result<(), StoreError> {
    tx.execute(Statement::new("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(key))
        .await?;
    Ok(())
}

/// The tasks of `ids` that exist, by id, locked for a change (in id order, so two transactions
/// cannot deadlock on them).
async fn task_rows(tx: &mut PgTx, ids: &[Uuid]) -> Result<HashMap<Uuid, TaskRow>, StoreError> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM {TASKS} WHERE t.id = ANY($1) ORDER BY t.id{}",
        PgTx::TASK_LOCK
    );
    let conn: &mut PgConnection = tx;
    let rows: Vec<TaskRow> = sqlx::query_as(&sql).bind(ids).fetch_all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}
