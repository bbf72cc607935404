//! The event log (`/api/v1/events`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// One event, as streams carry it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventBody {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub kind: String,
    pub subject: String,
    pub project_id: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}
