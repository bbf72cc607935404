//! The container and Kubernetes files stay true to the binary: the manifests parse, probe
//! endpoints the server serves, run as the image's non-root user, and grant the executor
//! exactly the access it needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

fn repo(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path),
    )
    .unwrap()
}

fn manifests() -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&repo("deploy/kubernetes/orchion.yaml"))
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_manifests_match_the_server() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for seed in [
        "SERVER_HOST",
        "SERVER_PORT",
        "RUST_LOG",
        "ORCHESTRATOR_DATABASE_URL",
        // Replicas seal secrets under one key, or all but the first refuse to set them.
        "ORCHION_SECRETS__KEY",
    ] {
        assert!(env.contains(&seed), "{seed} is set");
    }
    assert_eq!(pod["serviceAccountName"], "orchion");

    // Replicas on PostgreSQL, kept ready through disruptions and updates.
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let budget = kind(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 2);
    let headless = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service lists every replica for agents");
    assert_eq!(headless["spec"]["ports"][0]["port"], 50051);

    let role = kind(&docs, "Role");
    let grants: Vec<(String, String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            let groups = rule["apiGroups"].as_array().unwrap().clone();
            let verbs: Vec<String> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| {
                    (
                        groups[0].as_str().unwrap().to_owned(),
                        r.as_str().unwrap().to_owned(),
                        verbs.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let verbs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        grants,
        [
            (
                "batch".to_owned(),
                "jobs".to_owned(),
                verbs(&["create", "get", "list", "watch", "delete"])
            ),
            (String::new(), "pods".to_owned(), verbs(&["get", "list"])),
            (String::new(), "pods/log".to_owned(), verbs(&["get"])),
        ],
        "exactly what the executor needs"
    );
    let binding = kind(&docs, "RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "orchion");
    let service = kind(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
}

#[test]
fn the_image_runs_the_server_as_uid_1000() {
    let dockerfile = repo("Dockerfile");
    assert!(dockerfile.contains("USER 1000:1000"));
    assert!(dockerfile.contains("useradd --uid 1000"));
    assert!(dockerfile.contains("AS build") && dockerfile.contains("COPY --from=build"));
    assert!(dockerfile.contains(r#"CMD ["server""#));
}
