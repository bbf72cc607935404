//! Signing in to the dashboard through an OpenID Connect provider (`auth.oidc`).
//!
//! `GET /auth/oidc/login` begins a login ([`orchion_oidc::Provider::begin`]) and sends the
//! browser to the provider, keeping what the callback must match in the `orchion_oidc` cookie:
//! HttpOnly, `SameSite=Lax` (it must come back with the provider's redirect), limited to
//! `/auth/oidc`, ten minutes, and signed with a secret every replica shares, so the callback may
//! reach any of them. `GET /auth/oidc/callback` finishes it: the ID token is verified and its
//! claim mapped to a role, a dashboard session is made for the person (acting as
//! `oidc:<subject>`), and the browser goes back to the dashboard with the session cookie.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use orchion_control::{TokenRequest, access::SESSION_TTL};
use orchion_domain::{AuditEntry, OIDC_PREFIX, TokenKind};
use orchion_oidc::{OidcError, Pending, Provider};
use orchion_rest::{OidcMethod, SignInMethods};
use serde::Deserialize;
use sha2::Sha256;
use utoipa::IntoParams;

use crate::{
    AppState, REQUEST_ID_HEADER,
    auth::{ClientAddr, cookie_value},
    extract::QueryParams,
    problem::{ApiError, Problem},
    session::cookie,
};

/// The cookie a login in progress travels in.
pub const LOGIN_COOKIE: &str = "orchion_oidc";
/// The cluster secret the login cookie is signed with.
pub const COOKIE_KEY: &str = "oidc_login_cookie_key";
/// How long a login may take at the provider.
const LOGIN_TTL_SECS: u64 = 600;

/// The configured provider, and what signs its login cookies.
pub struct OidcLogin {
    pub provider: Provider,
    /// The issuer, as sessions record who made them.
    pub issuer: String,
    /// The sign-in button's label.
    pub name: String,
    /// The HMAC key of the login cookie, shared by every replica.
    pub key: Vec<u8>,
}

impl OidcLogin {
    fn mac(&self, payload: &str) -> Option<Hmac<Sha256>> {
        // HMAC takes a key of any length: this is never `None`.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(payload.as_bytes());
        Some(mac)
    }

    /// The cookie value for a login in progress: its data and their signature.
    fn seal(&self, pending: &Pending) -> Option<String> {
        let json = serde_json::to_vec(pending).ok()?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let signature = hex::encode(self.mac(&payload)?.finalize().into_bytes());
        Some(format!("{payload}.{signature}"))
    }

    /// The login a cookie value holds, when this cluster signed it.
    fn open(&self, value: &str) -> Option<Pending> {
        let (payload, signature) = value.split_once('.')?;
        self.mac(payload)?
            .verify_slice(&hex::decode(signature).ok()?)
            .ok()?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

fn login_cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={value}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Secure; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("orchion_oidc=; Path=/auth/oidc; Max-Age=0"))
}

fn oidc_error(error: OidcError) -> ApiError {
    match error {
        OidcError::Unavailable(m) => ApiError::Upstream(m),
        OidcError::Refused(m) => ApiError::InvalidToken(m),
        OidcError::NoRole(m) => ApiError::Forbidden(m),
    }
}

fn not_configured() -> ApiError {
    ApiError::NotFound(
        "signing in through an identity provider is not configured (auth.oidc)".into(),
    )
}

/// How the dashboard may be signed in to.
#[utoipa::path(get, path = "/api/v1/session/methods", tag = "access",
    responses((status = 200, body = SignInMethods)))]
pub async fn methods(State(state): State<AppState>) -> Json<SignInMethods> {
    Json(SignInMethods {
        token: true,
        oidc: state.oidc.as_ref().map(|o| OidcMethod {
            name: o.name.clone(),
            login_url: "/auth/oidc/login".into(),
        }),
    })
}

/// Begins signing in through the identity provider: redirects there.
#[utoipa::path(get, path = "/auth/oidc/login", tag = "access",
    responses((status = 303, description = "To the identity provider"),
        (status = 404, body = Problem), (status = 502, body = Problem)))]
