//! Who may do what: roles, the principal a request acts as, and the API tokens that carry them.
//!
//! A principal has one role and, optionally, one project it is confined to. The rules are two
//! pure questions, [`Principal::may`] and [`Principal::sees`]; the API asks them of every
//! request and every resource it answers with.

use std::{fmt, str::FromStr};

use time::OffsetDateTime;

use std::collections::BTreeMap;

use crate::{Capacity, JoinTokenId, NodeRegistration, ProjectId, TokenId};

/// What a principal may do. Each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Also submits, cancels and retries jobs, runs and deployments, and applies workflow types.
    Operator,
    /// Also manages nodes, tokens, schedules, projects, join tokens, and reads the audit log.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The role as it is written on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role: expected viewer, operator or admin"))
    }
}

/// Whom a request acts for: a token's holder, a dashboard session, or a configured identity
/// (webhook rules, `/enqueue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, as the audit log names them: `token:<id>`, `session:<id>`, `oidc:<subject>`, ….
    pub actor: String,
    pub role: Role,
    /// The one project this principal may see; `None`: every project.
    pub project: Option<ProjectId>,
    /// The dashboard session the request came with, if it came with one.
    pub session: Option<TokenId>,
}

impl Principal {
    /// Whether the principal's role includes `role`.
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether the principal may see a resource of `project` (`None`: a resource of no project,
    /// such as a job whose project was deleted, which only unconfined principals see).
    pub fn sees(&self, project: Option<ProjectId>) -> bool {
        match self.project {
            None => true,
            Some(mine) => project == Some(mine),
        }
    }

    /// Whether the principal sees every project (cluster-wide resources need this).
    pub fn is_unconfined(&self) -> bool {
        self.project.is_none()
    }

    /// The project a new resource of this principal goes to when the request names none: its
    /// own, or the default project.
    pub fn project_or_default(&self, named: Option<ProjectId>) -> ProjectId {
        named.or(self.project).unwrap_or(ProjectId::DEFAULT)
    }
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// An API token, made by `orchion token create` or `POST /api/v1/tokens`.
    Api,
    /// A dashboard session, made by signing in; carried in a cookie.
    Session,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Session => "session",
        }
    }
}

impl FromStr for TokenKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(TokenKind::Api),
            "session" => Ok(TokenKind::Session),
            other => Err(format!("`{other}` is not a token kind")),
        }
    }
}

/// How the audit log names a person who signed in through an identity provider: `oidc:` and
/// the provider's subject.
pub const OIDC_PREFIX: &str = "oidc:";

/// A token as stored: never its secret, only the secret's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub kind: TokenKind,
    /// A person's label for it (`ci`, `pm-agent`).
    pub name: String,
    pub role: Role,
    pub project: Option<ProjectId>,
    /// SHA-256 of the whole token text.
    pub digest: Vec<u8>,
    /// Who made it (an actor, as in [`Principal::actor`]).
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl Token {
    /// Whether the token may be used at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// The principal a request with this token acts as. A session made by signing in through
    /// an identity provider acts as its subject (its name, [`OIDC_PREFIX`]`<subject>`).
    pub fn principal(&self) -> Principal {
        let actor = match self.kind {
            TokenKind::Api => format!("token:{}", self.id),
            TokenKind::Session if self.name.starts_with(OIDC_PREFIX) => self.name.clone(),
            TokenKind::Session => format!("session:{}", self.id),
        };
        Principal {
            actor,
            role: self.role,
            project: self.project,
            session: (self.kind == TokenKind::Session).then_some(self.id),
        }
    }
}

/// A join token as stored: a secret an agent presents to join as a new node, kept only as its
/// digest. A node that joined keeps its own credential afterwards: a join token that expires or
/// is revoked admits no new node, and the nodes it admitted stay (delete them to remove them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: JoinTokenId,
    /// A person's label for it (`rack-7`, `ci-runners`); unique among tokens not revoked.
    pub name: String,
    /// SHA-256 of the whole token text.
    pub digest: Vec<u8>,
    pub limits: JoinLimits,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    /// When a node last joined with it.
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

impl JoinToken {
    /// Whether the token admits new nodes at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// What a node joining with a join token may claim about itself. Checked when it joins and
/// every time it registers again, so a node never outgrows the token that admitted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinLimits {
    /// The labels a node may carry, each with the one value it may have (`*`: any value);
    /// `None`: any labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// The most a node may offer; `None`: any capacity.
    pub max_capacity: Option<Capacity>,
}

