//! The work queue's hot writes on SQLite — enqueue, claim, finish — each one transaction on the
//! writer thread (`writer.rs`), with prepared statements run row by row.
//!
//! They take the same steps as the sqlx versions PostgreSQL runs (`postgres/queue.rs`) and share
//! every decision with them: which jobs are new (`enqueue_outcomes`), which tasks a node takes
//! (`select_claims`, `plan_claims`) and how reported attempts end (`judge_reports`). Only the
//! statements differ.

use std::collections::HashMap;

use orchion_domain::{Capacity, Job, RunId, TaskId, TaskStatus};
use rusqlite::{
    OptionalExtension, Row, Transaction, params,
    types::{ToSqlOutput, Value as SqlValue, ValueRef},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use super::{SqliteStore, writer::database};
use crate::{
    AttemptReport, ClaimRequest, ClaimedTask, Completed, Created, JobIntake, StoreError,
    backend::Value,
    codec::micros,
    events::PendingEvent,
    idempotency::{
        FIND_IDEMPOTENCY_KEY, INSERT_IDEMPOTENCY_KEY, JOB_CREATE_SCOPE, resolve_idempotency,
    },
    jobs::enqueue_results,
    plan::{
        Enqueued, FinishPlan, MAX_CLAIM_SCAN, enqueue_outcomes, judge_reports, need_resources,
        plan_claims, scan_limit, select_claims,
    },
    tasks::{
        QUEUE_INSERT, TASK_COLUMNS, TASK_INSERT_WIDTH, TASKS, TaskInsert, TaskRow, task_insert,
    },
};

type Jobs = Vec<JobIntake>;

/// A created job's audit entry, in its own transaction.
const INSERT_AUDIT: &str = "INSERT INTO audit (at_us, actor, role, project_id, client, method, \
                            route, resource, status, request_id) \
                            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// The status a created job is answered with.
const CREATED: i32 = 201;

pub(super) async fn enqueue(
    store: &SqliteStore,
    jobs: Jobs,
) -> Result<Vec<Result<Created<Job>, StoreError>>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let now = crate::now();
    let ids: Vec<(RunId, TaskId)> = jobs.iter().map(|_| (RunId::new(), TaskId::new())).collect();
    let (outcomes, jobs, ids) = store
        .queue
        .write(move |tx| {
            let outcomes = enqueue_in(tx, &jobs, &ids, now)?;
            let wrote = outcomes.iter().any(|o| matches!(o, Enqueued::New));
            Ok(((outcomes, jobs, ids), wrote))
        })
        .await?;
    Ok(enqueue_results(store, outcomes, jobs, ids, now).await)
}

pub(super) async fn claim(
    store: &SqliteStore,
    claim: &ClaimRequest,
) -> Result<Vec<ClaimedTask>, StoreError> {
    if claim.max == 0 || claim.executors.is_empty() {
        return Ok(Vec::new());
    }
    let claim = claim.clone();
    store
        .queue
        .write(move |tx| {
            let claimed = claim_in(tx, &claim)?;
            let wrote = !claimed.is_empty();
            Ok((claimed, wrote))
        })
        .await
}

pub(super) async fn finish(
    store: &SqliteStore,
    reports: Vec<AttemptReport>,
) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    store
        .queue
        .write(move |tx| {
            let results = finish_in(tx, reports)?;
            let wrote = results.iter().any(Result::is_ok);
            Ok((results, wrote))
        })
        .await
}

