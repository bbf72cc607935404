//! The store's faults, as an operator meets them: a full disk under SQLite. Writes are refused
//! with 503 and `Retry-After` (never 500), `/readyz` says so, nothing acknowledged is lost, and
//! every kind of write works again once space is freed — without a restart.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::common::{Orchion, eventually, http};

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` at `dir`; `None` (the test is skipped, saying why) where
    /// mounting is impossible — but under `CI=true` as root it must work.
    fn mount(dir: &Path, megabytes: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk(dir.to_owned())),
            other => {
                let root = Command::new("id")
                    .arg("-u")
                    .output()
                    .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
                assert!(
                    !(root && std::env::var("CI").as_deref() == Ok("true")),
                    "CI runs as root and must mount a tmpfs: {other:?}"
                );
                eprintln!("skipped: cannot mount a tmpfs here (not root?): {other:?}");
                None
            }
        }
    }

    /// Fills what is left with a file, and returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn post(server: &Orchion, path: &str, body: &Value) -> reqwest::Response {
    http()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Every resource of `ids` acknowledged under `collection` can be read back.
async fn assert_all_there(server: &Orchion, collection: &str, ids: &[Value]) {
    for id in ids {
        let id = id.as_str().unwrap();
        let answer = http()
            .get(server.url(&format!("{collection}/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "acknowledged {collection}/{id} is gone"
        );
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_503_and_they_work_again_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 24) else {
        return;
    };
    let data = disk.0.join("data");
    let data_dir = data.to_str().unwrap();
    let mut server = Orchion::start(dir.path(), &["server", "--data-dir", data_dir], &[]);
    let job = |i: usize| json!({"name": format!("j{i}"), "executor": "noop", "spec": {}});
    let mut accepted = Vec::new();
    for i in 0..20 {
        let created = post(&server, "/api/v1/jobs", &job(i)).await;
        assert_eq!(created.status(), 201);
        accepted.push(created.json::<Value>().await.unwrap()["id"].clone());
    }
    let filler = disk.fill();

    // Writes fail now (the WAL cannot grow); each failure is a 503 saying when to come back.
    let padding = "x".repeat(32 * 1024);
    let mut refused = None;
    for i in 20..2_000 {
        let body = json!({"name": format!("j{i}"), "executor": "noop",
                          "spec": {"outputs": {"padding": padding}}});
        let answer = post(&server, "/api/v1/jobs", &body).await;
        match answer.status().as_u16() {
            201 => accepted.push(answer.json::<Value>().await.unwrap()["id"].clone()),
            503 => {
                assert!(answer.headers().contains_key("retry-after"));
                refused = Some(answer.text().await.unwrap());
                break;
            }
            other => panic!(
                "a write on a full disk answered {other}: {:?}",
                answer.text().await
            ),
        }
    }
    let refused = refused.expect("some write was refused on a full disk");
    assert!(!refused.contains("padding"), "{refused}");
    // Another kind of write is refused too. A small one may still fit where the WAL already has
    // room, so keep writing until one is refused; whatever was answered 201 must survive.
    let mut projects = Vec::new();
    for i in 0..2_000 {
        let name = format!("while-full-{i}");
        let answer = post(&server, "/api/v1/projects", &json!({"name": name})).await;
        match answer.status().as_u16() {
            201 => projects.push(answer.json::<Value>().await.unwrap()["id"].clone()),
            503 => {
                assert!(answer.headers().contains_key("retry-after"));
                break;
            }
            other => panic!(
                "a project on a full disk answered {other}: {:?}",
                answer.text().await
            ),
        }
    }
    assert!(
        projects.len() < 2_000,
        "no project write was refused on a full disk"
    );
    let ready = eventually("/readyz turns 503", Duration::from_secs(30), || async {
        let answer = http().get(server.url("/readyz")).send().await.ok()?;
        (answer.status() == 503).then_some(answer.text().await.ok()?)
    })
    .await;
    assert!(ready.contains("write"), "{ready}");

    // Space freed: every kind of write works again, with no restart.
    std::fs::remove_file(filler).unwrap();
    eventually(
        "a job is accepted again",
        Duration::from_secs(30),
        || async {
            let answer = post(&server, "/api/v1/jobs", &job(9_999)).await;
            (answer.status() == 201).then_some(())
        },
    )
    .await;
    let project = post(&server, "/api/v1/projects", &json!({"name": "after-full"})).await;
    assert_eq!(project.status(), 201, "{:?}", project.text().await);
    eventually("/readyz turns 200", Duration::from_secs(30), || async {
        let answer = http().get(server.url("/readyz")).send().await.ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;
    assert_all_there(&server, "/api/v1/jobs", &accepted).await;
    assert_all_there(&server, "/api/v1/projects", &projects).await;
    let log = server.output();
    assert!(
        !log.contains("non-zero transaction depth"),
        "a write connection stayed broken: {log}"
    );
    server.signal("TERM");
    server.wait(Duration::from_secs(30));
}

#[tokio::test]
async fn a_data_dir_on_a_full_or_read_only_disk_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 4) else {
        return;
    };
    let start = |data: &Path| {
        crate::common::command(&[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap()
    };
    let filler = disk.fill();
    let full = disk.0.join("full");
    let out = start(&full);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(full.to_str().unwrap()), "{stderr}");
    std::fs::remove_file(filler).unwrap();

    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(status.success());
    let read_only = disk.0.join("read-only");
    let out = start(&read_only);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(read_only.to_str().unwrap()), "{stderr}");
    assert!(stderr.to_lowercase().contains("read-only"), "{stderr}");
}
