//! Who may do what, as a service: issuing and checking API tokens, the first admin token, and
//! the audit log's writer.
//!
//! A token's text is `orc_` and 43 characters of base64url (256 random bits); only its SHA-256
//! digest is stored, and a presented token is found by its digest, so nothing compares a secret
//! byte by byte. A configured admin token may be any text of 16 characters or more.
//!
//! A token checked is remembered for [`CHECKED_FOR`], so a request costs no read of the store;
//! revoking a token (or deleting its project) makes every replica forget what it remembered
//! (at once here, and through [`orchion_store::Signal::Tokens`] on the others), and a token's
//! expiry is checked at every use.
//!
//! Audit entries are written by group commit: one transaction for every request waiting, new
//! entries and outcomes together. A request that will change something is recorded before it
//! is acted on and goes on only once its entry is on disk; how it ended is written before it is
//! answered ([`Access::finish`]). So no change is ever made unrecorded, even by a server killed
//! while making it (its entry then has no outcome), and an answered change is recorded whole. Token uses are kept in
//! memory and written once per period ([`Access::flush_uses`]), so checking a token is one read.

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::Engine as _;
use orchion_domain::{AuditEntry, AuditOutcome, ProjectId, Role, Token, TokenId, TokenKind};
use orchion_store::{Store, StoreError};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::batch::Batcher;

/// The prefix of every token Orchion makes, so a leaked one is recognizable (secret scanners).
pub const TOKEN_PREFIX: &str = "orc_";
/// The shortest configured admin token accepted.
pub const MIN_CONFIGURED_TOKEN_CHARS: usize = 16;
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How often token uses are written.
const USES_PERIOD: Duration = Duration::from_secs(30);
/// The most audit entries one transaction writes.
const AUDIT_BATCH: usize = 256;
/// How long a checked token is remembered, at most: what a replica that missed a revocation
/// signal (its listener reconnecting) may still accept it for.
pub const CHECKED_FOR: Duration = Duration::from_secs(5);
/// The most tokens remembered at once.
const CHECKED_MAX: usize = 10_000;

/// Why a presented token is refused. Each is a 401; the message never says more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token is not one this server issued")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
}

/// A token just made: the stored record and its text, which is shown this once.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: Token,
    pub secret: String,
}

/// What a new token is.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub kind: TokenKind,
    pub name: String,
    pub role: Role,
    pub project: Option<ProjectId>,
    /// How long it lasts; `None`: until revoked.
    pub ttl: Option<Duration>,
}

