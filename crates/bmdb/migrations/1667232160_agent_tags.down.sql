DROP TABLE machine_hardware_report;
DROP TABLE machine_agent_heartbeat;
DROP TABLE machine_agent_started;
DROP TABLE machine_provided;
DROP TYPE provider;
-- PostgreSQL cannot drop an enum value ('ShepherdAccess' stays in process); the up migration
-- adds it with IF NOT EXISTS, so going up again works.