pub async fn login(State(state): State<AppState>) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(not_configured)?;
    let login = oidc.provider.begin().await.map_err(oidc_error)?;
    let location = HeaderValue::from_str(&login.redirect)
        .map_err(|_| ApiError::Upstream("the authorization endpoint is not a usable URL".into()))?;
    let sealed = oidc.seal(&login.pending).ok_or(ApiError::Internal)?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, login_cookie(&sealed, LOGIN_TTL_SECS));
    Ok(response)
}

/// What the provider sends the browser back with.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set instead of `code` when the provider refused (`access_denied`, …).
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Finishes signing in: verifies the identity, starts a dashboard session, and redirects to
/// the dashboard.
#[utoipa::path(get, path = "/auth/oidc/callback", tag = "access", params(Callback),
    responses((status = 303, description = "To the dashboard, signed in"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 502, body = Problem)))]
pub async fn callback(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    QueryParams(query): QueryParams<Callback>,
) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(not_configured)?;
    let ip = client.ip();
    if state.throttle.blocked(ip) {
        return Err(ApiError::TooManyFailures(
            "too many failed sign-ins from this address; try again in a minute".into(),
        ));
    }
    let refuse = |why: String| {
        state.throttle.failed(ip);
        ApiError::InvalidToken(why)
    };
    if let Some(error) = query.error {
        let description = query.error_description.unwrap_or_default();
        return Err(refuse(format!(
            "the identity provider refused the sign-in: {error} {description}"
        )));
    }
    let (Some(code), Some(login_state)) = (query.code, query.state) else {
        return Err(refuse("the callback carries no code and state".into()));
    };
    let pending = cookie_value(&headers, LOGIN_COOKIE)
        .and_then(|v| oidc.open(&v))
        .ok_or_else(|| {
            refuse("no sign-in is in progress in this browser (or it took over ten minutes)".into())
        })?;
    let identity = match oidc.provider.finish(&code, &login_state, &pending).await {
        Ok(identity) => identity,
        Err(OidcError::Refused(why)) => return Err(refuse(why)),
        Err(e) => return Err(oidc_error(e)),
    };
    let session = state
        .access
        .create(
            TokenRequest {
                kind: TokenKind::Session,
                name: format!("{OIDC_PREFIX}{}", identity.subject),
                role: identity.role,
                project: None,
                ttl: Some(SESSION_TTL),
            },
            &format!("{OIDC_PREFIX}{}", oidc.issuer),
        )
        .await?;
    let principal = session.token.principal();
    let entry = AuditEntry {
        seq: 0,
        at: orchion_store::now(),
        actor: principal.actor,
        role: Some(principal.role),
        project: None,
        client: client
            .0
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
        method: "GET".into(),
        route: "/auth/oidc/callback".into(),
        resource: session.token.id.to_string(),
        status: Some(StatusCode::SEE_OTHER.as_u16()),
        request_id: headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    };
    state.access.record(entry).await?;
    tracing::info!(subject = %identity.subject, who = identity.display.as_deref().unwrap_or(""), role = %identity.role, "signed in through the identity provider");
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.append(
        header::SET_COOKIE,
        cookie(&session.secret, SESSION_TTL.as_secs()),
    );
    headers.append(header::SET_COOKIE, login_cookie("", 0));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_cookie_opens_only_with_the_key_it_was_sealed_with() {
        let login = |key: &[u8]| OidcLogin {
            provider: Provider::new(orchion_oidc::Settings {
                issuer: "http://127.0.0.1:1".into(),
                client_id: "c".into(),
                client_secret: None,
                redirect_url: "http://127.0.0.1:2/cb".into(),
                scopes: vec!["openid".into()],
                role_claim: "groups".into(),
                roles: Default::default(),
            })
            .unwrap(),
            issuer: "http://127.0.0.1:1".into(),
            name: "sso".into(),
            key: key.to_vec(),
        };
        let pending = Pending {
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
        };
        let ours = login(b"key-one");
        let sealed = ours.seal(&pending).unwrap();
        assert_eq!(ours.open(&sealed), Some(pending));
        assert_eq!(login(b"key-two").open(&sealed), None);
        let (payload, _) = sealed.split_once('.').unwrap();
        assert_eq!(
            ours.open(&format!("{payload}.00")),
            None,
            "a forged signature"
        );
        assert_eq!(ours.open("garbage"), None);
    }
}