/// The SHA-256 digest a token is stored and found by.
pub fn digest(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Fresh token text: `prefix` and 256 random bits in base64url.
pub(crate) fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Tokens found lately, by the digest of their text, with when each was read.
type Checked = HashMap<Vec<u8>, (Arc<Token>, std::time::Instant)>;

/// Tokens and the audit log.
pub struct Access {
    store: Arc<dyn Store>,
    audit: Batcher<AuditWrite, i64>,
    /// When each token was last used, not yet written.
    uses: std::sync::Mutex<HashMap<TokenId, OffsetDateTime>>,
    /// Tokens found lately, by digest, and when.
    checked: std::sync::Mutex<Checked>,
    writers: TaskTracker,
    closing: CancellationToken,
}

/// One write to the audit log.
#[derive(Debug, Clone)]
enum AuditWrite {
    Append(AuditEntry),
    Complete(AuditOutcome),
}

impl Access {
    /// The service over `store`. Starts the audit writer, so call it inside a Tokio runtime.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (writers, closing) = (TaskTracker::new(), CancellationToken::new());
        let audit = {
            let store = store.clone();
            Batcher::spawn(AUDIT_BATCH, &writers, closing.clone(), move |writes| {
                let store = store.clone();
                async move {
                    let (mut entries, mut outcomes) = (Vec::new(), Vec::new());
                    for write in &writes {
                        match write {
                            AuditWrite::Append(entry) => entries.push(entry.clone()),
                            AuditWrite::Complete(outcome) => outcomes.push(outcome.clone()),
                        }
                    }
                    let mut seqs = store.write_audit(&entries, &outcomes).await?.into_iter();
                    Ok(writes
                        .iter()
                        .map(|write| match write {
                            AuditWrite::Append(_) => seqs.next().ok_or_else(|| {
                                StoreError::Corrupt("an audit entry was given no seq".into())
                            }),
                            AuditWrite::Complete(outcome) => Ok(outcome.seq),
                        })
                        .collect())
                }
            })
        };
        Self {
            store,
            audit,
            uses: std::sync::Mutex::new(HashMap::new()),
            checked: std::sync::Mutex::new(HashMap::new()),
            writers,
            closing,
        }
    }

    /// Makes and stores a token; its text is in the answer and nowhere else.
    pub async fn create(
        &self,
        request: TokenRequest,
        created_by: &str,
    ) -> Result<Issued, StoreError> {
        let issued = issue(request, created_by, &new_secret(TOKEN_PREFIX));
        self.store.create_token(&issued.token).await?;
        Ok(issued)
    }

    /// The token `text` names, if it may be used now. Its use is remembered for
    /// [`Access::flush_uses`].
    pub async fn authenticate(
        &self,
        text: &str,
    ) -> Result<Result<Arc<Token>, Refusal>, StoreError> {
        let presented = digest(text);
        let remembered = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&presented)
            .filter(|(_, at)| at.elapsed() < CHECKED_FOR)
            .map(|(token, _)| token.clone());
        let token = match remembered {
            Some(token) => token,
            None => {
                let Some(token) = self.store.find_token(&presented).await? else {
                    return Ok(Err(Refusal::Unknown));
                };
                let token = Arc::new(token);
                let mut checked = self
                    .checked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if checked.len() >= CHECKED_MAX {
                    checked.clear();
                }
                checked.insert(
                    presented.clone(),
                    (token.clone(), std::time::Instant::now()),
                );
                token
            }
        };
        // Found by its digest already; compared again in constant time all the same.
        if !bool::from(token.digest.as_slice().ct_eq(&presented)) {
            return Ok(Err(Refusal::Unknown));
        }
        let now = orchion_store::now();
        if token.revoked_at.is_some() {
            return Ok(Err(Refusal::Revoked));
        }
        if !token.is_valid_at(now) {
            return Ok(Err(Refusal::Expired));
        }
        self.uses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.id, now);
        Ok(Ok(token))
    }

    /// Revokes a token: refused from the next request on here, and on the other replicas as
    /// soon as they hear of it (at most [`CHECKED_FOR`] later).
    pub async fn revoke(&self, id: TokenId) -> Result<Token, StoreError> {
        let token = self.store.revoke_token(id, orchion_store::now()).await?;
        self.tokens_changed().await;
        Ok(token)
    }

    /// Tokens were revoked or deleted (with their project): this replica forgets the tokens it
    /// checked, and tells the others to.
    pub async fn tokens_changed(&self) {
        self.forget_checked();
        if let Err(e) = self.store.signal(&[orchion_store::Signal::Tokens]).await {
            tracing::warn!(error = %e, "could not tell the other replicas a token was revoked; they forget it within {CHECKED_FOR:?}");
        }
    }

    /// Forgets the tokens checked lately: the next use of each reads the store.
    pub fn forget_checked(&self) {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Makes sure an admin token exists: the configured one (stored if new; never brought back
    /// once revoked), or else the cluster's first, made once in its life. Returns the text of a
    /// token made now, which the caller shows once.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Bootstrap, StoreError> {
        if let Some(text) = configured {
            return match self.store.find_token(&digest(text)).await? {
                Some(token) if token.revoked_at.is_some() => Ok(Bootstrap::ConfiguredRevoked),
                Some(_) => Ok(Bootstrap::Configured),
                None => {
                    let issued = issue(bootstrap_request("configured admin"), "config", text);
                    match self.store.create_token(&issued.token).await {
                        // Another replica stored it meanwhile.
                        Ok(()) | Err(StoreError::Conflict(_)) => Ok(Bootstrap::Configured),
                        Err(e) => Err(e),
                    }
                }
            };
        }
        let issued = issue(
            bootstrap_request("bootstrap admin"),
            "bootstrap",
            &new_secret(TOKEN_PREFIX),
        );
        if self.store.bootstrap_token(&issued.token).await? {
            Ok(Bootstrap::Made(issued.secret))
        } else {
            Ok(Bootstrap::Existing)
        }
    }

    /// Appends an entry to the audit log; returns its `seq` once it is on disk.
    pub async fn record(&self, entry: AuditEntry) -> Result<i64, StoreError> {
        self.audit.submit(AuditWrite::Append(entry)).await
    }

    /// Records how a request [`Access::record`]ed before it was acted on ended; returns once
    /// it is on disk.
    pub async fn finish(&self, outcome: AuditOutcome) -> Result<(), StoreError> {
        self.audit
            .submit(AuditWrite::Complete(outcome))
            .await
            .map(drop)
    }

    /// Writes the token uses remembered since the last call.
    pub async fn flush_uses(&self) -> Result<usize, StoreError> {
        let uses: Vec<(TokenId, OffsetDateTime)> = std::mem::take(
            &mut *self
                .uses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        self.store.touch_tokens(&uses).await?;
        Ok(uses.len())
    }

    /// Stops the audit writer once what was submitted is written.
    pub async fn close(&self) {
        self.closing.cancel();
        self.writers.close();
        self.writers.wait().await;
        let _ = self.flush_uses().await;
    }
}

/// Writes the token uses remembered, once per period and at shutdown.
impl crate::Reconciler for Access {
    fn name(&self) -> &'static str {
        "token_uses"
    }

    fn period(&self) -> Duration {
        USES_PERIOD
    }

    async fn reconcile(
        &self,
        _: crate::Cause,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.flush_uses().await?)
    }

    async fn stopped(&self) {
        self.close().await;
    }
}

