//! Several `orchion server` replicas on one PostgreSQL database are one control plane: they
//! agree on the nodes, and work submitted to any of them runs exactly once, counted by its side
//! effects outside Orchion.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::{Value, json};

use crate::common::{Orchion, TOKEN, agent, eventually, free_port, get_json, http};

/// A replica on `url` with fast liveness (2 s timeout, 200 ms checks) and no Kubernetes agent.
fn replica(dir: &Path, url: &str) -> Orchion {
    replica_on(dir, url, free_port())
}

/// [`replica`] with its gRPC on `port`, so agents find it again after a restart.
fn replica_on(dir: &Path, url: &str, port: u16) -> Orchion {
    replica_with(dir, url, port, &[])
}

/// [`replica_on`] with `env` besides.
fn replica_with(dir: &Path, url: &str, port: u16, env: &[(&str, &str)]) -> Orchion {
    let port = port.to_string();
    let mut all = vec![
        ("ORCHION_CLUSTER__CHECK_INTERVAL", "200ms"),
        ("ORCHION_CLUSTER__DOWN_AFTER", "2s"),
        ("ORCHION_KUBERNETES__ENABLED", "false"),
    ];
    all.extend_from_slice(env);
    Orchion::start(
        dir,
        &[
            "server",
            "--port",
            &port,
            "--database-url",
            url,
            "--join-token",
            TOKEN,
            "--heartbeat-timeout",
            "2s",
        ],
        &all,
    )
}

/// Directories for `n` replicas under `dir`.
fn homes(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let home = dir.join(format!("replica-{i}"));
            std::fs::create_dir_all(&home).unwrap();
            home
        })
        .collect()
}

/// `n` replicas on `url`, each in a directory of its own under `dir`.
fn replicas_in(dir: &Path, url: &str, n: usize) -> Vec<Orchion> {
    homes(dir, n)
        .iter()
        .map(|home| replica(home, url))
        .collect()
}

