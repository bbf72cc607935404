-- A job's task has the empty step name, which no workflow step can have, so the trigger that
-- counts a workflow run's changes (0023) skips jobs without looking for a run revision to
-- bump.
UPDATE tasks SET step = '' WHERE run_id IN (SELECT id FROM runs WHERE kind = 'job');

DROP TRIGGER tasks_settled ON tasks;
CREATE TRIGGER tasks_settled AFTER UPDATE OF status ON tasks FOR EACH ROW
    WHEN (NEW.step <> '' AND OLD.status <> NEW.status
        AND (OLD.status IN ('succeeded', 'failed', 'cancelled') OR NEW.status IN ('succeeded', 'failed', 'cancelled')))
    EXECUTE FUNCTION orchion_task_settled();
