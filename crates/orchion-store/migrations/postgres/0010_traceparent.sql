-- The W3C trace context of the request that created a task, continued by the agent that runs it.
ALTER TABLE tasks ADD COLUMN traceparent text;
