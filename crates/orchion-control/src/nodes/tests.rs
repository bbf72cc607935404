//! Tests of the registry over a real SQLite store, driving the reconciler with `tick`.

use std::collections::BTreeMap;

use orchion_domain::{JoinLimits, JoinToken, NodeRegistration};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(30);
const DOWN_AFTER: Duration = Duration::from_secs(60);

fn settings() -> RegistrySettings {
    RegistrySettings {
        policy: LivenessPolicy {
            timeout: TIMEOUT,
            down_after: DOWN_AFTER,
        },
        check_interval: Duration::from_secs(5),
    }
}

fn now() -> OffsetDateTime {
    orchion_store::now()
}

struct Fixture {
    store: Arc<dyn Store>,
    registry: NodeRegistry,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("o.db").display());
    let store = orchion_store::connect(&url, 2).await.unwrap();
    let registry = NodeRegistry::load(store.clone(), settings()).await.unwrap();
    Fixture {
        store,
        registry,
        _dir: dir,
    }
}

fn registration(name: &str, labels: &[(&str, &str)]) -> NodeRegistration {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeRegistration::new(
        name.into(),
        "10.1.1.1".into(),
        labels,
        (2000, 4 << 30, 0),
        vec![],
        "test".into(),
    )
    .unwrap()
}