fn enqueue_in(
    tx: &Transaction<'_>,
    jobs: &Jobs,
    ids: &[(RunId, TaskId)],
    now: OffsetDateTime,
) -> Result<Vec<Enqueued>, StoreError> {
    let outcomes = {
        let mut find = tx.prepare_cached(FIND_IDEMPOTENCY_KEY).map_err(database)?;
        enqueue_outcomes(jobs, ids, |key| {
            let row = find
                .query_row(params![JOB_CREATE_SCOPE, key.key], |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, uuid(row, 1)?))
                })
                .optional()
                .map_err(database)?;
            resolve_idempotency(row, key)
        })?
    };
    let at = timestamp(now)?;
    let mut runs = tx
        .prepare_cached(
            "INSERT INTO runs (id, project_id, kind, name, created_at) VALUES (?1, ?2, 'job', ?3, ?4)",
        )
        .map_err(database)?;
    let mut tasks = tx
        .prepare_cached(&format!(
            "{}VALUES ({})",
            task_insert(),
            (1..=TASK_INSERT_WIDTH)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .map_err(database)?;
    let mut queue = tx
        .prepare_cached(&format!("{QUEUE_INSERT}tasks WHERE id = ?1"))
        .map_err(database)?;
    let mut keys = tx
        .prepare_cached(INSERT_IDEMPOTENCY_KEY)
        .map_err(database)?;
    let mut audit = tx.prepare_cached(INSERT_AUDIT).map_err(database)?;
    let mut events = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        if !matches!(outcome, Enqueued::New) {
            continue;
        }
        let (
            JobIntake {
                job,
                idempotency,
                audit: entry,
            },
            (run_id, task_id),
        ) = (&jobs[i], ids[i]);
        runs.execute(params![
            run_id.as_uuid().as_bytes(),
            job.project_id.map(|p| *p.as_uuid().as_bytes()),
            job.name,
            at,
        ])
        .map_err(database)?;
        let task = TaskInsert {
            id: task_id.as_uuid(),
            run_id: run_id.as_uuid(),
            step: crate::tasks::JOB_STEP,
            job,
            status: TaskStatus::Queued,
            outputs: None,
            error: None,
        };
        tasks
            .execute(rusqlite::params_from_iter(task.row(now)))
            .map_err(database)?;
        queue
            .execute(params![task_id.as_uuid().as_bytes()])
            .map_err(database)?;
        if let Some(key) = idempotency {
            keys.execute(params![
                JOB_CREATE_SCOPE,
                key.key,
                key.request_hash,
                run_id.as_uuid().as_bytes(),
                at,
            ])
            .map_err(database)?;
        }
        if let Some(entry) = entry {
            audit
                .execute(params![
                    micros(entry.at),
                    entry.actor,
                    entry.role.map(orchion_domain::Role::as_str),
                    entry.project.map(|p| *p.as_uuid().as_bytes()),
                    entry.client,
                    entry.method,
                    entry.route,
                    run_id.to_string(),
                    CREATED,
                    entry.request_id,
                ])
                .map_err(database)?;
        }
        events.push(PendingEvent::job_created(run_id, job));
    }
    append_events(tx, &events, now)?;
    Ok(outcomes)
}

