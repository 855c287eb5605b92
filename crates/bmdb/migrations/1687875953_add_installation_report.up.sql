-- The agent now reports success or failure of an installation, with its serialized report.
CREATE TYPE machine_os_installation_result AS ENUM (
    'Success',
    'Error'
);

-- Upstream added these as NOT NULL without a default, which fails on a table that already has
-- rows. Reports written before this migration only ever meant "installed", hence the defaults;
-- every write since sets both columns explicitly.
ALTER TABLE machine_os_installation_report
    ADD COLUMN os_installation_result machine_os_installation_result NOT NULL DEFAULT 'Success',
    ADD COLUMN os_installation_report_raw BYTEA NOT NULL DEFAULT '';
