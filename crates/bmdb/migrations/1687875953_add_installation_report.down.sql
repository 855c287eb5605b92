ALTER TABLE machine_os_installation_report
    DROP COLUMN os_installation_report_raw,
    DROP COLUMN os_installation_result;
DROP TYPE machine_os_installation_result;
