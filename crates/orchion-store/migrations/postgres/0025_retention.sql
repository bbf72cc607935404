-- Retention deletes idempotency keys by age, oldest first.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
