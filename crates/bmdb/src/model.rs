//! Rust forms of the BMDB's enums and rows.
//!
//! Enums map onto the PostgreSQL `CREATE TYPE … AS ENUM` types of the migrations by their
//! variant names, which are exactly upstream's value names.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Declares a database enum together with its string forms (flags, web page, errors).
macro_rules! db_enum {
    ($(#[$meta:meta])* $name:ident, $type_name:literal, [$($variant:ident),+ $(,)?]) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
        #[sqlx(type_name = $type_name)]
        pub enum $name {
            $(#[allow(missing_docs)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("unknown {} {s:?} (one of: {})", $type_name, all.join(", "))
                    })
            }
        }
    };
}

db_enum!(
    /// A process that can work on machines (one `work` row per machine and process at most).
    Process,
    "process",
    [UnitTest1, UnitTest2, ShepherdAccess, ShepherdAgentStart, ShepherdRecovery]
);

db_enum!(
    /// Who provides a machine.
    Provider,
    "provider",
    [Equinix, Lumen, None]
);

db_enum!(
    /// A machine's state at its provider, as last seen by the Shepherd.
    ProviderStatus,
    "provider_status",
    [Missing, Provisioning, ProvisioningFailedPermanent, Running, Stopped, Unknown]
);

db_enum!(
    /// What happened to a piece of work.
    WorkHistoryEvent,
    "work_history_event",
    [Started, Finished, Failed, Canceled]
);

db_enum!(
    /// How an OS installation ended, as reported by the agent.
    OsInstallationResult,
    "machine_os_installation_result",
    [Success, Error]
);

/// A machine.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Machine {
    pub machine_id: Uuid,
    pub machine_created_at: DateTime<Utc>,
}

/// Tag: the machine exists at a provider.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineProvided {
    pub machine_id: Uuid,
    pub provider: Provider,
    pub provider_id: String,
    pub provider_reservation_id: Option<String>,
    pub provider_ip_address: Option<String>,
    pub provider_location: Option<String>,
    pub provider_status: Option<ProviderStatus>,
}

/// Tag: an agent was started on the machine with this public key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineAgentStarted {
    pub machine_id: Uuid,
    pub agent_started_at: DateTime<Utc>,
    /// Raw Ed25519 public key (32 bytes).
    pub agent_public_key: Vec<u8>,
}

/// Tag: the agent's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineAgentHeartbeat {
    pub machine_id: Uuid,
    pub agent_heartbeat_at: DateTime<Utc>,
}

/// Tag: the hardware report the agent sent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineHardwareReport {
    pub machine_id: Uuid,
    /// Serialized `cloud.bmaas.server.api.AgentHardwareReport`.
    pub hardware_report_raw: Vec<u8>,
}

/// Tag: an OS installation was requested.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineOsInstallationRequest {
    pub machine_id: Uuid,
    pub generation: i64,
    /// Serialized `cloud.bmaas.server.api.OSInstallationRequest`.
    pub os_installation_request_raw: Vec<u8>,
}

/// Tag: the agent reported the outcome of the installation of this generation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MachineOsInstallationReport {
    pub machine_id: Uuid,
    pub generation: i64,
    pub os_installation_result: OsInstallationResult,
    /// Serialized `cloud.bmaas.server.api.OSInstallationReport`.
    pub os_installation_report_raw: Vec<u8>,
}

/// A machine with every tag it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineTags {
    pub machine: Machine,
    pub provided: Option<MachineProvided>,
    pub agent_started: Option<MachineAgentStarted>,
    pub agent_heartbeat: Option<MachineAgentHeartbeat>,
    pub hardware_report: Option<MachineHardwareReport>,
    pub os_installation_request: Option<MachineOsInstallationRequest>,
    pub os_installation_report: Option<MachineOsInstallationReport>,
}

/// A backoff after failed work.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkBackoff {
    pub machine_id: Uuid,
    pub process: Process,
    pub until: DateTime<Utc>,
    pub cause: String,
    /// NULL for backoffs written before exponential backoff existed.
    pub last_interval_seconds: Option<i64>,
}

/// An entry of the work audit log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkHistory {
    pub machine_id: Uuid,
    pub process: Process,
    pub event: WorkHistoryEvent,
    pub timestamp: DateTime<Utc>,
    pub failed_cause: Option<String>,
}

/// Work in progress.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkRow {
    pub machine_id: Uuid,
    pub session_id: Uuid,
    pub process: Process,
}

/// A session row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub session_component_name: String,
    pub session_runtime_info: String,
    pub session_created_at: DateTime<Utc>,
    pub session_interval_seconds: i64,
    pub session_deadline: DateTime<Utc>,
}
