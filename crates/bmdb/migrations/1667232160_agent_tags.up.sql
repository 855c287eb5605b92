-- Tags written by the Shepherd (provided, agent started) and by the BMaaS server on behalf of
-- agents (heartbeat, hardware report). One table per tag, keyed by machine.
CREATE TYPE provider AS ENUM (
    'Equinix'
);

CREATE TABLE machine_provided (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    provider provider NOT NULL,
    provider_id VARCHAR(128) NOT NULL,
    UNIQUE (provider, provider_id)
);

CREATE TABLE machine_agent_started (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    agent_started_at TIMESTAMPTZ NOT NULL,
    -- Raw Ed25519 public key of the agent: its heartbeats are authenticated against it.
    agent_public_key BYTEA NOT NULL
);

CREATE TABLE machine_agent_heartbeat (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    agent_heartbeat_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE machine_hardware_report (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    -- Serialized cloud.bmaas.server.api.AgentHardwareReport.
    hardware_report_raw BYTEA NOT NULL
);

-- PostgreSQL >= 12 accepts ADD VALUE inside a transaction block (sqlx runs every migration in
-- one), but the new value is unusable until that transaction commits: never use an enum value
-- in the migration that adds it. PostgreSQL < 12 refuses this statement in a transaction block
-- altogether and is not supported. CockroachDB accepts it as written.
ALTER TYPE process ADD VALUE IF NOT EXISTS 'ShepherdAccess';
