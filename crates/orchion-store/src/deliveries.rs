//! Webhook deliveries: each one recorded with its verdict and answer, once per delivery id.

use time::OffsetDateTime;
use uuid::Uuid;

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
}

/// `DeliveryStore` for one backend.
macro_rules! impl_delivery_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::DeliveryStore for $store {
            async fn record_delivery(
                &self,
                delivery: $crate::Delivery,
            ) -> Result<$crate::Created<$crate::Delivery>, $crate::StoreError> {
                let mut tx = self.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO webhook_deliveries (id, seq, source, event, action, repository, verdict, reason, runs, status, response, received_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
                )
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
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit(tx).await?;
                if inserted == 1 {
                    return Ok($crate::Created { value: delivery, created: true });
                }
                // Recorded meanwhile by a concurrent redelivery: that one stands.
                let first = self
                    .get_delivery(&delivery.id)
                    .await?
                    .ok_or_else(|| $crate::StoreError::Corrupt(format!("delivery {} vanished", delivery.id)))?;
                Ok($crate::Created { value: first, created: false })
            }

            async fn get_delivery(&self, id: &str) -> Result<Option<$crate::Delivery>, $crate::StoreError> {
                Ok(sqlx::query_as::<_, $crate::Delivery>("SELECT * FROM webhook_deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.read_pool())
                    .await?)
            }

            async fn list_deliveries(
                &self,
                page: orchion_domain::PageRequest,
            ) -> Result<orchion_domain::Page<$crate::Delivery>, $crate::StoreError> {
                let rows = sqlx::query_as::<_, $crate::Delivery>(
                    "SELECT * FROM webhook_deliveries WHERE ($1 IS NULL OR seq > $1) ORDER BY seq LIMIT $2",
                )
                .bind(page.after.map(|c| c.0))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(self.read_pool())
                .await?;
$crate::rows::page_of(rows, page, |d: &$crate::Delivery| d.seq)
            }
        }
    };
}
pub(crate) use impl_delivery_store;
