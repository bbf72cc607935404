//! Signing in through an OpenID Connect provider: the authorization code flow with PKCE.
//!
//! [`Provider::begin`] makes a login: where to send the browser, and what the callback must
//! match (`state`, `nonce`, the PKCE verifier), which the caller keeps in a signed cookie.
//! [`Provider::finish`] redeems the code at the token endpoint and accepts the ID token only
//! when its signature verifies against the provider's published keys, it was issued by the
//! configured issuer for this client, it has not expired, and it carries the login's nonce.
//! The claim named by `role_claim` is then mapped to a role; an identity no mapping names is
//! refused.
//!
//! The provider's discovery document and keys are fetched on first use and kept; keys are read
//! again when a token names one not known (a rotation), at most once a minute.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use orchion_domain::Role;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

pub mod fake;

/// How long a call to the provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest time between two readings of the provider's keys.
const KEYS_REFRESH: Duration = Duration::from_secs(60);
/// The signature algorithms an ID token may use: asymmetric ones only.
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The provider and the client Orchion is at it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer URL; its discovery document is at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// For a confidential client; PKCE is used either way.
    pub client_secret: Option<String>,
    /// Orchion's callback, as registered at the provider (`https://…/auth/oidc/callback`).
    pub redirect_url: String,
    pub scopes: Vec<String>,
    /// The claim whose value (a string or a list of strings) is mapped to a role; a dotted
    /// path reaches into objects (`realm_access.roles`).
    pub role_claim: String,
    /// Claim value → role. The strongest role any value maps to is the identity's.
    pub roles: BTreeMap<String, Role>,
}

/// Why a sign-in did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered nonsense: nobody's fault here.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider or its token refused the sign-in.
    #[error("the sign-in was refused: {0}")]
    Refused(String),
    /// The identity is genuine but no role mapping names it.
    #[error("{0}")]
    NoRole(String),
}

/// What the callback of one login must match, kept by the browser in a signed cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// A login begun: where the browser goes, and what its callback must match.
#[derive(Debug, Clone)]
pub struct Login {
    pub redirect: String,
    pub pending: Pending,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's `sub`.
    pub subject: String,
    pub role: Role,
    /// `email` or `name`, when the token has one: for people reading the audit log.
    pub display: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Discovered {
    metadata: Metadata,
    keys: JwkSet,
    keys_read: Instant,
}

/// One OpenID Connect provider.
pub struct Provider {
    settings: Settings,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
}

fn random_text() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE `S256` challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Provider {
    pub fn new(settings: Settings) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            discovered: tokio::sync::Mutex::new(None),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(OidcError::Unavailable(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))
    }

