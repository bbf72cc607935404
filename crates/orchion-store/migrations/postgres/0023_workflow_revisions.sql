-- Each workflow run's revision: how many times something its plan reads has changed — a task
-- of the run entering or leaving a terminal status (counted by the trigger below, so no writer
-- can forget it), the engine adding steps or ending the run, a retry dropping steps. The engine
-- keeps each run's plan in memory and reads only the tasks it was told about; a revision it
-- did not account for means someone else changed the run, and it reads the run whole again.
-- A table of its own, not a column of `workflow_runs`: a result's transaction holds its task
-- and then takes this row, while a cancel holds the run's row and then takes its tasks.
CREATE TABLE workflow_revisions (
    run_id   UUID PRIMARY KEY NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    revision BIGINT NOT NULL DEFAULT 0
);
INSERT INTO workflow_revisions (run_id) SELECT run_id FROM workflow_runs;

CREATE FUNCTION orchion_task_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_revisions SET revision = revision + 1 WHERE run_id = NEW.run_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_settled AFTER UPDATE OF status ON tasks FOR EACH ROW
    WHEN (OLD.status <> NEW.status
        AND (OLD.status IN ('succeeded', 'failed', 'cancelled') OR NEW.status IN ('succeeded', 'failed', 'cancelled')))
    EXECUTE FUNCTION orchion_task_settled();
