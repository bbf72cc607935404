-- A digest of each delivery's signed body, so the same body replayed under a new delivery id
-- is known as a replay and starts nothing.
ALTER TABLE webhook_deliveries ADD COLUMN body_digest BLOB;
CREATE INDEX webhook_deliveries_body ON webhook_deliveries (body_digest, seq) WHERE body_digest IS NOT NULL;