    /// The discovery document and keys, fetched on first use; with `fresh_keys`, the keys are
    /// read again if they were last read [`KEYS_REFRESH`] ago or more.
    async fn metadata_and_keys(&self, fresh_keys: bool) -> Result<(Metadata, JwkSet), OidcError> {
        let mut discovered = self.discovered.lock().await;
        if discovered.is_none() {
            let url = format!(
                "{}/.well-known/openid-configuration",
                self.settings.issuer.trim_end_matches('/')
            );
            let metadata: Metadata = self.get_json(&url).await?;
            if metadata.issuer.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/') {
                return Err(OidcError::Unavailable(format!(
                    "the discovery document names the issuer `{}`, not `{}`",
                    metadata.issuer, self.settings.issuer
                )));
            }
            let keys = self.get_json(&metadata.jwks_uri).await?;
            *discovered = Some(Discovered {
                metadata,
                keys,
                keys_read: Instant::now(),
            });
        } else if fresh_keys
            && let Some(d) = discovered.as_mut()
            && d.keys_read.elapsed() >= KEYS_REFRESH
        {
            d.keys = self.get_json(&d.metadata.jwks_uri).await?;
            d.keys_read = Instant::now();
        }
        let d = discovered
            .as_ref()
            .ok_or_else(|| OidcError::Unavailable("no discovery document".into()))?;
        Ok((d.metadata.clone(), d.keys.clone()))
    }

    /// Begins a login: the provider's authorization URL for a fresh state, nonce and PKCE
    /// verifier.
    pub async fn begin(&self) -> Result<Login, OidcError> {
        let (metadata, _) = self.metadata_and_keys(false).await?;
        let pending = Pending {
            state: random_text(),
            nonce: random_text(),
            verifier: random_text(),
        };
        let mut url = url::Url::parse(&metadata.authorization_endpoint).map_err(|e| {
            OidcError::Unavailable(format!("the authorization endpoint is not a URL: {e}"))
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_url)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge(&pending.verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Login {
            redirect: url.into(),
            pending,
        })
    }

    /// Finishes a login: `state` must be the pending one; the code is redeemed and its ID
    /// token verified.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        pending: &Pending,
    ) -> Result<Identity, OidcError> {
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return Err(OidcError::Refused(
                "the callback's state is not this browser's login".into(),
            ));
        }
        let (metadata, _) = self.metadata_and_keys(false).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_url.as_str()),
            ("client_id", self.settings.client_id.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        if let Some(secret) = &self.settings.client_secret {
            form.push(("client_secret", secret));
        }
        let response = self
            .http
            .post(&metadata.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(format!("{}: {e}", metadata.token_endpoint)))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| OidcError::Unavailable(format!("{}: {e}", metadata.token_endpoint)))?;
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("error");
            let description = body["error_description"].as_str().unwrap_or("");
            return Err(OidcError::Refused(format!(
                "the token endpoint answered {status}: {error} {description}"
            )));
        }
        let id_token = body["id_token"]
            .as_str()
            .ok_or_else(|| OidcError::Refused("the token answer has no id_token".into()))?;
        let claims = self.verify(id_token, &pending.nonce).await?;
        self.identity(&claims)
    }

    /// The claims of an ID token whose signature, issuer, audience, expiry and nonce hold.
    async fn verify(&self, id_token: &str, nonce: &str) -> Result<serde_json::Value, OidcError> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|e| OidcError::Refused(format!("the ID token is not a JWT: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Refused(format!(
                "the ID token is signed with {:?}, which is not accepted",
                header.alg
            )));
        }
        let (metadata, mut keys) = self.metadata_and_keys(false).await?;
        let find = |keys: &JwkSet| match &header.kid {
            Some(kid) => keys.find(kid).cloned(),
            None if keys.keys.len() == 1 => keys.keys.first().cloned(),
            None => None,
        };
        let mut jwk = find(&keys);
        if jwk.is_none() {
            // A rotation, perhaps: the keys are read again, at most once a minute.
            keys = self.metadata_and_keys(true).await?.1;
            jwk = find(&keys);
        }
        let jwk = jwk.ok_or_else(|| {
            OidcError::Refused("the ID token's key is not one the provider publishes".into())
        })?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| OidcError::Refused(format!("the provider's key is unusable: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_issuer(&[&metadata.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &validation)
            .map_err(|e| OidcError::Refused(format!("the ID token does not verify: {e}")))?;
        let presented = data.claims["nonce"].as_str().unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(OidcError::Refused(
                "the ID token's nonce is not this login's".into(),
            ));
        }
        Ok(data.claims)
    }

    /// The identity the claims describe, with the strongest role a mapping gives it.
    fn identity(&self, claims: &serde_json::Value) -> Result<Identity, OidcError> {
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::Refused("the ID token has no subject".into()))?
            .to_owned();
        let display = claims["email"]
            .as_str()
            .or_else(|| claims["name"].as_str())
            .map(str::to_owned);
        let claim = self
            .settings
            .role_claim
            .split('.')
            .fold(claims, |value, key| &value[key]);
        let values: Vec<&str> = match claim {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        let role = values
            .iter()
            .filter_map(|v| self.settings.roles.get(*v).copied())
            .max()
            .ok_or_else(|| {
                OidcError::NoRole(format!(
                    "`{}` signed in, but no value of its `{}` claim is given a role in \
                     auth.oidc.roles",
                    display.as_deref().unwrap_or(&subject),
                    self.settings.role_claim
                ))
            })?;
        Ok(Identity {
            subject,
            role,
            display,
        })
    }
}

#[cfg(test)]
mod tests;
