//! Engine contract tests: every engine against faithful fake tools on `PATH` (the
//! `orchion-fake-tool` binary linked as terraform, helm and pulumi), checking what it runs, what
//! it reports and how it fails; and Terraform against a real `terraform` when one is installed
//! (a config of `terraform_data` resources needs no provider download).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::Arc, time::Duration};

use orchion_engines::{Crossplane, Engine, EngineExecutor, Helm, Pulumi, Terraform};
use orchion_executor::{Context, Executor, Outcome};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A PATH with the fake tools first, and the log they append to.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for tool in ["terraform", "helm", "pulumi", "kubectl"] {
            std::os::unix::fs::symlink(
                env!("CARGO_BIN_EXE_orchion-fake-tool"),
                dir.path().join(tool),
            )
            .unwrap();
        }
        Fakes { dir }
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), self.path()),
            (
                "ORCHION_FAKE_LOG".into(),
                self.dir.path().join("calls.log").display().to_string(),
            ),
        ]
    }
}

fn context(env: Vec<(String, String)>) -> (Context, mpsc::Receiver<orchion_executor::OutputLine>) {
    let (tx, rx) = mpsc::channel(4096);
    (
        Context {
            output: tx,
            cancel: CancellationToken::new(),
            deadline: Some(Duration::from_secs(120)),
            inherited: std::sync::Arc::new(orchion_executor::inherited_env(&[])),
            egress: Default::default(),
            env: env.into_iter().collect(),
            kill_grace: Duration::from_secs(2),
            fence: None,
            leaving: CancellationToken::new(),
        },
        rx,
    )
}

fn spec(action: &str, resource: &str, catalog_ref: &str, config: Value) -> String {
    orchion_executor::validate(
        "terraform",
        &json!({"action": action, "deployment": "team-alpha-web-app-v1", "composer": "team-alpha",
                "environment": "production", "resource": resource, "catalog_ref": catalog_ref,
                "config": config}),
    )
    .unwrap()
}

async fn run(
    engine: Arc<dyn Engine>,
    root: &Path,
    env: Vec<(String, String)>,
    spec: String,
) -> Outcome {
    let executor = EngineExecutor::new(engine, root.to_owned());
    let (ctx, _rx) = context(env);
    executor.run(&spec, ctx).await
}

fn outputs(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Succeeded { outputs, .. } => {
            serde_json::from_str(outputs.as_deref().unwrap_or("null")).unwrap()
        }
        other => panic!("expected success, got {other:?}"),
    }
}

