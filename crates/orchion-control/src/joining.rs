//! Who may join the cluster as a new node: the configured join token and the named ones made
//! with `orchion join-token create`.
//!
//! A made join token's text is `orcj_` and 43 characters of base64url (256 random bits), kept
//! only as its SHA-256 digest and found by it. The configured one (`cluster.join_token`) is
//! compared in constant time; it admits nodes for as long as it is configured, with no limits.
//! A join token admits new nodes only: a node registering again proves itself with its own
//! credential, so an expired or revoked join token does not strand the nodes it admitted.

use std::{sync::Arc, time::Duration};

use orchion_domain::{JoinLimits, JoinToken, JoinTokenId, Page, PageRequest};
use orchion_store::{Store, StoreError};
use subtle::ConstantTimeEq as _;

use crate::access::{digest, new_secret};

/// The prefix of every join token Orchion makes.
pub const JOIN_TOKEN_PREFIX: &str = "orcj_";

/// Who admitted a joining node, and within what limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The join token presented; `None`: the cluster's configured one.
    pub join_token: Option<JoinTokenId>,
    pub limits: JoinLimits,
}

impl Admission {
    /// Admitted by the cluster's configured join token: no limits.
    pub fn cluster() -> Self {
        Admission {
            join_token: None,
            limits: JoinLimits::default(),
        }
    }
}

/// What a new join token is.
#[derive(Debug, Clone)]
pub struct JoinTokenRequest {
    pub name: String,
    pub limits: JoinLimits,
    /// How long it admits nodes; `None`: until revoked.
    pub ttl: Option<Duration>,
}

/// The cluster's join tokens.
pub struct JoinTokens {
    store: Arc<dyn Store>,
    /// SHA-256 of the configured join token.
    configured: Vec<u8>,
}

impl JoinTokens {
    /// The join tokens of `store`, and `configured`, the cluster's own.
    pub fn new(store: Arc<dyn Store>, configured: &str) -> Self {
        Self {
            store,
            configured: digest(configured),
        }
    }

    /// Whom `text` admits: `None` when it is no join token that may be used now (unknown,
    /// expired or revoked; the caller says no more than that).
    pub async fn admit(&self, text: &str) -> Result<Option<Admission>, StoreError> {
        let presented = digest(text);
        if bool::from(presented.ct_eq(&self.configured)) {
            return Ok(Some(Admission::cluster()));
        }
        if !text.starts_with(JOIN_TOKEN_PREFIX) {
            return Ok(None);
        }
        Ok(self
            .store
            .find_join_token(&presented)
            .await?
            .filter(|token| {
                bool::from(token.digest.ct_eq(&presented))
                    && token.is_valid_at(orchion_store::now())
            })
            .map(|token| Admission {
                join_token: Some(token.id),
                limits: token.limits,
            }))
    }

    /// Makes and stores a join token; its text is in the answer and nowhere else.
    pub async fn create(
        &self,
        request: JoinTokenRequest,
        created_by: &str,
    ) -> Result<(JoinToken, String), StoreError> {
        let secret = new_secret(JOIN_TOKEN_PREFIX);
        let now = orchion_store::now();
        let token = JoinToken {
            id: JoinTokenId::new(),
            name: request.name,
            digest: digest(&secret),
            limits: request.limits,
            created_by: created_by.to_owned(),
            created_at: now,
            expires_at: request.ttl.map(|ttl| now + ttl),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.create_join_token(&token).await?;
        Ok((token, secret))
    }

    /// The join tokens, in id order.
    pub async fn list(&self, page: PageRequest) -> Result<Page<JoinToken>, StoreError> {
        self.store.list_join_tokens(page).await
    }

    /// Revokes a join token: it admits no node from now on, on every replica. The nodes it
    /// admitted stay.
    pub async fn revoke(&self, id: JoinTokenId) -> Result<JoinToken, StoreError> {
        self.store.revoke_join_token(id, orchion_store::now()).await
    }
}
