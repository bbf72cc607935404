//! The `batch/v1` Job a task becomes: a pure function of the spec, the executor's defaults and
//! the task's identity, so it is snapshot-tested without a cluster.
//!
//! Every Job has `backoffLimit: 0` (Orchion owns retries: a failed pod is a failed attempt),
//! `restartPolicy: Never`, a non-root security context, and labels that link it to its run,
//! task and attempt.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, Container, EnvVar, EnvVarSource, PodSecurityContext, PodSpec,
            PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
            SecurityContext,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use orchion_executor::{KubernetesSpec, parse_quantity};

use crate::Settings;

/// The container's name in every pod Orchion starts.
pub const CONTAINER: &str = "main";
/// Labels on every Job and pod.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "orchion");
pub const RUN_LABEL: &str = "orchion.io/run-id";
pub const TASK_LABEL: &str = "orchion.io/task-id";
pub const ATTEMPT_LABEL: &str = "orchion.io/attempt";
/// The user a container runs as unless its image says otherwise in a way Kubernetes honours.
const RUN_AS: i64 = 1000;

/// Which attempt of which task a Job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// What Orchion adds to the container's environment (`ORCHION_JOB_ID`, …).
    pub env: BTreeMap<String, String>,
}

impl Attempt {
    /// The attempt the agent describes in the environment it gives every executor.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |name: &str| {
            env.get(name)
                .cloned()
                .ok_or_else(|| format!("the agent did not say which task this is: no {name}"))
        };
        Ok(Self {
            run_id: get("ORCHION_JOB_ID")?,
            task_id: get("ORCHION_TASK_ID")?,
            attempt: get("ORCHION_ATTEMPT")?
                .parse()
                .map_err(|_| "ORCHION_ATTEMPT is not a number".to_owned())?,
            env: env.clone(),
        })
    }

    /// The Job's name: one per attempt, so a retry never meets its predecessor.
    pub fn job_name(&self) -> String {
        orchion_executor::dns_label(&["orchion", &self.task_id, &self.attempt.to_string()], 63)
    }

    /// The label selector of this attempt's pods.
    pub fn selector(&self) -> String {
        format!(
            "{TASK_LABEL}={},{ATTEMPT_LABEL}={}",
            self.task_id, self.attempt
        )
    }

    fn labels(&self) -> BTreeMap<String, String> {
        [
            (MANAGED_BY.0, MANAGED_BY.1.to_owned()),
            (RUN_LABEL, self.run_id.clone()),
            (TASK_LABEL, self.task_id.clone()),
            (ATTEMPT_LABEL, self.attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// The Job for one attempt, or why it cannot be built (nothing is created then).
pub fn job(
    spec: &KubernetesSpec,
    settings: &Settings,
    attempt: &Attempt,
    deadline: Option<Duration>,
) -> Result<Job, String> {
    let resources = resources(spec, settings)?;
    let image = spec.image.clone().unwrap_or_else(|| settings.image.clone());
    // Orchion's own variables name the attempt; the spec cannot shadow them.
    let mut plain = spec.env.clone();
    plain.extend(attempt.env.clone());
    let mut env: Vec<EnvVar> = plain
        .into_iter()
        .filter(|(name, _)| !spec.secret_env.contains_key(name))
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect();
    env.extend(spec.secret_env.iter().map(|(name, reference)| EnvVar {
        name: name.clone(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: reference.secret.clone(),
                key: reference.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }));
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!env.is_empty()).then_some(env),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let labels = attempt.labels();
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(attempt.job_name()),
            namespace: Some(
                spec.namespace
                    .clone()
                    .unwrap_or_else(|| settings.namespace.clone()),
            ),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(
                spec.ttl_seconds_after_finished
                    .unwrap_or(settings.ttl_seconds)
                    .try_into()
                    .unwrap_or(i32::MAX),
            ),
            active_deadline_seconds: deadline
                .map(|d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    service_account_name: spec.service_account.clone(),
                    automount_service_account_token: Some(spec.service_account.is_some()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The spec's requests and limits over the defaults; a request above its limit is refused here,
/// as the API server would refuse it, but with the field named.
fn resources(spec: &KubernetesSpec, settings: &Settings) -> Result<ResourceRequirements, String> {
    let pick = |given: &Option<String>, default: &str| given.clone().unwrap_or(default.to_owned());
    let requests = &spec.resources.requests;
    let limits = &spec.resources.limits;
    let cpu = (
        pick(&requests.cpu, &settings.cpu_request),
        pick(&limits.cpu, &settings.cpu_limit),
    );
    let memory = (
        pick(&requests.memory, &settings.memory_request),
        pick(&limits.memory, &settings.memory_limit),
    );
    for (resource, (request, limit)) in [("cpu", &cpu), ("memory", &memory)] {
        let (r, l) = (parse_quantity(request)?, parse_quantity(limit)?);
        if r > l {
            return Err(format!(
                "resources.requests.{resource} `{request}` is more than the limit `{limit}`; set resources.limits.{resource} too"
            ));
        }
    }
    let map = |cpu: String, memory: String| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu)),
            ("memory".to_owned(), Quantity(memory)),
        ])
    };
    Ok(ResourceRequirements {
        requests: Some(map(cpu.0, memory.0)),
        limits: Some(map(cpu.1, memory.1)),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use orchion_executor::{Quantities, Resources, SecretKeyRef};

    use super::*;

    fn attempt() -> Attempt {
        Attempt {
            run_id: "0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f8e".into(),
            task_id: "0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f90".into(),
            attempt: 2,
            env: BTreeMap::from([
                ("ORCHION_ATTEMPT".into(), "2".into()),
                (
                    "ORCHION_JOB_ID".into(),
                    "0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f8e".into(),
                ),
            ]),
        }
    }

    fn settings() -> Settings {
        Settings::from_config(&orchion_config::KubernetesConfig::default())
            .expect("the defaults are valid")
    }

    #[test]
    fn a_minimal_spec_takes_every_default() {
        let job =
            job(&KubernetesSpec::default(), &settings(), &attempt(), None).expect("a valid spec");
        insta::assert_json_snapshot!(job);
    }

    #[test]
    fn a_full_spec_overrides_the_defaults() {
        let spec = KubernetesSpec {
            image: Some("ghcr.io/acme/worker:1.4".into()),
            command: vec!["/bin/worker".into()],
            args: vec!["--issue".into(), "42".into()],
            env: BTreeMap::from([("MODE".into(), "review".into())]),
            secret_env: BTreeMap::from([(
                "GITHUB_TOKEN".into(),
                SecretKeyRef {
                    secret: "github".into(),
                    key: "token".into(),
                },
            )]),
            namespace: Some("agents".into()),
            service_account: Some("worker".into()),
            resources: Resources {
                requests: Quantities {
                    cpu: Some("250m".into()),
                    memory: Some("256Mi".into()),
                },
                limits: Quantities {
                    cpu: None,
                    memory: Some("512Mi".into()),
                },
            },
            ttl_seconds_after_finished: Some(60),
        };
        let job = job(
            &spec,
            &settings(),
            &attempt(),
            Some(Duration::from_secs(600)),
        )
        .expect("a valid spec");
        insta::assert_json_snapshot!(job);
    }

    #[test]
    fn secrets_go_by_reference_never_by_value() {
        let spec = KubernetesSpec {
            secret_env: BTreeMap::from([(
                "TOKEN".into(),
                SecretKeyRef {
                    secret: "s".into(),
                    key: "k".into(),
                },
            )]),
            ..Default::default()
        };
        let job = job(&spec, &settings(), &attempt(), None).expect("a valid spec");
        let env = job.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let token = env.iter().find(|e| e.name == "TOKEN").unwrap();
        assert_eq!(token.value, None);
        assert_eq!(
            token
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| (r.name.as_str(), r.key.as_str())),
            Some(("s", "k"))
        );
    }

    #[test]
    fn a_request_over_the_default_limit_is_refused_with_the_field_named() {
        let spec = KubernetesSpec {
            resources: Resources {
                requests: Quantities {
                    cpu: None,
                    memory: Some("8Gi".into()),
                },
                limits: Quantities::default(),
            },
            ..Default::default()
        };
        let err = job(&spec, &settings(), &attempt(), None).unwrap_err();
        assert!(err.contains("resources.requests.memory `8Gi`"), "{err}");
        assert!(err.contains("`4Gi`"), "{err}");
    }

    #[test]
    fn job_names_are_valid_object_names_per_attempt() {
        let mut a = attempt();
        assert_eq!(
            a.job_name(),
            "orchion-0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f90-2"
        );
        a.attempt = u32::MAX;
        assert!(a.job_name().len() <= 63);
        assert_eq!(
            a.selector(),
            "orchion.io/task-id=0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f90,orchion.io/attempt=4294967295"
        );
    }
}
