//! NodeService over a real socket: authentication, validation and size limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use orchion_control::{JoinTokenRequest, JoinTokens, NodeRegistry, RegistrySettings};
use orchion_grpc::{NodeService, serve};
use orchion_proto::v1::{self as pb, node_service_client::NodeServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, transport::Channel};

const TOKEN: &str = "join-token-for-tests-0001";
const MAX_MESSAGE: usize = 64 * 1024;

struct Harness {
    client: NodeServiceClient<Channel>,
    store: Arc<dyn orchion_store::Store>,
    channel: Channel,
    registry: Arc<NodeRegistry>,
    join_tokens: Arc<JoinTokens>,
    stop: CancellationToken,
    _db: Option<orchion_testkit::SqliteDatabase>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn harness() -> Harness {
    let db = orchion_testkit::sqlite_database();
    let url = db.url().to_owned();
    harness_on(&url, Some(db)).await
}

/// The harness over a fresh PostgreSQL database, where PostgreSQL is available (CI has it).
async fn postgres_harness() -> Option<Harness> {
    let url = orchion_testkit::postgres_database().await?;
    Some(harness_on(&url, None).await)
}

async fn harness_on(url: &str, db: Option<orchion_testkit::SqliteDatabase>) -> Harness {
    let store = orchion_store::connect(url, 2).await.unwrap();
    let settings = RegistrySettings::default();
    let registry = Arc::new(NodeRegistry::load(store.clone(), settings).await.unwrap());
    let queue = Arc::new(orchion_control::WorkQueue::new(
        store.clone(),
        registry.clone(),
    ));
    let join_tokens = Arc::new(JoinTokens::new(store.clone(), TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        None,
        NodeService::new(registry.clone(), join_tokens.clone()),
        orchion_grpc::WorkService::new(queue),
        MAX_MESSAGE,
        stop.clone(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Harness {
        store,
        client: NodeServiceClient::new(channel.clone()),
        channel,
        registry,
        join_tokens,
        stop,
        _db: db,
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn registration(name: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        name: name.into(),
        labels: [("zone".to_owned(), "eu".to_owned())].into(),
        capacity: Some(pb::Capacity {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            gpus: 0,
        }),
        version: "test".into(),
        ..Default::default()
    }
}

async fn register(h: &mut Harness, name: &str) -> pb::RegisterNodeResponse {
    h.client
        .register_node(with_token(registration(name), TOKEN))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_node_registers_heartbeats_lists_and_leaves() {
    let mut h = harness().await;
    let registered = register(&mut h, "n1").await;
    assert_eq!(registered.heartbeat_interval_ms, 10_000);
    let beat = h
        .client
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                node_id: registered.node_id.clone(),
            },
            &registered.credential,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beat.status(), pb::NodeStatus::Ready);

    for token in [TOKEN, registered.credential.as_str()] {
        let listed = h
            .client
            .list_nodes(with_token(pb::ListNodesRequest::default(), token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.nodes.len(), 1);
        let node = &listed.nodes[0];
        assert_eq!(node.id, registered.node_id);
        assert_eq!(
            node.address, "127.0.0.1",
            "the peer address when none is given"
        );
        assert_eq!(node.labels["zone"], "eu");
        assert!(node.last_heartbeat_at.is_some());
    }

    h.client
        .leave_node(with_token(
            pb::LeaveNodeRequest {
                node_id: registered.node_id.clone(),
            },
            &registered.credential,
        ))
        .await
        .unwrap();
    let down = h
        .client
        .list_nodes(with_token(
            pb::ListNodesRequest {
                status: pb::NodeStatus::Down.into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(down.nodes.len(), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_join_token_is_unauthenticated() {
    let mut h = harness().await;
    let wrong = h
        .client
        .register_node(with_token(registration("x"), "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let missing = h
        .client
        .register_node(Request::new(registration("x")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("authorization"),
        "{}",
        missing.message()
    );
    let listing = h
        .client
        .list_nodes(with_token(pb::ListNodesRequest::default(), "forged"))
        .await
        .unwrap_err();
    assert_eq!(listing.code(), Code::Unauthenticated);
    assert!(
        h.registry
            .list(&Default::default(), Default::default())
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn heartbeats_from_unknown_deleted_or_forged_nodes_are_refused() {
    let mut h = harness().await;
    let a = register(&mut h, "a").await;
    let b = register(&mut h, "b").await;
    let beat = |id: &str, credential: &str| {
        with_token(
            pb::HeartbeatRequest {
                node_id: id.to_owned(),
            },
            credential,
        )
    };

    let unknown = h
        .client
        .heartbeat(beat("0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f8e", &a.credential))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // b's credential does not work for a, nor a made-up one.
    for credential in [b.credential.as_str(), "00ff"] {
        let forged = h
            .client
            .heartbeat(beat(&a.node_id, credential))
            .await
            .unwrap_err();
        assert_eq!(forged.code(), Code::Unauthenticated);
    }
    let malformed = h
        .client
        .heartbeat(beat("nope", &a.credential))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("node_id"));

    h.registry.delete(a.node_id.parse().unwrap()).await.unwrap();
    let deleted = h
        .client
        .heartbeat(beat(&a.node_id, &a.credential))
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), Code::NotFound);

    // Nothing of that touched b.
    let ok = h
        .client
        .heartbeat(beat(&b.node_id, &b.credential))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().status(), pb::NodeStatus::Ready);
}

#[tokio::test]
async fn invalid_registrations_name_every_problem_and_register_nothing() {
    let mut h = harness().await;
    let mut request = registration("");
    request.capacity = Some(pb::Capacity {
        cpu_millis: u64::MAX,
        memory_bytes: u64::MAX,
        gpus: 100_000,
    });
    request.labels = [("Bad Key".to_owned(), "v".to_owned())].into();
    let err = h
        .client
        .register_node(with_token(request, TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for part in ["name", "cpu_millis", "memory_bytes", "gpus", "`Bad Key`"] {
        assert!(
            err.message().contains(part),
            "{part} missing from: {}",
            err.message()
        );
    }
    let mut request = registration("x");
    request.node_id = "not-a-uuid".into();
    let err = h
        .client
        .register_node(with_token(request, TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        h.registry
            .list(&Default::default(), Default::default())
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_keeps_serving() {
    let mut h = harness().await;
    let mut request = registration("big");
    request.version = "x".repeat(MAX_MESSAGE * 2);
    let err = h
        .client
        .register_node(with_token(request, TOKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    assert!(
        h.registry
            .list(&Default::default(), Default::default())
            .items
            .is_empty()
    );
    register(&mut h, "after").await;
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let h = harness().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "orchion.v1.NodeService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn results_and_logs_for_a_lost_attempt_are_refused() {
    use orchion_proto::v1::work_service_client::WorkServiceClient;
    let mut h = harness().await;
    let node = register(&mut h, "worker").await;
    let other = register(&mut h, "other").await;
    h.store.create_job(shell_job(), None).await.unwrap();
    let mut work = WorkServiceClient::new(h.channel.clone());
    let claim = pb::ClaimTasksRequest {
        node_id: node.node_id.clone(),
        executors: vec!["shell".into()],
        max_tasks: 4,
        wait_ms: 1000,
    };
    // Another node's credential cannot claim as this node.
    let forged = work
        .claim_tasks(with_token(claim.clone(), &other.credential))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    let tasks = work
        .claim_tasks(with_token(claim, &node.credential))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task.attempt, 1);
    assert_eq!(task.lease_ms, 30_000);

    // The lease runs out (simulated an hour on): the attempt is lost.
    let later = orchion_store::now() + time::Duration::hours(1);
    assert_eq!(h.store.expire_leases(later).await.unwrap(), 1);

    let late = pb::CompleteTasksRequest {
        node_id: node.node_id.clone(),
        results: vec![pb::TaskResult {
            task_id: task.task_id.clone(),
            attempt: 1,
            outcome: pb::TaskOutcome::Succeeded.into(),
            ..Default::default()
        }],
    };
    let acks = work
        .complete_tasks(with_token(late, &node.credential))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].job_status, "");
    assert!(
        acks[0].refused.contains("is not running on node"),
        "{acks:?}"
    );
    let logs = pb::AppendLogsRequest {
        node_id: node.node_id.clone(),
        task_id: task.task_id.clone(),
        attempt: 1,
        lines: vec![pb::LogLine {
            stream: "stdout".into(),
            line: "late".into(),
            at: None,
        }],
    };
    let refused = work
        .append_logs(with_token(logs, &node.credential))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let extended = work
        .extend_leases(with_token(
            pb::ExtendLeasesRequest {
                node_id: node.node_id.clone(),
                leases: vec![pb::Lease {
                    task_id: task.task_id.clone(),
                    attempt: 1,
                }],
            },
            &node.credential,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!extended.leases[0].held);

    let bad = pb::CompleteTasksRequest {
        node_id: node.node_id.clone(),
        results: vec![
            pb::TaskResult {
                task_id: task.task_id.clone(),
                attempt: 1,
                outcome: pb::TaskOutcome::Succeeded.into(),
                ..Default::default()
            },
            pb::TaskResult {
                task_id: task.task_id.clone(),
                attempt: 1,
                outcome: 42,
                ..Default::default()
            },
        ],
    };
    let invalid = work
        .complete_tasks(with_token(bad, &node.credential))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        invalid.message(),
        "results[1].outcome: 42 is not a TaskOutcome"
    );
}

fn shell_job() -> orchion_domain::NewJob {
    orchion_domain::NewJob {
        name: "j".into(),
        project_id: None,
        executor: "shell".into(),
        spec: r#"{"command":"true"}"#.into(),
        priority: 0,
        retry: Default::default(),
        timeouts: Default::default(),
        placement: Default::default(),
        concurrency: None,
        run_at: None,
        trace_parent: None,
    }
}

/// A task may print anything, NUL included, which PostgreSQL cannot store as text: its log
/// lines, output, error and outputs are kept with U+FFFD in its place, on both backends.
#[tokio::test]
async fn what_a_task_prints_is_kept_even_with_nul_characters() {
    use orchion_proto::v1::work_service_client::WorkServiceClient;
    let mut harnesses = vec![("sqlite", harness().await)];
    if let Some(h) = postgres_harness().await {
        harnesses.push(("postgres", h));
    }
    for (backend, mut h) in harnesses {
        let node = register(&mut h, "worker").await;
        let created = h.store.create_job(shell_job(), None).await.unwrap().value;
        let mut work = WorkServiceClient::new(h.channel.clone());
        let claim = pb::ClaimTasksRequest {
            node_id: node.node_id.clone(),
            executors: vec!["shell".into()],
            max_tasks: 1,
            wait_ms: 1000,
        };
        let task = work
            .claim_tasks(with_token(claim, &node.credential))
            .await
            .unwrap()
            .into_inner()
            .tasks
            .remove(0);
        let logs = pb::AppendLogsRequest {
            node_id: node.node_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            lines: vec![pb::LogLine {
                stream: "stdout".into(),
                line: "binary\0data".into(),
                at: None,
            }],
        };
        work.append_logs(with_token(logs, &node.credential))
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let result = pb::CompleteTasksRequest {
            node_id: node.node_id.clone(),
            results: vec![pb::TaskResult {
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                outcome: pb::TaskOutcome::Succeeded.into(),
                output: Some("out\0put".into()),
                outputs: Some(r#"{"k\u0000": "v\u0000"}"#.into()),
                ..Default::default()
            }],
        };
        let acks = work
            .complete_tasks(with_token(result, &node.credential))
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e}"))
            .into_inner()
            .results;
        assert_eq!(acks[0].job_status, "succeeded", "{backend}: {acks:?}");
        let job = h.store.get_job(created.id).await.unwrap();
        assert_eq!(job.output.as_deref(), Some("out\u{FFFD}put"), "{backend}");
        assert_eq!(
            job.outputs.as_deref(),
            Some("{\"k\u{FFFD}\":\"v\u{FFFD}\"}"),
            "{backend}"
        );
        let lines = h
            .store
            .read_logs(task.task_id.parse().unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(lines[0].line, "binary\u{FFFD}data", "{backend}");
    }
}

fn rejoining(registered: &pb::RegisterNodeResponse, name: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        node_id: registered.node_id.clone(),
        ..registration(name)
    }
}

#[tokio::test]
async fn the_join_token_alone_cannot_take_over_a_node() {
    let mut h = harness().await;
    let node = register(&mut h, "victim").await;
    let err = h
        .client
        .register_node(with_token(rejoining(&node, "impostor"), TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("own credential"), "{err:?}");
    let other = register(&mut h, "other").await;
    let err = h
        .client
        .register_node(with_token(rejoining(&node, "impostor"), &other.credential))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "another node's credential"
    );
    let id = node.node_id.parse().unwrap();
    assert_eq!(h.registry.get(id).unwrap().name, "victim");

    let again = h
        .client
        .register_node(with_token(rejoining(&node, "victim-2"), &node.credential))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.node_id, node.node_id);
    assert_eq!(again.credential, node.credential, "the credential is kept");
    assert_eq!(h.registry.get(id).unwrap().name, "victim-2");
}

#[tokio::test]
async fn a_deleted_nodes_credential_is_refused_and_it_must_join_anew() {
    let mut h = harness().await;
    let node = register(&mut h, "gone").await;
    h.registry
        .delete(node.node_id.parse().unwrap())
        .await
        .unwrap();
    let err = h
        .client
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                node_id: node.node_id.clone(),
            },
            &node.credential,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .client
        .register_node(with_token(rejoining(&node, "gone"), &node.credential))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = h
        .client
        .list_nodes(with_token(
            pb::ListNodesRequest::default(),
            &node.credential,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let fresh = register(&mut h, "gone").await;
    assert_ne!(fresh.node_id, node.node_id, "it joins as a new node");
}

#[tokio::test]
async fn named_join_tokens_admit_within_their_limits_until_revoked_or_expired() {
    let mut h = harness().await;
    let (limited, limited_text) = h
        .join_tokens
        .create(
            JoinTokenRequest {
                name: "edge".into(),
                limits: orchion_domain::JoinLimits {
                    labels: Some([("zone".to_owned(), "eu".to_owned())].into()),
                    max_capacity: Some(orchion_domain::Capacity::new(2000, 4 << 30, 0).unwrap()),
                },
                ttl: None,
            },
            "test",
        )
        .await
        .unwrap();
    let node = h
        .client
        .register_node(with_token(registration("edge-1"), &limited_text))
        .await
        .unwrap()
        .into_inner();
    let mut greedy = registration("edge-2");
    greedy.labels.insert("gpu".into(), "true".into());
    greedy.capacity.as_mut().unwrap().cpu_millis = 64_000;
    let err = h
        .client
        .register_node(with_token(greedy.clone(), &limited_text))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("`gpu`") && err.message().contains("cpu_millis 64000"),
        "{err:?}"
    );
    // The limits hold for the node it admitted, every time it registers again.
    greedy.node_id = node.node_id.clone();
    let err = h
        .client
        .register_node(with_token(greedy, &node.credential))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    h.join_tokens.revoke(limited.id).await.unwrap();
    let err = h
        .client
        .register_node(with_token(registration("edge-3"), &limited_text))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a revoked join token");
    let err = h
        .client
        .list_nodes(with_token(pb::ListNodesRequest::default(), &limited_text))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    h.client
        .register_node(with_token(rejoining(&node, "edge-1"), &node.credential))
        .await
        .expect("a node its revoked token admitted keeps its credential");

    let expired_text = "orcj_expired-join-token-for-tests";
    let now = orchion_store::now();
    h.store
        .create_join_token(&orchion_domain::JoinToken {
            id: orchion_domain::JoinTokenId::new(),
            name: "expired".into(),
            digest: orchion_control::access::digest(expired_text),
            limits: Default::default(),
            created_by: "test".into(),
            created_at: now - time::Duration::hours(2),
            expires_at: Some(now - time::Duration::hours(1)),
            last_used_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    let err = h
        .client
        .register_node(with_token(registration("late"), expired_text))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "an expired join token");
}