fn claim_in(tx: &Transaction<'_>, claim: &ClaimRequest) -> Result<Vec<ClaimedTask>, StoreError> {
    let now_us = micros(claim.now);
    let executors =
        serde_json::to_string(&claim.executors).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // Read a little more of the queue than asked for; should placement or concurrency limits
    // leave the claim short while more of the queue is there, read further.
    let mut scan = claim.max.saturating_add(8);
    let mut candidates = candidates(tx, now_us, &executors, scan)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // What the node's running tasks use, read only once a candidate needs resources.
    let mut free: Option<Capacity> = None;
    let mut running_per_key: HashMap<String, u32> = HashMap::new();
    let chosen = loop {
        if free.is_none() && need_resources(&candidates) {
            free = Some(free_capacity(tx, claim)?);
        }
        for task in &candidates {
            let Some(key) = task.concurrency_key.as_deref() else {
                continue;
            };
            if !running_per_key.contains_key(key) {
                let running: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE t.concurrency_key = ?1",
                    )
                    .and_then(|mut count| count.query_row([key], |row| row.get(0)))
                    .map_err(database)?;
                running_per_key.insert(key.to_owned(), u32::try_from(running).unwrap_or(u32::MAX));
            }
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
        candidates = self::candidates(tx, now_us, &executors, scan)?;
    };
    let (claimed, events) = plan_claims(&candidates, &chosen, claim)?;
    let node = claim.node_id.as_uuid();
    let started_at = timestamp(claim.now)?;
    let mut update = tx
        .prepare_cached(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, \
             started_at = COALESCE(started_at, ?1) WHERE id = ?2 AND status = 'queued'",
        )
        .map_err(database)?;
    let mut dequeue = tx
        .prepare_cached("DELETE FROM task_queue WHERE task_id = ?1")
        .map_err(database)?;
    let mut lease = tx
        .prepare_cached(
            "INSERT INTO task_leases (task_id, node_id, executor, lease_expires_us) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(database)?;
    let mut attempt = tx
        .prepare_cached(
            "INSERT INTO attempts (task_id, number, node_id, status, started_at) \
             VALUES (?1, ?2, ?3, 'running', ?4)",
        )
        .map_err(database)?;
    for task in &claimed {
        let id = task.task_id.as_uuid();
        let updated = update
            .execute(params![started_at, id.as_bytes()])
            .map_err(database)?;
        if updated != 1 {
            return Err(StoreError::Conflict(format!(
                "task {} was claimed but is no longer queued",
                task.task_id
            )));
        }
        dequeue.execute([id.as_bytes()]).map_err(database)?;
        lease
            .execute(params![
                id.as_bytes(),
                node.as_bytes(),
                task.executor,
                micros(task.lease_expires_at)
            ])
            .map_err(database)?;
        attempt
            .execute(params![
                id.as_bytes(),
                i64::from(task.attempt),
                node.as_bytes(),
                started_at
            ])
            .map_err(database)?;
    }
    append_events(tx, &events, claim.now)?;
    Ok(claimed)
}

/// Queued tasks due by `now_us` that one of `executors` runs, by priority then age.
fn candidates(
    tx: &Transaction<'_>,
    now_us: i64,
    executors: &str,
    limit: usize,
) -> Result<Vec<TaskRow>, StoreError> {
    // The queue's index reads it in order and stops at the limit, whatever the planner makes
    // of a table without statistics.
    let mut select = tx
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM task_queue q INDEXED BY task_queue_order \
             JOIN tasks t ON t.id = q.task_id JOIN runs r ON r.id = t.run_id \
             LEFT JOIN task_leases l ON l.task_id = t.id \
             WHERE q.run_after_us <= ?1 AND q.executor IN (SELECT value FROM json_each(?2)) \
             ORDER BY q.priority DESC, q.enqueued_us, q.task_id LIMIT ?3"
        ))
        .map_err(database)?;
    let rows = select
        .query_map(params![now_us, executors, scan_limit(limit)], task_row)
        .map_err(database)?;
    rows.collect::<Result<_, _>>().map_err(database)
}

/// What of the node's capacity its running tasks leave free.
fn free_capacity(tx: &Transaction<'_>, claim: &ClaimRequest) -> Result<Capacity, StoreError> {
    let used = tx
        .prepare_cached(
            "SELECT sum(t.cpu_millis), sum(t.memory_bytes), sum(t.gpus) \
             FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.node_id = ?1",
        )
        .and_then(|mut used| {
            used.query_row([claim.node_id.as_uuid().as_bytes()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
        })
        .map_err(database)?;
    Ok(crate::plan::free_capacity(claim.capacity, used))
}

fn finish_in(
    tx: &Transaction<'_>,
    reports: Vec<AttemptReport>,
) -> Result<Vec<Result<Completed, StoreError>>, StoreError> {
    let now = crate::now();
    let mut tasks = HashMap::with_capacity(reports.len());
    {
        let mut select = tx
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM {TASKS} WHERE t.id = ?1"
            ))
            .map_err(database)?;
        for report in &reports {
            let id = report.task.as_uuid();
            if let Some(task) = select
                .query_row([id.as_bytes()], task_row)
                .optional()
                .map_err(database)?
            {
                tasks.insert(id, task);
            }
        }
    }
    let (results, plans) = judge_reports(&tasks, reports, now)?;
    finish_attempts(tx, &plans)?;
    let events: Vec<PendingEvent> = plans.into_iter().map(|p| p.event).collect();
    append_events(tx, &events, now)?;
    Ok(results)
}

