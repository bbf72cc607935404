-- The W3C trace context of the request that started a run; its steps' tasks continue it.
ALTER TABLE workflow_runs ADD COLUMN traceparent TEXT;
