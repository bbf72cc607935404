//! The spec of a `kubernetes` task: one container run as a `batch/v1` Job. The executor itself
//! (kube-rs, the Job it builds, the watch) lives in `orchion-kubernetes`; the spec and its checks
//! are here so the server refuses a bad image name or resource quantity at the edge, before any
//! Job exists.

use std::collections::BTreeMap;

use orchion_domain::{FieldError, ValidationErrors, pointer_escape as escape};
use serde::{Deserialize, Serialize};

use super::shell::{text_map, texts};

/// What a `kubernetes` task runs. Absent fields take the executor's defaults (`kubernetes.*` in
/// the configuration, or the seed's `JOB_*` variables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    /// The container image, e.g. `ghcr.io/acme/worker:1.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replaces the image's entrypoint.
    #[serde(
        default,
        deserialize_with = "texts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    /// Replaces the image's arguments; numbers and booleans count as their text.
    #[serde(
        default,
        deserialize_with = "texts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// Plain environment variables; numbers and booleans count as their text.
    #[serde(
        default,
        deserialize_with = "text_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// Environment variables read from Kubernetes Secrets: the value never passes through
    /// Orchion, only the reference.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// How long the finished Job stays before Kubernetes removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
}

/// One key of one Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub secret: String,
    pub key: String,
}

/// CPU and memory requests and limits, as Kubernetes quantities (`500m`, `2`, `512Mi`, `4Gi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Quantities::is_empty")]
    pub requests: Quantities,
    #[serde(default, skip_serializing_if = "Quantities::is_empty")]
    pub limits: Quantities,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl Quantities {
    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

impl KubernetesSpec {
    pub fn check(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut problem = |pointer: String, message: String| {
            errors.push(FieldError {
                pointer: format!("/spec/{pointer}"),
                message: format!("spec.{message}"),
            });
        };
        if let Some(image) = &self.image
            && let Err(why) = check_image(image)
        {
            problem("image".into(), format!("image `{image}` {why}"));
        }
        for (field, parts) in [("command", &self.command), ("args", &self.args)] {
            for (index, part) in parts.iter().enumerate() {
                if part.contains('\0') {
                    problem(
                        format!("{field}/{index}"),
                        format!("{field}[{index}] contains a NUL character"),
                    );
                }
            }
        }
        let env_names = self.env.keys().map(|name| ("env", name));
        let secret_names = self.secret_env.keys().map(|name| ("secret_env", name));
        for (field, name) in env_names.chain(secret_names) {
            if let Err(why) = check_env_name(name) {
                problem(
                    format!("{field}/{}", escape(name)),
                    format!("{field} name `{}` {why}", name.escape_debug()),
                );
            }
        }
        for (name, reference) in &self.secret_env {
            if self.env.contains_key(name) {
                problem(
                    format!("secret_env/{}", escape(name)),
                    format!("secret_env.{name} is also in spec.env: give each variable once"),
                );
            }
            if let Err(why) = check_subdomain(&reference.secret) {
                problem(
                    format!("secret_env/{}/secret", escape(name)),
                    format!(
                        "secret_env.{name}.secret `{}` is not a Secret name: {why}",
                        reference.secret
                    ),
                );
            }
            if let Err(why) = check_config_key(&reference.key) {
                problem(
                    format!("secret_env/{}/key", escape(name)),
                    format!(
                        "secret_env.{name}.key `{}` is not a Secret key: {why}",
                        reference.key
                    ),
                );
            }
        }
        if let Some(namespace) = &self.namespace
            && let Err(why) = check_label_name(namespace)
        {
            problem(
                "namespace".into(),
                format!("namespace `{namespace}` is not a namespace name: {why}"),
            );
        }
        if let Some(account) = &self.service_account
            && let Err(why) = check_subdomain(account)
        {
            problem(
                "service_account".into(),
                format!("service_account `{account}` is not a service account name: {why}"),
            );
        }
        for (kind, quantities) in [
            ("requests", &self.resources.requests),
            ("limits", &self.resources.limits),
        ] {
            for (resource, value) in [("cpu", &quantities.cpu), ("memory", &quantities.memory)] {
                if let Some(value) = value
                    && let Err(why) = parse_quantity(value)
                {
                    problem(
                        format!("resources/{kind}/{resource}"),
                        format!("resources.{kind}.{resource} `{value}` {why}"),
                    );
                }
            }
        }
        for (resource, request, limit) in [
            (
                "cpu",
                &self.resources.requests.cpu,
                &self.resources.limits.cpu,
            ),
            (
                "memory",
                &self.resources.requests.memory,
                &self.resources.limits.memory,
            ),
        ] {
            if let (Some(request), Some(limit)) = (request, limit)
                && let (Ok(r), Ok(l)) = (parse_quantity(request), parse_quantity(limit))
                && r > l
            {
                problem(
                    format!("resources/requests/{resource}"),
                    format!(
                        "resources.requests.{resource} `{request}` is more than its limit `{limit}`"
                    ),
                );
            }
        }
        errors.into_result(())
    }
}

/// A Kubernetes quantity as a number (`500m` is 0.5, `2Gi` is 2 147 483 648), or why it is not
/// one. The grammar is the API server's: a decimal number, then a binary suffix (`Ki` … `Ei`), a
/// decimal suffix (`m`, `k`, `M` … `E`) or an exponent (`e3`); negative quantities are refused.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let bad = || {
        "is not a Kubernetes quantity (a number with an optional suffix such as m, Mi or Gi)"
            .to_owned()
    };
    let body = text.strip_prefix('+').unwrap_or(text);
    if body.starts_with('-') {
        return Err("is negative".into());
    }
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let digits = &exponent[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let power: i32 = digits.parse().map_err(|_| bad())?;
            10f64.powi(power)
        }
        _ => return Err(bad()),
    };
    Ok(value * scale)
}

