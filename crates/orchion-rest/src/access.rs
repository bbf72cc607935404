//! Tokens (`/api/v1/tokens`), join tokens (`/api/v1/join-tokens`), the dashboard's session
//! (`/api/v1/session`) and the audit log (`/api/v1/audit`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A request to make an API token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label for people (`ci`, `pm-agent`); 1 to 200 characters.
    #[schema(example = "ci")]
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(example = "operator")]
    pub role: String,
    /// Confines the token to this project (its id). Absent: every project (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// How long it lasts (`30d`, `12h`); absent: until revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "30d")]
    pub ttl: Option<String>,
}

/// A token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenBody {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Who made it (`token:<id>`, `bootstrap`, `config`).
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// When it was last used (written about once a minute).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A token just made: its record and its text, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenBody,
    /// The token itself: send it as `Authorization: Bearer <token>`. Not shown again.
    pub token_text: String,
}

/// A page of tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Signing in to the dashboard with a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// An API token.
    pub token: String,
}

/// The dashboard session the request carries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionBody {
    /// Who, as the audit log names them.
    pub actor: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The value state-changing requests of this session carry in `X-CSRF-Token`; absent when
    /// the request was made with a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditBody {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// `token:<id>`, `session:<id>`, or `anonymous`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The client's address.
    pub client: String,
    pub method: String,
    /// The route template, such as `/api/v1/jobs/{id}/cancel`.
    pub route: String,
    /// The ids the request named or created, space-separated.
    pub resource: String,
    /// The HTTP status it was answered with. Absent while it is handled, and for good when
    /// the server stopped before answering (its change may or may not have been made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub request_id: String,
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditBody>,
    /// Pass as `after` to read on; absent when this page is not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// A request to make a join token: a secret an agent presents to join as a new node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// A label for people (`rack-7`); 1 to 200 characters, unique among tokens not revoked.
    #[schema(example = "rack-7")]
    pub name: String,
    /// How long it admits new nodes (`24h`, `30d`); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "24h")]
    pub ttl: Option<String>,
    /// The only labels a node joining with it may carry, each with its one allowed value (`*`:
    /// any value). Absent: any labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The most a node joining with it may offer. Absent: any capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<crate::CapacityBody>,
}

/// A join token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenBody {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<crate::CapacityBody>,
    /// Who made it (`token:<id>`, `session:<id>`).
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// When a node last joined with it.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A join token just made: its record and its text, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedJoinToken {
    #[serde(flatten)]
    pub token: JoinTokenBody,
    /// The token itself: give it to an agent as `--join-token` (`ORCHION_JOIN_TOKEN`). Not
    /// shown again.
    pub token_text: String,
}

/// A page of join tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenList {
    pub items: Vec<JoinTokenBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// How the dashboard may be signed in to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignInMethods {
    /// With an API token (`POST /api/v1/session`): always.
    pub token: bool,
    /// Through an OpenID Connect provider, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcMethod>,
}

/// The identity provider the dashboard offers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OidcMethod {
    /// The sign-in button's label.
    pub name: String,
    /// Where the browser goes to sign in.
    pub login_url: String,
}
