//! The store conformance suite: every test runs against SQLite and against PostgreSQL
//! (`orchion_testkit::postgres_database`), so both backends keep the same promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashSet, sync::Arc};

use orchion_domain::{
    AttemptOutcome, AttemptStatus, AuditEntry, AuditFilter, AuditOutcome, Capacity, Concurrency,
    JobFilter, JoinLimits, JoinToken, JoinTokenId, Labels, Liveness, NewJob, NewProject, Node,
    NodeId, NodeStatus, PageRequest, Placement, Project, ProjectFilter, ProjectId, ProjectStatus,
    ProjectUpdate, RetryPolicy, Role, StepKey, TaskStatus, Timeouts,
};
use orchion_store::{
    AttemptReport, ClaimRequest, IdempotencyKey, JobIntake, LeaseState, NewLogLine, NewStep,
    NewWorkflowRun, NodeStateChange, Store, StoreError, connect,
};

/// Where a test's database lives; keeps a SQLite file's folder alive for the test.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn open(&self) -> Arc<dyn Store> {
        connect(&self.url, 4).await.expect("store opens")
    }
}

async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db {
        url: format!("sqlite:{}", dir.path().join("orchion.db").display()),
        _dir: Some(dir),
    }
}

async fn postgres_db() -> Option<Db> {
    let url = orchion_testkit::postgres_database().await?;
    Some(Db { url, _dir: None })
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite_db().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::postgres_db().await else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}

conformance!(
    a_created_project_reads_back_equal,
    a_missing_project_is_not_found,
    listing_pages_in_creation_order_and_filters_by_status,
    an_update_changes_only_what_it_names,
    a_deleted_project_is_gone,
    an_idempotency_key_returns_the_first_project,
    an_idempotency_key_with_another_body_conflicts,
    concurrent_creates_with_one_key_make_one_project,
    concurrent_writes_all_commit,
    events_follow_commit_order_under_parallel_writers,
    every_change_appends_one_event_in_order,
    data_survives_reopening_the_store,
    a_registered_node_loads_back_with_its_credential,
    re_registering_keeps_registration_time_and_drain,
    join_tokens_are_named_limited_revocable_and_remembered_by_their_nodes,
    an_audit_entry_is_written_before_its_outcome_and_kept_without_one,
    retention_deletes_old_audit_entries_but_never_the_newest,
    node_state_changes_record_status_events,
    heartbeats_are_recorded_without_events,
    a_state_change_applies_only_from_its_expected_status,
    silence_is_judged_once_by_the_stored_heard_time,
    a_restart_request_is_taken_once,
    a_duty_is_held_by_one_replica_at_a_time,
    a_deleted_node_is_gone,
    commits_are_counted,
    a_job_is_created_once_per_key_and_reads_back,
    claims_take_priority_then_age_for_offered_executors_only,
    a_delayed_job_is_not_claimed_before_its_time,
    queue_depths_group_ready_tasks_by_executor_and_labels,
    placement_needs_labels_and_free_capacity,
    a_claim_reads_past_work_that_does_not_fit,
    a_concurrency_key_limits_running_tasks,
    a_result_completes_a_task_once_and_only_from_its_holder,
    failures_are_retried_until_the_budget_is_spent,
    expired_leases_lose_the_attempt_and_fence_the_late_result,
    a_job_waiting_past_schedule_to_start_fails,
    a_lost_node_loses_its_attempts,
    a_released_attempt_is_adopted_once_by_another_node,
    cancelling_queued_and_running_jobs,
    a_failed_job_can_be_retried_and_a_queued_one_cannot,
    logs_are_fenced_and_read_in_order,
    concurrent_claims_never_hand_out_a_task_twice,
    the_queue_and_the_leases_follow_every_status_change,
    jobs_are_listed_with_filters,
    schedules_round_trip_and_advance_once,
    a_batch_of_jobs_commits_together_with_outcomes_per_job,
    a_batch_of_results_is_fenced_per_report,
    workflow_runs_add_steps_once_and_end_once,
    a_workflow_runs_revision_counts_each_change_its_plan_reads,
    retention_deletes_exactly_what_has_expired,
    concurrent_starts_with_one_key_make_one_workflow_run,
    workflow_runs_cancel_and_retry_from_failed_steps,
    one_deployment_per_composer_and_environment_runs_at_a_time,
    workflow_types_get_a_version_per_distinct_definition,
    a_missing_project_is_refused_by_its_reference,
    secrets_are_versioned_per_project_and_kept_sealed,
);

fn new_project(name: &str) -> Project {
    Project::create(
        NewProject::new(name.into(), Some(format!("about {name}")), None).unwrap(),
        orchion_store::now(),
    )
}

fn key(key: &str, body: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: key.into(),
        request_hash: body.as_bytes().to_vec(),
    }
}

async fn a_created_project_reads_back_equal(db: Db) {
    let store = db.open().await;
    let project = new_project("alpha");
    let created = store.create_project(project.clone(), None).await.unwrap();
    assert!(created.created);
    assert_eq!(created.value, project);
    assert_eq!(store.get_project(project.id).await.unwrap(), project);
}