/// Checks an image reference: `[registry[:port]/]path[:tag][@algorithm:digest]`, with the
/// lowercase path components the registries accept.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("is empty".into());
    }
    if image.len() > 4096 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("is not an image name: it contains whitespace".into());
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !valid {
            return Err(format!(
                "has an invalid digest `{digest}` (expected e.g. sha256:<64 hex digits>)"
            ));
        }
    }
    // A tag follows the last `:` unless that colon is a registry's port (a `/` comes after it).
    let (path, tag) = match name.rfind(':') {
        Some(at) if !name[at..].contains('/') => (&name[..at], Some(&name[at + 1..])),
        _ => (name, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Err(format!(
                "has an invalid tag `{tag}` (letters, digits, `_`, `.` and `-`, at most 128)"
            ));
        }
    }
    let mut components: Vec<&str> = path.split('/').collect();
    // The first component is a registry when it looks like a host: it has a `.` or a `:`, or is
    // `localhost`.
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            let (host, port) = first.split_once(':').unwrap_or((first, ""));
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !host_ok || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("has an invalid registry `{first}`"));
            }
            components.remove(0);
        }
    }
    for component in components {
        if !path_component(component) {
            return Err(format!(
                "is not an image name: `{component}` must be lowercase letters and digits, separated by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

/// `parts` joined by `-` as a name Kubernetes and the tools accept (a DNS-1123 label):
/// lowercase letters, digits and `-`, at most `max` characters.
pub fn dns_label(parts: &[&str], max: usize) -> String {
    let mut name: String = parts
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(max);
    name.trim_matches('-').to_owned()
}

/// A DNS-1123 label: what a namespace is named (at most 63 lowercase letters, digits and `-`).
pub fn check_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("it must have 1 to 63 characters".into());
    }
    dns_part(name)
}

/// A DNS-1123 subdomain: what a Secret or a service account is named.
fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("it must have 1 to 253 characters".into());
    }
    name.split('.').try_for_each(dns_part)
}

fn dns_part(part: &str) -> Result<(), String> {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
    {
        Ok(())
    } else {
        Err(
            "use lowercase letters, digits and `-`, starting and ending with a letter or digit"
                .into(),
        )
    }
}

/// An environment variable name Kubernetes accepts.
fn check_env_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if !bytes.is_empty()
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b))
    {
        Ok(())
    } else {
        Err("is not a valid variable name (letters, digits, `_`, `-` and `.`, not starting with a digit)".into())
    }
}

/// A key of a Secret or ConfigMap.
fn check_config_key(key: &str) -> Result<(), String> {
    if !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Ok(())
    } else {
        Err("use letters, digits, `-`, `_` and `.`".into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate;

    #[test]
    fn quantities_parse_as_the_api_server_reads_them() {
        assert_eq!(parse_quantity("500m"), Ok(0.5));
        assert_eq!(parse_quantity("2"), Ok(2.0));
        assert_eq!(parse_quantity("2Gi"), Ok(2.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1.5G"), Ok(1.5e9));
        assert_eq!(parse_quantity("12e3"), Ok(12e3));
        assert_eq!(parse_quantity("+1k"), Ok(1e3));
        for bad in [
            "", "Gi", "2GB", "1..5", "-1", "2 Gi", "1e", "1e+", "one", ".",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_names_follow_the_reference_grammar() {
        for good in [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "ghcr.io/acme/worker:1.4",
            "localhost:5000/worker",
            "registry.example.com:443/a/b/c:v1.2-rc_1",
            "a__b/c-d--e:latest",
            "busybox@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "BusyBox",
            "busybox:",
            "busy box",
            "busybox:-x",
            "-busybox",
            "a//b",
            "busybox@sha256:xyz",
            "bad_registry.com:x/a",
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_named_with_its_pointer() {
        let err = validate(
            "kubernetes",
            &json!({
                "image": "Not An Image",
                "env": {"1BAD": "x"},
                "secret_env": {"TOKEN": {"secret": "Bad_Name", "key": "token"}},
                "namespace": "Prod",
                "resources": {
                    "requests": {"cpu": "2", "memory": "lots"},
                    "limits": {"cpu": "1"}
                }
            }),
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/spec/image",
                "/spec/env/1BAD",
                "/spec/secret_env/TOKEN/secret",
                "/spec/namespace",
                "/spec/resources/requests/memory",
                "/spec/resources/requests/cpu",
            ],
            "{err}"
        );
        assert!(err.0[4].message.contains("`lots`"), "{err}");
        assert!(err.0[5].message.contains("more than its limit"), "{err}");
    }

    #[test]
    fn a_minimal_spec_takes_every_default() {
        assert_eq!(validate("kubernetes", &json!({})).unwrap(), "{}");
        let spec = validate(
            "kubernetes",
            &json!({"image": "busybox", "args": ["echo", 1], "resources": {"limits": {"memory": "64Mi"}}}),
        )
        .unwrap();
        assert_eq!(
            spec,
            r#"{"image":"busybox","args":["echo","1"],"resources":{"limits":{"memory":"64Mi"}}}"#
        );
        let err = validate("kubernetes", &json!({"image": "busybox", "cpus": 2})).unwrap_err();
        assert_eq!(err.0[0].pointer, "/spec/cpus");
    }
}