/// What [`Access::bootstrap`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The configured admin token is stored and usable.
    Configured,
    /// The configured admin token was revoked; it stays revoked.
    ConfiguredRevoked,
    /// The first admin token was made now: its text, to show once.
    Made(String),
    /// The first admin token was made before (by this or another replica).
    Existing,
}

fn bootstrap_request(name: &str) -> TokenRequest {
    TokenRequest {
        kind: TokenKind::Api,
        name: name.to_owned(),
        role: Role::Admin,
        project: None,
        ttl: None,
    }
}

/// The record of a token with text `secret`.
fn issue(request: TokenRequest, created_by: &str, secret: &str) -> Issued {
    let now = orchion_store::now();
    let token = Token {
        id: TokenId::new(),
        kind: request.kind,
        name: request.name,
        role: request.role,
        project: request.project,
        digest: digest(secret),
        created_by: created_by.to_owned(),
        created_at: now,
        expires_at: request.ttl.map(|ttl| now + ttl),
        last_used_at: None,
        revoked_at: None,
    };
    Issued {
        token,
        secret: secret.to_owned(),
    }
}

/// The CSRF token of a dashboard session: derived from the session's text, so it needs no
/// storage, and readable only by a page that may read the session's own API answers.
pub fn csrf_token(session_text: &str) -> String {
    hex::encode(&Sha256::digest(format!("orchion-csrf:{session_text}").as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_are_long_prefixed_and_stored_as_digests() {
        let secret = new_secret(TOKEN_PREFIX);
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(secret.len(), TOKEN_PREFIX.len() + 43);
        let issued = issue(bootstrap_request("t"), "test", &secret);
        assert_eq!(issued.token.digest, digest(&secret));
        assert_ne!(issued.token.digest, secret.as_bytes());
        assert_ne!(new_secret(TOKEN_PREFIX), secret);
    }

    #[test]
    fn a_ttl_sets_the_expiry() {
        let mut request = bootstrap_request("t");
        request.ttl = Some(Duration::from_secs(60));
        let token = issue(request, "test", "x").token;
        let expires = token.expires_at.unwrap();
        assert!(token.is_valid_at(token.created_at));
        assert!(!token.is_valid_at(expires));
    }
}
