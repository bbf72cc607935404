//! A fake Kubernetes API server for the `kubernetes` executor's tests: the endpoints the executor
//! uses, in the API server's wire format, with the Job controller and kubelet played by scripts.
//!
//! Endpoints: create/get/list/watch/delete Jobs (`/apis/batch/v1/namespaces/{ns}/jobs`), list
//! and get pods (`/api/v1/namespaces/{ns}/pods`, label selectors), pod logs with `follow`,
//! `timestamps` and `sinceTime`, and `/version`. Errors are the API server's `Status` objects
//! (404 NotFound, 409 AlreadyExists, 422 Invalid, 400 for the log of a container not started).
//! Watches resume from a `resourceVersion`; with `--drop-watch-after N` every watch connection
//! is closed after N events, as a load balancer or an API server restart would;
//! `--drop-logs-after N` does the same to followed log streams after N lines.
//!
//! The image's name picks the script (`ghcr.io/x/succeed:1` plays `succeed`):
//! - `succeed`: pending, running with three log lines, exit 0.
//! - `fail`: running, one line, exit code 3.
//! - `oom`: running, one line, killed with `OOMKilled` (137).
//! - `pull-backoff`: `ErrImagePull`, then `ImagePullBackOff` for ever.
//! - `sleep`: running, a line per tick, until deleted or past `activeDeadlineSeconds`.
//! - anything else: as `succeed`.
//!
//! `GET /fake/requests` lists the requests that changed something (`POST jobs/NAME`,
//! `DELETE jobs/NAME propagationPolicy=Foreground`) and counts the watches opened, for the
//! tests' assertions. Usage:
//! `orchion-fake-kube [--tick-ms 50] [--drop-watch-after N] [--drop-logs-after N]`; prints `listening on ADDR`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;

type Params = Query<BTreeMap<String, String>>;

#[derive(Default)]
struct World {
    rv: u64,
    /// `(namespace, name)` → object.
    jobs: BTreeMap<(String, String), Value>,
    pods: BTreeMap<(String, String), Value>,
    /// Pod name → `(time, line)`.
    logs: BTreeMap<String, Vec<(OffsetDateTime, String)>>,
    /// Every change to a Job: `(resourceVersion, type, namespace, object)`.
    history: Vec<(u64, &'static str, String, Value)>,
    scripts: BTreeMap<(String, String), tokio::task::AbortHandle>,
    requests: Vec<String>,
    /// How many watch connections were opened.
    watches: usize,
}

#[derive(Clone)]
struct Fake {
    world: Arc<Mutex<World>>,
    changed: Arc<watch::Sender<u64>>,
    tick: Duration,
    drop_watch_after: Option<usize>,
    drop_logs_after: Option<usize>,
}

impl Fake {
    fn read<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&self.world.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the world and wakes the watches and log followers.
    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut world = self.world.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut world);
        let rv = world.rv;
        drop(world);
        self.changed.send_replace(rv);
        out
    }

    /// Stores a Job (with a new resource version) and records the event.
    fn put_job(world: &mut World, kind: &'static str, namespace: &str, mut job: Value) {
        world.rv += 1;
        job["metadata"]["resourceVersion"] = json!(world.rv.to_string());
        let name = job["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        world
            .history
            .push((world.rv, kind, namespace.to_owned(), job.clone()));
        if kind == "DELETED" {
            world.jobs.remove(&(namespace.to_owned(), name));
        } else {
            world.jobs.insert((namespace.to_owned(), name), job);
        }
    }

    fn update_job(&self, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        self.with(|world| {
            if let Some(mut job) = world.jobs.get(&(namespace.into(), name.into())).cloned() {
                change(&mut job);
                Self::put_job(world, "MODIFIED", namespace, job);
            }
        });
    }

    fn update_pod(&self, namespace: &str, pod: &str, change: impl FnOnce(&mut Value)) {
        self.with(|world| {
            if let Some(p) = world.pods.get_mut(&(namespace.into(), pod.into())) {
                change(p);
                world.rv += 1;
                p["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            }
        });
    }

    fn log(&self, pod: &str, line: String) {
        self.with(|world| {
            world
                .logs
                .entry(pod.to_owned())
                .or_default()
                .push((OffsetDateTime::now_utc(), line));
            world.rv += 1;
        });
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

fn stamp(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    at.format(&format).unwrap_or_default()
}

/// `k=v,k2=v2` against an object's labels.
fn selected(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let labels = &object["metadata"]["labels"];
    let labels_ok = params.get("labelSelector").is_none_or(|selector| {
        selector.split(',').filter(|s| !s.is_empty()).all(|term| {
            term.split_once('=')
                .is_some_and(|(k, v)| labels[k].as_str() == Some(v.trim_start_matches('=')))
        })
    });
    let fields_ok = params.get("fieldSelector").is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some(("metadata.name", name)) => object["metadata"]["name"].as_str() == Some(name),
            Some(("metadata.namespace", ns)) => {
                object["metadata"]["namespace"].as_str() == Some(ns)
            }
            _ => false,
        })
    });
    labels_ok && fields_ok
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

async fn jobs(State(fake): State<Fake>, Path(ns): Path<String>, Query(q): Params) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_jobs(fake, ns, q);
    }
    list(&fake, "batch/v1", "JobList", |w| &w.jobs, &ns, &q)
}

