//! A small OpenID Connect provider for tests, faithful where Orchion depends on it: discovery,
//! a JWKS with one P-256 key, `/authorize` that signs its one user in at once and redirects
//! with a code, and `/token` that redeems a code once, only with the PKCE verifier, client and
//! redirect URI it was issued for (`invalid_grant` otherwise, as RFC 6749 says), answering an
//! ES256 ID token. Knobs make it misbehave the ways a test needs: another audience or issuer in
//! the token, a key it does not publish.

// Test support: a key that cannot be made is a broken machine, and the fake stops.
#![allow(clippy::expect_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use serde::Deserialize;
use serde_json::json;

/// Who the fake signs in, and how it misbehaves.
#[derive(Debug, Clone)]
pub struct FakeSettings {
    pub client_id: String,
    pub subject: String,
    pub email: String,
    pub groups: Vec<String>,
    /// The `aud` its tokens carry instead of the client id.
    pub audience: Option<String>,
    /// The `iss` its tokens carry instead of its own URL.
    pub token_issuer: Option<String>,
    /// Sign tokens with a key the JWKS does not publish.
    pub unpublished_key: bool,
}

impl Default for FakeSettings {
    fn default() -> Self {
        Self {
            client_id: "orchion".into(),
            subject: "alice".into(),
            email: "alice@example.com".into(),
            groups: vec!["orchion-admins".into()],
            audience: None,
            token_issuer: None,
            unpublished_key: false,
        }
    }
}

struct Issued {
    client_id: String,
    redirect_uri: String,
    nonce: String,
    challenge: String,
}

struct Fake {
    settings: FakeSettings,
    issuer: String,
    signing: EncodingKey,
    published: serde_json::Value,
    codes: Mutex<HashMap<String, Issued>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-256 key: its PKCS#8 document and its public JWK.
fn new_key(kid: &str) -> (Vec<u8>, serde_json::Value) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the key just made");
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    (pkcs8.as_ref().to_vec(), jwk)
}

/// The fake's routes, for an issuer at `issuer` (its own base URL).
pub fn router(issuer: String, settings: FakeSettings) -> Router {
    let (published_der, published) = new_key("published");
    let signing = if settings.unpublished_key {
        new_key("published").0
    } else {
        published_der
    };
    let fake = Arc::new(Fake {
        settings,
        issuer,
        signing: EncodingKey::from_ec_der(&signing),
        published,
        codes: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(fake)
}

async fn discovery(State(fake): State<Arc<Fake>>) -> Json<serde_json::Value> {
    let issuer = &fake.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(fake): State<Arc<Fake>>) -> Json<serde_json::Value> {
    Json(json!({ "keys": [fake.published] }))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_owned()).into_response()
}

async fn authorize(State(fake): State<Arc<Fake>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if q.response_type != "code" {
        return bad_request("unsupported response_type");
    }
    if q.client_id != fake.settings.client_id {
        return bad_request("unknown client_id");
    }
    let (Some(challenge), Some("S256")) = (q.code_challenge, q.code_challenge_method.as_deref())
    else {
        return bad_request("this provider requires PKCE with S256");
    };
    let code = crate::random_text();
    fake.codes.lock().unwrap_or_else(|p| p.into_inner()).insert(
        code.clone(),
        Issued {
            client_id: q.client_id,
            redirect_uri: q.redirect_uri.clone(),
            nonce: q.nonce.unwrap_or_default(),
            challenge,
        },
    );
    let Ok(mut back) = url::Url::parse(&q.redirect_uri) else {
        return bad_request("redirect_uri is not a URL");
    };
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q.state);
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: String,
    client_id: String,
    code_verifier: Option<String>,
}

fn invalid_grant(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

async fn token(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    };
    if form.grant_type != "authorization_code" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    // A code is good once, whatever happens next.
    let Some(issued) = fake
        .codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&form.code)
    else {
        return invalid_grant("the code is unknown or was used");
    };
    if issued.client_id != form.client_id || issued.redirect_uri != form.redirect_uri {
        return invalid_grant("the code was issued to another client or redirect URI");
    }
    let verified = form
        .code_verifier
        .as_deref()
        .is_some_and(|v| crate::challenge(v) == issued.challenge);
    if !verified {
        return invalid_grant("the code_verifier does not match the code_challenge");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let settings = &fake.settings;
    let claims = json!({
        "iss": settings.token_issuer.as_deref().unwrap_or(&fake.issuer),
        "sub": settings.subject,
        "aud": settings.audience.as_deref().unwrap_or(&settings.client_id),
        "iat": now,
        "exp": now + 300,
        "nonce": issued.nonce,
        "email": settings.email,
        "groups": settings.groups,
    });
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("published".into());
    let Ok(id_token) = jsonwebtoken::encode(&header, &claims, &fake.signing) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot sign").into_response();
    };
    Json(json!({
        "access_token": crate::random_text(),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    }))
    .into_response()
}
