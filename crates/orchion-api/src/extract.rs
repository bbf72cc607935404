//! Extractors that turn every malformed input into a problem naming what is wrong, instead of
//! axum's plain-text rejections.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// The body size limit in force, carried in request extensions so rejections can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON (or YAML) request body, deserialized strictly, with a digest of its content for idempotency.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    /// SHA-256 of the body's canonical JSON (keys sorted, no white space), so two requests
    /// that differ only in formatting count as the same request.
    pub digest: Vec<u8>,
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = body_format(req.headers())?;
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        let json: serde_json::Value = match format {
            Format::Json => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::MalformedJson(e.to_string()))?,
            Format::Yaml => serde_yaml_ng::from_slice(&bytes)
                .map_err(|e| ApiError::MalformedJson(format!("(YAML) {e}")))?,
        };
        decode(json, "")
    }
}

/// Deserializes `json` strictly into a `T`, with the digest of its canonical form. `prefix` is
/// the JSON pointer of `json` within the request body ("" for the whole body), so errors name
/// the field as the client sent it.
pub fn decode<T: DeserializeOwned>(
    json: serde_json::Value,
    prefix: &str,
) -> Result<JsonBody<T>, ApiError> {
    if let Some(at) = orchion_spec::find_nul(&json) {
        let pointer = format!("{prefix}{at}");
        return Err(ApiError::InvalidBody {
            detail: format!("field `{pointer}`: {}", orchion_spec::NUL_REFUSED),
            pointer,
        });
    }
    let digest = Sha256::digest(json.to_string().as_bytes()).to_vec();
    let value = serde_path_to_error::deserialize(json).map_err(|e| {
        let inner = e.inner().to_string();
        let pointer = format!("{prefix}{}", orchion_spec::pointer_of(e.path(), &inner));
        let path = e.path().to_string();
        ApiError::InvalidBody {
            pointer,
            detail: if path == "." {
                format!("request body: {inner}")
            } else {
                format!("field `{path}`: {inner}")
            },
        }
    })?;
    Ok(JsonBody { value, digest })
}

/// How a request body is written.
enum Format {
    Json,
    Yaml,
}

/// The body's format by its Content-Type: JSON (`application/json`, `…+json`) or YAML
/// (`application/yaml`, `application/x-yaml`, `text/yaml`).
fn body_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Format::Yaml),
        "" => Err(ApiError::UnsupportedMediaType(
            "the request has no Content-Type: send `Content-Type: application/json`".into(),
        )),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{content_type}` is not supported: send `application/json` (or `application/yaml`)"
        ))),
    }
}

/// Query parameters, deserialized strictly: an unknown parameter or a value of the wrong type
/// is a problem naming the parameter.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let name = if path == "." {
                    quoted_name(&inner).unwrap_or("query").to_owned()
                } else {
                    path
                };
                ApiError::InvalidParameter {
                    detail: format!("query parameter `{name}`: {inner}"),
                    name,
                }
            })
    }
}

/// A problem with a request whose path or query holds a NUL character (`%00`), which no
/// route accepts: 422 naming the query parameter, or the path.
pub fn nul_in_uri(uri: &axum::http::Uri) -> Option<ApiError> {
    let encoded_nul = |text: &str| {
        text.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    let refused = |field: String| {
        ApiError::Validation(orchion_domain::ValidationErrors(vec![
            orchion_domain::FieldError::new(&field, orchion_spec::NUL_REFUSED),
        ]))
    };
    if encoded_nul(uri.path()) {
        return Some(refused("path".into()));
    }
    let query = uri.query().filter(|q| encoded_nul(q))?;
    let name = form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        .map_or_else(|| "query".to_owned(), |(name, _)| name.replace('\0', "\\0"));
    Some(refused(name))
}

/// The name a serde message quotes, as in "unknown field `x`" or "missing field `x`".
fn quoted_name(message: &str) -> Option<&str> {
    message.split('`').nth(1)
}

/// Parses a path segment as an id, naming the parameter when it is not one.
pub fn parse_id<T>(name: &str, raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse::<T>().map_err(|e| ApiError::InvalidParameter {
        name: name.to_owned(),
        detail: format!("path parameter `{name}`: {e}"),
    })
}

/// A resource id from the path's `{id}`: a 400 naming the parameter when it is not one.
#[derive(Debug, Clone, Copy)]
pub struct PathId<T>(pub T);

impl<S, T> FromRequestParts<S> for PathId<T>
where
    S: Send + Sync,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::InvalidParameter {
                    name: "id".into(),
                    detail: format!("path parameter `id`: {}", e.body_text()),
                })?;
        parse_id("id", &raw).map(PathId)
    }
}

/// The `Idempotency-Key` header, if given, checked for a sane shape.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidParameter {
        name: "Idempotency-Key".into(),
        detail: "header `Idempotency-Key` must be 1 to 255 visible ASCII characters".into(),
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// A problem with the query parameter `name`.
pub fn invalid_query(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParameter {
        name: name.to_owned(),
        detail: format!("query parameter `{name}`: {detail}"),
    }
}

/// A query parameter parsed with `FromStr`, its error naming the parameter.
pub fn query_value<T>(name: &str, raw: Option<String>) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.map(|r| r.parse::<T>())
        .transpose()
        .map_err(|e| invalid_query(name, e))
}

/// The page a listing's `limit` and `cursor` parameters ask for.
pub fn page_request(
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<orchion_domain::PageRequest, ApiError> {
    let cursor = cursor
        .map(|c| c.parse::<orchion_domain::Cursor>())
        .transpose()
        .map_err(|e| invalid_query("cursor", e.message))?;
    orchion_domain::PageRequest::new(limit, cursor).map_err(|e| invalid_query("limit", e.message))
}

/// The order of a listing by creation: `oldest` first (the default) or `newest` first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Oldest,
    Newest,
}
