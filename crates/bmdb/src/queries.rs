//! The typed queries over machines, tags, work and sessions (upstream's sqlc query set).
//!
//! Every function takes the connection of a running transaction (see
//! [`crate::Session::transact`]). Tag writes are upserts (`INSERT … ON CONFLICT (machine_id) DO
//! UPDATE`), which PostgreSQL and CockroachDB both accept. Timestamps come from the database's
//! `now()` so that all components agree on one clock.

use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::model::*;
use crate::{Conn, Result};

/// Creates a machine with no tags.
pub async fn new_machine(conn: &mut Conn) -> Result<Machine> {
    Ok(sqlx::query_as(
        "INSERT INTO machines (machine_created_at) VALUES (now()) \
         RETURNING machine_id, machine_created_at",
    )
    .fetch_one(conn)
    .await?)
}

/// Adds the provided tag (fails if the machine or the provider's ID is already provided).
pub async fn machine_add_provided(
    conn: &mut Conn,
    machine_id: Uuid,
    provider: Provider,
    provider_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_provided (machine_id, provider, provider_id) VALUES ($1, $2, $3)",
    )
    .bind(machine_id)
    .bind(provider)
    .bind(provider_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets (upserts) the agent-started tag: `agent_started_at = now()`.
pub async fn machine_set_agent_started(
    conn: &mut Conn,
    machine_id: Uuid,
    agent_public_key: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_agent_started (machine_id, agent_started_at, agent_public_key) \
         VALUES ($1, now(), $2) \
         ON CONFLICT (machine_id) DO UPDATE SET \
           agent_started_at = EXCLUDED.agent_started_at, \
           agent_public_key = EXCLUDED.agent_public_key",
    )
    .bind(machine_id)
    .bind(agent_public_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets (upserts) the heartbeat tag to `now()`.
pub async fn machine_set_agent_heartbeat(conn: &mut Conn, machine_id: Uuid) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_agent_heartbeat (machine_id, agent_heartbeat_at) VALUES ($1, now()) \
         ON CONFLICT (machine_id) DO UPDATE SET agent_heartbeat_at = EXCLUDED.agent_heartbeat_at",
    )
    .bind(machine_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets (upserts) the hardware report tag.
pub async fn machine_set_hardware_report(
    conn: &mut Conn,
    machine_id: Uuid,
    hardware_report_raw: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_hardware_report (machine_id, hardware_report_raw) VALUES ($1, $2) \
         ON CONFLICT (machine_id) DO UPDATE SET hardware_report_raw = EXCLUDED.hardware_report_raw",
    )
    .bind(machine_id)
    .bind(hardware_report_raw)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets (upserts) the OS installation request tag.
pub async fn machine_set_os_installation_request(
    conn: &mut Conn,
    machine_id: Uuid,
    generation: i64,
    os_installation_request_raw: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_os_installation_request \
           (machine_id, generation, os_installation_request_raw) VALUES ($1, $2, $3) \
         ON CONFLICT (machine_id) DO UPDATE SET \
           generation = EXCLUDED.generation, \
           os_installation_request_raw = EXCLUDED.os_installation_request_raw",
    )
    .bind(machine_id)
    .bind(generation)
    .bind(os_installation_request_raw)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets (upserts) the OS installation report tag with whatever generation is given (fixtures
/// and tools; agents' reports go through [`machine_report_os_installation`]).
pub async fn machine_set_os_installation_report(
    conn: &mut Conn,
    machine_id: Uuid,
    generation: i64,
    result: OsInstallationResult,
    os_installation_report_raw: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO machine_os_installation_report \
           (machine_id, generation, os_installation_result, os_installation_report_raw) \
           VALUES ($1, $2, $3, $4) \
         ON CONFLICT (machine_id) DO UPDATE SET \
           generation = EXCLUDED.generation, \
           os_installation_result = EXCLUDED.os_installation_result, \
           os_installation_report_raw = EXCLUDED.os_installation_report_raw",
    )
    .bind(machine_id)
    .bind(generation)
    .bind(result)
    .bind(os_installation_report_raw)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an agent's installation report, but only for the machine's current installation
/// request: `generation` must be that request's. The stored generation is then the request's
/// (the server's), never one an agent made up, so a report for an old, a future or a
/// never-requested generation cannot overwrite the report of the current one or make a
/// finished installation look pending. Returns whether the report was stored.
pub async fn machine_report_os_installation(
    conn: &mut Conn,
    machine_id: Uuid,
    generation: i64,
    result: OsInstallationResult,
    os_installation_report_raw: &[u8],
) -> Result<bool> {
    let stored = sqlx::query(
        "INSERT INTO machine_os_installation_report \
           (machine_id, generation, os_installation_result, os_installation_report_raw) \
         SELECT req.machine_id, req.generation, $3, $4 \
           FROM machine_os_installation_request AS req \
           WHERE req.machine_id = $1 AND req.generation = $2 \
         ON CONFLICT (machine_id) DO UPDATE SET \
           generation = EXCLUDED.generation, \
           os_installation_result = EXCLUDED.os_installation_result, \
           os_installation_report_raw = EXCLUDED.os_installation_report_raw",
    )
    .bind(machine_id)
    .bind(generation)
    .bind(result)
    .bind(os_installation_report_raw)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(stored == 1)
}

/// Removes the agent-started tag (agent recovery: the Shepherd starts a new agent).
pub async fn machine_delete_agent_started(conn: &mut Conn, machine_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM machine_agent_started WHERE machine_id = $1")
        .bind(machine_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes the heartbeat tag (agent recovery).
pub async fn machine_delete_agent_heartbeat(conn: &mut Conn, machine_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM machine_agent_heartbeat WHERE machine_id = $1")
        .bind(machine_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The agent-started tags matching both this machine and this public key: empty unless an
/// agent holding that key was started on that machine. Unknown machine and wrong key look the
/// same on purpose.
pub async fn authenticate_agent_connection(
    conn: &mut Conn,
    machine_id: Uuid,
    agent_public_key: &[u8],
) -> Result<Vec<MachineAgentStarted>> {
    Ok(sqlx::query_as(
        "SELECT machine_agent_started.machine_id, machine_agent_started.agent_started_at, \
                machine_agent_started.agent_public_key \
         FROM machines \
         INNER JOIN machine_agent_started \
           ON machines.machine_id = machine_agent_started.machine_id \
         WHERE machines.machine_id = $1 AND machine_agent_started.agent_public_key = $2",
    )
    .bind(machine_id)
    .bind(agent_public_key)
    .fetch_all(conn)
    .await?)
}

/// The installation request of this machine if it is still pending: no report yet, or a
/// report for another generation.
pub async fn get_exact_machine_for_os_installation(
    conn: &mut Conn,
    machine_id: Uuid,
) -> Result<Vec<MachineOsInstallationRequest>> {
    Ok(sqlx::query_as(
        "SELECT req.machine_id, req.generation, req.os_installation_request_raw \
         FROM machine_os_installation_request AS req \
         LEFT JOIN machine_os_installation_report AS rep ON req.machine_id = rep.machine_id \
         WHERE req.machine_id = $1 \
           AND (rep.machine_id IS NULL OR rep.generation <> req.generation) \
         LIMIT 1",
    )
    .bind(machine_id)
    .fetch_all(conn)
    .await?)
}

/// Machines of `provider` on which an agent should be started: provided, no agent started, no
/// pending-or-done installation blocking it (request absent, or its generation not reported),
/// no Shepherd work on them and no active `ShepherdAgentStart` backoff.
pub async fn get_machines_for_agent_start(
    conn: &mut Conn,
    limit: i64,
    provider: Provider,
) -> Result<Vec<MachineProvided>> {
    const SQL: &str = "SELECT machine_provided.machine_id, machine_provided.provider, \
        machine_provided.provider_id, machine_provided.provider_reservation_id, \
        machine_provided.provider_ip_address, machine_provided.provider_location, \
        machine_provided.provider_status \
        FROM machines \
        INNER JOIN machine_provided ON machines.machine_id = machine_provided.machine_id \
        LEFT JOIN work ON machines.machine_id = work.machine_id \
          AND work.process IN ('ShepherdAccess', 'ShepherdAgentStart', 'ShepherdRecovery') \
        LEFT JOIN work_backoff ON machines.machine_id = work_backoff.machine_id \
          AND work_backoff.until > now() AND work_backoff.process = 'ShepherdAgentStart' \
        LEFT JOIN machine_agent_started ON machines.machine_id = machine_agent_started.machine_id \
        LEFT JOIN machine_os_installation_request AS req ON machines.machine_id = req.machine_id \
        LEFT JOIN machine_os_installation_report AS rep ON machines.machine_id = rep.machine_id \
        WHERE machine_agent_started.machine_id IS NULL \
          AND (req.machine_id IS NULL OR rep.generation IS DISTINCT FROM req.generation) \
          AND work.machine_id IS NULL \
          AND work_backoff.machine_id IS NULL \
          AND machine_provided.provider = $2 \
        ORDER BY machines.machine_id \
        LIMIT $1";
    Ok(sqlx::query_as(SQL)
        .bind(limit)
        .bind(provider)
        .fetch_all(conn)
        .await?)
}

/// Machines of `provider` whose agent needs recovering: agent started, but no heartbeat 30
/// minutes after the start or none for 10 minutes; not successfully installed; no Shepherd
/// work on them and no active `ShepherdRecovery` backoff.
pub async fn get_machine_for_agent_recovery(
    conn: &mut Conn,
    limit: i64,
    provider: Provider,
) -> Result<Vec<MachineProvided>> {
    const SQL: &str = "SELECT machine_provided.machine_id, machine_provided.provider, \
        machine_provided.provider_id, machine_provided.provider_reservation_id, \
        machine_provided.provider_ip_address, machine_provided.provider_location, \
        machine_provided.provider_status \
        FROM machines \
        INNER JOIN machine_provided ON machines.machine_id = machine_provided.machine_id \
        INNER JOIN machine_agent_started ON machines.machine_id = machine_agent_started.machine_id \
        LEFT JOIN work ON machines.machine_id = work.machine_id \
          AND work.process IN ('ShepherdAccess', 'ShepherdAgentStart', 'ShepherdRecovery') \
        LEFT JOIN work_backoff ON machines.machine_id = work_backoff.machine_id \
          AND work_backoff.until > now() AND work_backoff.process = 'ShepherdRecovery' \
        LEFT JOIN machine_agent_heartbeat ON machines.machine_id = machine_agent_heartbeat.machine_id \
        LEFT JOIN machine_os_installation_request AS req ON machines.machine_id = req.machine_id \
        LEFT JOIN machine_os_installation_report AS rep ON machines.machine_id = rep.machine_id \
        WHERE (req.machine_id IS NULL \
               OR rep.machine_id IS NULL \
               OR rep.generation <> req.generation \
               OR rep.os_installation_result <> 'Success') \
          AND ((machine_agent_heartbeat.machine_id IS NULL \
                AND now() > machine_agent_started.agent_started_at + INTERVAL '30 minutes') \
               OR (machine_agent_heartbeat.machine_id IS NOT NULL \
                AND now() > machine_agent_heartbeat.agent_heartbeat_at + INTERVAL '10 minutes')) \
          AND work.machine_id IS NULL \
          AND work_backoff.machine_id IS NULL \
          AND machine_provided.provider = $2 \
        ORDER BY machines.machine_id \
        LIMIT $1";
    Ok(sqlx::query_as(SQL)
        .bind(limit)
        .bind(provider)
        .fetch_all(conn)
        .await?)
}

/// The backoff of this machine and process, expired or not.
pub async fn work_backoff_of(
    conn: &mut Conn,
    machine_id: Uuid,
    process: Process,
) -> Result<Vec<WorkBackoff>> {
    Ok(sqlx::query_as(
        "SELECT machine_id, process, until, cause, last_interval_seconds FROM work_backoff \
         WHERE machine_id = $1 AND process = $2",
    )
    .bind(machine_id)
    .bind(process)
    .fetch_all(conn)
    .await?)
}

/// The work history of a machine, oldest first.
pub async fn list_history_of(conn: &mut Conn, machine_id: Uuid) -> Result<Vec<WorkHistory>> {
    Ok(sqlx::query_as(
        "SELECT machine_id, process, event, timestamp, failed_cause FROM work_history \
         WHERE machine_id = $1 ORDER BY timestamp ASC",
    )
    .bind(machine_id)
    .fetch_all(conn)
    .await?)
}

/// Work in progress on a machine.
pub async fn list_work_of(conn: &mut Conn, machine_id: Uuid) -> Result<Vec<WorkRow>> {
    Ok(sqlx::query_as(
        "SELECT machine_id, session_id, process FROM work WHERE machine_id = $1 ORDER BY process",
    )
    .bind(machine_id)
    .fetch_all(conn)
    .await?)
}

/// One machine with its tags.
const MACHINE_TAGS_SQL: &str = "SELECT machines.machine_id, machines.machine_created_at, \
    p.machine_id AS p_id, p.provider, p.provider_id, p.provider_reservation_id, \
    p.provider_ip_address, p.provider_location, p.provider_status, \
    a.machine_id AS a_id, a.agent_started_at, a.agent_public_key, \
    h.machine_id AS h_id, h.agent_heartbeat_at, \
    hw.machine_id AS hw_id, hw.hardware_report_raw, \
    req.machine_id AS req_id, req.generation AS req_generation, req.os_installation_request_raw, \
    rep.machine_id AS rep_id, rep.generation AS rep_generation, rep.os_installation_result, \
    rep.os_installation_report_raw \
    FROM machines \
    LEFT JOIN machine_provided AS p ON machines.machine_id = p.machine_id \
    LEFT JOIN machine_agent_started AS a ON machines.machine_id = a.machine_id \
    LEFT JOIN machine_agent_heartbeat AS h ON machines.machine_id = h.machine_id \
    LEFT JOIN machine_hardware_report AS hw ON machines.machine_id = hw.machine_id \
    LEFT JOIN machine_os_installation_request AS req ON machines.machine_id = req.machine_id \
    LEFT JOIN machine_os_installation_report AS rep ON machines.machine_id = rep.machine_id";

/// Machines with all their tags, ordered by ID, at most `limit` of them with IDs above `after`
/// (for paging).
pub async fn list_machines(
    conn: &mut Conn,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<MachineTags>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{MACHINE_TAGS_SQL} WHERE ($1::UUID IS NULL OR machines.machine_id > $1) \
         ORDER BY machines.machine_id LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(machine_tags_from_row)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// What [`search_machines`] looks for; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineSearch {
    /// The start of the machine ID in its hyphenated form (hex digits and hyphens only).
    pub id_prefix: Option<String>,
    /// The provider of the machine.
    pub provider: Option<Provider>,
    /// The machine's ID at its provider, exactly.
    pub provider_id: Option<String>,
}

/// Machines matching `search` with all their tags, ordered by ID, at most `limit` of them.
/// An ID prefix with anything but hex digits and hyphens matches nothing (it is never part of
/// a LIKE pattern).
pub async fn search_machines(
    conn: &mut Conn,
    search: &MachineSearch,
    limit: i64,
) -> Result<Vec<MachineTags>> {
    let pattern = match &search.id_prefix {
        Some(p) if !p.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => return Ok(Vec::new()),
        Some(p) => Some(format!("{}%", p.to_ascii_lowercase())),
        None => None,
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{MACHINE_TAGS_SQL} WHERE ($1::TEXT IS NULL OR machines.machine_id::TEXT LIKE $1) \
         AND ($2::provider IS NULL OR p.provider = $2) \
         AND ($3::TEXT IS NULL OR p.provider_id = $3) \
         ORDER BY machines.machine_id LIMIT $4"
    )))
    .bind(pattern)
    .bind(search.provider)
    .bind(search.provider_id.as_deref())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(machine_tags_from_row)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// One machine with all its tags.
pub async fn get_machine(conn: &mut Conn, machine_id: Uuid) -> Result<Option<MachineTags>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{MACHINE_TAGS_SQL} WHERE machines.machine_id = $1"
    )))
    .bind(machine_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(machine_tags_from_row).transpose()?)
}

fn machine_tags_from_row(row: &PgRow) -> Result<MachineTags, sqlx::Error> {
    let machine_id: Uuid = row.try_get("machine_id")?;
    let present = |col: &str| -> Result<bool, sqlx::Error> {
        Ok(row.try_get::<Option<Uuid>, _>(col)?.is_some())
    };
    Ok(MachineTags {
        machine: Machine {
            machine_id,
            machine_created_at: row.try_get("machine_created_at")?,
        },
        provided: if present("p_id")? {
            Some(MachineProvided {
                machine_id,
                provider: row.try_get("provider")?,
                provider_id: row.try_get("provider_id")?,
                provider_reservation_id: row.try_get("provider_reservation_id")?,
                provider_ip_address: row.try_get("provider_ip_address")?,
                provider_location: row.try_get("provider_location")?,
                provider_status: row.try_get("provider_status")?,
            })
        } else {
            None
        },
        agent_started: if present("a_id")? {
            Some(MachineAgentStarted {
                machine_id,
                agent_started_at: row.try_get("agent_started_at")?,
                agent_public_key: row.try_get("agent_public_key")?,
            })
        } else {
            None
        },
        agent_heartbeat: if present("h_id")? {
            Some(MachineAgentHeartbeat {
                machine_id,
                agent_heartbeat_at: row.try_get("agent_heartbeat_at")?,
            })
        } else {
            None
        },
        hardware_report: if present("hw_id")? {
            Some(MachineHardwareReport {
                machine_id,
                hardware_report_raw: row.try_get("hardware_report_raw")?,
            })
        } else {
            None
        },
        os_installation_request: if present("req_id")? {
            Some(MachineOsInstallationRequest {
                machine_id,
                generation: row.try_get("req_generation")?,
                os_installation_request_raw: row.try_get("os_installation_request_raw")?,
            })
        } else {
            None
        },
        os_installation_report: if present("rep_id")? {
            Some(MachineOsInstallationReport {
                machine_id,
                generation: row.try_get("rep_generation")?,
                os_installation_result: row.try_get("os_installation_result")?,
                os_installation_report_raw: row.try_get("os_installation_report_raw")?,
            })
        } else {
            None
        },
    })
}

// Session and work bookkeeping, used by `session` and `work`.

/// Inserts a session; its deadline is `now() + interval`.
pub(crate) async fn new_session(
    conn: &mut Conn,
    component_name: &str,
    runtime_info: &str,
    interval_seconds: i64,
) -> Result<SessionRow> {
    Ok(sqlx::query_as(
        "INSERT INTO sessions (session_component_name, session_runtime_info, session_created_at, \
           session_interval_seconds, session_deadline) \
         VALUES ($1, $2, now(), $3, now() + $3 * INTERVAL '1 second') \
         RETURNING session_id, session_component_name, session_runtime_info, session_created_at, \
           session_interval_seconds, session_deadline",
    )
    .bind(component_name)
    .bind(runtime_info)
    .bind(interval_seconds)
    .fetch_one(conn)
    .await?)
}

/// Whether the session exists and its deadline has not passed.
pub(crate) async fn session_check(conn: &mut Conn, session_id: Uuid) -> Result<bool> {
    Ok(sqlx::query(
        "SELECT session_id FROM sessions WHERE session_id = $1 AND session_deadline > now()",
    )
    .bind(session_id)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// Extends the session's deadline to `now() + interval`.
pub(crate) async fn session_poke(conn: &mut Conn, session_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE sessions SET session_deadline = now() + session_interval_seconds * INTERVAL '1 second' \
         WHERE session_id = $1",
    )
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes sessions that expired more than `grace_seconds` ago, and (by cascade) their work.
pub(crate) async fn delete_expired_sessions(conn: &mut Conn, grace_seconds: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM sessions WHERE session_deadline < now() - $1 * INTERVAL '1 second'",
    )
    .bind(grace_seconds)
    .execute(conn)
    .await?
    .rows_affected())
}

pub(crate) async fn start_work(
    conn: &mut Conn,
    machine_id: Uuid,
    session_id: Uuid,
    process: Process,
) -> Result<()> {
    sqlx::query("INSERT INTO work (machine_id, session_id, process) VALUES ($1, $2, $3)")
        .bind(machine_id)
        .bind(session_id)
        .bind(process)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn finish_work(
    conn: &mut Conn,
    machine_id: Uuid,
    session_id: Uuid,
    process: Process,
) -> Result<()> {
    sqlx::query("DELETE FROM work WHERE machine_id = $1 AND session_id = $2 AND process = $3")
        .bind(machine_id)
        .bind(session_id)
        .bind(process)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn work_history_insert(
    conn: &mut Conn,
    machine_id: Uuid,
    process: Process,
    event: WorkHistoryEvent,
    failed_cause: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO work_history (machine_id, process, event, timestamp, failed_cause) \
         VALUES ($1, $2, $3, now(), $4)",
    )
    .bind(machine_id)
    .bind(process)
    .bind(event)
    .bind(failed_cause)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn work_backoff_insert(
    conn: &mut Conn,
    machine_id: Uuid,
    process: Process,
    cause: &str,
    seconds: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO work_backoff (machine_id, process, cause, until, last_interval_seconds) \
         VALUES ($1, $2, $3, now() + $4 * INTERVAL '1 second', $4) \
         ON CONFLICT (machine_id, process) DO UPDATE SET \
           cause = EXCLUDED.cause, until = EXCLUDED.until, \
           last_interval_seconds = EXCLUDED.last_interval_seconds",
    )
    .bind(machine_id)
    .bind(process)
    .bind(cause)
    .bind(seconds)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn work_backoff_delete(
    conn: &mut Conn,
    machine_id: Uuid,
    process: Process,
) -> Result<()> {
    sqlx::query("DELETE FROM work_backoff WHERE machine_id = $1 AND process = $2")
        .bind(machine_id)
        .bind(process)
        .execute(conn)
        .await?;
    Ok(())
}
