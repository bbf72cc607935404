//! API tokens, join tokens and the audit log: the [`AccessStore`] half of the store, written
//! once for every backend. A token is kept as the SHA-256 digest of its text, never the text.

use async_trait::async_trait;
use std::collections::BTreeMap;

use orchion_domain::{
    AuditEntry, AuditFilter, AuditOutcome, Capacity, JoinLimits, JoinToken, JoinTokenId, Page,
    PageRequest, ProjectId, Role, Token, TokenId, TokenKind,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::{from_micros, micros, page_limit, page_of},
};

/// The setting that records that the first admin token was made, so replicas starting together
/// (or a restarted server whose token was revoked) never make a second.
const BOOTSTRAPPED_KEY: &str = "admin_token_bootstrapped";

/// The most entries one read of the audit log returns.
pub const MAX_AUDIT_PAGE: u32 = 500;

/// Tokens and the audit log. A supertrait of [`crate::Store`].
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Stores a new token; [`StoreError::Conflict`] when one with its digest exists.
    async fn create_token(&self, token: &Token) -> Result<(), StoreError>;

    /// Stores the first admin token, once in the cluster's life: `false` (and nothing stored)
    /// when a first token was made before, even if it has since been revoked.
    async fn bootstrap_token(&self, token: &Token) -> Result<bool, StoreError>;

    /// The cluster's secret named `name`: `fresh` the first time any replica asks, and the
    /// same on every replica afterwards.
    async fn cluster_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// The token with this id, whatever its state.
    async fn get_token(&self, id: TokenId) -> Result<Option<Token>, StoreError>;

    /// The token whose text has this SHA-256 digest, whatever its state.
    async fn find_token(&self, digest: &[u8]) -> Result<Option<Token>, StoreError>;

    /// Tokens of a kind (of one project, when given), in id order.
    async fn list_tokens(
        &self,
        kind: TokenKind,
        project: Option<ProjectId>,
        page: PageRequest,
    ) -> Result<Page<Token>, StoreError>;

    /// Revokes a token at `at`; revoking a revoked token keeps its first time. Returns the token.
    async fn revoke_token(&self, id: TokenId, at: OffsetDateTime) -> Result<Token, StoreError>;

    /// Records when tokens were last used, in one transaction; an older time than the one
    /// stored is ignored.
    async fn touch_tokens(&self, uses: &[(TokenId, OffsetDateTime)]) -> Result<(), StoreError>;

    /// Stores a new join token; [`StoreError::Conflict`] when one not revoked has its name (or
    /// one has its digest).
    async fn create_join_token(&self, token: &JoinToken) -> Result<(), StoreError>;

    /// The join token with this id, whatever its state.
    async fn get_join_token(&self, id: JoinTokenId) -> Result<Option<JoinToken>, StoreError>;

    /// The join token whose text has this SHA-256 digest, whatever its state.
    async fn find_join_token(&self, digest: &[u8]) -> Result<Option<JoinToken>, StoreError>;

    /// Join tokens in id order.
    async fn list_join_tokens(&self, page: PageRequest) -> Result<Page<JoinToken>, StoreError>;

    /// Revokes a join token at `at` (keeping the first time). Returns the token.
    async fn revoke_join_token(
        &self,
        id: JoinTokenId,
        at: OffsetDateTime,
    ) -> Result<JoinToken, StoreError>;

    /// In one transaction: appends `entries` to the audit log, in order, and records how
    /// requests appended before they were acted on ended. Returns the `seq` each entry was
    /// given.
    async fn write_audit(
        &self,
        entries: &[AuditEntry],
        outcomes: &[AuditOutcome],
    ) -> Result<Vec<i64>, StoreError>;

    /// Audit entries matching the filter after sequence number `after`, oldest first, at most
    /// `limit` (capped at [`MAX_AUDIT_PAGE`]).
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

const TOKEN_COLUMNS: &str = "id, kind, name, role, project_id, digest, created_by, created_at, \
                             expires_us, last_used_us, revoked_us";

