-- The interval of the last backoff, so the next failure can grow it exponentially. NULL for rows
-- written before this migration: they are treated as having no previous interval.
ALTER TABLE work_backoff ADD COLUMN last_interval_seconds BIGINT NULL;