impl JoinLimits {
    /// Every way `registration` goes beyond these limits, in words that name the label or the
    /// resource; empty when it stays within them.
    pub fn violations(&self, registration: &NodeRegistration) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(allowed) = &self.labels {
            for (key, value) in registration.labels.as_map() {
                match allowed.get(key) {
                    Some(v) if v == "*" || v == value => {}
                    Some(v) => problems.push(format!(
                        "label `{key}={value}` is not allowed (this join token allows only `{key}={v}`)"
                    )),
                    None => problems.push(format!("label `{key}` is not allowed by this join token")),
                }
            }
        }
        if let Some(max) = &self.max_capacity {
            let claimed = &registration.capacity;
            if claimed.cpu_millis > max.cpu_millis {
                problems.push(format!(
                    "cpu_millis {} is more than this join token allows ({})",
                    claimed.cpu_millis, max.cpu_millis
                ));
            }
            if claimed.memory_bytes > max.memory_bytes {
                problems.push(format!(
                    "memory_bytes {} is more than this join token allows ({})",
                    claimed.memory_bytes, max.memory_bytes
                ));
            }
            if claimed.gpus > max.gpus {
                problems.push(format!(
                    "gpus {} is more than this join token allows ({})",
                    claimed.gpus, max.gpus
                ));
            }
        }
        problems
    }
}

/// One entry of the audit log: a state-changing request, who made it, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log, strictly increasing.
    pub seq: i64,
    pub at: OffsetDateTime,
    /// Who, as in [`Principal::actor`]; `anonymous` for a request without valid credentials.
    pub actor: String,
    /// Their role, if they had one.
    pub role: Option<Role>,
    /// The project the principal was confined to, if any.
    pub project: Option<ProjectId>,
    /// The client's address.
    pub client: String,
    pub method: String,
    /// The route template (`/api/v1/jobs/{id}/cancel`), never the raw path.
    pub route: String,
    /// The ids in the path, and the id of a resource the request created.
    pub resource: String,
    /// The HTTP status of the answer; `None` while the request is handled, and for good when
    /// the server stopped before answering it (its change may or may not have been made).
    pub status: Option<u16>,
    pub request_id: String,
}

/// How a request recorded in the audit log before it was acted on ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOutcome {
    pub seq: i64,
    pub status: u16,
    /// The entry's resources, with the id of what the request created.
    pub resource: String,
}

/// What the audit log is filtered by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub method: Option<String>,
    /// Entries whose route starts with this.
    pub route_prefix: Option<String>,
    pub resource: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, project: Option<ProjectId>) -> Principal {
        Principal {
            actor: "token:t".into(),
            role,
            project,
            session: None,
        }
    }

    #[test]
    fn roles_include_the_weaker_ones() {
        let operator = principal(Role::Operator, None);
        assert!(operator.may(Role::Viewer));
        assert!(operator.may(Role::Operator));
        assert!(!operator.may(Role::Admin));
        assert!(!principal(Role::Viewer, None).may(Role::Operator));
    }

    #[test]
    fn a_confined_principal_sees_only_its_project() {
        let (a, b) = (ProjectId::new(), ProjectId::new());
        let confined = principal(Role::Admin, Some(a));
        assert!(confined.sees(Some(a)));
        assert!(!confined.sees(Some(b)));
        assert!(
            !confined.sees(None),
            "orphans are for unconfined principals"
        );
        assert!(principal(Role::Viewer, None).sees(Some(b)));
        assert_eq!(confined.project_or_default(None), a);
        assert_eq!(
            principal(Role::Viewer, None).project_or_default(None),
            ProjectId::DEFAULT
        );
    }

    fn registration(labels: &[(&str, &str)], cpu_millis: u64) -> NodeRegistration {
        NodeRegistration::new(
            "n".into(),
            String::new(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            (cpu_millis, 1 << 30, 0),
            vec!["shell".into()],
            "1".into(),
        )
        .unwrap()
    }

    #[test]
    fn join_limits_name_every_label_and_resource_beyond_them() {
        let limits = JoinLimits {
            labels: Some(
                [("zone", "*"), ("gpu", "false")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
            ),
            max_capacity: Some(Capacity::new(4000, 8 << 30, 0).unwrap()),
        };
        assert!(
            limits
                .violations(&registration(&[("zone", "eu-1"), ("gpu", "false")], 4000))
                .is_empty()
        );
        let problems = limits.violations(&registration(&[("gpu", "true"), ("rack", "7")], 8000));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`gpu=true`"), "{problems:?}");
        assert!(problems[1].contains("`rack`"), "{problems:?}");
        assert!(problems[2].contains("cpu_millis 8000"), "{problems:?}");
        assert!(
            JoinLimits::default()
                .violations(&registration(&[("any", "x")], 64_000))
                .is_empty()
        );
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().unwrap_err().contains("`root`"));
    }
}
