//! Tests of layering, validation and redaction.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(ext: &str, text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_hold_without_sources() {
    let config = Config::load(&Sources::default()).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.server.http_port, 8080);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
}

#[test]
fn each_layer_overrides_the_one_before() {
    let f = file(
        ".toml",
        "[server]\nhttp_port = 1000\nhost = \"0.0.0.0\"\nshutdown_grace = \"5s\"\n",
    );
    let from_file = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(from_file.server.http_port, 1000);
    assert_eq!(from_file.server.shutdown_grace, Duration::from_secs(5));

    let seed = Sources {
        file: Some(f.path().into()),
        env: env(&[("PORT", "2000")]),
        ..Default::default()
    };
    assert_eq!(Config::load(&seed).unwrap().server.http_port, 2000);

    let ours = Sources {
        env: env(&[("PORT", "2000"), ("ORCHION_SERVER__HTTP_PORT", "3000")]),
        ..seed
    };
    assert_eq!(Config::load(&ours).unwrap().server.http_port, 3000);

    let flags = Sources {
        flags: vec![("server.http_port", Value::from(4000u16))],
        ..ours
    };
    let config = Config::load(&flags).unwrap();
    assert_eq!(config.server.http_port, 4000);
    assert_eq!(
        config.server.host, "0.0.0.0",
        "untouched keys keep the file's value"
    );
}

