//! Webhook deliveries: each one recorded with its verdict and answer, once per delivery id —
//! the [`DeliveryStore`] half of the store, written once for every backend.

use async_trait::async_trait;
use orchion_domain::{Page, PageRequest};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Created, StoreError,
    backend::{Statement, StoreBackend, Tx},
    codec::{page_limit, page_of},
};

/// A `webhook_deliveries` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    /// The sender's delivery id (`X-GitHub-Delivery`).
    pub id: String,
    /// Orders deliveries as received (UUIDv7); the listing's cursor.
    pub seq: Uuid,
    /// `github`.
    pub source: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    /// `accepted` or `ignored`.
    pub verdict: String,
    pub reason: Option<String>,
    /// What each matching rule did, a JSON list.
    pub runs: String,
    /// The HTTP status answered.
    pub status: i32,
    /// The body answered, JSON.
    pub response: String,
    pub received_at: OffsetDateTime,
    /// SHA-256 of the signed body, so the same body under another delivery id is known as a
    /// replay (`None` for deliveries recorded before it was kept).
    pub body_digest: Option<Vec<u8>>,
}

/// Webhook deliveries. A supertrait of [`crate::Store`].
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Records a delivery once per id. If its id was recorded already (a concurrent
    /// redelivery), returns that record with `created: false`.
    async fn record_delivery(&self, delivery: Delivery) -> Result<Created<Delivery>, StoreError>;

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;

    /// The first delivery whose signed body had this SHA-256, under whatever id.
    async fn delivery_with_body(&self, digest: &[u8]) -> Result<Option<Delivery>, StoreError>;

    /// Deliveries in the order received.
    async fn list_deliveries(&self, page: PageRequest) -> Result<Page<Delivery>, StoreError>;
}

const DELIVERY_COLUMNS: &str = "id, seq, source, event, action, repository, verdict, reason, runs, status, response, received_at, body_digest";

#[async_trait]
impl<B: StoreBackend> DeliveryStore for B {
    async fn record_delivery(&self, delivery: Delivery) -> Result<Created<Delivery>, StoreError> {
        let mut tx = self.begin().await?;
        let inserted = tx
            .execute(
                Statement::new(format!(
                    "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING"
                ))
                .bind(delivery.id.as_str())
                .bind(delivery.seq)
                .bind(delivery.source.as_str())
                .bind(delivery.event.as_str())
                .bind(delivery.action.as_deref())
                .bind(delivery.repository.as_deref())
                .bind(delivery.verdict.as_str())
                .bind(delivery.reason.as_deref())
                .bind(delivery.runs.as_str())
                .bind(delivery.status)
                .bind(delivery.response.as_str())
                .bind(delivery.received_at)
                .bind(delivery.body_digest.as_deref()),
            )
            .await?;
        tx.commit().await?;
        if inserted == 1 {
            return Ok(Created {
                value: delivery,
                created: true,
            });
        }
        // Recorded meanwhile by a concurrent redelivery: that one stands.
        let first = self
            .get_delivery(&delivery.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("delivery {} vanished", delivery.id)))?;
        Ok(Created {
            value: first,
            created: false,
        })
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.read_optional(
            Statement::new(format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
            ))
            .bind(id),
        )
        .await
    }

    async fn delivery_with_body(&self, digest: &[u8]) -> Result<Option<Delivery>, StoreError> {
        self.read_optional(
            Statement::new(format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE body_digest = $1 \
                 ORDER BY seq LIMIT 1"
            ))
            .bind(digest),
        )
        .await
    }

    async fn list_deliveries(&self, page: PageRequest) -> Result<Page<Delivery>, StoreError> {
        let rows: Vec<Delivery> = self
            .read_all(
                Statement::new(format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE ($1 IS NULL OR seq > $1) \
                     ORDER BY seq LIMIT $2"
                ))
                .bind(page.after.map(|c| c.0))
                .bind(page_limit(page)),
            )
            .await?;
        page_of(rows, page, |d: &Delivery| d.seq)
    }
}
