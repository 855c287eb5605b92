-- Covering indexes for the hot queries: agent authentication (by public key), session checks
-- (every transaction) and the backoff joins of the workflow queries. INCLUDE is PostgreSQL
-- syntax that CockroachDB accepts as an alias of its STORING.
CREATE INDEX machine_agent_started_agent_public_key_idx
    ON machine_agent_started (agent_public_key) INCLUDE (agent_started_at);
CREATE INDEX sessions_session_id_session_deadline_idx
    ON sessions (session_id, session_deadline)
    INCLUDE (session_component_name, session_runtime_info, session_created_at, session_interval_seconds);
CREATE INDEX work_backoff_process_machine_id_idx
    ON work_backoff (process, machine_id) INCLUDE (until);
