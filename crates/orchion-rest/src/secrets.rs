//! A project's secrets: names, versions and times. A value goes in (`SetSecret`) and never
//! comes out.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The body of `PUT /api/v1/projects/{id}/secrets/{name}`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value: text, up to 64 KiB. Sealed before it is stored, and never shown again.
    pub value: String,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecret").finish_non_exhaustive()
    }
}

/// A secret, without its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretBody {
    pub name: String,
    /// The project it belongs to.
    pub project_id: String,
    /// 1 when made, one more at each change.
    pub version: u32,
    /// Who made it (`token:<id>`, `session:<id>`).
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Who last set its value.
    pub updated_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A project's secrets, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretBody>,
}