async fn statuses(store: &Arc<dyn Store>) -> Vec<(String, String)> {
    store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "node.status_changed")
        .map(|e| {
            (
                e.data["from"].as_str().unwrap().to_owned(),
                e.data["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn heartbeats_need_the_nodes_own_credential() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let b = f
        .registry
        .join(&Admission::cluster(), registration("b", &[]))
        .await
        .unwrap();
    assert_eq!(a.credential.len(), 64);
    let ok = f
        .registry
        .heartbeat(a.node.id, &a.credential)
        .await
        .unwrap();
    assert_eq!(ok.status, NodeStatus::Ready);
    assert!(matches!(
        f.registry.heartbeat(a.node.id, &b.credential).await,
        Err(RegistryError::BadCredential(id)) if id == a.node.id
    ));
    assert!(matches!(
        f.registry.heartbeat(NodeId::new(), &a.credential).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(f.registry.is_node_credential(&b.credential));
    assert!(!f.registry.is_node_credential("forged"));
}

#[tokio::test]
async fn heartbeats_write_nothing_to_the_store() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let commits = f.store.commits();
    for _ in 0..200 {
        f.registry
            .heartbeat(a.node.id, &a.credential)
            .await
            .unwrap();
    }
    assert_eq!(f.store.commits(), commits);
    // The check writes them all in one transaction.
    let report = f.registry.tick(now()).await.unwrap();
    assert_eq!(report.persisted, 1);
    assert_eq!(f.store.commits(), commits + 1);
}

#[tokio::test]
async fn silence_makes_a_node_unreachable_then_down_and_a_heartbeat_revives_it() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let id = a.node.id;
    let start = now();

    let report = f
        .registry
        .tick(start + TIMEOUT - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(report.changed, 0);
    f.registry
        .tick(start + TIMEOUT + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        f.registry.get(id).unwrap().status(),
        NodeStatus::Unreachable
    );
    f.registry
        .tick(start + TIMEOUT + DOWN_AFTER + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(f.registry.get(id).unwrap().status(), NodeStatus::Down);

    let beat = f.registry.heartbeat(id, &a.credential).await.unwrap();
    assert_eq!(beat.status, NodeStatus::Ready);
    assert_eq!(
        statuses(&f.store).await,
        [
            ("ready".to_owned(), "unreachable".to_owned()),
            ("unreachable".to_owned(), "down".to_owned()),
            ("down".to_owned(), "ready".to_owned()),
        ]
    );
    // The store agrees with memory.
    let stored = f.store.load_nodes().await.unwrap();
    assert_eq!(stored[0].node.status(), NodeStatus::Ready);
}

#[tokio::test]
async fn a_drained_node_stays_drained_through_silence() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let id = a.node.id;
    assert_eq!(
        f.registry.drain(id).await.unwrap().status(),
        NodeStatus::Draining
    );
    f.registry.tick(now() + TIMEOUT * 2).await.unwrap();
    assert_eq!(
        f.registry.get(id).unwrap().status(),
        NodeStatus::Unreachable
    );
    let beat = f.registry.heartbeat(id, &a.credential).await.unwrap();
    assert_eq!(beat.status, NodeStatus::Draining);
    // Draining twice changes nothing and writes nothing.
    let commits = f.store.commits();
    f.registry.drain(id).await.unwrap();
    assert_eq!(f.store.commits(), commits);
}

#[tokio::test]
async fn leaving_makes_a_node_down_at_once() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    assert!(matches!(
        f.registry.leave(a.node.id, "wrong").await,
        Err(RegistryError::BadCredential(_))
    ));
    let node = f.registry.leave(a.node.id, &a.credential).await.unwrap();
    assert_eq!(node.status(), NodeStatus::Down);
}

#[tokio::test]
async fn the_nodes_heard_are_written_in_one_batch_per_check() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let b = f
        .registry
        .join(&Admission::cluster(), registration("b", &[]))
        .await
        .unwrap();
    f.registry
        .heartbeat(a.node.id, &a.credential)
        .await
        .unwrap();
    f.registry
        .heartbeat(b.node.id, &b.credential)
        .await
        .unwrap();
    let commits = f.store.commits();
    let report = f.registry.tick(now()).await.unwrap();
    assert_eq!(report.changed, 0);
    assert_eq!(report.persisted, 2);
    assert_eq!(
        f.store.commits(),
        commits + 1,
        "one transaction for the batch"
    );
    let stored = f.store.load_nodes().await.unwrap();
    for s in stored {
        assert_eq!(
            s.node.last_heartbeat_at,
            f.registry.get(s.node.id).unwrap().last_heartbeat_at
        );
    }
    // Nothing heard since: the next check writes nothing.
    assert_eq!(f.registry.tick(now()).await.unwrap().persisted, 0);
    assert_eq!(f.store.commits(), commits + 1);
}

/// Two registries on one store are two replicas: what one does, the other sees, and silence is
/// judged by what any replica heard, never by what one replica did not.
#[tokio::test]
async fn replicas_share_the_nodes_and_judge_silence_by_the_store() {
    let f = fixture().await;
    let other = NodeRegistry::load(f.store.clone(), settings())
        .await
        .unwrap();
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let id = a.node.id;
    // Unknown to the other replica until asked: then read from the store.
    assert!(other.get(id).is_none());
    assert!(other.authenticate(id, &a.credential).await.is_ok());
    let beat = other.heartbeat(id, &a.credential).await.unwrap();
    assert_eq!(beat.status, NodeStatus::Ready);

    // Heard only through `other`; the first replica never hears it, yet its check finds the
    // node alive by the store's record.
    let heard_at = now();
    other.tick(heard_at).await.unwrap();
    let report = f
        .registry
        .tick(heard_at + TIMEOUT - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(report.changed, 0);
    assert_eq!(f.registry.get(id).unwrap().status(), NodeStatus::Ready);

    // Nobody hears it: the first check past the timeout on either replica decides, once.
    let late = heard_at + TIMEOUT + Duration::from_secs(2);
    assert_eq!(f.registry.tick(late).await.unwrap().changed, 1);
    assert_eq!(other.tick(late).await.unwrap().changed, 0);
    assert_eq!(other.get(id).unwrap().status(), NodeStatus::Unreachable);
    assert_eq!(
        statuses(&f.store).await,
        [("ready".to_owned(), "unreachable".to_owned())]
    );

    // A drain through one replica, a restart request through the other.
    f.registry.drain(id).await.unwrap();
    other.request_restart(id).await.unwrap();
    f.registry.refresh().await.unwrap();
    assert!(f.registry.restart_pending(id));
    let beat = f.registry.heartbeat(id, &a.credential).await.unwrap();
    assert_eq!(beat.status, NodeStatus::Draining);
    assert!(
        beat.restart,
        "the request reaches the heartbeat through the other replica"
    );
    other.refresh().await.unwrap();
    assert!(!other.restart_pending(id));
    assert!(!other.heartbeat(id, &a.credential).await.unwrap().restart);

    // Deleted through one replica: the other forgets it.
    f.registry.delete(id).await.unwrap();
    other.refresh().await.unwrap();
    assert!(other.get(id).is_none());
    assert!(matches!(
        other.heartbeat(id, &a.credential).await,
        Err(RegistryError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_restarted_registry_knows_every_node_and_its_credential() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[("zone", "x")]))
        .await
        .unwrap();
    f.registry.drain(a.node.id).await.unwrap();
    let restarted = NodeRegistry::load(f.store.clone(), settings())
        .await
        .unwrap();
    let node = restarted.get(a.node.id).unwrap();
    assert_eq!(node.status(), NodeStatus::Draining);
    assert_eq!(node.labels.as_map()["zone"], "x");
    assert!(restarted.heartbeat(a.node.id, &a.credential).await.is_ok());
    // The node was last heard long ago (every server was down for an hour). Grace: a replica
    // judges no silence in its first timeout, so the agents have that long to come back.
    let mut stale = node.clone();
    stale.last_heartbeat_at = now() - Duration::from_secs(3600);
    f.store
        .rejoin_node(&stale, &digest(&a.credential))
        .await
        .unwrap()
        .unwrap();
    let restarted = NodeRegistry::load(f.store.clone(), settings())
        .await
        .unwrap();
    assert_eq!(restarted.tick(now()).await.unwrap().changed, 0);
    assert_eq!(
        restarted
            .tick(now() + TIMEOUT + Duration::from_secs(1))
            .await
            .unwrap()
            .changed,
        1
    );
}

#[tokio::test]
async fn a_restart_request_reaches_the_next_heartbeat_once() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    f.registry.request_restart(a.node.id).await.unwrap();
    assert!(f.registry.restart_pending(a.node.id));
    assert!(
        f.registry
            .heartbeat(a.node.id, &a.credential)
            .await
            .unwrap()
            .restart
    );
    assert!(
        !f.registry
            .heartbeat(a.node.id, &a.credential)
            .await
            .unwrap()
            .restart
    );
    assert!(matches!(
        f.registry.request_restart(NodeId::new()).await,
        Err(RegistryError::NotFound(_))
    ));
}

#[tokio::test]
async fn deleted_nodes_are_forgotten() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    f.registry.delete(a.node.id).await.unwrap();
    assert!(f.registry.get(a.node.id).is_none());
    assert!(matches!(
        f.registry.heartbeat(a.node.id, &a.credential).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        f.registry.delete(a.node.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(f.store.load_nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn listing_filters_by_status_and_labels_and_pages() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let zone = if i % 2 == 0 { "a" } else { "b" };
        ids.push(
            f.registry
                .join(
                    &Admission::cluster(),
                    registration(&format!("n{i}"), &[("zone", zone)]),
                )
                .await
                .unwrap()
                .node
                .id,
        );
    }
    f.registry.drain(ids[2]).await.unwrap();
    let zone_a = NodeFilter {
        status: None,
        labels: [("zone".to_owned(), "a".to_owned())].into(),
    };
    let got: Vec<NodeId> = f
        .registry
        .list(&zone_a, PageRequest::default())
        .items
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(got, [ids[0], ids[2], ids[4]]);
    let ready_a = NodeFilter {
        status: Some(NodeStatus::Ready),
        ..zone_a
    };
    let got: Vec<NodeId> = f
        .registry
        .list(&ready_a, PageRequest::default())
        .items
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(got, [ids[0], ids[4]]);

    let first = f.registry.list(
        &NodeFilter::default(),
        PageRequest::new(Some(2), None).unwrap(),
    );
    assert_eq!(first.items.len(), 2);
    let second = f.registry.list(
        &NodeFilter::default(),
        PageRequest::new(Some(3), first.next).unwrap(),
    );
    assert_eq!(second.items.len(), 3);
    assert_eq!(second.next, None);
    let all: Vec<NodeId> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|n| n.id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(all, sorted);
}

#[tokio::test]
async fn a_node_registers_again_only_with_its_own_credential_which_it_keeps() {
    let f = fixture().await;
    let a = f
        .registry
        .join(&Admission::cluster(), registration("a", &[]))
        .await
        .unwrap();
    let b = f
        .registry
        .join(&Admission::cluster(), registration("b", &[]))
        .await
        .unwrap();
    assert!(matches!(
        f.registry
            .rejoin(a.node.id, &b.credential, registration("a", &[]))
            .await,
        Err(RegistryError::BadCredential(_))
    ));
    let again = f
        .registry
        .rejoin(a.node.id, &a.credential, registration("renamed", &[]))
        .await
        .unwrap();
    assert_eq!(again.node.id, a.node.id);
    assert_eq!(again.node.registered_at, a.node.registered_at);
    assert_eq!(again.credential, a.credential, "the credential stays");
    assert_eq!(f.registry.get(a.node.id).unwrap().name, "renamed");
    assert!(f.registry.heartbeat(a.node.id, &a.credential).await.is_ok());

    f.registry.delete(a.node.id).await.unwrap();
    assert!(matches!(
        f.registry
            .rejoin(a.node.id, &a.credential, registration("a", &[]))
            .await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(f.store.load_node(a.node.id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_join_tokens_limits_hold_when_joining_and_every_time_after() {
    let f = fixture().await;
    let now = now();
    let token = JoinToken {
        id: JoinTokenId::new(),
        name: "edge".into(),
        digest: b"d".to_vec(),
        limits: JoinLimits {
            labels: Some([("zone".to_owned(), "*".to_owned())].into()),
            max_capacity: None,
        },
        created_by: "test".into(),
        created_at: now,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    f.store.create_join_token(&token).await.unwrap();
    let admission = Admission {
        join_token: Some(token.id),
        limits: token.limits.clone(),
    };
    let Err(RegistryError::BeyondLimits(problems)) = f
        .registry
        .join(&admission, registration("a", &[("gpu", "true")]))
        .await
    else {
        panic!("a label the token does not allow was accepted");
    };
    assert!(problems[0].contains("`gpu`"), "{problems:?}");
    let a = f
        .registry
        .join(&admission, registration("a", &[("zone", "eu")]))
        .await
        .unwrap();
    // Revoking the token admits no new node, but the node it admitted keeps its credential,
    // and the token's limits still hold for it.
    f.store.revoke_join_token(token.id, now).await.unwrap();
    assert!(matches!(
        f.registry
            .rejoin(
                a.node.id,
                &a.credential,
                registration("a", &[("gpu", "true")])
            )
            .await,
        Err(RegistryError::BeyondLimits(_))
    ));
    f.registry
        .rejoin(
            a.node.id,
            &a.credential,
            registration("a", &[("zone", "us")]),
        )
        .await
        .unwrap();
}
