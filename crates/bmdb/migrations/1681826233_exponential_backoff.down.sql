ALTER TABLE work_backoff DROP COLUMN last_interval_seconds;