/// A list answer: the objects of `ns` the selectors pick, at the current resource version.
fn list(
    fake: &Fake,
    api_version: &str,
    kind: &str,
    objects: impl Fn(&World) -> &BTreeMap<(String, String), Value>,
    ns: &str,
    q: &BTreeMap<String, String>,
) -> Response {
    let (items, rv) = fake.read(|w| {
        let items: Vec<Value> = objects(w)
            .iter()
            .filter(|((n, _), object)| n == ns && selected(object, q))
            .map(|(_, object)| object.clone())
            .collect();
        (items, w.rv)
    });
    Json(json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn watch_jobs(fake: Fake, ns: String, q: BTreeMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let until = tokio::time::Instant::now() + timeout;
    let limit = fake.drop_watch_after;
    fake.with(|w| w.watches += 1);
    let changes = fake.changed.subscribe();
    let state = (fake, from, 0usize, changes);
    let stream = futures::stream::unfold(state, move |(fake, from, sent, mut changes)| {
        let ns = ns.clone();
        let q = q.clone();
        async move {
            if limit.is_some_and(|l| sent >= l) {
                return None;
            }
            loop {
                changes.borrow_and_update();
                let next = fake.read(|w| {
                    w.history
                        .iter()
                        .find(|(rv, _, n, job)| *rv > from && *n == ns && selected(job, &q))
                        .cloned()
                });
                if let Some((rv, kind, _, object)) = next {
                    let line = format!("{}\n", json!({"type": kind, "object": object}));
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                        (fake, rv, sent + 1, changes),
                    ));
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return None },
                    () = tokio::time::sleep_until(until) => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn create_job(
    State(fake): State<Fake>,
    Path(ns): Path<String>,
    Json(mut job): Json<Value>,
) -> Response {
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !valid_name(&name) {
        return status(
            422,
            "Invalid",
            format!(
                "Job.batch \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters or '-'"
            ),
        );
    }
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    if image.is_empty() {
        return status(
            422,
            "Invalid",
            format!(
                "Job.batch \"{name}\" is invalid: spec.template.spec.containers[0].image: Required value"
            ),
        );
    }
    let created = fake.with(|w| {
        let key = (ns.clone(), name.clone());
        if w.jobs.contains_key(&key) {
            return None;
        }
        job["metadata"]["namespace"] = json!(ns);
        job["metadata"]["uid"] = json!(format!("uid-{}", w.rv + 1));
        job["metadata"]["creationTimestamp"] = json!(now());
        job["status"] = json!({});
        Fake::put_job(w, "ADDED", &ns, job.clone());
        w.requests.push(format!("POST jobs/{name}"));
        w.jobs.get(&key).cloned()
    });
    let Some(job) = created else {
        return status(
            409,
            "AlreadyExists",
            format!("jobs.batch \"{name}\" already exists"),
        );
    };
    let script = tokio::spawn(play(fake.clone(), ns.clone(), job.clone(), image));
    fake.with(|w| w.scripts.insert((ns, name), script.abort_handle()));
    (StatusCode::CREATED, Json(job)).into_response()
}

async fn get_job(State(fake): State<Fake>, Path((ns, name)): Path<(String, String)>) -> Response {
    match fake.read(|w| w.jobs.get(&(ns, name.clone())).cloned()) {
        Some(job) => Json(job).into_response(),
        None => status(404, "NotFound", format!("jobs.batch \"{name}\" not found")),
    }
}

async fn delete_job(
    State(fake): State<Fake>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let policy = options["propagationPolicy"]
        .as_str()
        .unwrap_or("Background")
        .to_owned();
    let found = fake.with(|w| {
        let job = w.jobs.get(&(ns.clone(), name.clone())).cloned()?;
        w.requests
            .push(format!("DELETE jobs/{name} propagationPolicy={policy}"));
        if let Some(script) = w.scripts.remove(&(ns.clone(), name.clone())) {
            script.abort();
        }
        let mut marked = job.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        if policy == "Foreground" {
            marked["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
        }
        Fake::put_job(w, "MODIFIED", &ns, marked.clone());
        // The garbage collector: the pods go, then (foreground) the Job.
        w.pods.retain(|(n, _), pod| {
            !(*n == ns && pod["metadata"]["labels"]["job-name"].as_str() == Some(&name))
        });
        Fake::put_job(w, "DELETED", &ns, marked.clone());
        Some(marked)
    });
    match found {
        Some(job) => Json(job).into_response(),
        None => status(404, "NotFound", format!("jobs.batch \"{name}\" not found")),
    }
}

async fn pods(State(fake): State<Fake>, Path(ns): Path<String>, Query(q): Params) -> Response {
    list(&fake, "v1", "PodList", |w| &w.pods, &ns, &q)
}

async fn get_pod(State(fake): State<Fake>, Path((ns, name)): Path<(String, String)>) -> Response {
    match fake.read(|w| w.pods.get(&(ns, name.clone())).cloned()) {
        Some(pod) => Json(pod).into_response(),
        None => status(404, "NotFound", format!("pods \"{name}\" not found")),
    }
}

async fn pod_log(
    State(fake): State<Fake>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    let Some(pod) = fake.read(|w| w.pods.get(&(ns.clone(), name.clone())).cloned()) else {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    };
    let state = &pod["status"]["containerStatuses"][0]["state"];
    if state.get("running").is_none() && state.get("terminated").is_none() {
        let reason = state["waiting"]["reason"]
            .as_str()
            .unwrap_or("ContainerCreating");
        return status(
            400,
            "BadRequest",
            format!("container \"main\" in pod \"{name}\" is waiting to start: {reason}"),
        );
    }
    let follow = q.get("follow").is_some_and(|f| f == "true");
    let timestamps = q.get("timestamps").is_some_and(|t| t == "true");
    let since = q.get("sinceTime").and_then(|t| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    let changes = fake.changed.subscribe();
    let stream = futures::stream::unfold(
        (fake, 0usize, 0usize, changes),
        move |(fake, mut next, mut sent, mut changes)| {
            let (ns, name) = (ns.clone(), name.clone());
            async move {
                let room = fake
                    .drop_logs_after
                    .filter(|_| follow)
                    .map_or(usize::MAX, |l| l.saturating_sub(sent));
                if room == 0 {
                    return None;
                }
                loop {
                    changes.borrow_and_update();
                    let (mut lines, ended) = fake.read(|w| {
                        let lines: Vec<(OffsetDateTime, String)> = w
                            .logs
                            .get(&name)
                            .map(|l| l[next.min(l.len())..].to_vec())
                            .unwrap_or_default();
                        let pod = w.pods.get(&(ns.clone(), name.clone()));
                        let ended = pod.is_none_or(|p| {
                            p["status"]["containerStatuses"][0]["state"]
                                .get("terminated")
                                .is_some()
                        });
                        (lines, ended)
                    });
                    if !lines.is_empty() {
                        lines.truncate(room);
                        next += lines.len();
                        sent += lines.len();
                        let text: String = lines
                            .into_iter()
                            .filter(|(at, _)| since.is_none_or(|s| *at >= s))
                            .map(|(at, line)| {
                                if timestamps {
                                    format!("{} {line}\n", stamp(at))
                                } else {
                                    format!("{line}\n")
                                }
                            })
                            .collect();
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(text)),
                            (fake, next, sent, changes),
                        ));
                    }
                    if ended || !follow {
                        return None;
                    }
                    if changes.changed().await.is_err() {
                        return None;
                    }
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// The Job controller and the kubelet for one Job.
async fn play(fake: Fake, ns: String, job: Value, image: String) {
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let script = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split([':', '@']).next())
        .unwrap_or_default()
        .to_owned();
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .map(Duration::from_secs);
    let pod = format!("{name}-x7k2p");
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    fake.with(|w| {
        w.rv += 1;
        let pod_object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod, "namespace": ns, "labels": labels,
                "creationTimestamp": now(), "resourceVersion": w.rv.to_string(),
            },
            "spec": job["spec"]["template"]["spec"],
            "status": {
                "phase": "Pending",
                "containerStatuses": [{
                    "name": "main", "image": image, "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }],
            },
        });
        w.pods.insert((ns.clone(), pod.clone()), pod_object);
    });
    fake.update_job(&ns, &name, |j| {
        j["status"] = json!({"active": 1, "startTime": now()});
    });
    let run = run_script(&fake, &ns, &name, &pod, &script);
    match deadline {
        Some(deadline) => {
            if tokio::time::timeout(deadline, run).await.is_err() {
                end_container(&fake, &ns, &pod, 137, "Error");
                fail_job(
                    &fake,
                    &ns,
                    &name,
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                );
            }
        }
        None => run.await,
    }
}

async fn run_script(fake: &Fake, ns: &str, name: &str, pod: &str, script: &str) {
    let tick = fake.tick;
    tokio::time::sleep(tick).await;
    if script == "pull-backoff" {
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            fake.update_pod(ns, pod, |p| {
                p["status"]["containerStatuses"][0]["state"] = json!({"waiting": {
                    "reason": reason,
                    "message": "Back-off pulling image: pull access denied, repository does not exist",
                }});
            });
            tokio::time::sleep(tick).await;
        }
        return std::future::pending().await;
    }
    fake.update_pod(ns, pod, |p| {
        p["status"]["phase"] = json!("Running");
        p["status"]["containerStatuses"][0]["state"] = json!({"running": {"startedAt": now()}});
    });
    fake.update_job(ns, name, |j| j["status"]["ready"] = json!(1));
    tokio::time::sleep(tick).await;
    match script {
        "fail" => {
            fake.log(pod, "about to fail".into());
            tokio::time::sleep(tick).await;
            end_container(fake, ns, pod, 3, "Error");
            fail_job(
                fake,
                ns,
                name,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
        }
        "oom" => {
            fake.log(pod, "allocating".into());
            tokio::time::sleep(tick).await;
            end_container(fake, ns, pod, 137, "OOMKilled");
            fail_job(
                fake,
                ns,
                name,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
        }
        "sleep" => {
            for n in 1.. {
                fake.log(pod, format!("tick {n}"));
                tokio::time::sleep(tick).await;
            }
        }
        "ticks" => {
            for n in 1..=15 {
                fake.log(pod, format!("tick {n}"));
                tokio::time::sleep(tick).await;
            }
            end_container(fake, ns, pod, 0, "Completed");
            fake.update_job(ns, name, |j| {
                j["status"] = json!({
                    "succeeded": 1, "active": 0, "completionTime": now(),
                    "conditions": [{"type": "Complete", "status": "True"}],
                });
            });
        }
        _ => {
            for line in ["starting", "working", "done"] {
                fake.log(pod, line.into());
                tokio::time::sleep(tick).await;
            }
            end_container(fake, ns, pod, 0, "Completed");
            fake.update_job(ns, name, |j| {
                j["status"] = json!({
                    "succeeded": 1, "active": 0, "completionTime": now(),
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True"},
                        {"type": "Complete", "status": "True"},
                    ],
                });
            });
        }
    }
}

/// The container ends; the Job controller counts the pod as no longer ready.
fn end_container(fake: &Fake, ns: &str, pod: &str, exit_code: i32, reason: &str) {
    let job = pod.rsplit_once('-').map_or(pod, |(job, _)| job);
    fake.update_job(ns, job, |j| j["status"]["ready"] = json!(0));
    fake.update_pod(ns, pod, |p| {
        p["status"]["phase"] = json!(if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        });
        p["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
            "exitCode": exit_code, "reason": reason, "finishedAt": now(),
        }});
    });
}

fn fail_job(fake: &Fake, ns: &str, name: &str, reason: &str, message: &str) {
    fake.update_job(ns, name, |j| {
        j["status"] = json!({
            "failed": 1, "active": 0,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ],
        });
    });
}

async fn version() -> Json<Value> {
    Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-orchion-fake"}))
}

async fn requests(State(fake): State<Fake>) -> Json<Value> {
    Json(fake.read(|w| json!({"changes": w.requests, "watches": w.watches})))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    status(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({uri})"),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut tick = Duration::from_millis(100);
    let mut drop_watch_after = None;
    let mut drop_logs_after = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--tick-ms", Some(ms)) => tick = Duration::from_millis(ms),
            ("--drop-watch-after", Some(n)) => drop_watch_after = usize::try_from(n).ok(),
            ("--drop-logs-after", Some(n)) => drop_logs_after = usize::try_from(n).ok(),
            _ => {
                eprintln!(
                    "usage: orchion-fake-kube [--tick-ms MS] [--drop-watch-after N] [--drop-logs-after N]"
                );
                std::process::exit(2);
            }
        }
    }
    let fake = Fake {
        world: Arc::default(),
        changed: Arc::new(watch::channel(0).0),
        tick,
        drop_watch_after,
        drop_logs_after,
    };
    let app = Router::new()
        .route("/version", get(version))
        .route("/fake/requests", get(requests))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(jobs).post(create_job),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(get_job).delete(delete_job),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .fallback(not_found)
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
