//! What a project's `kubernetes` tasks may name: namespaces, service accounts and Secrets
//! (`secret_env`). Nothing by default but the executor's own namespace; the configuration
//! allows more for every project or for one (`kubernetes.allow`, `kubernetes.projects.<id>`).
//! The control plane's own service accounts and Secrets are never allowed, whatever a list
//! says, so a job cannot borrow the server's powers or read its join token.

use std::collections::BTreeMap;

use orchion_domain::{FieldError, ProjectId};

use super::KubernetesSpec;

/// Names a project's tasks may use besides the executor's namespace; `*` allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesNames {
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub secrets: Vec<String>,
}

/// The allow-lists every `kubernetes` task is checked against, when it is made and when it is
/// claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesPolicy {
    /// The executor's namespace (`kubernetes.namespace`): a spec that names none runs there.
    pub namespace: String,
    /// Allowed for every project.
    pub everyone: KubernetesNames,
    /// Allowed for one project besides.
    pub projects: BTreeMap<ProjectId, KubernetesNames>,
    /// The control plane's own service accounts and Secrets: never allowed.
    pub control_plane: KubernetesNames,
}

fn listed<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>, name: &str) -> bool {
    lists
        .into_iter()
        .flatten()
        .any(|allowed| allowed == "*" || allowed == name)
}

/// The refusal of `name` (of `field`, at `pointer`), if it is refused: always when it is one
/// of the control plane's own, else unless `allowed`; `(what, setting)` say what it is not
/// and which setting would allow it.
fn judged(
    field: &str,
    pointer: String,
    name: &str,
    control_plane: &[String],
    allowed: bool,
    (what, setting): (&str, String),
) -> Option<FieldError> {
    let message = if control_plane.iter().any(|own| own == name) {
        format!("{field} `{name}` is the control plane's own and no job may use it")
    } else if !allowed {
        format!("{field} `{name}` is not {what}: allow it in {setting}")
    } else {
        return None;
    };
    Some(FieldError { pointer, message })
}

impl KubernetesPolicy {
    /// Every name `spec` uses that `project` may not: a problem at its field, saying which
    /// setting would allow it (or that nothing can).
    pub fn refusals(&self, project: Option<ProjectId>, spec: &KubernetesSpec) -> Vec<FieldError> {
        let own = project.and_then(|p| self.projects.get(&p));
        let setting = |kind: &str| match project {
            Some(project) => {
                format!("kubernetes.allow.{kind} or kubernetes.projects.{project}.{kind}")
            }
            None => format!("kubernetes.allow.{kind}"),
        };
        let mut refusals = Vec::new();
        if let Some(namespace) = &spec.namespace
            && *namespace != self.namespace
            && !listed(
                [&self.everyone.namespaces]
                    .into_iter()
                    .chain(own.map(|o| &o.namespaces)),
                namespace,
            )
        {
            refusals.push(FieldError {
                pointer: "/spec/namespace".into(),
                message: format!(
                    "spec.namespace `{namespace}` is not one this project's jobs may use: the executor's own is `{}`; allow more in {}",
                    self.namespace,
                    setting("namespaces")
                ),
            });
        }
        let allowed = |kind: fn(&KubernetesNames) -> &Vec<String>, name: &str| {
            listed(
                [kind(&self.everyone)].into_iter().chain(own.map(kind)),
                name,
            )
        };
        if let Some(account) = &spec.service_account {
            refusals.extend(judged(
                "spec.service_account",
                "/spec/service_account".into(),
                account,
                &self.control_plane.service_accounts,
                allowed(|n| &n.service_accounts, account),
                (
                    "one this project's jobs may run as",
                    setting("service_accounts"),
                ),
            ));
        }
        for (variable, reference) in &spec.secret_env {
            let secret = &reference.secret;
            refusals.extend(judged(
                &format!("spec.secret_env.{variable}.secret"),
                format!(
                    "/spec/secret_env/{}/secret",
                    orchion_domain::pointer_escape(variable)
                ),
                secret,
                &self.control_plane.secrets,
                allowed(|n| &n.secrets, secret),
                ("a Secret this project's jobs may read", setting("secrets")),
            ));
        }
        refusals
    }

    /// [`Self::refusals`] of a stored spec (canonical JSON text); none for a spec that does
    /// not read as a `kubernetes` one (the executor refuses it in its own words).
    pub fn refusals_of(&self, project: Option<ProjectId>, spec: &str) -> Vec<FieldError> {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(spec) else {
            return Vec::new();
        };
        let value = crate::secret::placeholders("kubernetes", &value);
        match serde_json::from_value::<KubernetesSpec>(value) {
            Ok(spec) => self.refusals(project, &spec),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy() -> (KubernetesPolicy, ProjectId) {
        let team = ProjectId::new();
        let policy = KubernetesPolicy {
            namespace: "jobs".into(),
            everyone: KubernetesNames {
                namespaces: vec!["shared".into()],
                ..Default::default()
            },
            projects: BTreeMap::from([(
                team,
                KubernetesNames {
                    namespaces: vec!["team".into()],
                    service_accounts: vec!["worker".into(), "orchion".into()],
                    secrets: vec!["*".into()],
                },
            )]),
            control_plane: KubernetesNames {
                service_accounts: vec!["orchion".into()],
                secrets: vec!["orchion".into()],
                ..Default::default()
            },
        };
        (policy, team)
    }

    fn pointers(refusals: &[FieldError]) -> Vec<&str> {
        refusals.iter().map(|r| r.pointer.as_str()).collect()
    }

    #[test]
    fn only_the_executors_namespace_is_allowed_by_default() {
        let (policy, team) = policy();
        let spec = |v| serde_json::from_value::<KubernetesSpec>(v).unwrap();
        assert!(policy.refusals(None, &spec(json!({}))).is_empty());
        assert!(
            policy
                .refusals(None, &spec(json!({"namespace": "jobs"})))
                .is_empty()
        );
        assert!(
            policy
                .refusals(None, &spec(json!({"namespace": "shared"})))
                .is_empty()
        );
        let elsewhere = policy.refusals(
            None,
            &spec(json!({"namespace": "kube-system",
            "service_account": "worker", "secret_env": {"T": {"secret": "github", "key": "t"}}})),
        );
        assert_eq!(
            pointers(&elsewhere),
            [
                "/spec/namespace",
                "/spec/service_account",
                "/spec/secret_env/T/secret"
            ]
        );
        assert!(
            elsewhere[0].message.contains("kubernetes.allow.namespaces"),
            "{elsewhere:?}"
        );
        let own = policy.refusals(
            Some(team),
            &spec(json!({"namespace": "team",
            "service_account": "worker", "secret_env": {"T": {"secret": "github", "key": "t"}}})),
        );
        assert!(own.is_empty(), "{own:?}");
    }

    #[test]
    fn the_control_planes_own_are_never_allowed() {
        let (policy, team) = policy();
        let refusals = policy.refusals_of(
            Some(team),
            r#"{"service_account":"orchion","env":{"A":{"secret":"x"}},
                "secret_env":{"TOKEN":{"secret":"orchion","key":"join-token"}}}"#,
        );
        assert_eq!(
            pointers(&refusals),
            ["/spec/service_account", "/spec/secret_env/TOKEN/secret"]
        );
        assert!(
            refusals
                .iter()
                .all(|r| r.message.contains("control plane's own"))
        );
    }
}
