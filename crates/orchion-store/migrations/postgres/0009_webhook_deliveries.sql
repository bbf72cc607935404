-- Webhook deliveries as received: the verdict, the runs they started, and the answer given, so
-- a redelivery (the same delivery id) creates nothing and gets the same answer.
CREATE TABLE webhook_deliveries (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         uuid NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    event       TEXT NOT NULL,
    action      TEXT,
    repository  TEXT,
    verdict     TEXT NOT NULL,
    reason      TEXT,
    runs        TEXT NOT NULL,
    status      INTEGER NOT NULL,
    response    TEXT NOT NULL,
    received_at timestamptz NOT NULL
);