fn error(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failed { error, .. } => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn terraform_inits_plans_applies_reports_outputs_and_destroys() {
    let fakes = Fakes::new();
    let root = tempfile::tempdir().unwrap();
    let config = json!({
        "resource": {"terraform_data": {"db": {"input": "small"}}},
        "output": {"endpoint": {"value": "db.internal:3306"}, "password": {"value": "hunter2", "sensitive": true}},
    });
    let applied = run(
        Arc::new(Terraform),
        root.path(),
        fakes.env(),
        spec("apply", "database", "aws-rds-mysql:1.0.0", config.clone()),
    )
    .await;
    assert_eq!(
        outputs(&applied),
        json!({"endpoint": "db.internal:3306", "password": "(sensitive)"}),
        "sensitive outputs never leave the agent"
    );
    let destroyed = run(
        Arc::new(Terraform),
        root.path(),
        fakes.env(),
        spec("destroy", "database", "aws-rds-mysql:1.0.0", config),
    )
    .await;
    assert!(
        matches!(destroyed, Outcome::Succeeded { .. }),
        "{destroyed:?}"
    );
    assert_eq!(
        fakes.log(),
        [
            "terraform init -input=false -no-color",
            "terraform plan -input=false -no-color -out=tfplan",
            "terraform apply -input=false -no-color -json tfplan",
            "terraform output -json -no-color",
            "terraform init -input=false -no-color",
            "terraform destroy -auto-approve -input=false -no-color",
        ]
    );
    let dir = root
        .path()
        .join("terraform/n-team-alpha/n-production/n-team-alpha-web-app-v1/n-database");
    assert!(
        dir.join("main.tf.json").is_file(),
        "a working dir per resource"
    );

    let failing = json!({"//": "fail", "resource": {"terraform_data": {"x": {}}}});
    let failed = error(
        run(
            Arc::new(Terraform),
            root.path(),
            fakes.env(),
            spec("apply", "cache", "x:1", failing),
        )
        .await,
    );
    assert!(failed.contains("`terraform apply` failed"), "{failed}");
    let bad = error(
        run(
            Arc::new(Terraform),
            root.path(),
            fakes.env(),
            spec("apply", "bad", "x:1", json!("not an object")),
        )
        .await,
    );
    assert!(
        bad.contains("config must be a Terraform JSON configuration"),
        "{bad}"
    );
}

#[tokio::test]
async fn helm_installs_the_catalog_chart_and_uninstalls_it() {
    let fakes = Fakes::new();
    let root = tempfile::tempdir().unwrap();
    let config = json!({"values": {"replicas": 2, "db": "db.internal:3306"}});
    let applied = run(
        Arc::new(Helm),
        root.path(),
        fakes.env(),
        spec("apply", "web", "k8s-deployment:2.1.0", config.clone()),
    )
    .await;
    assert_eq!(
        outputs(&applied),
        json!({"release": "team-alpha-web-app-v1-web", "namespace": "production", "revision": 1, "status": "deployed"})
    );
    let log = fakes.log();
    assert!(
        log[0].starts_with(
            "helm upgrade --install --namespace production --create-namespace --values "
        ) && log[0].ends_with(
            "values.json --wait -o json --version 2.1.0 -- team-alpha-web-app-v1-web k8s-deployment"
        ),
        "{log:?}"
    );
    let destroyed = run(
        Arc::new(Helm),
        root.path(),
        fakes.env(),
        spec("destroy", "web", "k8s-deployment:2.1.0", config.clone()),
    )
    .await;
    assert!(
        matches!(destroyed, Outcome::Succeeded { .. }),
        "{destroyed:?}"
    );
    assert_eq!(
        fakes.log()[1],
        "helm uninstall --namespace production --wait -- team-alpha-web-app-v1-web"
    );
    // Uninstalling what is not installed fails as helm does.
    let again = error(
        run(
            Arc::new(Helm),
            root.path(),
            fakes.env(),
            spec("destroy", "web", "k8s-deployment:2.1.0", config),
        )
        .await,
    );
    assert!(again.contains("release: not found"), "{again}");
    let failed = error(
        run(
            Arc::new(Helm),
            root.path(),
            fakes.env(),
            spec(
                "apply",
                "api",
                "k8s-deployment:2.1.0",
                json!({"values": {"//": "fail"}}),
            ),
        )
        .await,
    );
    assert!(failed.contains("UPGRADE FAILED"), "{failed}");
}

#[tokio::test]
async fn pulumi_runs_a_stack_per_environment() {
    let fakes = Fakes::new();
    let root = tempfile::tempdir().unwrap();
    let program = json!({"resources": {"bucket": {"type": "random:RandomPet"}}, "outputs": {"bucket": "assets-7"}});
    let applied = run(
        Arc::new(Pulumi),
        root.path(),
        fakes.env(),
        spec("apply", "assets", "s3-bucket:1.0.0", program.clone()),
    )
    .await;
    assert_eq!(outputs(&applied), json!({"bucket": "assets-7"}));
    let destroyed = run(
        Arc::new(Pulumi),
        root.path(),
        fakes.env(),
        spec("destroy", "assets", "s3-bucket:1.0.0", program),
    )
    .await;
    assert!(
        matches!(destroyed, Outcome::Succeeded { .. }),
        "{destroyed:?}"
    );
    assert_eq!(
        fakes.log(),
        [
            "pulumi stack select --create production --non-interactive",
            "pulumi preview --stack production --non-interactive",
            "pulumi up --yes --json --stack production --non-interactive",
            "pulumi stack output --json --stack production --non-interactive",
            "pulumi stack select --create production --non-interactive",
            "pulumi destroy --yes --stack production --non-interactive",
        ]
    );
    let failed = error(
        run(
            Arc::new(Pulumi),
            root.path(),
            fakes.env(),
            spec("apply", "x", "y:1", json!({"//": "fail"})),
        )
        .await,
    );
    assert!(failed.contains("`pulumi up` failed"), "{failed}");
}

#[tokio::test]
async fn crossplane_applies_a_claim_waits_until_ready_and_deletes_it() {
    let fakes = Fakes::new();
    let root = tempfile::tempdir().unwrap();
    let claim = json!({"apiVersion": "database.example.org/v1alpha1", "kind": "MySQLInstance",
                       "spec": {"parameters": {"storageGB": 20}, "writeConnectionSecretToRef": {"name": "db-conn"}}});
    let applied = run(
        Arc::new(Crossplane),
        root.path(),
        fakes.env(),
        spec("apply", "database", "aws-rds-mysql:1.0.0", claim.clone()),
    )
    .await;
    assert_eq!(
        outputs(&applied),
        json!({"endpoint": "team-alpha-web-app-v1-database.production.example.internal",
               "name": "team-alpha-web-app-v1-database", "namespace": "production", "kind": "MySQLInstance"})
    );
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join(
            "crossplane/n-team-alpha/n-production/n-team-alpha-web-app-v1/n-database/claim.json",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["orchion.io/resource"],
        "database"
    );
    let destroyed = run(
        Arc::new(Crossplane),
        root.path(),
        fakes.env(),
        spec("destroy", "database", "aws-rds-mysql:1.0.0", claim),
    )
    .await;
    assert!(
        matches!(destroyed, Outcome::Succeeded { .. }),
        "{destroyed:?}"
    );
    assert_eq!(
        fakes.log(),
        [
            "kubectl apply --server-side --field-manager=orchion -f claim.json -o json",
            "kubectl wait --for=condition=Ready --timeout=300s -f claim.json",
            "kubectl get -f claim.json -o json",
            "kubectl delete -f claim.json --wait=true --ignore-not-found=true",
        ]
    );
    let failing =
        json!({"apiVersion": "x/v1", "kind": "Bucket", "spec": {"//": "fail"}, "timeout": "5s"});
    let failed = error(
        run(
            Arc::new(Crossplane),
            root.path(),
            fakes.env(),
            spec("apply", "bucket", "s3:1", failing),
        )
        .await,
    );
    assert!(
        failed.contains("timed out waiting for the condition on bucket/"),
        "{failed}"
    );
    let bad = error(
        run(
            Arc::new(Crossplane),
            root.path(),
            fakes.env(),
            spec("apply", "x", "s3:1", json!({"spec": {}})),
        )
        .await,
    );
    assert!(bad.contains("the claim has no apiVersion"), "{bad}");
}

#[tokio::test]
async fn only_engines_whose_tool_is_installed_are_offered() {
    let fakes = Fakes::new();
    let names: Vec<&str> = orchion_engines::available(Some(std::ffi::OsStr::new(&fakes.path())))
        .iter()
        .map(|e| e.name())
        .collect();
    assert_eq!(names, ["terraform", "helm", "pulumi", "crossplane"]);
    let empty = tempfile::tempdir().unwrap();
    assert!(orchion_engines::available(Some(empty.path().as_os_str())).is_empty());
}

/// The real `terraform`, when installed: `terraform_data` needs no provider download.
#[tokio::test]
async fn terraform_for_real_when_installed() {
    let path = std::env::var("PATH").unwrap_or_default();
    if orchion_engines::available(Some(std::ffi::OsStr::new(&path)))
        .iter()
        .all(|e| e.name() != "terraform")
    {
        eprintln!("terraform is not installed here: only the fake was exercised");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let config = json!({
        "resource": {"terraform_data": {"db": {"input": "db.internal:3306"}}},
        "output": {"endpoint": {"value": "${terraform_data.db.output}"}},
    });
    let env = vec![("PATH".to_owned(), path)];
    let applied = run(
        Arc::new(Terraform),
        root.path(),
        env.clone(),
        spec("apply", "database", "x:1", config.clone()),
    )
    .await;
    assert_eq!(outputs(&applied), json!({"endpoint": "db.internal:3306"}));
    let state = root.path().join(
        "terraform/n-team-alpha/n-production/n-team-alpha-web-app-v1/n-database/terraform.tfstate",
    );
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("terraform_data")
    );
    let destroyed = run(
        Arc::new(Terraform),
        root.path(),
        env,
        spec("destroy", "database", "x:1", config),
    )
    .await;
    assert!(
        matches!(destroyed, Outcome::Succeeded { .. }),
        "{destroyed:?}"
    );
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap()
            .contains("\"terraform_data\"")
    );
}
