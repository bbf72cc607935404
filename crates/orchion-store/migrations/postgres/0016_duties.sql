-- Duties one replica at a time carries out (the workflow engine's periodic pass): the holder
-- renews its lease each pass; another replica takes the duty over once the lease has expired.
CREATE TABLE duties (
    name       text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_us bigint NOT NULL
);
