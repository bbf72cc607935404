//! TLS both ways with real processes and certificates the test makes: the HTTP API, the CLI,
//! agents (with and without a client certificate), a wrong authority, a plaintext server, and a
//! certificate rotated under SIGHUP.

use std::{path::Path, process::Output, time::Duration};

use orchion_testkit::tls::TestCa;
use serde_json::Value;

use crate::common::{ADMIN_TOKEN, Orchion, TOKEN, command, eventually, free_port};

/// `orchion server` over TLS with `ca`'s certificate for localhost, and mutual TLS on gRPC
/// when `client_ca` is given.
fn tls_server(dir: &Path, ca: &TestCa, client_ca: Option<&Path>, grpc_port: u16) -> Orchion {
    let issued = ca.server(dir, "server", &["localhost", "127.0.0.1"]);
    let mut env = vec![
        (
            "ORCHION_SERVER__TLS__CERT",
            issued.cert.to_str().unwrap().to_owned(),
        ),
        (
            "ORCHION_SERVER__TLS__KEY",
            issued.key.to_str().unwrap().to_owned(),
        ),
        // No in-cluster Kubernetes here; keep its local agent out of the node list.
        ("ORCHION_KUBERNETES__ENABLED", "false".to_owned()),
    ];
    if let Some(client_ca) = client_ca {
        env.push((
            "ORCHION_SERVER__TLS__CLIENT_CA",
            client_ca.to_str().unwrap().to_owned(),
        ));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = grpc_port.to_string();
    Orchion::start(
        dir,
        &["server", "--port", &port, "--join-token", TOKEN],
        &env,
    )
}

fn https(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// `orchion agent` against `https://localhost:<grpc_port>`, run to its end or for `limit`.
fn agent(dir: &Path, grpc_port: u16, name: &str, extra: &[&str]) -> Orchion {
    let server = format!("https://localhost:{grpc_port}");
    let state = dir.join(name);
    let mut args = vec![
        "agent",
        "--server",
        &server,
        "--join-token",
        TOKEN,
        "--name",
        name,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Orchion::spawn(dir, &args, &[])
}

async fn node_names(server: &Orchion, ca: &TestCa) -> Vec<String> {
    let body: Value = https(ca)
        .get(format!(
            "https://localhost:{}/api/v1/nodes",
            server.addr.port()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cli_and_agents_speak_tls_and_refuse_what_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("orchion test ca");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let grpc_port = free_port();
    let mut server = tls_server(dir.path(), &ca, None, grpc_port);
    server.wait_for_line("HTTP API listening on https://", Duration::from_secs(5));
    let base = format!("https://localhost:{}", server.addr.port());

    let ready = https(&ca)
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let plaintext = reqwest::get(format!("http://{}/readyz", server.addr)).await;
    assert!(
        plaintext.map_or(true, |r| !r.status().is_success()),
        "plaintext is not answered on the TLS port"
    );

    // The CLI verifies: with the authority it works, without it the certificate is refused.
    let cli = |extra: &[&str]| {
        let mut args = vec!["node", "ls", "--addr", base.as_str()];
        args.extend_from_slice(extra);
        command(&args).output().unwrap()
    };
    let trusted = cli(&["--ca", ca_file.to_str().unwrap()]);
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let untrusted = cli(&[]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("certificate"),
        "{}",
        stderr(&untrusted)
    );

    // An agent with the authority joins; one with another authority stops, saying why.
    let mut good = agent(
        dir.path(),
        grpc_port,
        "tls-1",
        &["--ca", ca_file.to_str().unwrap()],
    );
    good.wait_for_line("registered", Duration::from_secs(30));
    assert_eq!(node_names(&server, &ca).await, ["tls-1"]);
    let stranger = TestCa::new("another ca");
    let wrong = stranger.write(&dir.path().join("wrong.crt"));
    let mut refused = agent(
        dir.path(),
        grpc_port,
        "tls-2",
        &["--ca", wrong.to_str().unwrap()],
    );
    assert_eq!(refused.wait(Duration::from_secs(30)).code(), Some(1));
    assert!(
        refused.output().contains("cannot make a TLS connection"),
        "{}",
        refused.output()
    );

    // SIGHUP with a certificate from a new authority: new clients trust the new one.
    let rotated = TestCa::new("rotated ca");
    rotated.server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    server.signal("HUP");
    server.wait_for_line("TLS certificate read again", Duration::from_secs(10));
    let ready = https(&rotated)
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        https(&ca)
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_err()
    );
    good.signal("TERM");
    good.wait(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_agents_with_a_certificate_the_authority_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("orchion test ca");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let grpc_port = free_port();
    let server = tls_server(dir.path(), &ca, Some(&ca_file), grpc_port);

    let cert = ca.client(dir.path(), "agent", "agent-1");
    let mut admitted = agent(
        dir.path(),
        grpc_port,
        "mtls-1",
        &[
            "--ca",
            ca_file.to_str().unwrap(),
            "--cert",
            cert.cert.to_str().unwrap(),
            "--key",
            cert.key.to_str().unwrap(),
        ],
    );
    admitted.wait_for_line("registered", Duration::from_secs(30));
    let mut anonymous = agent(
        dir.path(),
        grpc_port,
        "mtls-2",
        &["--ca", ca_file.to_str().unwrap()],
    );
    assert_eq!(anonymous.wait(Duration::from_secs(30)).code(), Some(1));
    assert!(
        anonymous.output().contains("cannot make a TLS connection"),
        "{}",
        anonymous.output()
    );
    eventually(
        "only the agent with a certificate",
        Duration::from_secs(10),
        || async { (node_names(&server, &ca).await == ["mtls-1"]).then_some(()) },
    )
    .await;
    admitted.signal("TERM");
    admitted.wait(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agent_against_a_plaintext_server_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let _server = crate::common::cluster_server(dir.path(), grpc_port);
    let state = dir.path().join("state");
    let out = command(&[
        "agent",
        "--server",
        &format!("https://127.0.0.1:{grpc_port}"),
        "--join-token",
        TOKEN,
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot make a TLS connection"),
        "{}",
        stderr(&out)
    );
    // And TLS options with a plaintext address are refused before anything is sent.
    let out = command(&[
        "agent",
        "--server",
        &format!("http://127.0.0.1:{grpc_port}"),
        "--join-token",
        TOKEN,
        "--ca",
        "/nonexistent.pem",
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("use https://"), "{}", stderr(&out));
}

#[test]
fn unusable_tls_settings_stop_the_server_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("orchion test ca");
    let good = ca.server(dir.path(), "server", &["localhost"]);
    let other = ca.server(dir.path(), "other", &["localhost"]);
    let missing = dir.path().join("missing.crt");
    let cases = [
        (&missing, &good.key, "missing.crt"),
        (
            &good.cert,
            &other.key,
            "does the key belong to the certificate",
        ),
        (&good.key, &good.key, "no certificate"),
    ];
    for (cert, key, expected) in cases {
        let out = command(&[
            "server",
            "--http-port",
            "0",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ])
        .current_dir(dir.path())
        .env("ORCHION_SERVER__TLS__CERT", cert)
        .env("ORCHION_SERVER__TLS__KEY", key)
        .output()
        .unwrap();
        assert!(!out.status.success(), "{expected}: started anyway");
        assert!(
            stderr(&out).contains(expected),
            "{expected}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("server.tls"), "{}", stderr(&out));
    }
}
