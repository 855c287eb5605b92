DROP TABLE work_backoff;
DROP TABLE work_history;
DROP TYPE work_history_event;
