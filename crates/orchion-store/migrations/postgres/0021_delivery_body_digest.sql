-- See ../sqlite/0021_delivery_body_digest.sql.
ALTER TABLE webhook_deliveries ADD COLUMN body_digest bytea;
CREATE INDEX webhook_deliveries_body ON webhook_deliveries (body_digest, seq) WHERE body_digest IS NOT NULL;