fn insert_token(token: &Token) -> Statement<'_> {
    Statement::new(format!(
        "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(token.id.as_uuid())
    .bind(token.kind.as_str())
    .bind(token.name.as_str())
    .bind(token.role.as_str())
    .bind(token.project.map(|p| p.as_uuid()))
    .bind(token.digest.as_slice())
    .bind(token.created_by.as_str())
    .bind(token.created_at)
    .bind(token.expires_at.map(micros))
    .bind(token.last_used_at.map(micros))
    .bind(token.revoked_at.map(micros))
}

const JOIN_TOKEN_COLUMNS: &str = "id, name, digest, labels, max_cpu_millis, max_memory_bytes, \
                                  max_gpus, created_by, created_at, expires_us, last_used_us, \
                                  revoked_us";

fn select_join_token(by: &str) -> String {
    format!("SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens WHERE {by} = $1")
}

#[async_trait]
impl<B: StoreBackend> AccessStore for B {
    async fn create_token(&self, token: &Token) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(insert_token(token)).await.map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                StoreError::Conflict("a token with this text exists".into())
            } else {
                crate::error::missing_project(e, token.project)
            }
        })?;
        tx.commit().await
    }

    async fn bootstrap_token(&self, token: &Token) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let first = tx
            .execute(
                Statement::new(
                    "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(BOOTSTRAPPED_KEY)
                .bind(token.id.as_uuid().as_bytes().as_slice()),
            )
            .await?
            == 1;
        if first {
            tx.execute(insert_token(token)).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(first)
    }

    async fn cluster_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Statement::new(
                "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(name)
            .bind(fresh),
        )
        .await?;
        let row: SecretRow = tx
            .fetch_one(
                Statement::new("SELECT value FROM cluster_settings WHERE key = $1").bind(name),
            )
            .await?;
        tx.commit().await?;
        Ok(row.value)
    }

    async fn get_token(&self, id: TokenId) -> Result<Option<Token>, StoreError> {
        self.read_optional::<TokenRow>(
            Statement::new(format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
                .bind(id.as_uuid()),
        )
        .await?
        .map(Token::try_from)
        .transpose()
    }

    async fn find_token(&self, digest: &[u8]) -> Result<Option<Token>, StoreError> {
        self.read_optional::<TokenRow>(
            Statement::new(format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE digest = $1"
            ))
            .bind(digest),
        )
        .await?
        .map(Token::try_from)
        .transpose()
    }

    async fn list_tokens(
        &self,
        kind: TokenKind,
        project: Option<ProjectId>,
        page: PageRequest,
    ) -> Result<Page<Token>, StoreError> {
        let rows: Vec<TokenRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE kind = $1 \
                     AND ($2 IS NULL OR project_id = $2) AND ($3 IS NULL OR id > $3) \
                     ORDER BY id LIMIT $4"
                ))
                .bind(kind.as_str())
                .bind(project.map(|p| p.as_uuid()))
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page)),
            )
            .await?;
        page_of(rows, page, |t: &Token| t.id.as_uuid())
    }

    async fn revoke_token(&self, id: TokenId, at: OffsetDateTime) -> Result<Token, StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Statement::new("UPDATE tokens SET revoked_us = COALESCE(revoked_us, $2) WHERE id = $1")
                .bind(id.as_uuid())
                .bind(micros(at)),
        )
        .await?;
        let token = tx
            .fetch_optional::<TokenRow>(
                Statement::new(format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
                    .bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "token",
                id: id.to_string(),
            })?;
        tx.commit().await?;
        token.try_into()
    }

    async fn touch_tokens(&self, uses: &[(TokenId, OffsetDateTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (id, at) in uses {
            tx.execute(
                Statement::new(
                    "UPDATE tokens SET last_used_us = $2 \
                     WHERE id = $1 AND (last_used_us IS NULL OR last_used_us < $2)",
                )
                .bind(id.as_uuid())
                .bind(micros(*at)),
            )
            .await?;
        }
        tx.commit().await
    }

    async fn create_join_token(&self, token: &JoinToken) -> Result<(), StoreError> {
        let max = token.limits.max_capacity;
        // Capacity is validated to fit (64 TiB, 4096 cores, 256 GPUs), so these casts are exact.
        let statement = Statement::new(format!(
            "INSERT INTO join_tokens ({JOIN_TOKEN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(token.id.as_uuid())
        .bind(token.name.as_str())
        .bind(token.digest.as_slice())
        .bind(serde_json::json!(token.limits.labels))
        .bind(max.map(|m| m.cpu_millis as i64))
        .bind(max.map(|m| m.memory_bytes as i64))
        .bind(max.map(|m| m.gpus as i32))
        .bind(token.created_by.as_str())
        .bind(token.created_at)
        .bind(token.expires_at.map(micros))
        .bind(token.last_used_at.map(micros))
        .bind(token.revoked_at.map(micros));
        let mut tx = self.begin().await?;
        tx.execute(statement).await.map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "a join token named `{}` exists: revoke it first, or choose another name",
                    token.name
                ))
            } else {
                e
            }
        })?;
        tx.commit().await
    }

    async fn get_join_token(&self, id: JoinTokenId) -> Result<Option<JoinToken>, StoreError> {
        self.read_optional::<JoinTokenRow>(
            Statement::new(select_join_token("id")).bind(id.as_uuid()),
        )
        .await?
        .map(JoinToken::try_from)
        .transpose()
    }

    async fn find_join_token(&self, digest: &[u8]) -> Result<Option<JoinToken>, StoreError> {
        self.read_optional::<JoinTokenRow>(Statement::new(select_join_token("digest")).bind(digest))
            .await?
            .map(JoinToken::try_from)
            .transpose()
    }

    async fn list_join_tokens(&self, page: PageRequest) -> Result<Page<JoinToken>, StoreError> {
        let rows: Vec<JoinTokenRow> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens \
                     WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2"
                ))
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page)),
            )
            .await?;
        page_of(rows, page, |t: &JoinToken| t.id.as_uuid())
    }

    async fn revoke_join_token(
        &self,
        id: JoinTokenId,
        at: OffsetDateTime,
    ) -> Result<JoinToken, StoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            Statement::new(
                "UPDATE join_tokens SET revoked_us = COALESCE(revoked_us, $2) WHERE id = $1",
            )
            .bind(id.as_uuid())
            .bind(micros(at)),
        )
        .await?;
        let token = tx
            .fetch_optional::<JoinTokenRow>(
                Statement::new(select_join_token("id")).bind(id.as_uuid()),
            )
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "join token",
                id: id.to_string(),
            })?;
        tx.commit().await?;
        token.try_into()
    }

    async fn write_audit(
        &self,
        entries: &[AuditEntry],
        outcomes: &[AuditOutcome],
    ) -> Result<Vec<i64>, StoreError> {
        if entries.is_empty() && outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut seqs = Vec::with_capacity(entries.len());
        for entry in entries {
            let row: SeqRow = tx
                .fetch_one(
                Statement::new(
                    "INSERT INTO audit (at_us, actor, role, project_id, client, method, route, \
                     resource, status, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     RETURNING seq",
                )
                .bind(micros(entry.at))
                .bind(entry.actor.as_str())
                .bind(entry.role.map(Role::as_str))
                .bind(entry.project.map(|p| p.as_uuid()))
                .bind(entry.client.as_str())
                .bind(entry.method.as_str())
                .bind(entry.route.as_str())
                .bind(entry.resource.as_str())
                // 0: not answered (yet).
                .bind(i32::from(entry.status.unwrap_or(0)))
                .bind(entry.request_id.as_str()),
            )
            .await?;
            seqs.push(row.seq);
        }
        for outcome in outcomes {
            tx.execute(
                Statement::new("UPDATE audit SET status = $2, resource = $3 WHERE seq = $1")
                    .bind(outcome.seq)
                    .bind(i32::from(outcome.status))
                    .bind(outcome.resource.as_str()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(seqs)
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = self
            .read_all(
                Statement::new(
                    "SELECT seq, at_us, actor, role, project_id, client, method, route, resource, \
                     status, request_id FROM audit \
                     WHERE seq > $1 AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR method = $3) \
                     AND ($4 IS NULL OR substr(route, 1, length($4)) = $4) \
                     AND ($5 IS NULL OR resource LIKE '%' || $5 || '%') \
                     AND ($6 IS NULL OR at_us >= $6) \
                     ORDER BY seq LIMIT $7",
                )
                .bind(after.unwrap_or(0))
                .bind(filter.actor.as_deref())
                .bind(filter.method.as_deref())
                .bind(filter.route_prefix.as_deref())
                .bind(filter.resource.as_deref())
                .bind(filter.since.map(micros))
                .bind(i64::from(limit.clamp(1, MAX_AUDIT_PAGE))),
            )
            .await?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }
}

#[derive(Debug, sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    kind: String,
    name: String,
    role: String,
    project_id: Option<Uuid>,
    digest: Vec<u8>,
    created_by: String,
    created_at: OffsetDateTime,
    expires_us: Option<i64>,
    last_used_us: Option<i64>,
    revoked_us: Option<i64>,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self, Self::Error> {
        Ok(Token {
            id: TokenId::from_uuid(row.id),
            kind: row.kind.parse().map_err(StoreError::Corrupt)?,
            name: row.name,
            role: row.role.parse().map_err(StoreError::Corrupt)?,
            project: row.project_id.map(ProjectId::from_uuid),
            digest: row.digest,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_us.map(from_micros),
            last_used_at: row.last_used_us.map(from_micros),
            revoked_at: row.revoked_us.map(from_micros),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct SecretRow {
    value: Vec<u8>,
}

#[derive(Debug, sqlx::FromRow)]
struct SeqRow {
    seq: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct JoinTokenRow {
    id: Uuid,
    name: String,
    digest: Vec<u8>,
    labels: Option<sqlx::types::Json<Option<BTreeMap<String, String>>>>,
    max_cpu_millis: Option<i64>,
    max_memory_bytes: Option<i64>,
    max_gpus: Option<i32>,
    created_by: String,
    created_at: OffsetDateTime,
    expires_us: Option<i64>,
    last_used_us: Option<i64>,
    revoked_us: Option<i64>,
}

impl TryFrom<JoinTokenRow> for JoinToken {
    type Error = StoreError;

    fn try_from(row: JoinTokenRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("join token {}: {what}", row.id));
        let max_capacity = match (row.max_cpu_millis, row.max_memory_bytes, row.max_gpus) {
            (Some(cpu), Some(memory), Some(gpus)) => Some(
                Capacity::new(
                    u64::try_from(cpu).map_err(|_| corrupt("negative cpu"))?,
                    u64::try_from(memory).map_err(|_| corrupt("negative memory"))?,
                    u32::try_from(gpus).map_err(|_| corrupt("negative gpus"))?,
                )
                .map_err(|e| corrupt(&e.to_string()))?,
            ),
            (None, None, None) => None,
            _ => return Err(corrupt("a partial capacity limit")),
        };
        Ok(JoinToken {
            id: JoinTokenId::from_uuid(row.id),
            name: row.name,
            digest: row.digest,
            limits: JoinLimits {
                labels: row.labels.and_then(|l| l.0),
                max_capacity,
            },
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_us.map(from_micros),
            last_used_at: row.last_used_us.map(from_micros),
            revoked_at: row.revoked_us.map(from_micros),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at_us: i64,
    actor: String,
    role: Option<String>,
    project_id: Option<Uuid>,
    client: String,
    method: String,
    route: String,
    resource: String,
    status: i32,
    request_id: String,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, Self::Error> {
        Ok(AuditEntry {
            seq: row.seq,
            at: from_micros(row.at_us),
            actor: row.actor,
            role: row
                .role
                .map(|r| r.parse())
                .transpose()
                .map_err(StoreError::Corrupt)?,
            project: row.project_id.map(ProjectId::from_uuid),
            client: row.client,
            method: row.method,
            route: row.route,
            resource: row.resource,
            status: match row.status {
                0 => None,
                status => Some(
                    u16::try_from(status)
                        .map_err(|_| StoreError::Corrupt(format!("audit status {}", row.status)))?,
                ),
            },
            request_id: row.request_id,
        })
    }
}