#[test]
fn seed_variables_apply_in_documented_order() {
    let config = Config::load(&Sources {
        env: env(&[
            ("SERVER_PORT", "7001"),
            ("PORT", "7000"),
            ("SERVER_HOST", "0.0.0.0"),
            ("ORCHESTRATOR_DATABASE_URL", "postgres://u:pw@db:5432/orch"),
        ]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.server.http_port, 7001);
    assert_eq!(config.server.host, "0.0.0.0");
    assert_eq!(
        config.database.url.unwrap().expose(),
        "postgres://u:pw@db:5432/orch"
    );
    let config = Config::load(&Sources {
        env: env(&[
            ("SERVER_PORT", "7001"),
            ("ORCHESTRATOR_SERVER_PORT", "7002"),
        ]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.server.http_port, 7002);
}

#[test]
fn the_workflow_service_config_yaml_loads() {
    let f = file(
        ".yaml",
        "server:\n  port: 8181\n  host: 0.0.0.0\n  enable_metrics: true\n  metrics_port: 9191\ndatabase:\n  url: postgres://user:pass@localhost:5432/orchestrator?sslmode=disable\n  max_open_conns: 25\n  max_idle_conns: 5\nredis:\n  addr: localhost:6379\n  db: 0\ntemporal:\n  host_port: localhost:7233\ntelemetry:\n  enabled: true\n  service_name: orchestrator\n  environment: development\n  jaeger:\n    collector_endpoint: http://localhost:14268/api/traces\n",
    );
    let config = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.server.http_port, 8181);
    assert_eq!(config.database.max_connections, 25);
    assert_eq!(config.server.metrics_port, 9191);
    assert_eq!(config.telemetry.service_name, "orchestrator");
    assert_eq!(
        config.telemetry.exporting_to(),
        None,
        "Jaeger's endpoint is not OTLP"
    );
    assert_eq!(config.ignored_sections().len(), 4);
}

#[test]
fn unknown_keys_are_named_wherever_they_come_from() {
    let f = file(".toml", "[server]\nhttp_prot = 1\n");
    let err = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("http_prot"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");

    let f = file(".yaml", "nonsense:\n  a: 1\n");
    let err = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("nonsense"), "{err}");

    let err = Config::load(&Sources {
        env: env(&[("ORCHION_SERVER__NOPE", "1")]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("nope") && err.contains("ORCHION_SERVER__NOPE"),
        "{err}"
    );
}

#[test]
fn variables_that_are_not_configuration_are_left_alone() {
    let config = Config::load(&Sources {
        env: env(&[
            ("ORCHION_LOG", "debug"),
            ("ORCHION_TEST_DATABASE_URL", "postgres://x"),
            ("HOME", "/root"),
        ]),
        ..Default::default()
    });
    assert!(config.is_ok());
}

#[test]
fn wrong_types_name_the_key_and_the_source() {
    let err = Config::load(&Sources {
        env: env(&[("PORT", "eighty")]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.http_port") && err.contains("PORT"),
        "{err}"
    );

    let f = file(".toml", "[server]\nshutdown_grace = \"soon\"\n");
    let err = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("shutdown_grace"), "{err}");
}

#[test]
fn bad_files_are_reported() {
    let err = Config::load(&Sources {
        file: Some("/nonexistent/orchion.toml".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot read config file /nonexistent/orchion.toml"),
        "{err}"
    );

    let f = file(".ini", "x=1");
    let err = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("must end in .toml, .yaml or .yml"), "{err}");

    let f = file(".toml", "[server\nhttp_port = ");
    let err = Config::load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("invalid configuration"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn validation_reports_every_problem() {
    let err = Config::load(&Sources {
        flags: vec![
            ("database.max_connections", Value::from(0u32)),
            ("database.url", Value::from("mysql://x")),
            ("server.host", Value::from(" ")),
        ],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    for part in ["server.host", "database.max_connections", "database.url"] {
        assert!(err.contains(part), "{part} missing from {err}");
    }
}

#[test]
fn secrets_are_redacted_in_every_rendering() {
    let config = Config::load(&Sources {
        env: env(&[(
            "ORCHION_DATABASE__URL",
            "postgres://admin:hunter2@db/orchion",
        )]),
        ..Default::default()
    })
    .unwrap();
    let shown = config.to_redacted_toml().unwrap();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("postgres://admin:REDACTED@db/orchion"),
        "{shown}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    assert_eq!(
        config.database.url.unwrap().expose(),
        "postgres://admin:hunter2@db/orchion"
    );
    let printed: toml::Value = toml::from_str(&shown).unwrap();
    assert_eq!(printed["server"]["http_port"].as_integer(), Some(8080));
}

#[test]
fn join_tokens_are_redacted_and_checked() {
    let config = Config::load(&Sources {
        env: env(&[("ORCHION_CLUSTER__JOIN_TOKEN", "a-very-secret-join-token")]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        config.cluster.join_token.as_ref().unwrap().expose(),
        "a-very-secret-join-token"
    );
    let shown = config.to_redacted_toml().unwrap();
    assert!(!shown.contains("a-very-secret"), "{shown}");
    assert!(shown.contains("join_token = \"REDACTED\""), "{shown}");
    assert!(!format!("{config:?}").contains("a-very-secret"));

    let err = Config::load(&Sources {
        env: env(&[("ORCHION_CLUSTER__JOIN_TOKEN", "short")]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("cluster.join_token"), "{err}");
}

#[test]
fn liveness_settings_are_bounded() {
    let err = Config::load(&Sources {
        flags: vec![
            ("cluster.check_interval", Value::from("30s")),
            ("cluster.heartbeat_timeout", Value::from("1ms")),
        ],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster.check_interval must be between 50ms and 10s"),
        "{err}"
    );
    assert!(err.contains("cluster.heartbeat_timeout"), "{err}");
    let config = Config::load(&Sources {
        flags: vec![("cluster.heartbeat_timeout", Value::from("1m30s"))],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(config.cluster.heartbeat_timeout, Duration::from_secs(90));
}

#[test]
fn the_default_store_is_sqlite_in_the_data_dir() {
    let config = Config::default();
    assert_eq!(
        config.database.effective_url(&config.server.data_dir),
        "sqlite:.orchion/orchion.db"
    );
}

#[test]
fn webhook_secrets_come_from_the_seed_variable_or_orchions_own() {
    let seed = Config::load(&Sources {
        env: env(&[("GITHUB_WEBHOOK_SECRET", "from-the-seed")]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        seed.webhooks.github.secret.unwrap().expose(),
        "from-the-seed"
    );
    let own = Config::load(&Sources {
        env: env(&[
            ("GITHUB_WEBHOOK_SECRET", "from-the-seed"),
            ("ORCHION_WEBHOOKS__GITHUB__SECRET", "orchions-own"),
        ]),
        ..Default::default()
    })
    .unwrap();
    let secret = own.webhooks.github.secret.unwrap();
    assert_eq!(secret.expose(), "orchions-own");
    assert!(!format!("{secret:?}").contains("orchions-own"));
}

#[test]
fn kubernetes_job_defaults_come_from_the_seed_variables() {
    let defaults = Config::default().kubernetes;
    assert_eq!(
        (
            defaults.namespace.as_str(),
            defaults.ttl_seconds,
            defaults.memory_request.as_str(),
            defaults.memory_limit.as_str(),
            defaults.cpu_request.as_str(),
            defaults.cpu_limit.as_str(),
        ),
        ("default", 1800, "2Gi", "4Gi", "1", "2")
    );
    let config = Config::load(&Sources {
        env: env(&[
            ("KUBERNETES_NAMESPACE", "agents"),
            ("JOB_IMAGE", "ghcr.io/acme/worker:1"),
            ("JOB_TTL_SECONDS", "60"),
            ("JOB_MEMORY_REQUEST", "512Mi"),
            ("JOB_MEMORY_LIMIT", "1Gi"),
            ("JOB_CPU_REQUEST", "0.5"),
            ("JOB_CPU_LIMIT", "4"),
            ("ORCHION_KUBERNETES__MAX_JOBS", "7"),
        ]),
        ..Default::default()
    })
    .unwrap();
    let k = config.kubernetes;
    assert_eq!(k.namespace, "agents");
    assert_eq!(k.image, "ghcr.io/acme/worker:1");
    assert_eq!(k.ttl_seconds, 60);
    assert_eq!(
        [k.memory_request, k.memory_limit, k.cpu_request, k.cpu_limit],
        ["512Mi", "1Gi", "0.5", "4"]
    );
    assert_eq!(k.max_jobs, 7);
    let err = Config::load(&Sources {
        env: env(&[("JOB_TTL_SECONDS", "soon")]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("JOB_TTL_SECONDS"), "{err}");
}

#[test]
fn engines_and_webhook_rules_load_from_a_file_and_bad_rules_are_named() {
    let f = file(
        ".yaml",
        r#"
engines:
  terraform:
    enabled: false
    backend: remote
    workspace_prefix: "nestor-"
webhooks:
  github:
    rules:
      - name: triage
        event: issues
        actions: [opened]
        workflow: triage
        input: {number: "${{ event.issue.number }}"}
"#,
    );
    let config = Config::load(&Sources {
        file: Some(f.path().to_owned()),
        ..Default::default()
    })
    .unwrap();
    assert!(!config.engine_enabled("terraform"));
    assert!(config.engine_enabled("helm"));
    assert_eq!(
        config.webhooks.github.rules[0].workflow.as_deref(),
        Some("triage")
    );
    let bad = file(
        ".yaml",
        "webhooks:\n  github:\n    rules:\n      - {name: both, event: push, workflow: x, job: {executor: noop, spec: {}}}\n",
    );
    let error = Config::load(&Sources {
        file: Some(bad.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("webhooks.github.rules[0] (both): give exactly one of workflow or job"),
        "{error}"
    );
    // An issue title spliced into a script would run `$(…)` in it: refused at start.
    let injecting = file(
        ".yaml",
        "webhooks:\n  github:\n    rules:\n      - {name: echo, event: issues, job: {executor: shell, spec: {command: sh, args: [-c, 'echo ${{ event.issue.title }}']}}}\n",
    );
    let error = Config::load(&Sources {
        file: Some(injecting.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("webhooks.github.rules[0] (echo): job/spec/args/1")
            && error.contains("pass the value through `env`"),
        "{error}"
    );
}

#[test]
fn an_oidc_provider_loads_from_a_file_and_every_problem_with_it_is_named() {
    let good = file(
        ".toml",
        r#"
[auth.oidc]
issuer = "https://accounts.example.com"
client_id = "orchion"
redirect_url = "https://orchion.example.com/auth/oidc/callback"

[auth.oidc.roles]
orchion-admins = "admin"
"#,
    );
    let config = Config::load(&Sources {
        file: Some(good.path().to_owned()),
        ..Default::default()
    })
    .unwrap();
    let oidc = config.auth.oidc.unwrap();
    assert_eq!(oidc.scopes, ["openid", "email", "profile"]);
    assert_eq!(oidc.role_claim, "groups");
    assert_eq!(oidc.roles["orchion-admins"], "admin");

    let bad = file(
        ".toml",
        r#"
[auth.oidc]
issuer = "accounts.example.com"
client_id = " "
redirect_url = "ftp://orchion.example.com/cb"
scopes = ["email"]

[auth.oidc.roles]
everyone = "root"
"#,
    );
    let error = Config::load(&Sources {
        file: Some(bad.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    for part in [
        "auth.oidc.issuer",
        "auth.oidc.redirect_url",
        "auth.oidc.client_id",
        "`openid`",
        "auth.oidc.roles.everyone is `root`",
    ] {
        assert!(error.contains(part), "{part} missing from: {error}");
    }
    let nobody = file(
        ".toml",
        "[auth.oidc]\nissuer = \"https://a.example\"\nclient_id = \"c\"\nredirect_url = \"https://b.example/cb\"\nroles = {}\n",
    );
    let error = Config::load(&Sources {
        file: Some(nobody.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("nobody can sign in"), "{error}");
}

#[test]
fn limits_and_egress_allowances_out_of_shape_are_named() {
    let bad = file(
        ".toml",
        r#"
[server]
header_read_timeout = "0s"
idle_timeout = "2h"
request_timeout = "500ms"
max_connections = 0
max_event_streams_per_client = 0

[egress]
allow = ["10.0.0.0/8", "127.0.0.1", "worker.internal", "10.0.0.0/33", "http://x", "-flag"]

[egress.projects.some-project]
allow = ["not a host"]
"#,
    );
    let error = Config::load(&Sources {
        file: Some(bad.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    for expected in [
        "server.header_read_timeout must be between 1s and 5m, got 0s",
        "server.idle_timeout must be between 5s and 1h, got 2h",
        "server.request_timeout must be between 1s and 1h, got 500ms",
        "server.max_connections must be at least 1",
        "server.max_event_streams_per_client must be at least 1",
        "egress.allow: `10.0.0.0/33` is not a network",
        "egress.allow: `http://x` is not a network",
        "egress.allow: `-flag` is not a network",
        "egress.projects.some-project.allow: `not a host` is not a network",
    ] {
        assert!(error.contains(expected), "{expected} in {error}");
    }
    assert!(
        !error.contains("`worker.internal`") && !error.contains("`127.0.0.1`"),
        "{error}"
    );
}

#[test]
fn the_secrets_key_is_given_once_and_never_shown() {
    let both = file(
        ".toml",
        "[secrets]\nkey = \"a-key-that-must-stay-hidden\"\nkey_file = \"/run/secrets/key\"\n",
    );
    let error = Config::load(&Sources {
        file: Some(both.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("set secrets.key or secrets.key_file, not both"),
        "{error}"
    );
    assert!(!error.contains("a-key-that-must-stay-hidden"), "{error}");
    let config = Config::load(&Sources {
        env: vec![(
            "ORCHION_SECRETS__KEY".into(),
            "a-key-that-must-stay-hidden".into(),
        )],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        config.secrets.key.as_ref().map(|k| k.expose()),
        Some("a-key-that-must-stay-hidden")
    );
    let shown = config.to_redacted_toml().unwrap();
    assert!(!shown.contains("a-key-that-must-stay-hidden"), "{shown}");
}

#[test]
fn retention_keeps_things_a_while_and_names_a_setting_that_does_not() {
    let config = Config::load(&Sources::default()).unwrap();
    assert_eq!(
        config.retention.finished,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(config.retention.events, Duration::from_secs(7 * 24 * 3600));
    let err = Config::load(&Sources {
        env: env(&[
            ("ORCHION_RETENTION__FINISHED", "0s"),
            ("ORCHION_RETENTION__DELIVERIES", "1h"),
            ("ORCHION_RETENTION__PROJECTS__P__FINISHED", "10s"),
        ]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("retention.finished must be at least 1m"),
        "{err}"
    );
    assert!(
        err.contains("retention.projects.p.finished must be at least 1m"),
        "{err}"
    );
    assert!(
        err.contains("retention.deliveries (1h) must be at least webhooks.github.replay_window"),
        "{err}"
    );
    assert!(
        err.contains("retention.idempotency_keys (7days) must be at most retention.finished"),
        "{err}"
    );
    assert!(
        err.contains(
            "retention.idempotency_keys (7days) must be at most retention.projects.p.finished"
        ),
        "{err}"
    );
    let err = Config::load(&Sources {
        env: env(&[("ORCHION_RETENTION__EVENTS", "-5m")]),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("retention.events") || err.contains("events"),
        "{err}"
    );
}
