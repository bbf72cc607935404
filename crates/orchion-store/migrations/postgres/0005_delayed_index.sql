-- The earliest delayed task, which a waiting claim sleeps until, is read from an index instead
-- of a scan of the whole queue.
CREATE INDEX tasks_delayed ON tasks (run_after_us) WHERE status = 'queued';
