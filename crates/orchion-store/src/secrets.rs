//! Projects' secrets, as the store keeps them: sealed (the ciphertext of each value, the id of
//! the key that sealed it and its nonce) — the store never sees a value or a key. Sealing and
//! opening are `orchion-control`'s (`secrets.rs`).

use async_trait::async_trait;
use orchion_domain::ProjectId;
use time::OffsetDateTime;

use crate::{
    StoreError,
    backend::{Statement, StoreBackend, Tx},
};

/// A value as stored: sealed under a key the store does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which key sealed it (a digest of the key, never the key).
    pub key_id: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// What is known about a secret besides its value: all an answer ever shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub project: ProjectId,
    pub name: String,
    /// 1 when made, one more at each change.
    pub version: u32,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_by: String,
    pub updated_at: OffsetDateTime,
}

/// A secret with its sealed value, for the server to open for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub info: SecretInfo,
    pub sealed: Sealed,
}

/// Projects' secrets. A supertrait of [`crate::Store`].
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Stores a secret's sealed value: made at version 1, or the next version of the one
    /// there. [`StoreError::MissingReference`] when the project does not exist.
    async fn put_secret(
        &self,
        project: ProjectId,
        name: &str,
        sealed: &Sealed,
        actor: &str,
        at: OffsetDateTime,
    ) -> Result<SecretInfo, StoreError>;

    /// A secret's description, if it exists.
    async fn secret_info(
        &self,
        project: ProjectId,
        name: &str,
    ) -> Result<Option<SecretInfo>, StoreError>;

    /// A project's secrets, by name.
    async fn list_secrets(&self, project: ProjectId) -> Result<Vec<SecretInfo>, StoreError>;

    /// Deletes a secret; `false` when there was none.
    async fn delete_secret(&self, project: ProjectId, name: &str) -> Result<bool, StoreError>;

    /// A project's secrets with their sealed values, by name.
    async fn sealed_secrets(&self, project: ProjectId) -> Result<Vec<SealedSecret>, StoreError>;
}

const INFO_COLUMNS: &str =
    "project_id, name, version, created_by, created_at, updated_by, updated_at";

#[async_trait]
impl<B: StoreBackend> SecretStore for B {
    async fn put_secret(
        &self,
        project: ProjectId,
        name: &str,
        sealed: &Sealed,
        actor: &str,
        at: OffsetDateTime,
    ) -> Result<SecretInfo, StoreError> {
        let mut tx = self.begin().await?;
        let row: InfoRow = tx
            .fetch_one(
                Statement::new(format!(
                    "INSERT INTO secrets (project_id, name, version, key_id, nonce, ciphertext, \
                     created_by, created_at, updated_by, updated_at) \
                     VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $6, $7) \
                     ON CONFLICT (project_id, name) DO UPDATE SET \
                     version = secrets.version + 1, key_id = excluded.key_id, \
                     nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
                     updated_by = excluded.updated_by, updated_at = excluded.updated_at \
                     RETURNING {INFO_COLUMNS}"
                ))
                .bind(project.as_uuid())
                .bind(name)
                .bind(sealed.key_id.as_slice())
                .bind(sealed.nonce.as_slice())
                .bind(sealed.ciphertext.as_slice())
                .bind(actor)
                .bind(at),
            )
            .await
            .map_err(|e| crate::error::missing_project(e, Some(project)))?;
        tx.commit().await?;
        row.try_into()
    }

    async fn secret_info(
        &self,
        project: ProjectId,
        name: &str,
    ) -> Result<Option<SecretInfo>, StoreError> {
        self.read_optional::<InfoRow>(
            Statement::new(format!(
                "SELECT {INFO_COLUMNS} FROM secrets WHERE project_id = $1 AND name = $2"
            ))
            .bind(project.as_uuid())
            .bind(name),
        )
        .await?
        .map(SecretInfo::try_from)
        .transpose()
    }

    async fn list_secrets(&self, project: ProjectId) -> Result<Vec<SecretInfo>, StoreError> {
        self.read_all::<InfoRow>(
            Statement::new(format!(
                "SELECT {INFO_COLUMNS} FROM secrets WHERE project_id = $1 ORDER BY name"
            ))
            .bind(project.as_uuid()),
        )
        .await?
        .into_iter()
        .map(SecretInfo::try_from)
        .collect()
    }

    async fn delete_secret(&self, project: ProjectId, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = tx
            .execute(
                Statement::new("DELETE FROM secrets WHERE project_id = $1 AND name = $2")
                    .bind(project.as_uuid())
                    .bind(name),
            )
            .await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn sealed_secrets(&self, project: ProjectId) -> Result<Vec<SealedSecret>, StoreError> {
        self.read_all::<SealedRow>(
            Statement::new(format!(
                "SELECT {INFO_COLUMNS}, key_id, nonce, ciphertext FROM secrets \
                 WHERE project_id = $1 ORDER BY name"
            ))
            .bind(project.as_uuid()),
        )
        .await?
        .into_iter()
        .map(|row| {
            Ok(SealedSecret {
                sealed: Sealed {
                    key_id: row.key_id,
                    nonce: row.nonce,
                    ciphertext: row.ciphertext,
                },
                info: row.info.try_into()?,
            })
        })
        .collect()
    }
}

#[derive(Debug, sqlx::FromRow)]
struct InfoRow {
    project_id: uuid::Uuid,
    name: String,
    version: i32,
    created_by: String,
    created_at: OffsetDateTime,
    updated_by: String,
    updated_at: OffsetDateTime,
}

impl TryFrom<InfoRow> for SecretInfo {
    type Error = StoreError;

    fn try_from(row: InfoRow) -> Result<Self, Self::Error> {
        Ok(SecretInfo {
            project: ProjectId::from_uuid(row.project_id),
            version: u32::try_from(row.version).map_err(|_| {
                StoreError::Corrupt(format!("secret {}: version {}", row.name, row.version))
            })?,
            name: row.name,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_by: row.updated_by,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct SealedRow {
    #[sqlx(flatten)]
    info: InfoRow,
    key_id: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}