/// Ends attempts as their plans say. The caller has checked each attempt is the current one.
fn finish_attempts(tx: &Transaction<'_>, plans: &[FinishPlan]) -> Result<(), StoreError> {
    let mut attempt = tx
        .prepare_cached(
            "UPDATE attempts SET status = ?3, finished_at = ?4, exit_code = ?5, error = ?6 \
             WHERE task_id = ?1 AND number = ?2",
        )
        .map_err(database)?;
    let mut task = tx
        .prepare_cached(
            "UPDATE tasks SET status = ?2, cancel_requested = ?3, attempt_budget = ?4, \
             run_after_us = ?5, output = COALESCE(?6, output), \
             outputs = COALESCE(?7, outputs), error = ?8, exit_code = ?9, finished_at = ?10 WHERE id = ?1",
        )
        .map_err(database)?;
    let mut end_lease = tx
        .prepare_cached("DELETE FROM task_leases WHERE task_id = ?1")
        .map_err(database)?;
    let mut queue = tx
        .prepare_cached(&format!("{QUEUE_INSERT}tasks WHERE id = ?1"))
        .map_err(database)?;
    for p in plans {
        let id = p.task_id.as_bytes();
        attempt
            .execute(params![
                id,
                p.number,
                p.attempt_status,
                timestamp(p.now)?,
                p.exit_code,
                p.error
            ])
            .map_err(database)?;
        task.execute(params![
            id,
            p.status.as_str(),
            p.cancel_requested,
            p.attempt_budget,
            p.run_after_us,
            p.output,
            p.outputs,
            p.error,
            p.exit_code,
            p.finished_at.map(timestamp).transpose()?,
        ])
        .map_err(database)?;
        end_lease.execute([id]).map_err(database)?;
        if p.status == TaskStatus::Queued {
            queue.execute([id]).map_err(database)?;
        }
    }
    Ok(())
}

