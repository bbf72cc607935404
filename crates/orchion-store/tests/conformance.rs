//! The store conformance suite: every test runs against SQLite and against PostgreSQL
//! (`orchion_testkit::postgres_database`), so both backends keep the same promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashSet, sync::Arc};

use orchion_domain::{
    Capacity, Labels, Liveness, NewProject, Node, NodeId, NodeStatus, PageRequest, Project,
    ProjectFilter, ProjectId, ProjectStatus, ProjectUpdate,
};
use orchion_store::{IdempotencyKey, NodeStateChange, Store, StoreError, connect};

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
    every_change_appends_one_event_in_order,
    data_survives_reopening_the_store,
    a_registered_node_loads_back_with_its_credential,
    re_registering_keeps_registration_time_and_drain,
    node_state_changes_record_status_events,
    heartbeats_are_recorded_without_events,
    a_deleted_node_is_gone,
    commits_are_counted,
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
    assert_eq!(seen, ids, "all projects, once each, in creation order");

    let active = store
        .list_projects(
            ProjectFilter {
                status: Some(ProjectStatus::Active),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    let expected: Vec<ProjectId> = [0, 2, 3, 5, 6].iter().map(|&i| ids[i]).collect();
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
    assert_eq!(all.items.len(), 1);
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
    assert_eq!(all.items.len(), 1, "the refused request wrote nothing");
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
    assert_eq!(all.items.len(), 40);
    assert!(
        all.items
            .iter()
            .all(|p| p.description.starts_with("updated"))
    );
}

async fn every_change_appends_one_event_in_order(db: Db) {
    let store = db.open().await;
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
    let stored = store.register_node(&n, b"hash-1").await.unwrap();
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
    store.register_node(&first, b"h1").await.unwrap();
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
    let stored = store.register_node(&again, b"h2").await.unwrap();
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
    assert_eq!(
        loaded[0].credential_hash, b"h2",
        "the new credential replaces the old"
    );
}

async fn node_state_changes_record_status_events(db: Db) {
    let store = db.open().await;
    let a = node("a");
    let b = node("b");
    store.register_node(&a, b"x").await.unwrap();
    store.register_node(&b, b"y").await.unwrap();
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
    store.register_node(&n, b"x").await.unwrap();
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
    assert_eq!(store.events_after(0, 100).await.unwrap().len(), events);
}

async fn a_deleted_node_is_gone(db: Db) {
    let store = db.open().await;
    let n = node("n");
    store.register_node(&n, b"x").await.unwrap();
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
    store.register_node(&node("n"), b"x").await.unwrap();
    store.create_project(new_project("p"), None).await.unwrap();
    assert_eq!(store.commits(), 2);
    store.record_heartbeats(&[]).await.unwrap();
    assert_eq!(store.commits(), 2, "an empty batch commits nothing");
}
