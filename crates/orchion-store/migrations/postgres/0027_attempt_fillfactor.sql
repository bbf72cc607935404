-- An attempt is inserted when its task is claimed and updated once when it ends; none of the
-- columns the end changes is indexed, so with room left on its page the update is HOT (no new
-- index entry, no second page). Pages written from now on keep half their space for it; in a
-- drain of 60,000 jobs this took ending the attempts from 7.3 s to 2.2 s of PostgreSQL's time.
ALTER TABLE attempts SET (fillfactor = 50);
