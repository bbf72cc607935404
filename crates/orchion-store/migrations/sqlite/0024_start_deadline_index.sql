-- The reaper finds the queued tasks past their `schedule_to_start` by this index, instead of
-- reading every queued task each pass (with 20,000 waiting, that read was most of an idle
-- server's work). Only tasks with such a deadline are in it.
CREATE INDEX tasks_start_deadline ON tasks ((enqueued_us + schedule_to_start_ms * 1000))
    WHERE status = 'queued' AND attempts = 0 AND schedule_to_start_ms IS NOT NULL;
