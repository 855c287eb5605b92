//! bmdb: the Bare Metal Database of BMaaS, on PostgreSQL.
//!
//! Every BMaaS component (server, shepherds, workflows) talks to the same database through this
//! crate. It holds:
//! * the schema as embedded migrations ([`connection::Bmdb::open`] applies them on start);
//! * [`session`]: a component's liveness in the database. Every transaction runs inside a
//!   session and is refused once that session expired ([`Error::SessionExpired`]); transactions
//!   are retried on serialization failures;
//! * [`work`]: exclusive, session-bound work on a machine by a process, with history and
//!   exponential [`backoff`] after failures;
//! * [`queries`]: the typed queries over machines and their tags ([`model`]);
//! * [`keeper`]: a long-lived session that is replaced when it expires, for servers;
//! * [`throwaway`]: a disposable local PostgreSQL for tests and `--bmdb-eat-my-data`.
//!
//! Upstream ran on CockroachDB. We run on PostgreSQL and keep the SQL inside what CockroachDB
//! also accepts, so an operator can point a deployment at CockroachDB; places where that
//! constrains a choice say so.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod connection;
pub mod error;
pub mod keeper;
pub mod model;
pub mod queries;
mod retry;
pub mod session;
pub mod throwaway;
pub mod work;

pub use backoff::Backoff;
pub use connection::{Bmdb, Config};
pub use error::{Error, Result};
pub use keeper::SessionKeeper;
pub use model::{OsInstallationResult, Process, Provider, ProviderStatus, WorkHistoryEvent};
pub use session::{Session, SessionConfig};
pub use work::Work;

/// The connection a transaction body runs on (inside a serializable transaction).
pub type Conn = sqlx::PgConnection;

/// A boxed future borrowing the transaction, as returned by transaction bodies:
/// `session.transact(|tx| Box::pin(async move { queries::new_machine(tx).await }))`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