/// Appends a transaction's events at its end, in order.
fn append_events(
    tx: &Transaction<'_>,
    events: &[PendingEvent],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let at = timestamp(now)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (at, kind, subject, project_id, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(database)?;
    for event in events {
        insert
            .execute(params![
                at,
                event.kind,
                event.subject,
                event.project_id.map(|p| *p.as_uuid().as_bytes()),
                event.data.to_string(),
            ])
            .map_err(database)?;
    }
    Ok(())
}

/// A statement argument bound as sqlx binds it on SQLite (`sqlite.rs`, `arguments`): uuids as
/// 16-byte blobs, times as RFC 3339 text, JSON as text, booleans as integers.
impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let text = |text: String| ToSqlOutput::Owned(SqlValue::Text(text));
        Ok(match self {
            Value::Bool(v) => ToSqlOutput::from(*v),
            Value::I32(v) => v.map_or(ToSqlOutput::Owned(SqlValue::Null), ToSqlOutput::from),
            Value::I64(v) => v.map_or(ToSqlOutput::Owned(SqlValue::Null), ToSqlOutput::from),
            Value::Text(v) => match v {
                Some(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            Value::Bytes(v) => match v {
                Some(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            Value::Uuid(v) => match v {
                Some(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v.as_bytes())),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            Value::Time(v) => match v {
                Some(at) => text(
                    at.format(&Rfc3339)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                ),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            Value::Json(v) => text(v.to_string()),
        })
    }
}

/// A time as sqlx stores it in SQLite: RFC 3339 text.
fn timestamp(at: OffsetDateTime) -> Result<String, StoreError> {
    at.format(&Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("cannot format {at}: {e}")))
}

fn uuid(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let bytes = row.get_ref(i)?.as_blob()?;
    Uuid::from_slice(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn time_at(row: &Row<'_>, i: usize) -> rusqlite::Result<OffsetDateTime> {
    let text = row.get_ref(i)?.as_str()?;
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Column `i` read by `read`, or `None` when it is NULL.
fn optional<T>(
    row: &Row<'_>,
    i: usize,
    read: fn(&Row<'_>, usize) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    match row.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => read(row, i).map(Some),
    }
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    serde_json::from_str(row.get_ref(i)?.as_str()?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A row of [`TASK_COLUMNS`].
fn task_row(row: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: uuid(row, 0)?,
        run_id: uuid(row, 1)?,
        name: row.get(2)?,
        project_id: optional(row, 3, uuid)?,
        status: row.get(4)?,
        executor: row.get(5)?,
        spec: row.get(6)?,
        priority: row.get(7)?,
        labels: sqlx::types::Json(json(row, 8)?),
        cpu_millis: row.get(9)?,
        memory_bytes: row.get(10)?,
        gpus: row.get(11)?,
        concurrency_key: row.get(12)?,
        concurrency_limit: row.get(13)?,
        retry: sqlx::types::Json(json(row, 14)?),
        schedule_to_start_ms: row.get(15)?,
        start_to_close_ms: row.get(16)?,
        heartbeat_ms: row.get(17)?,
        attempts: row.get(18)?,
        attempt_budget: row.get(19)?,
        cancel_requested: row.get(20)?,
        run_after_us: row.get(21)?,
        enqueued_us: row.get(22)?,
        node_id: optional(row, 23, uuid)?,
        lease_expires_us: row.get(24)?,
        output: row.get(25)?,
        error: row.get(26)?,
        exit_code: row.get(27)?,
        log_bytes: row.get(28)?,
        log_seq: row.get(29)?,
        created_at: time_at(row, 30)?,
        started_at: optional(row, 31, time_at)?,
        finished_at: optional(row, 32, time_at)?,
        outputs: row.get(33)?,
        kind: row.get(34)?,
        step: row.get(35)?,
        traceparent: row.get(36)?,
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use orchion_domain::{Concurrency, NewJob, Placement, RetryPolicy, Timeouts};

    use super::*;
    use crate::tasks::select_tasks;

    /// Every column set, none at its default, so a value read into the wrong field shows.
    fn job() -> NewJob {
        NewJob {
            name: "every column".into(),
            project_id: None,
            executor: "shell".into(),
            spec: r#"{"command":"true"}"#.into(),
            priority: 7,
            retry: RetryPolicy {
                max_attempts: 4,
                initial_interval: Duration::from_secs(3),
                ..RetryPolicy::default()
            },
            timeouts: Timeouts {
                schedule_to_start: Some(Duration::from_secs(60)),
                start_to_close: Some(Duration::from_secs(30)),
                heartbeat: Duration::from_secs(9),
            },
            placement: Placement {
                labels: BTreeMap::from([("zone".to_owned(), "b".to_owned())]),
                resources: Capacity::new(1500, 1 << 30, 1).unwrap(),
            },
            concurrency: Some(Concurrency {
                key: "db".into(),
                limit: 2,
            }),
            run_at: None,
            trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    /// The hot path writes and reads task rows with rusqlite (`TaskInsert::row` bound by
    /// `ToSql for Value`, `task_row`), everything else with sqlx (`TaskRow: FromRow`): the two
    /// must agree column for column.
    #[tokio::test]
    async fn rusqlite_and_sqlx_read_a_task_row_alike() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url, 2).await.unwrap();
        let created = enqueue(
            &store,
            vec![JobIntake {
                job: job(),
                idempotency: None,
                audit: None,
            }],
        )
        .await
        .unwrap();
        let task = created[0].as_ref().unwrap().value.task_id.as_uuid();

        let by_rusqlite = store
            .queue
            .write(move |tx| {
                let sql = format!("SELECT {TASK_COLUMNS} FROM {TASKS} WHERE t.id = ?1");
                let row = tx
                    .query_row(&sql, [task.as_bytes()], task_row)
                    .map_err(database)?;
                Ok((row, false))
            })
            .await
            .unwrap();
        let by_sqlx: TaskRow = sqlx::query_as(&select_tasks("t.id = ?1"))
            .bind(task)
            .fetch_one(&store.readers)
            .await
            .unwrap();

        assert_eq!(format!("{by_rusqlite:?}"), format!("{by_sqlx:?}"));
        let job = by_sqlx.into_job(Vec::new()).unwrap();
        assert_eq!(job.priority, 7);
        assert_eq!(job.placement.labels["zone"], "b");
        assert_eq!(job.placement.resources.cpu_millis, 1500);
        assert_eq!(job.timeouts.heartbeat, Duration::from_secs(9));
        assert_eq!(
            job.concurrency.map(|c| (c.key, c.limit)),
            Some(("db".into(), 2))
        );
        assert_eq!(job.state.attempt_budget, 4);
    }
}