async fn a_missing_project_is_not_found(db: Db) {
    let store = db.open().await;
    let id = ProjectId::new();
    match store.get_project(id).await {
        Err(StoreError::NotFound { kind, id: missing }) => {
            assert_eq!(kind, "project");
            assert_eq!(missing, id.to_string());
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.update_project(id, ProjectUpdate::default()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_project(id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn listing_pages_in_creation_order_and_filters_by_status(db: Db) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let project = new_project(&format!("p{i}"));
        ids.push(project.id);
        store.create_project(project, None).await.unwrap();
    }
    let archive = ProjectUpdate::new(None, None, None, Some("archived".into())).unwrap();
    store.update_project(ids[1], archive.clone()).await.unwrap();
    store.update_project(ids[4], archive).await.unwrap();

    let mut seen = Vec::new();
    let mut page = PageRequest::new(Some(3), None).unwrap();
    loop {
        let got = store
            .list_projects(ProjectFilter::default(), page)
            .await
            .unwrap();
        assert!(got.items.len() <= 3);
        seen.extend(got.items.iter().map(|p| p.id));
        match got.next {
            Some(cursor) => page = PageRequest::new(Some(3), Some(cursor)).unwrap(),
            None => break,
        }
    }
    assert_eq!(
        seen[0],
        ProjectId::DEFAULT,
        "every store has the default project, first"
    );
    assert_eq!(seen[1..], ids, "all projects, once each, in creation order");

    let active = store
        .list_projects(
            ProjectFilter {
                status: Some(ProjectStatus::Active),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    let expected: Vec<ProjectId> = std::iter::once(ProjectId::DEFAULT)
        .chain([0, 2, 3, 5, 6].iter().map(|&i| ids[i]))
        .collect();
    assert_eq!(
        active.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(active.next, None);
}

async fn an_update_changes_only_what_it_names(db: Db) {
    let store = db.open().await;
    let project = new_project("before");
    store.create_project(project.clone(), None).await.unwrap();
    let update =
        ProjectUpdate::new(Some("after".into()), None, Some("batch".into()), None).unwrap();
    let updated = store.update_project(project.id, update).await.unwrap();
    assert_eq!(updated.name, "after");
    assert_eq!(updated.kind, "batch");
    assert_eq!(updated.description, project.description);
    assert_eq!(updated.status, ProjectStatus::Active);
    assert_eq!(updated.created_at, project.created_at);
    assert!(updated.updated_at >= project.updated_at);
    assert_eq!(store.get_project(project.id).await.unwrap(), updated);
}

async fn a_deleted_project_is_gone(db: Db) {
    let store = db.open().await;
    let keep = new_project("keep");
    let drop = new_project("drop");
    store.create_project(keep.clone(), None).await.unwrap();
    store.create_project(drop.clone(), None).await.unwrap();
    store.delete_project(drop.id).await.unwrap();
    assert!(matches!(
        store.get_project(drop.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_project(keep.id).await.unwrap(), keep);
    assert!(matches!(
        store.delete_project(drop.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn an_idempotency_key_returns_the_first_project(db: Db) {
    let store = db.open().await;
    let first = store
        .create_project(new_project("one"), Some(key("k1", "body")))
        .await
        .unwrap();
    assert!(first.created);
    let again = store
        .create_project(new_project("one"), Some(key("k1", "body")))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.value, first.value);
    let all = store
        .list_projects(ProjectFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2, "the default project and the one made");
}

async fn an_idempotency_key_with_another_body_conflicts(db: Db) {
    let store = db.open().await;
    store
        .create_project(new_project("one"), Some(key("k1", "body")))
        .await
        .unwrap();
    match store
        .create_project(new_project("two"), Some(key("k1", "other body")))
        .await
    {
        Err(StoreError::IdempotencyConflict { key }) => assert_eq!(key, "k1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let all = store
        .list_projects(ProjectFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        all.items.len(),
        2,
        "the default project and the first; the refused request wrote nothing"
    );
}

async fn concurrent_creates_with_one_key_make_one_project(db: Db) {
    let store = db.open().await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_project(new_project("racer"), Some(key("same", "body")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let result = task.await.unwrap();
        ids.insert(result.value.id);
        created += usize::from(result.created);
    }
    assert_eq!(ids.len(), 1, "every caller got the same project");
    assert_eq!(created, 1, "exactly one caller created it");
}

async fn concurrent_writes_all_commit(db: Db) {
    let store = db.open().await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let project = new_project(&format!("w{i}"));
                store.create_project(project.clone(), None).await.unwrap();
                let update =
                    ProjectUpdate::new(None, Some(format!("updated {i}")), None, None).unwrap();
                store.update_project(project.id, update).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = store
        .list_projects(ProjectFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 41, "the default project and the 40 made");
    assert!(
        all.items
            .iter()
            .filter(|p| p.id != ProjectId::DEFAULT)
            .all(|p| p.description.starts_with("updated"))
    );
}

/// A reader that follows the log's end (as the event hub does) sees every event exactly once
/// while many writers commit at once: sequence numbers follow commit order, so no event can
/// appear behind the reader's cursor after it has moved past.
async fn events_follow_commit_order_under_parallel_writers(db: Db) {
    let store = db.open().await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    let project = new_project(&format!("w{w}-{i}"));
                    store.create_project(project.clone(), None).await.unwrap();
                    let job = NewJob {
                        project_id: Some(project.id),
                        ..job("shell")
                    };
                    store.create_job(job, None).await.unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let follow = |cursor: i64| {
        let store = store.clone();
        async move { store.events_after(cursor, 1000).await.unwrap() }
    };
    while !writers.iter().all(|w| w.is_finished()) {
        for event in follow(cursor).await {
            assert!(
                event.seq > cursor,
                "event {} came after {cursor}",
                event.seq
            );
            cursor = event.seq;
            seen.push(event.seq);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    seen.extend(follow(cursor).await.iter().map(|e| e.seq));
    let all: Vec<i64> = store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all.len(), 8 * 15 * 2);
    assert_eq!(seen, all, "the follower saw every event once, in order");
}

async fn every_change_appends_one_event_in_order(db: Db) {
    let store = db.open().await;
    assert_eq!(store.last_event_seq().await.unwrap(), 0);
    let project = new_project("evented");
    store.create_project(project.clone(), None).await.unwrap();
    store
        .update_project(
            project.id,
            ProjectUpdate::new(Some("renamed".into()), None, None, None).unwrap(),
        )
        .await
        .unwrap();
    store.delete_project(project.id).await.unwrap();
    let events = store.events_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["project.created", "project.updated", "project.deleted"]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.subject == project.id.to_string()));
    assert!(events.iter().all(|e| e.project_id == Some(project.id)));
    assert_eq!(events[1].data["name"], "renamed");

    assert_eq!(store.last_event_seq().await.unwrap(), events[2].seq);
    let after_first = store.events_after(events[0].seq, 100).await.unwrap();
    assert_eq!(after_first, events[1..].to_vec());
    assert_eq!(
        store.events_after(events[0].seq, 1).await.unwrap(),
        events[1..2].to_vec()
    );
}

async fn data_survives_reopening_the_store(db: Db) {
    let store = db.open().await;
    let project = new_project("durable");
    store.create_project(project.clone(), None).await.unwrap();
    store.close().await;
    assert!(
        store.get_project(project.id).await.is_err(),
        "a closed store answers nothing"
    );

    let reopened = db.open().await;
    assert_eq!(reopened.get_project(project.id).await.unwrap(), project);
    assert_eq!(reopened.events_after(0, 10).await.unwrap().len(), 1);
}

fn node(name: &str) -> Node {
    let now = orchion_store::now();
    Node {
        id: NodeId::new(),
        name: name.into(),
        address: "10.0.0.7".into(),
        labels: Labels::new([("zone".to_owned(), "a".to_owned())].into()).unwrap(),
        capacity: Capacity::new(4000, 8 << 30, 1).unwrap(),
        executors: vec!["shell".into(), "http".into()],
        version: "0.1.0".into(),
        liveness: Liveness::Alive,
        draining: false,
        registered_at: now,
        last_heartbeat_at: now,
    }
}

async fn a_registered_node_loads_back_with_its_credential(db: Db) {
    let store = db.open().await;
    let n = node("n1");
    let stored = store.register_node(&n, b"hash-1", None).await.unwrap();
    assert_eq!(stored, n);
    let loaded = store.load_nodes().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].node, n);
    assert_eq!(loaded[0].credential_hash, b"hash-1");
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events[0].kind, "node.registered");
    assert_eq!(events[0].subject, n.id.to_string());
    assert_eq!(events[0].data["status"], "ready");
}

async fn re_registering_keeps_registration_time_and_drain(db: Db) {
    let store = db.open().await;
    let first = node("n1");
    store.register_node(&first, b"h1", None).await.unwrap();
    store
        .update_node_states(&[NodeStateChange {
            id: first.id,
            from: NodeStatus::Ready,
            liveness: Liveness::Down,
            draining: true,
            last_heartbeat_at: first.last_heartbeat_at,
        }])
        .await
        .unwrap();
    let later = first.registered_at + time::Duration::minutes(5);
    let again = Node {
        name: "renamed".into(),
        registered_at: later,
        last_heartbeat_at: later,
        ..first.clone()
    };
    assert_eq!(
        store.rejoin_node(&again, b"h2").await.unwrap(),
        None,
        "another credential rejoins nothing"
    );
    assert!(matches!(
        store.register_node(&again, b"h2", None).await,
        Err(StoreError::Conflict(_))
    ));
    let stored = store.rejoin_node(&again, b"h1").await.unwrap().unwrap();
    assert_eq!(
        stored.registered_at, first.registered_at,
        "registration time kept"
    );
    assert_eq!(stored.last_heartbeat_at, later);
    assert_eq!(stored.name, "renamed");
    assert!(
        stored.draining,
        "a drained node stays drained when it registers again"
    );
    assert_eq!(stored.status(), NodeStatus::Draining);
    let loaded = store.load_nodes().await.unwrap();
    assert_eq!(loaded[0].credential_hash, b"h1", "the credential is kept");
    assert_eq!(loaded[0].node.name, "renamed");
}

async fn join_tokens_are_named_limited_revocable_and_remembered_by_their_nodes(db: Db) {
    let store = db.open().await;
    let now = orchion_store::now();
    let token = JoinToken {
        id: JoinTokenId::new(),
        name: "rack-7".into(),
        digest: b"digest-1".to_vec(),
        limits: JoinLimits {
            labels: Some([("zone".to_owned(), "*".to_owned())].into()),
            max_capacity: Some(Capacity::new(2000, 1 << 30, 1).unwrap()),
        },
        created_by: "token:admin".into(),
        created_at: now,
        expires_at: Some(now + time::Duration::hours(1)),
        last_used_at: None,
        revoked_at: None,
    };
    store.create_join_token(&token).await.unwrap();
    let same_name = JoinToken {
        id: JoinTokenId::new(),
        digest: b"digest-2".to_vec(),
        limits: JoinLimits::default(),
        ..token.clone()
    };
    let Err(StoreError::Conflict(message)) = store.create_join_token(&same_name).await else {
        panic!("a second active token named rack-7 was stored");
    };
    assert!(message.contains("`rack-7`"), "{message}");
    assert_eq!(
        store.find_join_token(b"digest-1").await.unwrap().as_ref(),
        Some(&token)
    );
    let n = node("n");
    store.register_node(&n, b"x", Some(token.id)).await.unwrap();
    let stored = store.load_node(n.id).await.unwrap().unwrap();
    assert_eq!(stored.join_token, Some(token.id));
    let used = store.get_join_token(token.id).await.unwrap().unwrap();
    assert!(used.last_used_at.is_some(), "a join is its use");

    let revoked = store.revoke_join_token(token.id, now).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    let again = store
        .revoke_join_token(token.id, now + time::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "the first time is kept"
    );
    store
        .create_join_token(&same_name)
        .await
        .expect("a revoked token's name is free again");
    let listed = store
        .list_join_tokens(PageRequest::new(Some(1), None).unwrap())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.next.is_some());
    assert!(matches!(
        store.revoke_join_token(JoinTokenId::new(), now).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn node_state_changes_record_status_events(db: Db) {
    let store = db.open().await;
    let a = node("a");
    let b = node("b");
    store.register_node(&a, b"x", None).await.unwrap();
    store.register_node(&b, b"y", None).await.unwrap();
    let before = store.events_after(0, 100).await.unwrap().len();
    let change = |id, from, liveness| NodeStateChange {
        id,
        from,
        liveness,
        draining: false,
        last_heartbeat_at: a.last_heartbeat_at,
    };
    store
        .update_node_states(&[
            change(a.id, NodeStatus::Ready, Liveness::Unreachable),
            change(b.id, NodeStatus::Ready, Liveness::Alive), // no change of status: no event
            change(NodeId::new(), NodeStatus::Ready, Liveness::Down), // unknown: skipped
        ])
        .await
        .unwrap();
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), before + 1);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "node.status_changed");
    assert_eq!(last.subject, a.id.to_string());
    assert_eq!(last.data["from"], "ready");
    assert_eq!(last.data["to"], "unreachable");
    let loaded = store.load_nodes().await.unwrap();
    let a_loaded = loaded.iter().find(|n| n.node.id == a.id).unwrap();
    assert_eq!(a_loaded.node.status(), NodeStatus::Unreachable);
}

async fn heartbeats_are_recorded_without_events(db: Db) {
    let store = db.open().await;
    let n = node("n");
    store.register_node(&n, b"x", None).await.unwrap();
    let events = store.events_after(0, 100).await.unwrap().len();
    let later = n.last_heartbeat_at + time::Duration::seconds(42);
    store
        .record_heartbeats(&[(n.id, later), (NodeId::new(), later)])
        .await
        .unwrap();
    assert_eq!(
        store.load_nodes().await.unwrap()[0].node.last_heartbeat_at,
        later
    );
    // A replica that heard the node earlier than the one recorded does not move it back.
    store
        .record_heartbeats(&[(n.id, later - time::Duration::seconds(10))])
        .await
        .unwrap();
    assert_eq!(
        store
            .load_node(n.id)
            .await
            .unwrap()
            .unwrap()
            .node
            .last_heartbeat_at,
        later
    );
    assert_eq!(store.events_after(0, 100).await.unwrap().len(), events);
}

async fn a_state_change_applies_only_from_its_expected_status(db: Db) {
    let store = db.open().await;
    let n = node("n");
    store.register_node(&n, b"x", None).await.unwrap();
    let to_unreachable = NodeStateChange {
        id: n.id,
        from: NodeStatus::Ready,
        liveness: Liveness::Unreachable,
        draining: false,
        last_heartbeat_at: n.last_heartbeat_at,
    };
    let applied = store
        .update_node_states(std::slice::from_ref(&to_unreachable))
        .await
        .unwrap();
    assert_eq!(applied, std::slice::from_ref(&to_unreachable));
    // A second replica working from the old status changes nothing, and records no event.
    let events = store.events_after(0, 100).await.unwrap().len();
    assert!(
        store
            .update_node_states(&[to_unreachable])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.events_after(0, 100).await.unwrap().len(), events);
}

async fn silence_is_judged_once_by_the_stored_heard_time(db: Db) {
    let store = db.open().await;
    let policy = orchion_domain::LivenessPolicy {
        timeout: std::time::Duration::from_secs(30),
        down_after: std::time::Duration::from_secs(60),
    };
    let quiet = node("quiet");
    let heard = node("heard");
    store.register_node(&quiet, b"x", None).await.unwrap();
    store.register_node(&heard, b"y", None).await.unwrap();
    let start = quiet.last_heartbeat_at;
    let at = |s: i64| start + time::Duration::seconds(s);
    // Some replica heard `heard` at +20 s; nobody heard `quiet`.
    store
        .record_heartbeats(&[(heard.id, at(20))])
        .await
        .unwrap();
    assert!(
        store
            .judge_silence(at(29), policy)
            .await
            .unwrap()
            .is_empty()
    );
    let changes = store.judge_silence(at(31), policy).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].id, quiet.id);
    assert_eq!(changes[0].liveness, Liveness::Unreachable);
    // Every replica runs the same pass: the second finds nothing left to do.
    assert!(
        store
            .judge_silence(at(31), policy)
            .await
            .unwrap()
            .is_empty()
    );
    let changes = store.judge_silence(at(91), policy).await.unwrap();
    let mut moved: Vec<(NodeId, Liveness)> = changes.iter().map(|c| (c.id, c.liveness)).collect();
    moved.sort_by_key(|(id, _)| *id);
    let mut expected = vec![
        (quiet.id, Liveness::Down),
        (heard.id, Liveness::Unreachable),
    ];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(moved, expected);
    let kinds: Vec<(String, String)> = store
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "node.status_changed" && e.subject == quiet.id.to_string())
        .map(|e| (e.data["from"].to_string(), e.data["to"].to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            (r#""ready""#.to_owned(), r#""unreachable""#.to_owned()),
            (r#""unreachable""#.to_owned(), r#""down""#.to_owned()),
        ]
    );
    // A node with a running attempt that is no longer alive is found by the store's record.
    store.create_job(job("shell"), None).await.unwrap();
    store
        .claim_tasks(&claim(heard.id, &["shell"], 1))
        .await
        .unwrap();
    assert_eq!(
        store.lost_running_nodes().await.unwrap(),
        [(heard.id, Some(NodeStatus::Unreachable))]
    );
}

async fn a_restart_request_is_taken_once(db: Db) {
    let store = db.open().await;
    let n = node("n");
    store.register_node(&n, b"x", None).await.unwrap();
    assert!(!store.take_restart(n.id).await.unwrap());
    assert!(store.request_restart(n.id).await.unwrap());
    assert!(
        store
            .load_node(n.id)
            .await
            .unwrap()
            .unwrap()
            .restart_requested
    );
    assert!(store.take_restart(n.id).await.unwrap());
    assert!(!store.take_restart(n.id).await.unwrap());
    assert!(!store.request_restart(NodeId::new()).await.unwrap());
}

async fn a_deleted_node_is_gone(db: Db) {
    let store = db.open().await;
    let n = node("n");
    store.register_node(&n, b"x", None).await.unwrap();
    store.delete_node(n.id).await.unwrap();
    assert!(store.load_nodes().await.unwrap().is_empty());
    assert!(matches!(
        store.delete_node(n.id).await,
        Err(StoreError::NotFound { kind: "node", .. })
    ));
    assert_eq!(
        store
            .events_after(0, 100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .kind,
        "node.deleted"
    );
}

async fn commits_are_counted(db: Db) {
    let store = db.open().await;
    assert_eq!(store.commits(), 0);
    store.register_node(&node("n"), b"x", None).await.unwrap();
    store.create_project(new_project("p"), None).await.unwrap();
    assert_eq!(store.commits(), 2);
    store.record_heartbeats(&[]).await.unwrap();
    assert_eq!(store.commits(), 2, "an empty batch commits nothing");
}

fn job(executor: &str) -> NewJob {
    NewJob {
        name: "test job".into(),
        project_id: None,
        executor: executor.into(),
        spec: r#"{"command":"true"}"#.into(),
        priority: 0,
        retry: RetryPolicy {
            max_attempts: 2,
            initial_interval: std::time::Duration::from_secs(1),
            ..RetryPolicy::default()
        },
        timeouts: Timeouts::default(),
        placement: Placement::default(),
        concurrency: None,
        run_at: None,
        trace_parent: None,
    }
}

fn claim(node: NodeId, executors: &[&str], max: usize) -> ClaimRequest {
    ClaimRequest {
        node_id: node,
        executors: executors.iter().map(|e| e.to_string()).collect(),
        labels: Labels::new([("zone".to_owned(), "a".to_owned())].into()).unwrap(),
        capacity: Capacity::new(4000, 8 << 30, 1).unwrap(),
        max,
        now: orchion_store::now(),
    }
}

async fn a_job_is_created_once_per_key_and_reads_back(db: Db) {
    let store = db.open().await;
    let created = store
        .create_job(job("shell"), Some(key("j1", "b")))
        .await
        .unwrap();
    assert!(created.created);
    let j = created.value;
    assert_eq!(j.state.status, TaskStatus::Queued);
    assert_eq!(j.executor, "shell");
    assert_eq!(j.spec, r#"{"command":"true"}"#);
    assert_eq!(j.retry.max_attempts, 2);
    assert!(j.attempts.is_empty());
    assert_eq!(store.get_job(j.id).await.unwrap(), j);
    let again = store
        .create_job(job("shell"), Some(key("j1", "b")))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.value.id, j.id);
    assert!(matches!(
        store
            .create_job(job("http"), Some(key("j1", "other")))
            .await,
        Err(StoreError::IdempotencyConflict { .. })
    ));
}

async fn claims_take_priority_then_age_for_offered_executors_only(db: Db) {
    let store = db.open().await;
    let low = store.create_job(job("shell"), None).await.unwrap().value;
    let other = store.create_job(job("http"), None).await.unwrap().value;
    let high = store
        .create_job(
            NewJob {
                priority: 10,
                ..job("shell")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let low2 = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 10))
        .await
        .unwrap();
    let order: Vec<_> = claimed.iter().map(|c| c.job_id).collect();
    assert_eq!(order, [high.id, low.id, low2.id]);
    assert!(
        claimed
            .iter()
            .all(|c| c.attempt == 1 && c.executor == "shell")
    );
    let other_now = store.get_job(other.id).await.unwrap();
    assert_eq!(
        other_now.state.status,
        TaskStatus::Queued,
        "nobody offered http"
    );
    let running = store.get_job(high.id).await.unwrap();
    assert_eq!(running.state.status, TaskStatus::Running);
    assert_eq!(running.node_id, Some(node));
    assert_eq!(running.attempts.len(), 1);
    assert_eq!(running.attempts[0].status, AttemptStatus::Running);
    assert!(
        store
            .claim_tasks(&claim(node, &["shell"], 10))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_delayed_job_is_not_claimed_before_its_time(db: Db) {
    let store = db.open().await;
    let later = orchion_store::now() + time::Duration::hours(1);
    let delayed = store
        .create_job(
            NewJob {
                run_at: Some(later),
                ..job("shell")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(delayed.run_after, later);
    assert!(
        store
            .claim_tasks(&claim(NodeId::new(), &["shell"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    // A task that is due already but that this node cannot run (another executor) is not
    // what a waiting claim sleeps until: only a task not yet due is.
    store.create_job(job("http"), None).await.unwrap();
    let now = orchion_store::now();
    assert_eq!(store.next_run_after(now).await.unwrap(), Some(later));
    assert_eq!(store.next_run_after(later).await.unwrap(), None);
}

async fn queue_depths_group_ready_tasks_by_executor_and_labels(db: Db) {
    let store = db.open().await;
    let in_zone = |zone: &str| NewJob {
        placement: Placement {
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            resources: Capacity::default(),
        },
        ..job("shell")
    };
    let first = store.create_job(in_zone("b"), None).await.unwrap().value;
    store.create_job(in_zone("b"), None).await.unwrap();
    store.create_job(job("http"), None).await.unwrap();
    store
        .create_job(
            NewJob {
                run_at: Some(orchion_store::now() + time::Duration::hours(1)),
                ..job("http")
            },
            None,
        )
        .await
        .unwrap();
    let depths = store.queue_depths(orchion_store::now()).await.unwrap();
    let summary: Vec<(&str, u64)> = depths
        .iter()
        .map(|d| (d.executor.as_str(), d.depth))
        .collect();
    assert_eq!(summary, [("http", 1), ("shell", 2)], "{depths:?}");
    let zone_b = &depths[1];
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&zone_b.labels).unwrap(),
        serde_json::json!({"zone": "b"})
    );
    assert_eq!(zone_b.oldest, first.created_at);
}

async fn placement_needs_labels_and_free_capacity(db: Db) {
    let store = db.open().await;
    let wants_b = NewJob {
        placement: Placement {
            labels: [("zone".to_owned(), "b".to_owned())].into(),
            resources: Capacity::default(),
        },
        ..job("shell")
    };
    let big = |cpu| NewJob {
        placement: Placement {
            labels: Default::default(),
            resources: Capacity {
                cpu_millis: cpu,
                memory_bytes: 0,
                gpus: 0,
            },
        },
        ..job("shell")
    };
    let b = store.create_job(wants_b, None).await.unwrap().value;
    let three = store.create_job(big(3000), None).await.unwrap().value;
    let two = store.create_job(big(2000), None).await.unwrap().value;
    let one = store.create_job(big(1000), None).await.unwrap().value;
    let node = NodeId::new();
    let got: Vec<_> = store
        .claim_tasks(&claim(node, &["shell"], 10))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.job_id)
        .collect();
    assert_eq!(
        got,
        [three.id, one.id],
        "zone b does not match; 2000 does not fit beside 3000 on 4000"
    );
    // Capacity used by running tasks counts in later claims too.
    assert!(
        store
            .claim_tasks(&claim(node, &["shell"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    let other = store
        .claim_tasks(&claim(NodeId::new(), &["shell"], 10))
        .await
        .unwrap();
    assert_eq!(other.iter().map(|c| c.job_id).collect::<Vec<_>>(), [two.id]);
    assert_eq!(
        store.get_job(b.id).await.unwrap().state.status,
        TaskStatus::Queued
    );
}

async fn a_claim_reads_past_work_that_does_not_fit(db: Db) {
    let store = db.open().await;
    // 200 urgent jobs for another zone fill the head of the queue.
    let elsewhere = NewJob {
        priority: 10,
        placement: Placement {
            labels: [("zone".to_owned(), "b".to_owned())].into(),
            resources: Capacity::default(),
        },
        ..job("shell")
    };
    let batch = (0..200)
        .map(|_| intake(elsewhere.clone(), None, None))
        .collect();
    for created in store.create_jobs(batch).await.unwrap() {
        created.unwrap();
    }
    let fits = store.create_job(job("shell"), None).await.unwrap().value;
    let got = store
        .claim_tasks(&claim(NodeId::new(), &["shell"], 1))
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|c| c.job_id).collect::<Vec<_>>(),
        [fits.id],
        "the one job this node can run is found behind 200 it cannot"
    );
}

async fn a_concurrency_key_limits_running_tasks(db: Db) {
    let store = db.open().await;
    let limited = || NewJob {
        concurrency: Some(Concurrency::new("deploy-prod".into(), 1).unwrap()),
        ..job("shell")
    };
    let first = store.create_job(limited(), None).await.unwrap().value;
    let second = store.create_job(limited(), None).await.unwrap().value;
    let a = NodeId::new();
    let got = store.claim_tasks(&claim(a, &["shell"], 10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job_id, first.id);
    assert!(
        store
            .claim_tasks(&claim(NodeId::new(), &["shell"], 10))
            .await
            .unwrap()
            .is_empty()
    );
    store
        .complete_attempt(a, got[0].task_id, 1, AttemptOutcome::Succeeded, None)
        .await
        .unwrap();
    let next = store
        .claim_tasks(&claim(NodeId::new(), &["shell"], 10))
        .await
        .unwrap();
    assert_eq!(next[0].job_id, second.id);
}

async fn a_result_completes_a_task_once_and_only_from_its_holder(db: Db) {
    let store = db.open().await;
    let j = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    let claimed = store.events_after(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(claimed.kind, "job.status_changed");
    assert_eq!(claimed.data["to"], "running");
    assert_eq!(
        claimed.data["node_id"],
        node.to_string(),
        "the event names the node"
    );
    assert_eq!(claimed.data["task_id"], c.task_id.to_string());
    assert!(
        matches!(
            store
                .complete_attempt(NodeId::new(), c.task_id, 1, AttemptOutcome::Succeeded, None)
                .await,
            Err(StoreError::Stale(_))
        ),
        "another node cannot report"
    );
    assert!(
        matches!(
            store
                .complete_attempt(node, c.task_id, 2, AttemptOutcome::Succeeded, None)
                .await,
            Err(StoreError::Stale(_))
        ),
        "a wrong attempt number cannot report"
    );
    let status = store
        .complete_attempt(
            node,
            c.task_id,
            1,
            AttemptOutcome::Succeeded,
            Some("done".into()),
        )
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Succeeded);
    assert!(
        matches!(
            store
                .complete_attempt(node, c.task_id, 1, AttemptOutcome::Succeeded, None)
                .await,
            Err(StoreError::Stale(_))
        ),
        "a second result is refused"
    );
    let done = store.get_job(j.id).await.unwrap();
    assert_eq!(done.state.status, TaskStatus::Succeeded);
    assert_eq!(done.output.as_deref(), Some("done"));
    assert!(done.finished_at.is_some());
    assert_eq!(done.attempts[0].status, AttemptStatus::Succeeded);
    assert_eq!(done.node_id, None);
}

async fn failures_are_retried_until_the_budget_is_spent(db: Db) {
    let store = db.open().await;
    let j = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    let failed = AttemptOutcome::Failed {
        exit_code: Some(1),
        error: "exit status 1".into(),
    };
    let status = store
        .complete_attempt(node, c.task_id, 1, failed.clone(), None)
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Queued);
    let waiting = store.get_job(j.id).await.unwrap();
    assert!(
        waiting.run_after > orchion_store::now(),
        "backoff before the retry"
    );
    assert_eq!(waiting.exit_code, Some(1));
    // Not claimable during the backoff…
    assert!(
        store
            .claim_tasks(&claim(node, &["shell"], 1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_run_after(orchion_store::now()).await.unwrap(),
        Some(waiting.run_after)
    );
    // …but after it; and when the second attempt fails too, the budget of 2 is spent.
    let after_backoff = ClaimRequest {
        now: waiting.run_after + time::Duration::milliseconds(1),
        ..claim(node, &["shell"], 1)
    };
    let second = store.claim_tasks(&after_backoff).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    let status = store
        .complete_attempt(node, second.task_id, 2, failed, None)
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Failed);
    let done = store.get_job(j.id).await.unwrap();
    assert_eq!(done.attempts.len(), 2);
    assert!(
        done.attempts
            .iter()
            .all(|a| a.status == AttemptStatus::Failed)
    );
    assert_eq!(done.error.as_deref(), Some("exit status 1"));
}

async fn a_job_waiting_past_schedule_to_start_fails(db: Db) {
    let store = db.open().await;
    let timeouts = Timeouts {
        schedule_to_start: Some(std::time::Duration::from_secs(60)),
        ..Timeouts::default()
    };
    let j = store
        .create_job(
            NewJob {
                timeouts,
                ..job("gpu")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(store.expire_leases(orchion_store::now()).await.unwrap(), 0);
    let later = orchion_store::now() + time::Duration::seconds(61);
    assert_eq!(store.expire_leases(later).await.unwrap(), 1);
    let failed = store.get_job(j.id).await.unwrap();
    assert_eq!(failed.state.status, TaskStatus::Failed);
    assert!(failed.error.unwrap().contains("schedule_to_start"));
}

async fn expired_leases_lose_the_attempt_and_fence_the_late_result(db: Db) {
    let store = db.open().await;
    let j = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store.expire_leases(orchion_store::now()).await.unwrap(),
        0,
        "not expired yet"
    );
    let changed = store
        .expire_leases(c.lease_expires_at + time::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let lost = store.get_job(j.id).await.unwrap();
    assert_eq!(lost.state.status, TaskStatus::Queued, "retried by policy");
    assert_eq!(lost.attempts[0].status, AttemptStatus::Lost);
    assert!(
        matches!(
            store
                .complete_attempt(node, c.task_id, 1, AttemptOutcome::Succeeded, None)
                .await,
            Err(StoreError::Stale(_))
        ),
        "the late result of a lost attempt is refused"
    );
    assert_eq!(
        store.extend_leases(node, &[(c.task_id, 1)]).await.unwrap(),
        [LeaseState::Lost]
    );
}

async fn a_lost_node_loses_its_attempts(db: Db) {
    let store = db.open().await;
    let j = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap();
    // Never registered: to the store the node is gone.
    assert_eq!(store.lost_running_nodes().await.unwrap(), [(node, None)]);
    assert_eq!(
        store
            .lose_node_attempts(node, "its node vanished")
            .await
            .unwrap(),
        1
    );
    let again = store.get_job(j.id).await.unwrap();
    assert_eq!(again.state.status, TaskStatus::Queued);
    assert_eq!(again.attempts[0].status, AttemptStatus::Lost);
    assert_eq!(
        again.attempts[0].error.as_deref(),
        Some("its node vanished")
    );
    assert_eq!(store.lose_node_attempts(node, "again").await.unwrap(), 0);
    assert!(store.lost_running_nodes().await.unwrap().is_empty());
}

async fn cancelling_queued_and_running_jobs(db: Db) {
    let store = db.open().await;
    let queued = store.create_job(job("shell"), None).await.unwrap().value;
    let cancelled = store.cancel_job(queued.id).await.unwrap();
    assert_eq!(cancelled.state.status, TaskStatus::Cancelled);
    assert!(
        store
            .claim_tasks(&claim(NodeId::new(), &["shell"], 1))
            .await
            .unwrap()
            .is_empty()
    );

    let running = store.create_job(job("shell"), None).await.unwrap().value;
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    let asked = store.cancel_job(running.id).await.unwrap();
    assert_eq!(asked.state.status, TaskStatus::Running);
    assert!(asked.state.cancel_requested);
    assert_eq!(
        store.extend_leases(node, &[(c.task_id, 1)]).await.unwrap(),
        [LeaseState::Held {
            cancel_requested: true
        }]
    );
    store
        .complete_attempt(node, c.task_id, 1, AttemptOutcome::Cancelled, None)
        .await
        .unwrap();
    assert_eq!(
        store.get_job(running.id).await.unwrap().state.status,
        TaskStatus::Cancelled
    );
    // Cancelling again changes nothing.
    assert_eq!(
        store.cancel_job(running.id).await.unwrap().state.status,
        TaskStatus::Cancelled
    );
    assert!(matches!(
        store.cancel_job(orchion_domain::RunId::new()).await,
        Err(StoreError::NotFound { kind: "job", .. })
    ));
}

async fn a_failed_job_can_be_retried_and_a_queued_one_cannot(db: Db) {
    let store = db.open().await;
    let j = store
        .create_job(
            NewJob {
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..job("shell")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    let failed = AttemptOutcome::Failed {
        exit_code: Some(3),
        error: "exit status 3".into(),
    };
    assert_eq!(
        store
            .complete_attempt(node, c.task_id, 1, failed, None)
            .await
            .unwrap(),
        TaskStatus::Failed
    );
    let retried = store.retry_job(j.id).await.unwrap();
    assert_eq!(retried.state.status, TaskStatus::Queued);
    assert_eq!(retried.error, None);
    let again = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.attempt, 2);
    assert!(matches!(
        store.retry_job(j.id).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn logs_are_fenced_and_read_in_order(db: Db) {
    let store = db.open().await;
    store.create_job(job("shell"), None).await.unwrap();
    let node = NodeId::new();
    let c = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap()
        .remove(0);
    let line = |text: &str| NewLogLine {
        stream: "stdout".into(),
        line: text.into(),
        at: orchion_store::now(),
    };
    store
        .append_logs(node, c.task_id, 1, &[line("one"), line("two")])
        .await
        .unwrap();
    store
        .append_logs(node, c.task_id, 1, &[line("three")])
        .await
        .unwrap();
    assert!(matches!(
        store
            .append_logs(NodeId::new(), c.task_id, 1, &[line("forged")])
            .await,
        Err(StoreError::Stale(_))
    ));
    let all = store.read_logs(c.task_id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let rest = store.read_logs(c.task_id, 1, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
}

/// What the queue and the leases count (`active_task_counts`, from `task_queue` and
/// `task_leases`) agrees with the tasks' own statuses, after each kind of transition.
async fn the_queue_and_the_leases_follow_every_status_change(db: Db) {
    async fn assert_counts(store: &Arc<dyn Store>, queued: u64, running: u64) {
        let mut by_status = Vec::new();
        for status in [TaskStatus::Queued, TaskStatus::Running] {
            let filter = JobFilter {
                status: Some(status),
                ..Default::default()
            };
            let page = store
                .list_jobs(&filter, PageRequest::default())
                .await
                .unwrap();
            by_status.push(page.items.len() as u64);
        }
        let counts = store.active_task_counts().await.unwrap();
        assert_eq!(
            (counts.queued, counts.running),
            (queued, running),
            "counted by queue and leases"
        );
        assert_eq!(by_status, [queued, running], "counted by status");
    }
    let store = db.open().await;
    let node = NodeId::new();
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(store.create_job(job("shell"), None).await.unwrap().value);
    }
    assert_counts(&store, 4, 0).await;
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 3))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert_counts(&store, 1, 3).await;
    // Succeeded, failed with an attempt left (queued again, after its backoff), cancelled
    // while running.
    store
        .complete_attempt(node, claimed[0].task_id, 1, AttemptOutcome::Succeeded, None)
        .await
        .unwrap();
    let failed = AttemptOutcome::Failed {
        exit_code: Some(1),
        error: "exit status 1".into(),
    };
    assert_eq!(
        store
            .complete_attempt(node, claimed[1].task_id, 1, failed, None)
            .await
            .unwrap(),
        TaskStatus::Queued
    );
    store.cancel_job(claimed[2].job_id).await.unwrap();
    assert_counts(&store, 2, 1).await;
    store
        .complete_attempt(node, claimed[2].task_id, 1, AttemptOutcome::Cancelled, None)
        .await
        .unwrap();
    assert_counts(&store, 2, 0).await;
    // Cancelled while queued, then retried by an operator.
    let waiting = jobs
        .iter()
        .find(|j| claimed.iter().all(|c| c.job_id != j.id))
        .unwrap();
    store.cancel_job(waiting.id).await.unwrap();
    assert_counts(&store, 1, 0).await;
    assert_eq!(
        store.retry_job(waiting.id).await.unwrap().state.status,
        TaskStatus::Queued
    );
    assert_counts(&store, 2, 0).await;
    // Both are claimed once due: the older (on its second and last attempt) by one node, whose
    // lease then expires (failed), the other by a node that is lost (queued again).
    let later = orchion_store::now() + time::Duration::seconds(5);
    let again = store
        .claim_tasks(&ClaimRequest {
            now: later,
            ..claim(node, &["shell"], 1)
        })
        .await
        .unwrap();
    let other = NodeId::new();
    let more = store
        .claim_tasks(&ClaimRequest {
            now: later,
            ..claim(other, &["shell"], 5)
        })
        .await
        .unwrap();
    assert_eq!((again.len(), more.len()), (1, 1));
    assert_counts(&store, 0, 2).await;
    let expired = later + time::Duration::minutes(10);
    store
        .extend_leases(other, &[(more[0].task_id, more[0].attempt)])
        .await
        .unwrap();
    assert_eq!(
        store.lose_node_attempts(other, "node lost").await.unwrap(),
        1
    );
    assert_counts(&store, 1, 1).await;
    assert_eq!(store.expire_leases(expired).await.unwrap(), 1);
    assert_counts(&store, 1, 0).await;
    assert_eq!(
        store.get_job(again[0].job_id).await.unwrap().state.status,
        TaskStatus::Failed
    );
}

async fn concurrent_claims_never_hand_out_a_task_twice(db: Db) {
    let store = db.open().await;
    for _ in 0..60 {
        store.create_job(job("shell"), None).await.unwrap();
    }
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let node = NodeId::new();
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim_tasks(&claim(node, &["shell"], 5))
                        .await
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|c| c.task_id));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60);
    assert_eq!(unique.len(), 60);
}

async fn jobs_are_listed_with_filters(db: Db) {
    let store = db.open().await;
    let a = store.create_job(job("shell"), None).await.unwrap().value;
    let b = store.create_job(job("http"), None).await.unwrap().value;
    store.cancel_job(b.id).await.unwrap();
    let all = store
        .list_jobs(&JobFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        all.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [a.id, b.id]
    );
    let cancelled = store
        .list_jobs(
            &JobFilter {
                status: Some(TaskStatus::Cancelled),
                ..Default::default()
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        cancelled.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [b.id]
    );
    let shell = store
        .list_jobs(
            &JobFilter {
                executor: Some("shell".into()),
                ..Default::default()
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(shell.items.len(), 1);
    let page = store
        .list_jobs(
            &JobFilter::default(),
            PageRequest::new(Some(1), None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next.is_some());

    // Newest first, a page at a time.
    let c = store
        .create_job(
            NewJob {
                name: "Nightly 100%_backup".into(),
                ..job("shell")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let newest = JobFilter {
        newest_first: true,
        ..Default::default()
    };
    let first = store
        .list_jobs(&newest, PageRequest::new(Some(2), None).unwrap())
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [c.id, b.id]
    );
    let rest = store
        .list_jobs(&newest, PageRequest::new(Some(2), first.next).unwrap())
        .await
        .unwrap();
    assert_eq!(rest.items.iter().map(|j| j.id).collect::<Vec<_>>(), [a.id]);
    // Names, ignoring case, with LIKE's wildcards taken literally.
    for (needle, found) in [
        ("NIGHTLY", 1),
        ("100%_", 1),
        ("1000", 0),
        ("%", 1),
        ("_", 1),
    ] {
        let named = store
            .list_jobs(
                &JobFilter {
                    name: Some(needle.into()),
                    ..Default::default()
                },
                PageRequest::default(),
            )
            .await
            .unwrap();
        assert_eq!(named.items.len(), found, "{needle}");
    }
}

async fn schedules_round_trip_and_advance_once(db: Db) {
    use orchion_domain::{CronSchedule, MisfirePolicy, OverlapPolicy, RunId, Schedule, ScheduleId};
    let store = db.open().await;
    let now = orchion_store::now();
    let due = now - time::Duration::seconds(1);
    let schedule = Schedule {
        id: ScheduleId::new(),
        name: "nightly".into(),
        cron: CronSchedule::parse("0 3 * * *", "Europe/Berlin").unwrap(),
        overlap: OverlapPolicy::Skip,
        misfire: MisfirePolicy::FireOnce,
        job: NewJob {
            concurrency: Some(Concurrency::new("nightly".into(), 1).unwrap()),
            placement: Placement {
                labels: [("zone".to_owned(), "a".to_owned())].into(),
                resources: Capacity {
                    cpu_millis: 500,
                    memory_bytes: 1 << 20,
                    gpus: 0,
                },
            },
            ..job("shell")
        },
        next_fire_at: Some(due),
        last_fire_at: None,
        last_run_id: None,
        created_at: now,
    };
    store.create_schedule(&schedule).await.unwrap();
    assert_eq!(store.get_schedule(schedule.id).await.unwrap(), schedule);
    assert_eq!(
        store
            .list_schedules(None, PageRequest::default())
            .await
            .unwrap()
            .items,
        std::slice::from_ref(&schedule)
    );
    assert_eq!(store.due_schedules(now, 10).await.unwrap().len(), 1);
    assert!(
        store
            .due_schedules(due - time::Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let next = now + time::Duration::hours(1);
    let run = RunId::new();
    assert!(
        store
            .advance_schedule(schedule.id, Some(due), Some(next), Some((due, run)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_schedule(schedule.id, Some(due), Some(next), Some((due, run)))
            .await
            .unwrap(),
        "a second advance from the same instant does nothing"
    );
    let moved = store.get_schedule(schedule.id).await.unwrap();
    assert_eq!(moved.next_fire_at, Some(next));
    assert_eq!(moved.last_fire_at, Some(due));
    assert_eq!(moved.last_run_id, Some(run));
    assert!(store.due_schedules(now, 10).await.unwrap().is_empty());

    store.delete_schedule(schedule.id).await.unwrap();
    assert!(matches!(
        store.get_schedule(schedule.id).await,
        Err(StoreError::NotFound {
            kind: "schedule",
            ..
        })
    ));
    assert!(matches!(
        store.delete_schedule(schedule.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn a_batch_of_jobs_commits_together_with_outcomes_per_job(db: Db) {
    let store = db.open().await;
    store
        .create_job(job("shell"), Some(key("taken", "a")))
        .await
        .unwrap();
    let audit = |request_id: &str| audit_entry(request_id, orchion_store::now());
    let results = store
        .create_jobs(vec![
            intake(job("shell"), None, Some(audit("first"))),
            intake(job("shell"), Some(key("twice", "b")), None),
            intake(job("shell"), Some(key("twice", "b")), Some(audit("replay"))),
            intake(
                job("http"),
                Some(key("taken", "different")),
                Some(audit("refused")),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    // Only the job created now has its request's entry, written in its transaction.
    let audited = store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].request_id, "first");
    assert_eq!(audited[0].status, Some(201));
    assert_eq!(
        audited[0].resource,
        results[0].as_ref().unwrap().value.id.to_string()
    );
    let first = results[0].as_ref().unwrap();
    assert!(first.created);
    assert_eq!(
        store.get_job(first.value.id).await.unwrap(),
        first.value,
        "what is returned is what is stored"
    );
    let (a, b) = (results[1].as_ref().unwrap(), results[2].as_ref().unwrap());
    assert!(
        a.created && !b.created,
        "the same key twice in one batch makes one job"
    );
    assert_eq!(a.value.id, b.value.id);
    assert!(matches!(
        results[3],
        Err(StoreError::IdempotencyConflict { .. })
    ));
    let all = store
        .list_jobs(&JobFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
}

async fn a_batch_of_results_is_fenced_per_report(db: Db) {
    let store = db.open().await;
    store.create_job(job("shell"), None).await.unwrap();
    store.create_job(job("shell"), None).await.unwrap();
    let node = NodeId::new();
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 2))
        .await
        .unwrap();
    let report = |task, attempt, node| AttemptReport {
        node,
        task,
        attempt,
        outcome: AttemptOutcome::Succeeded,
        output: None,
        outputs: Some(r#"{"k":"v"}"#.into()),
    };
    let results = store
        .complete_attempts(vec![
            report(claimed[0].task_id, 1, node),
            report(claimed[1].task_id, 1, NodeId::new()),
            report(claimed[0].task_id, 1, node),
        ])
        .await
        .unwrap();
    let done = results[0].as_ref().unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(done.run_id, claimed[0].job_id);
    assert!(!done.workflow, "a job's task is not a workflow step");
    assert_eq!(
        store
            .get_job(claimed[0].job_id)
            .await
            .unwrap()
            .outputs
            .as_deref(),
        Some(r#"{"k":"v"}"#)
    );
    assert!(
        matches!(results[1], Err(StoreError::Stale(_))),
        "another node's report"
    );
    assert!(
        matches!(results[2], Err(StoreError::Stale(_))),
        "a second report in the same batch"
    );
    assert_eq!(
        store.get_job(claimed[0].job_id).await.unwrap().state.status,
        TaskStatus::Succeeded
    );
    assert_eq!(
        store.get_job(claimed[1].job_id).await.unwrap().state.status,
        TaskStatus::Running
    );
}

async fn workflow_types_get_a_version_per_distinct_definition(db: Db) {
    let store = db.open().await;
    let v1 = r#"{"steps":[{"name":"a","executor":"noop","spec":{}}]}"#;
    let first = store.put_workflow_type("deploy", None, v1).await.unwrap();
    assert!(first.created);
    assert_eq!(first.value.version, 1);
    // The same definition, written differently: no new version.
    let same = store
        .put_workflow_type(
            "deploy",
            None,
            r#"{ "steps": [ {"spec":{}, "executor":"noop", "name":"a"} ] }"#,
        )
        .await
        .unwrap();
    assert!(!same.created);
    assert_eq!(same.value.version, 1);
    let v2 = r#"{"steps":[{"name":"b","executor":"noop","spec":{}}]}"#;
    assert_eq!(
        store
            .put_workflow_type("deploy", None, v2)
            .await
            .unwrap()
            .value
            .version,
        2
    );
    let latest = store.get_workflow_type("deploy", None).await.unwrap();
    assert_eq!(latest.version, 2);
    assert!(latest.definition.contains("\"b\""));
    assert_eq!(
        store
            .get_workflow_type("deploy", Some(1))
            .await
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        store.get_workflow_type("deploy", Some(9)).await,
        Err(StoreError::NotFound {
            kind: "workflow type",
            ..
        })
    ));
    assert!(matches!(
        store.get_workflow_type("nope", None).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn new_run(workflow: &str) -> NewWorkflowRun {
    NewWorkflowRun {
        name: "nightly".into(),
        project_id: None,
        workflow: workflow.into(),
        version: 1,
        input: r#"{"x":1}"#.into(),
        definition: None,
        trace_parent: None,
    }
}

fn step(name: &str) -> NewStep {
    NewStep {
        step: StepKey::parse(name),
        job: NewJob {
            name: name.into(),
            ..job("shell")
        },
        status: TaskStatus::Queued,
        outputs: None,
        error: None,
    }
}

/// Replicas racing to start a run under one idempotency key: the losers of the key's unique
/// index get the winner's run, never an error (on PostgreSQL the race is real; on SQLite the
/// one writer serializes it).
async fn concurrent_starts_with_one_key_make_one_workflow_run(db: Db) {
    let store = db.open().await;
    let starts: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_workflow_run(
                        new_run("ci"),
                        vec![step("build")],
                        Some(key("same", "body")),
                    )
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for start in starts {
        let run = start
            .await
            .unwrap()
            .expect("a lost race returns the winner");
        ids.insert(run.value.id);
        created += usize::from(run.created);
    }
    assert_eq!(ids.len(), 1, "every caller got the same run");
    assert_eq!(created, 1, "exactly one caller started it");
    let record = store
        .get_workflow_run(*ids.iter().next().unwrap())
        .await
        .unwrap();
    assert_eq!(record.tasks.len(), 1, "its steps were written once");
}

async fn a_workflow_runs_revision_counts_each_change_its_plan_reads(db: Db) {
    let store = db.open().await;
    let id = store
        .create_workflow_run(new_run("ci"), vec![step("build")], None)
        .await
        .unwrap()
        .value
        .id;
    let other = store
        .create_workflow_run(new_run("ci"), vec![step("build")], None)
        .await
        .unwrap()
        .value
        .id;
    let revision =
        |store: Arc<dyn Store>| async move { store.workflow_run_head(id).await.unwrap().revision };
    assert_eq!(revision(store.clone()).await, 0);
    // Each advance counts, even one whose steps were written already.
    for expected in [1, 2] {
        let advanced = store
            .advance_workflow_run(id, vec![step("a"), step("b")], None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(advanced.revision, expected);
        assert_eq!(advanced.released, None);
    }
    // A claim changes nothing the plan reads; each task's end counts once.
    let node = NodeId::new();
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    assert_eq!(revision(store.clone()).await, 2);
    let ours: Vec<_> = claimed
        .iter()
        .filter(|c| c.job_id == id)
        .map(|c| c.task_id)
        .collect();
    let theirs = claimed.iter().find(|c| c.job_id == other).unwrap().task_id;
    let done = store
        .complete_attempts(
            ours.iter()
                .map(|&task| AttemptReport {
                    node,
                    task,
                    attempt: 1,
                    outcome: AttemptOutcome::Succeeded,
                    output: None,
                    outputs: Some(r#"{"n":1}"#.into()),
                })
                .collect(),
        )
        .await
        .unwrap();
    assert!(
        done.iter()
            .all(|d| d.as_ref().unwrap().status == TaskStatus::Succeeded)
    );
    assert_eq!(revision(store.clone()).await, 5);
    assert_eq!(store.workflow_run_head(other).await.unwrap().revision, 0);

    // The tasks named, of this run alone; or every one.
    let named = store
        .workflow_run_steps(id, Some(&[ours[0], theirs]))
        .await
        .unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].id, ours[0]);
    assert_eq!(named[0].status, TaskStatus::Succeeded);
    assert_eq!(named[0].outputs.as_deref(), Some(r#"{"n":1}"#));
    let all = store.workflow_run_steps(id, None).await.unwrap();
    let keys: Vec<String> = all.iter().map(|t| t.step.to_string()).collect();
    assert_eq!(keys, ["build", "a", "b"]);
    assert!(
        store
            .workflow_run_steps(id, Some(&[]))
            .await
            .unwrap()
            .is_empty()
    );

    let running = store.running_workflow_revisions().await.unwrap();
    assert!(running.contains(&(id, 5)), "{running:?}");
    assert!(running.contains(&(other, 0)), "{running:?}");
    // The other run's one task ends cancelled; the run ends; a retry then queues it again.
    store
        .complete_attempts(vec![AttemptReport {
            node,
            task: theirs,
            attempt: 1,
            outcome: AttemptOutcome::Cancelled,
            output: None,
            outputs: None,
        }])
        .await
        .unwrap();
    assert_eq!(store.workflow_run_head(other).await.unwrap().revision, 1);
    let finished = store
        .advance_workflow_run(
            other,
            Vec::new(),
            Some(orchion_domain::RunStatus::Cancelled),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.revision, 2);
    let running = store.running_workflow_revisions().await.unwrap();
    assert!(!running.iter().any(|(r, _)| *r == other), "{running:?}");
    // A retry counts the steps it drops and the ones it queues again.
    store.retry_workflow_run(other).await.unwrap();
    assert!(store.workflow_run_head(other).await.unwrap().revision > 2);
}

/// Runs every claimable shell task to success, returning how many.
async fn finish_all(store: &Arc<dyn Store>, node: NodeId) -> usize {
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 100))
        .await
        .unwrap();
    let reports = claimed
        .iter()
        .map(|c| AttemptReport {
            node,
            task: c.task_id,
            attempt: c.attempt,
            outcome: AttemptOutcome::Succeeded,
            output: None,
            outputs: None,
        })
        .collect();
    store.complete_attempts(reports).await.unwrap();
    claimed.len()
}

async fn retention_deletes_exactly_what_has_expired(db: Db) {
    use orchion_store::Projects;
    let store = db.open().await;
    let node = NodeId::new();
    let project = new_project("kept-briefly");
    store.create_project(project.clone(), None).await.unwrap();
    // Before the cut: a finished job of no project (with a key), one of the project, a finished
    // workflow run, and a job still queued.
    let old = store
        .create_job(job("shell"), Some(key("old", "a")))
        .await
        .unwrap()
        .value;
    let old_in_project = store
        .create_job(
            NewJob {
                project_id: Some(project.id),
                ..job("shell")
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let run = store
        .create_workflow_run(new_run("ci"), vec![step("build")], None)
        .await
        .unwrap()
        .value;
    assert_eq!(finish_all(&store, node).await, 3);
    store
        .advance_workflow_run(
            run.id,
            Vec::new(),
            Some(orchion_domain::RunStatus::Succeeded),
        )
        .await
        .unwrap();
    let waiting = store.create_job(job("other"), None).await.unwrap().value;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cut = orchion_store::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // After it: a job that finished later, with a key.
    let recent = store
        .create_job(job("shell"), Some(key("recent", "b")))
        .await
        .unwrap()
        .value;
    assert_eq!(finish_all(&store, node).await, 1);

    // The project's own retention covers its runs alone; the default, the others.
    let deleted = store
        .delete_finished_runs(&Projects::Only(project.id), cut, 500)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(store.get_job(old_in_project.id).await.is_err());
    assert!(store.get_job(old.id).await.is_ok());
    let deleted = store
        .delete_finished_runs(&Projects::Except(vec![project.id]), cut, 500)
        .await
        .unwrap();
    assert_eq!(deleted, 2, "the old job and the finished run");
    assert!(store.get_job(old.id).await.is_err());
    assert!(store.get_workflow_run(run.id).await.is_err());
    assert!(store.get_job(waiting.id).await.is_ok(), "unfinished: kept");
    assert!(
        store.get_job(recent.id).await.is_ok(),
        "finished after the cut: kept"
    );
    assert_eq!(
        store
            .delete_finished_runs(&Projects::Except(Vec::new()), cut, 500)
            .await
            .unwrap(),
        0,
        "nothing more has expired"
    );

    // Keys used before the cut go; the same key again then makes a new job.
    assert_eq!(store.delete_idempotency_keys(cut, 500).await.unwrap(), 1);
    let again = store
        .create_job(job("shell"), Some(key("old", "a")))
        .await
        .unwrap();
    assert!(again.created);
    let replayed = store
        .create_job(job("shell"), Some(key("recent", "b")))
        .await
        .unwrap();
    assert!(!replayed.created);
    assert_eq!(replayed.value.id, recent.id);

    // Events before the cut go, the horizon moves to the last of them, in small batches.
    assert_eq!(store.events_horizon().await.unwrap(), 0);
    let before: Vec<i64> = store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.at < cut)
        .map(|e| e.seq)
        .collect();
    assert!(before.len() > 3, "{before:?}");
    assert_eq!(store.delete_events(cut, 2).await.unwrap(), 2);
    assert_eq!(store.events_horizon().await.unwrap(), before[1]);
    let mut total = 2;
    loop {
        let n = store.delete_events(cut, 2).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, before.len());
    assert_eq!(
        store.events_horizon().await.unwrap(),
        *before.last().unwrap()
    );
    let left = store.events_after(0, 10_000).await.unwrap();
    assert!(
        left.iter()
            .all(|e| e.at >= cut && e.seq > *before.last().unwrap())
    );
    assert!(
        left.iter().any(|e| e.kind == "retention.deleted"),
        "deleting runs is recorded"
    );
}

async fn workflow_runs_add_steps_once_and_end_once(db: Db) {
    use orchion_domain::{PageRequest, RunStatus, WorkflowRunFilter};
    let store = db.open().await;
    let key = key("start-1", "body");
    let created = store
        .create_workflow_run(new_run("ci"), vec![step("build")], Some(key.clone()))
        .await
        .unwrap();
    assert!(created.created);
    let id = created.value.id;
    let again = store
        .create_workflow_run(new_run("ci"), vec![step("build")], Some(key))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(
        again.value.id, id,
        "the idempotency key names the first run"
    );

    // Two advances writing the same ready steps (two replicas, say) add them once.
    for _ in 0..2 {
        assert!(
            store
                .advance_workflow_run(id, vec![step("test[0]"), step("test[1]")], None)
                .await
                .unwrap()
                .is_some()
        );
    }
    let failed = NewStep {
        status: TaskStatus::Failed,
        error: Some("spec/x: `input` has no `y`".into()),
        ..step("lint")
    };
    store
        .advance_workflow_run(id, vec![failed], None)
        .await
        .unwrap();
    let record = store.get_workflow_run(id).await.unwrap();
    let steps: Vec<String> = record.tasks.iter().map(|t| t.step.to_string()).collect();
    assert_eq!(steps, ["build", "test[0]", "test[1]", "lint"]);
    let lint = &record.tasks[3].task;
    assert_eq!(lint.state.status, TaskStatus::Failed);
    assert_eq!(lint.error.as_deref(), Some("spec/x: `input` has no `y`"));
    assert!(lint.finished_at.is_some());
    assert_eq!(record.run.input, r#"{"x":1}"#);
    assert_eq!(record.run.status, RunStatus::Running);

    // The steps are claimable tasks, and their results say they belong to a workflow.
    let node = NodeId::new();
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let done = store
        .complete_attempts(vec![AttemptReport {
            node,
            task: claimed[0].task_id,
            attempt: 1,
            outcome: AttemptOutcome::Succeeded,
            output: None,
            outputs: Some(r#"{"image":"x"}"#.into()),
        }])
        .await
        .unwrap();
    let done = done[0].as_ref().unwrap();
    assert!(done.workflow);
    assert_eq!(done.run_id, id);
    assert!(
        store.get_job(id).await.is_err(),
        "a workflow run is not a job"
    );

    // It ends once: a second finish, or more steps, change nothing.
    assert!(
        store
            .advance_workflow_run(id, Vec::new(), Some(RunStatus::Failed))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .advance_workflow_run(id, vec![step("late")], Some(RunStatus::Succeeded))
            .await
            .unwrap()
            .is_none()
    );
    let record = store.get_workflow_run(id).await.unwrap();
    assert_eq!(record.run.status, RunStatus::Failed);
    assert!(record.run.finished_at.is_some());
    assert!(!record.tasks.iter().any(|t| t.step.name == "late"));
    assert_eq!(
        record.tasks[0].task.outputs.as_deref(),
        Some(r#"{"image":"x"}"#)
    );

    let other = store
        .create_workflow_run(new_run("deploy"), Vec::new(), None)
        .await
        .unwrap()
        .value;
    let page = PageRequest {
        limit: 10,
        after: None,
    };
    let failed = store
        .list_workflow_runs(
            &WorkflowRunFilter {
                status: Some(RunStatus::Failed),
                ..Default::default()
            },
            page,
        )
        .await
        .unwrap();
    assert_eq!(failed.items.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);
    let deploys = store
        .list_workflow_runs(
            &WorkflowRunFilter {
                workflow: Some("deploy".into()),
                ..Default::default()
            },
            page,
        )
        .await
        .unwrap();
    assert_eq!(
        deploys.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [other.id]
    );
    assert_eq!(store.running_workflow_runs().await.unwrap(), [other.id]);
    let renamed = store
        .create_workflow_run(
            NewWorkflowRun {
                name: "Release 2.0".into(),
                ..new_run("deploy")
            },
            Vec::new(),
            None,
        )
        .await
        .unwrap()
        .value;
    let newest = store
        .list_workflow_runs(
            &WorkflowRunFilter {
                newest_first: true,
                ..Default::default()
            },
            page,
        )
        .await
        .unwrap();
    assert_eq!(
        newest.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [renamed.id, other.id, id]
    );
    let release = store
        .list_workflow_runs(
            &WorkflowRunFilter {
                name: Some("release".into()),
                ..Default::default()
            },
            page,
        )
        .await
        .unwrap();
    assert_eq!(
        release.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [renamed.id]
    );
}

async fn workflow_runs_cancel_and_retry_from_failed_steps(db: Db) {
    use orchion_domain::RunStatus;
    let store = db.open().await;
    let id = store
        .create_workflow_run(new_run("ci"), vec![step("a"), step("b")], None)
        .await
        .unwrap()
        .value
        .id;
    assert!(
        matches!(
            store.retry_workflow_run(id).await,
            Err(StoreError::Conflict(_))
        ),
        "a running run cannot be retried"
    );
    let node = NodeId::new();
    let claimed = store
        .claim_tasks(&claim(node, &["shell"], 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store.cancel_workflow_run(id).await.unwrap();
    let record = store.get_workflow_run(id).await.unwrap();
    assert!(record.run.cancel_requested);
    let (running, queued) = (&record.tasks[0].task, &record.tasks[1].task);
    assert_eq!(running.state.status, TaskStatus::Running);
    assert!(running.state.cancel_requested, "the agent is told to stop");
    assert_eq!(queued.state.status, TaskStatus::Cancelled);
    store
        .complete_attempt(node, claimed[0].task_id, 1, AttemptOutcome::Cancelled, None)
        .await
        .unwrap();
    store
        .advance_workflow_run(id, Vec::new(), Some(RunStatus::Cancelled))
        .await
        .unwrap();
    assert!(matches!(
        store.cancel_workflow_run(id).await,
        Err(StoreError::Conflict(_))
    ));

    // Retry: the step that ran is queued again with its attempt kept; the one that never
    // started is removed, to be planned afresh.
    store.retry_workflow_run(id).await.unwrap();
    let record = store.get_workflow_run(id).await.unwrap();
    assert_eq!(record.run.status, RunStatus::Running);
    assert!(!record.run.cancel_requested);
    assert!(record.run.finished_at.is_none());
    assert_eq!(record.tasks.len(), 1);
    assert_eq!(record.tasks[0].step, StepKey::step("a"));
    assert_eq!(record.tasks[0].task.state.status, TaskStatus::Queued);
    assert_eq!(record.tasks[0].task.attempts.len(), 1);
    let again = store
        .claim_tasks(&claim(node, &["shell"], 5))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

async fn one_deployment_per_composer_and_environment_runs_at_a_time(db: Db) {
    use orchion_domain::{DeploymentFilter, PageRequest, RunStatus};
    use orchion_store::NewDeployment;
    let store = db.open().await;
    let deployment = |id: &str, environment: &str| NewDeployment {
        id: id.into(),
        composer: "team-alpha".into(),
        environment: environment.into(),
        request: format!(r#"{{"id":"{id}","environment":"{environment}"}}"#),
    };
    let first = store
        .create_deployment(
            deployment("v1", "prod"),
            new_run("deployment"),
            vec![step("db")],
        )
        .await
        .unwrap();
    assert!(first.created);
    let first = first.value;
    assert!(first.active);
    // The same request again gets the same deployment and starts nothing.
    let again = store
        .create_deployment(
            deployment("v1", "prod"),
            new_run("deployment"),
            vec![step("db")],
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.value.run_id, first.run_id);
    let record = store.get_workflow_run(first.run_id).await.unwrap();
    assert_eq!(record.tasks.len(), 1);
    // A second one for the same composer and environment waits, held, with no step written.
    let queued = store
        .create_deployment(
            deployment("v2", "prod"),
            new_run("deployment"),
            vec![step("db")],
        )
        .await
        .unwrap()
        .value;
    assert!(!queued.active);
    let held = store.get_workflow_run(queued.run_id).await.unwrap();
    assert!(held.run.held);
    assert!(held.tasks.is_empty());
    let taken = store
        .create_deployment(
            deployment("v1", "staging"),
            new_run("deployment"),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(taken, StoreError::Conflict(_)), "the id is taken");
    let staging = store
        .create_deployment(
            deployment("s1", "staging"),
            new_run("deployment"),
            Vec::new(),
        )
        .await
        .unwrap()
        .value;
    assert!(staging.active, "another environment has its own slot");
    // When the first ends, the oldest waiting one gets the slot.
    store
        .advance_workflow_run(first.run_id, Vec::new(), Some(RunStatus::Succeeded))
        .await
        .unwrap();
    assert!(!store.get_deployment("v1").await.unwrap().active);
    assert!(store.get_deployment("v2").await.unwrap().active);
    assert!(
        !store
            .get_workflow_run(queued.run_id)
            .await
            .unwrap()
            .run
            .held
    );
    let third = store
        .create_deployment(deployment("v3", "prod"), new_run("deployment"), Vec::new())
        .await
        .unwrap()
        .value;
    assert!(!third.active, "v2 runs now");
    // A waiting one that ends (cancelled) hands nothing on.
    store
        .advance_workflow_run(third.run_id, Vec::new(), Some(RunStatus::Cancelled))
        .await
        .unwrap();
    assert!(store.get_deployment("v2").await.unwrap().active);
    let prod = store
        .list_deployments(
            &DeploymentFilter {
                environment: Some("prod".into()),
                ..Default::default()
            },
            PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = prod.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["v1", "v2", "v3"]);
    assert!(matches!(
        store.get_deployment("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A job, run or workflow type naming a project that does not exist is refused by the foreign
/// key, as a missing reference in `project_id`, and nothing is written.
async fn a_missing_project_is_refused_by_its_reference(db: Db) {
    let store = db.open().await;
    let missing = ProjectId::new();
    let refused = |e: StoreError| match e {
        StoreError::MissingReference { field, kind, id } => {
            assert_eq!((field, kind), ("project_id", "project"));
            assert_eq!(id, missing.to_string());
        }
        other => panic!("expected a missing reference, got {other:?}"),
    };
    let orphan = NewJob {
        project_id: Some(missing),
        ..job("shell")
    };
    refused(store.create_job(orphan, None).await.unwrap_err());
    let run = NewWorkflowRun {
        project_id: Some(missing),
        ..new_run("ci")
    };
    refused(
        store
            .create_workflow_run(run, vec![step("build")], None)
            .await
            .unwrap_err(),
    );
    refused(
        store
            .put_workflow_type("owned", Some(missing), r#"{"name":"owned"}"#)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        0,
        "nothing was written"
    );
    let existing = new_project("here");
    store.create_project(existing.clone(), None).await.unwrap();
    let owned = NewJob {
        project_id: Some(existing.id),
        ..job("shell")
    };
    assert!(store.create_job(owned, None).await.unwrap().created);
}

async fn a_duty_is_held_by_one_replica_at_a_time(db: Db) {
    let store = db.open().await;
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let ttl = std::time::Duration::from_secs(3);
    let now = orchion_store::now();
    assert!(store.hold_duty("pass", a, now, ttl).await.unwrap());
    assert!(!store.hold_duty("pass", b, now, ttl).await.unwrap());
    assert!(
        store.hold_duty("pass", a, now, ttl).await.unwrap(),
        "renewed"
    );
    let later = now + std::time::Duration::from_secs(4);
    assert!(
        store.hold_duty("pass", b, later, ttl).await.unwrap(),
        "taken over"
    );
    assert!(!store.hold_duty("pass", a, later, ttl).await.unwrap());
}

async fn a_released_attempt_is_adopted_once_by_another_node(db: Db) {
    let store = db.open().await;
    let j = store
        .create_job(job("kubernetes"), None)
        .await
        .unwrap()
        .value;
    let (leaving, adopter) = (NodeId::new(), NodeId::new());
    let claimed = store
        .claim_tasks(&claim(leaving, &["kubernetes"], 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.release_attempts(leaving, "shell").await.unwrap(),
        0,
        "by executor"
    );
    assert_eq!(
        store.release_attempts(leaving, "kubernetes").await.unwrap(),
        1
    );
    // Released, it is no node's: not lost with the leaving node, not reported by it.
    assert!(store.lost_running_nodes().await.unwrap().is_empty());
    assert_eq!(
        store
            .extend_leases(leaving, &[(claimed[0].task_id, 1)])
            .await
            .unwrap(),
        [LeaseState::Lost]
    );
    let adopted = store
        .adopt_released(&claim(adopter, &["kubernetes"], 5), "kubernetes")
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].attempt, 1, "the same attempt");
    assert!(
        store
            .adopt_released(&claim(adopter, &["kubernetes"], 5), "kubernetes")
            .await
            .unwrap()
            .is_empty(),
        "adopted once"
    );
    assert_eq!(
        store
            .complete_attempt(
                adopter,
                claimed[0].task_id,
                1,
                AttemptOutcome::Succeeded,
                None
            )
            .await
            .unwrap(),
        TaskStatus::Succeeded
    );
    let done = store.get_job(j.id).await.unwrap();
    assert_eq!(done.state.attempts, 1);
    assert_eq!(done.attempts[0].node_id, Some(adopter));
}

async fn an_audit_entry_is_written_before_its_outcome_and_kept_without_one(db: Db) {
    let store = db.open().await;
    let entry = |request_id: &str| audit_entry(request_id, orchion_store::now());
    let seqs = store
        .write_audit(&[entry("answered"), entry("interrupted")], &[])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] < seqs[1]);
    // The next group commit carries a new entry and the first one's outcome together.
    let more = store
        .write_audit(
            &[entry("refused")],
            &[AuditOutcome {
                seq: seqs[0],
                status: 201,
                resource: "job-1".into(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    let listed = store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].status, Some(201));
    assert_eq!(listed[0].resource, "job-1");
    assert_eq!(
        listed[1].status, None,
        "a request whose server stopped has no outcome"
    );
    assert_eq!(listed[1].request_id, "interrupted");
}

async fn retention_deletes_old_audit_entries_but_never_the_newest(db: Db) {
    let store = db.open().await;
    let now = orchion_store::now();
    let cut = now - time::Duration::hours(1);
    let entry = |request_id: &str, at| AuditEntry {
        status: Some(201),
        ..audit_entry(request_id, at)
    };
    let old = cut - time::Duration::minutes(1);
    let written = store
        .write_audit(&[entry("a", old), entry("b", old), entry("c", old)], &[])
        .await
        .unwrap();
    let request_ids = |entries: Vec<AuditEntry>| -> Vec<String> {
        entries.into_iter().map(|e| e.request_id).collect()
    };
    // In batches of `limit`, and the newest stays though it expired too.
    assert_eq!(store.delete_audit(cut, 1).await.unwrap(), 1);
    assert_eq!(store.delete_audit(cut, 10).await.unwrap(), 1);
    assert_eq!(store.delete_audit(cut, 10).await.unwrap(), 0);
    let left = store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(request_ids(left), ["c"]);
    // A newer entry numbers after every earlier one, and the old newest can now go.
    let newer = store.write_audit(&[entry("d", now)], &[]).await.unwrap();
    assert!(newer[0] > written[2], "{newer:?} after {written:?}");
    assert_eq!(store.delete_audit(cut, 10).await.unwrap(), 1);
    let left = store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(request_ids(left), ["d"], "what has not expired is kept");
}

/// An operator's `POST /api/v1/jobs` at `at`, not answered yet.
fn audit_entry(request_id: &str, at: time::OffsetDateTime) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at,
        actor: "token:t".into(),
        role: Some(Role::Operator),
        project: None,
        client: "127.0.0.1".into(),
        method: "POST".into(),
        route: "/api/v1/jobs".into(),
        resource: String::new(),
        status: None,
        request_id: request_id.into(),
    }
}

fn intake(
    job: NewJob,
    idempotency: Option<IdempotencyKey>,
    audit: Option<AuditEntry>,
) -> JobIntake {
    JobIntake {
        job,
        idempotency,
        audit: audit.map(Arc::new),
    }
}

async fn secrets_are_versioned_per_project_and_kept_sealed(db: Db) {
    let store = db.open().await;
    let (a, b) = (new_project("a"), new_project("b"));
    store.create_project(a.clone(), None).await.unwrap();
    store.create_project(b.clone(), None).await.unwrap();
    let sealed = |text: &str| orchion_store::Sealed {
        key_id: b"key-1".to_vec(),
        nonce: vec![7; 12],
        ciphertext: text.as_bytes().to_vec(),
    };
    let at = orchion_store::now();
    let first = store
        .put_secret(a.id, "TOKEN", &sealed("one"), "alice", at)
        .await
        .unwrap();
    assert_eq!((first.version, first.created_by.as_str()), (1, "alice"));
    let later = at + time::Duration::seconds(5);
    let second = store
        .put_secret(a.id, "TOKEN", &sealed("two"), "bob", later)
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(
        (second.created_by.as_str(), second.created_at),
        ("alice", at)
    );
    assert_eq!(
        (second.updated_by.as_str(), second.updated_at),
        ("bob", later)
    );
    store
        .put_secret(b.id, "TOKEN", &sealed("other"), "carol", at)
        .await
        .unwrap();
    store
        .put_secret(a.id, "API_KEY", &sealed("k"), "alice", at)
        .await
        .unwrap();

    let names: Vec<_> = store
        .list_secrets(a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.version))
        .collect();
    assert_eq!(names, [("API_KEY".into(), 1), ("TOKEN".to_owned(), 2)]);
    assert_eq!(
        store.secret_info(a.id, "TOKEN").await.unwrap(),
        Some(second)
    );
    assert_eq!(store.secret_info(a.id, "NONE").await.unwrap(), None);

    let opened = store.sealed_secrets(a.id).await.unwrap();
    let names: Vec<_> = opened.iter().map(|s| s.info.name.as_str()).collect();
    assert_eq!(names, ["API_KEY", "TOKEN"]);
    assert_eq!(opened[1].sealed, sealed("two"));
    assert_eq!(
        store.sealed_secrets(b.id).await.unwrap()[0].sealed,
        sealed("other"),
        "each project has its own"
    );
    assert!(
        store
            .sealed_secrets(ProjectId::new())
            .await
            .unwrap()
            .is_empty()
    );

    assert!(store.delete_secret(a.id, "TOKEN").await.unwrap());
    assert!(!store.delete_secret(a.id, "TOKEN").await.unwrap());
    let again = store
        .put_secret(a.id, "TOKEN", &sealed("three"), "alice", at)
        .await
        .unwrap();
    assert_eq!(again.version, 1, "a deleted secret starts again");

    let missing = ProjectId::new();
    match store
        .put_secret(missing, "X", &sealed("x"), "alice", at)
        .await
    {
        Err(StoreError::MissingReference { field, .. }) => assert_eq!(field, "project_id"),
        other => panic!("expected a missing reference, got {other:?}"),
    }
    store.delete_project(b.id).await.unwrap();
    assert!(
        store.list_secrets(b.id).await.unwrap().is_empty(),
        "deleted with its project"
    );
}
