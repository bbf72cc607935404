-- Duties one replica at a time carries out (see ../postgres/0016_duties.sql).
CREATE TABLE duties (
    name       TEXT PRIMARY KEY,
    holder     BLOB NOT NULL,
    expires_us INTEGER NOT NULL
);
