-- OS installation: a request (written by operators/workflows, served to the agent) and the
-- agent's report, matched by generation.
CREATE TABLE machine_os_installation_request (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    generation BIGINT NOT NULL,
    -- Serialized cloud.bmaas.server.api.OSInstallationRequest.
    os_installation_request_raw BYTEA NOT NULL
);

CREATE TABLE machine_os_installation_report (
    machine_id UUID NOT NULL PRIMARY KEY REFERENCES machines (machine_id) ON DELETE RESTRICT,
    generation BIGINT NOT NULL
);
