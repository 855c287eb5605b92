-- Work history (an audit log, deliberately without a foreign key so it outlives machines) and
-- per-machine, per-process backoff after failed work.
CREATE TYPE work_history_event AS ENUM (
    'Started',
    'Finished',
    'Failed',
    'Canceled'
);

CREATE TABLE work_history (
    machine_id UUID NOT NULL,
    process process NOT NULL,
    event work_history_event NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    failed_cause TEXT NULL
);

CREATE INDEX work_history_machine_id_idx ON work_history (machine_id);

CREATE TABLE work_backoff (
    machine_id UUID NOT NULL REFERENCES machines (machine_id) ON DELETE CASCADE,
    process process NOT NULL,
    until TIMESTAMPTZ NOT NULL,
    cause TEXT NOT NULL,
    UNIQUE (machine_id, process)
);
