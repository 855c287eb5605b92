-- Machines, sessions and work: the core of the BMDB.
--
-- Translated from upstream's CockroachDB schema. Portability notes that apply to every migration
-- in this directory (the SQL must run on PostgreSQL >= 12 and on CockroachDB):
--   * STRING -> TEXT, STRING(n) -> VARCHAR(n), BYTES -> BYTEA (both databases accept these).
--   * Upstream's INT is CockroachDB's INT8; PostgreSQL's INT is 32 bits, so we write BIGINT to keep
--     the width upstream had (proto generations are int64).
--   * Upstream named primary keys CONSTRAINT "primary"; PostgreSQL index names are per schema, so
--     a second "primary" would clash. We let both databases pick the names.
--   * gen_random_uuid() is built into PostgreSQL >= 13 and CockroachDB.
CREATE TABLE machines (
    machine_id UUID NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    machine_created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    session_id UUID NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    session_component_name TEXT NOT NULL,
    session_runtime_info TEXT NOT NULL,
    session_created_at TIMESTAMPTZ NOT NULL,
    session_interval_seconds BIGINT NOT NULL,
    session_deadline TIMESTAMPTZ NOT NULL
);

CREATE TYPE process AS ENUM (
    -- Only used by unit tests.
    'UnitTest1',
    'UnitTest2'
);

-- A row here means: the session is working on this machine for this process. The UNIQUE
-- constraint is what makes work exclusive across all sessions of all components.
CREATE TABLE work (
    machine_id UUID NOT NULL REFERENCES machines (machine_id) ON DELETE RESTRICT,
    session_id UUID NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    process process NOT NULL,
    UNIQUE (machine_id, process),
    PRIMARY KEY (machine_id, session_id, process)
);
