-- A deployment started while another runs for its composer and environment waits: its run is
-- held (no step starts) until that one ends and hands it the slot.
ALTER TABLE workflow_runs ADD COLUMN held boolean NOT NULL DEFAULT false;