/// Job `id` once it has ended, read through `server`.
async fn ended(server: &Orchion, id: &str, what: &str) -> Value {
    eventually(what, Duration::from_secs(120), || async {
        get_json(server, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
    })
    .await
}

/// Each node's name and status as `server` lists them.
async fn nodes(server: &Orchion) -> Option<BTreeMap<String, String>> {
    let listing = get_json(server, "/api/v1/nodes").await?;
    Some(
        listing["items"]
            .as_array()?
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_owned(),
                    n["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_on_the_nodes_and_run_each_job_once() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas_in(dir.path(), &url, 3);
    // Agents attached to different replicas; the third replica hears no agent at all.
    let grpc = |i: usize| replicas[i].grpc.unwrap().port();
    let _a = agent(dir.path(), grpc(0), "a", 4);
    let _b = agent(dir.path(), grpc(1), "b", 4);

    let both_ready: BTreeMap<String, String> = [("a", "ready"), ("b", "ready")]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect();
    for (i, replica) in replicas.iter().enumerate() {
        let want = both_ready.clone();
        eventually(
            &format!("replica {i} lists both agents ready"),
            Duration::from_secs(30),
            || async { nodes(replica).await.filter(|n| *n == want) },
        )
        .await;
    }

    // Jobs submitted round-robin; each appends its number to a file outside Orchion.
    let effects = dir.path().join("effects.txt");
    let jobs = 500;
    let mut ids = Vec::new();
    for i in 0..jobs {
        let replica = &replicas[i % 3];
        let command = format!("sleep 0.05; echo {i} >> {}", effects.display());
        let job: Value = http()
            .post(replica.url("/api/v1/jobs"))
            .json(&json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for (n, id) in ids.iter().enumerate() {
        let replica = &replicas[n % 3];
        let job = ended(replica, id, &format!("job {n} ends")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempt_count"], 1, "no attempt was lost: {job}");
    }
    let text = std::fs::read_to_string(&effects).unwrap();
    let mut seen = vec![0u32; jobs];
    for line in text.lines() {
        seen[line.trim().parse::<usize>().unwrap()] += 1;
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(i, n)| (i, *n))
        .collect();
    assert!(
        wrong.is_empty(),
        "jobs not run exactly once (job, runs): {wrong:?}"
    );

    // Still agreed on after the run, and the same everywhere; each counts the three replicas.
    for replica in &replicas {
        assert_eq!(nodes(replica).await.unwrap(), both_ready);
        let status = get_json(replica, "/api/v1/status").await.unwrap();
        assert_eq!(status["replicas"], 3, "{status}");
    }

    // Wake-ups cross replicas: a job enqueued through the replica no agent talks to starts at
    // once, not at a waiting claim's own recheck (5 s); a stream on one replica carries what
    // another wrote at once, not at its own look (5 s).
    for i in 0..3 {
        let job = crate::common::post_json(
            &replicas[2],
            "/api/v1/jobs",
            json!({"executor": "shell", "spec": {"command": "true"}}),
        )
        .await;
        let id = job["id"].as_str().unwrap().to_owned();
        let done = eventually(
            &format!("idle job {i} ends"),
            Duration::from_secs(30),
            || async {
                get_json(&replicas[2], &format!("/api/v1/jobs/{id}"))
                    .await
                    .filter(|j| j["status"] == "succeeded")
            },
        )
        .await;
        let at = |key: &str| {
            time::OffsetDateTime::parse(
                done[key].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        let waited = at("started_at") - at("created_at");
        assert!(
            waited < time::Duration::milliseconds(2500),
            "a job enqueued on another replica waited {waited} to start"
        );
    }
    let mut stream = crate::events::Sse::connect(&replicas[0], "?kind=project.*", None).await;
    let written = std::time::Instant::now();
    crate::events::create_project(&replicas[1], "across replicas").await;
    let (_, event) = stream.next().await;
    assert_eq!(event["kind"], "project.created");
    assert!(
        written.elapsed() < Duration::from_millis(2500),
        "an event written on another replica took {:?} to arrive",
        written.elapsed()
    );
}

/// `orchion agent` named `name` that knows every replica in `replicas`.
fn agent_of(dir: &Path, replicas: &[&Orchion], name: &str) -> Orchion {
    let servers: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.grpc.unwrap()))
        .collect();
    let state = dir.join(name);
    Orchion::spawn(
        dir,
        &[
            "agent",
            "--server",
            &servers.join(","),
            "--join-token",
            TOKEN,
            "--name",
            name,
            "--slots",
            "4",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_to_another_replica_and_keeps_its_running_work() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let homes = homes(dir.path(), 2);
    let first = replica(&homes[0], &url);
    let second = replica(&homes[1], &url);
    let agent = agent_of(dir.path(), &[&first, &second], "mover");
    eventually("the agent is ready", Duration::from_secs(30), || async {
        nodes(&second)
            .await
            .filter(|n| n.get("mover").is_some_and(|s| s == "ready"))
    })
    .await;

    let effects = dir.path().join("effects.txt");
    let command = format!("sleep 3; echo once >> {}", effects.display());
    let job: Value = http()
        .post(second.url("/api/v1/jobs"))
        .json(&json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    eventually("the job runs", Duration::from_secs(30), || async {
        get_json(&second, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| j["status"] == "running")
    })
    .await;
    // The replica the agent talks to dies while the job runs.
    first.signal("KILL");
    let done = eventually("the job ends", Duration::from_secs(60), || async {
        get_json(&second, &format!("/api/v1/jobs/{id}"))
            .await
            .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", agent.output());
    assert_eq!(done["attempt_count"], 1, "the attempt was kept: {done}");
    assert_eq!(std::fs::read_to_string(&effects).unwrap(), "once\n");
    assert!(
        agent.output().contains("moving to the next"),
        "{}",
        agent.output()
    );
    // The node stayed itself and alive through the move, and takes new work.
    assert_eq!(
        nodes(&second).await.unwrap(),
        [("mover".to_owned(), "ready".to_owned())].into()
    );
    let next = crate::common::post_json(
        &second,
        "/api/v1/jobs",
        json!({"executor": "shell", "spec": {"command": "true"}}),
    )
    .await;
    let next_id = next["id"].as_str().unwrap().to_owned();
    eventually("new work runs", Duration::from_secs(30), || async {
        get_json(&second, &format!("/api/v1/jobs/{next_id}"))
            .await
            .filter(|j| j["status"] == "succeeded")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_join_token_refuses_to_start() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _first = replica(dir.path(), &url);
    let out = crate::common::command(&[
        "server",
        "--http-port",
        "0",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--database-url",
        &url,
        "--join-token",
        "another-join-token-0123456789",
    ])
    .current_dir(dir.path())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("another join token"), "{stderr}");
    assert!(stderr.contains("--join-token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_replica_is_refused_by_the_other_at_once() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas_in(dir.path(), &url, 2);
    let made: Value = http()
        .post(replicas[0].url("/api/v1/tokens"))
        .json(&json!({"name": "short-lived", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = made["token_text"].as_str().unwrap().to_owned();
    let status_with = |replica: &Orchion| {
        let token = token.clone();
        let url = replica.url("/api/v1/nodes");
        async move {
            crate::common::anonymous()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Both replicas have checked (and remember) the token.
    assert_eq!(status_with(&replicas[0]).await, 200);
    assert_eq!(status_with(&replicas[1]).await, 200);
    let revoked = http()
        .delete(replicas[0].url(&format!("/api/v1/tokens/{}", made["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        status_with(&replicas[0]).await,
        401,
        "at once where it was revoked"
    );
    // The other replica hears of it through the store's notification, before it would have
    // forgotten the token on its own (5 s after checking it).
    eventually(
        "the other replica to refuse it",
        Duration::from_secs(4),
        || async { (status_with(&replicas[1]).await == 401).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_set_or_removed_on_one_replica_counts_on_the_other_at_once() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let homes = homes(dir.path(), 3);
    let key = [(
        "ORCHION_SECRETS__KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    )];
    let a = replica_with(&homes[0], &url, free_port(), &key);
    let b = replica_with(&homes[1], &url, free_port(), &key);
    let secret = format!(
        "/api/v1/projects/{}/secrets/API_KEY",
        orchion_domain::ProjectId::DEFAULT
    );
    let job = json!({"executor": "shell",
                     "spec": {"command": "true", "env": {"K": {"secret": "API_KEY"}}}});
    let submit = |replica: &Orchion| {
        let url = replica.url("/api/v1/jobs");
        let job = job.clone();
        async move { http().post(url).json(&job).send().await.unwrap().status() }
    };
    // B has read the project's secrets (none) and would keep that for 5 s on its own.
    assert_eq!(submit(&b).await, 422);
    let set = http()
        .put(a.url(&secret))
        .json(&json!({"value": "v4lue-of-the-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 201);
    eventually("B to see the secret", Duration::from_secs(3), || async {
        (submit(&b).await == 201).then_some(())
    })
    .await;
    let removed = http().delete(a.url(&secret)).send().await.unwrap();
    assert_eq!(removed.status(), 204);
    eventually("B to see it gone", Duration::from_secs(3), || async {
        (submit(&b).await == 422).then_some(())
    })
    .await;

    // A replica with a key of its own (made in its data directory) may not seal secrets the
    // others could not open.
    let other = replica(&homes[2], &url);
    let refused = http()
        .put(other.url(&secret))
        .json(&json!({"value": "sealed-elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("secrets.key_file"),
        "{problem}"
    );
}

/// Submits `count` jobs, numbered from `first`, round-robin to `replicas`; each appends its
/// number to `effects`. Returns the jobs' ids with the replica each went to.
async fn submit_numbered(
    replicas: &[&Orchion],
    effects: &Path,
    first: usize,
    count: usize,
) -> Vec<(usize, String)> {
    let mut ids = Vec::new();
    for i in first..first + count {
        let which = i % replicas.len();
        let command = format!("sleep 0.05; echo {i} >> {}", effects.display());
        let job = crate::common::post_json(
            replicas[which],
            "/api/v1/jobs",
            json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}}),
        )
        .await;
        ids.push((which, job["id"].as_str().unwrap().to_owned()));
    }
    ids
}

/// How many times each numbered job ran, by its side effects.
fn runs_of(effects: &Path, jobs: usize) -> Vec<u32> {
    let mut seen = vec![0u32; jobs];
    for line in std::fs::read_to_string(effects).unwrap_or_default().lines() {
        seen[line.trim().parse::<usize>().unwrap()] += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_and_doubles_nothing() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let homes = homes(dir.path(), 3);
    let mut replicas: Vec<Orchion> = (0..3)
        .map(|i| replica_on(&homes[i], &url, ports[i]))
        .collect();
    let _a = agent_of(dir.path(), &[&replicas[0], &replicas[1], &replicas[2]], "a");
    let _b = agent_of(dir.path(), &[&replicas[1], &replicas[2], &replicas[0]], "b");
    for name in ["a", "b"] {
        eventually(
            &format!("{name} is ready"),
            Duration::from_secs(30),
            || async {
                nodes(&replicas[1])
                    .await
                    .filter(|n| n.get(name).is_some_and(|s| s == "ready"))
            },
        )
        .await;
    }
    let effects = dir.path().join("effects.txt");
    let jobs = 500;
    // Submitted to the two replicas that stay up; the first dies a while into the run.
    let ids = submit_numbered(&[&replicas[1], &replicas[2]], &effects, 0, jobs).await;
    eventually(
        "a fifth of the jobs ran",
        Duration::from_secs(60),
        || async {
            (runs_of(&effects, jobs).iter().filter(|n| **n > 0).count() > jobs / 5).then_some(())
        },
    )
    .await;
    replicas[0].signal("KILL");
    replicas[0].wait(Duration::from_secs(10));
    replicas[0] = replica_on(&homes[0], &url, ports[0]);
    for (n, (which, id)) in ids.iter().enumerate() {
        let replica = &replicas[1 + which];
        let job = ended(replica, id, &format!("job {n} ends")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let wrong: Vec<(usize, u32)> = runs_of(&effects, jobs)
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "jobs not run exactly once (job, runs): {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_instant_on_three_replicas() {
    let Some(url) = orchion_testkit::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas_in(dir.path(), &url, 3);
    let _a = agent_of(dir.path(), &[&replicas[0], &replicas[1], &replicas[2]], "a");
    let effects = dir.path().join("effects.txt");
    let command = format!("echo $ORCHION_JOB_ID >> {}", effects.display());
    let schedule = crate::common::post_json(
        &replicas[0],
        "/api/v1/schedules",
        json!({
            "name": "every two seconds",
            "cron": "*/2 * * * * *",
            "job": {"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}},
        }),
    )
    .await;
    assert!(schedule["id"].is_string(), "{schedule}");
    // Several minutes of instants, every replica's scheduler passing over each one.
    tokio::time::sleep(Duration::from_secs(180)).await;
    let listing = get_json(&replicas[1], "/api/v1/jobs?limit=500")
        .await
        .unwrap();
    let jobs = listing["items"].as_array().unwrap();
    // One job per instant: no two in the same two-second slot, and about one per slot.
    let mut slots = std::collections::BTreeMap::<i64, u32>::new();
    for job in jobs {
        let created = time::OffsetDateTime::parse(
            job["created_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        *slots
            .entry(created.unix_timestamp().div_euclid(2))
            .or_default() += 1;
    }
    assert!(
        slots.values().all(|n| *n == 1),
        "instants fired more than once: {slots:?}"
    );
    assert!(jobs.len() >= 75, "only {} firings in 180 s", jobs.len());
    // And each ran once, by its side effect.
    eventually("every firing ran", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&effects).ok()?;
        (text.lines().count() >= jobs.len()).then_some(text)
    })
    .await;
    let text = std::fs::read_to_string(&effects).unwrap();
    let mut ran: Vec<&str> = text.lines().collect();
    ran.sort_unstable();
    let before = ran.len();
    ran.dedup();
    assert_eq!(ran.len(), before, "a firing ran twice");
}

/// PostgreSQL restarted under load, politely then abruptly: every answer is a 2xx or a 503
/// with `Retry-After` (never a 500), and every accepted job runs, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_nothing_and_answers_503() {
    let Some(cluster) = orchion_testkit::private_postgres() else {
        return;
    };
    let admin = cluster.admin_url();
    let mut conn =
        <orchion_store::sqlx::PgConnection as orchion_store::sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
    orchion_store::sqlx::raw_sql("CREATE DATABASE restarts")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let url = format!("{}/restarts", admin.trim_end_matches("/postgres"));
    let dir = tempfile::tempdir().unwrap();
    let server = replica(dir.path(), &url);
    let _agent = agent_of(dir.path(), &[&server], "a");
    eventually("the agent is ready", Duration::from_secs(30), || async {
        nodes(&server)
            .await
            .filter(|n| n.get("a").is_some_and(|s| s == "ready"))
    })
    .await;
    let effects = dir.path().join("effects.txt");
    let submitting = {
        let url = server.url("/api/v1/jobs");
        let effects = effects.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = 0;
            let until = std::time::Instant::now() + Duration::from_secs(8);
            let mut n = 0usize;
            while std::time::Instant::now() < until {
                let command = format!("echo {n} >> {}", effects.display());
                let response = http()
                    .post(&url)
                    .json(&json!({"executor": "shell", "spec": {"command": "sh", "args": ["-c", command]}}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 201 => {
                        let job: Value = r.json().await.unwrap();
                        accepted.push((n, job["id"].as_str().unwrap().to_owned()));
                    }
                    Ok(r) if r.status() == 503 => {
                        assert!(
                            r.headers().contains_key("retry-after"),
                            "a 503 without Retry-After"
                        );
                        refused += 1;
                    }
                    Ok(r) => panic!(
                        "answered {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ),
                    Err(e) => panic!("the server did not answer: {e}"),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (accepted, refused, n)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking({
        let cluster_fast = cluster;
        move || {
            cluster_fast.restart("fast");
            std::thread::sleep(Duration::from_secs(2));
            cluster_fast.restart("immediate");
        }
    })
    .await
    .unwrap();
    let (accepted, _refused, submitted) = submitting.await.unwrap();
    assert!(
        accepted.len() > submitted / 4,
        "only {} of {submitted} accepted",
        accepted.len()
    );
    for (n, id) in &accepted {
        let job = eventually(
            &format!("job {n} ends"),
            Duration::from_secs(120),
            || async {
                get_json(&server, &format!("/api/v1/jobs/{id}"))
                    .await
                    .filter(|j| matches!(j["status"].as_str(), Some("succeeded" | "failed")))
            },
        )
        .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let runs = runs_of(&effects, submitted);
    for (n, _) in &accepted {
        assert_eq!(runs[*n], 1, "accepted job {n} ran {} times", runs[*n]);
    }
}
