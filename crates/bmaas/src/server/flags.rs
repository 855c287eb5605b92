//! Command-line flags of `bmaas-server`, as clap argument groups.
//!
//! Names are upstream's with dashes (`--srv-grpc-listen-address`); upstream's underscore
//! spellings (`--srv_grpc_listen_address`) are accepted as aliases. `--bmdb-dsn` is ours: one
//! PostgreSQL URL instead of the separate connection flags.

use std::path::PathBuf;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::devcerts::{self, ComponentTls};
use crate::{Error, Result};

/// Component flags (upstream `cloud/lib/component`, prefix `srv`).
#[derive(Debug, Clone, clap::Args)]
pub struct ComponentFlags {
    /// PEM PKCS#8 key of the component certificate.
    #[arg(long = "srv-grpc-key-path", alias = "srv_grpc_key_path")]
    pub grpc_key_path: Option<PathBuf>,
    /// PEM component certificate.
    #[arg(
        long = "srv-grpc-certificate-path",
        alias = "srv_grpc_certificate_path"
    )]
    pub grpc_certificate_path: Option<PathBuf>,
    /// PEM CA certificate that internal gRPC clients must chain to.
    #[arg(
        long = "srv-grpc-ca-certificate-path",
        alias = "srv_grpc_ca_certificate_path"
    )]
    pub grpc_ca_certificate_path: Option<PathBuf>,
    /// Internal gRPC listen address (mutual TLS); `:port` = every interface.
    #[arg(
        long = "srv-grpc-listen-address",
        alias = "srv_grpc_listen_address",
        default_value = ":4242"
    )]
    pub grpc_listen_address: String,
    /// Prometheus metrics listen address (`/metrics`); unset = no metrics. Mutual TLS against
    /// the component CA unless --srv-prometheus-insecure.
    #[arg(
        long = "srv-prometheus-listen-address",
        alias = "srv_prometheus_listen_address"
    )]
    pub prometheus_listen_address: Option<String>,
    /// Serve the metrics over plain HTTP, without TLS or client authentication.
    #[arg(long = "srv-prometheus-insecure", alias = "srv_prometheus_insecure")]
    pub prometheus_insecure: bool,
    /// Use (and create if needed) development certificates instead of the paths above.
    #[arg(long = "srv-dev-certs", aliases = ["srv_dev_certs", "dev-certs"])]
    pub dev_certs: bool,
    /// Where development certificates live [default: $XDG_CONFIG_HOME/monogon-dev-certs].
    #[arg(long = "srv-dev-certs-path", alias = "srv_dev_certs_path")]
    pub dev_certs_path: Option<PathBuf>,
}

impl ComponentFlags {
    /// The component's TLS material: dev certificates or the given files.
    pub fn tls(&self, component: &str) -> Result<ComponentTls> {
        if self.dev_certs {
            let dir = self
                .dev_certs_path
                .clone()
                .unwrap_or_else(devcerts::default_dev_certs_path);
            return devcerts::dev_certs(&dir, component);
        }
        match (
            &self.grpc_certificate_path,
            &self.grpc_key_path,
            &self.grpc_ca_certificate_path,
        ) {
            (Some(cert), Some(key), Some(ca)) => devcerts::load(cert, key, ca),
            _ => Err(Error::Config(
                "give --srv-grpc-certificate-path, --srv-grpc-key-path and \
                 --srv-grpc-ca-certificate-path, or --srv-dev-certs"
                    .into(),
            )),
        }
    }
}

/// BMDB connection flags (upstream `CockroachConfig`, prefix `bmdb`).
#[derive(Debug, Clone, clap::Args)]
pub struct BmdbFlags {
    /// PostgreSQL URL (e.g. postgres://bmdb@db:5432/bmdb?sslmode=verify-full); overrides the
    /// separate connection flags. Ours, not upstream's.
    #[arg(long = "bmdb-dsn", alias = "bmdb_dsn")]
    pub dsn: Option<String>,
    /// Database host, optionally with `:port` (default port 5432).
    #[arg(long = "bmdb-endpoint-host", alias = "bmdb_endpoint_host")]
    pub endpoint_host: Option<String>,
    /// PEM client key for database TLS authentication.
    #[arg(long = "bmdb-tls-key-path", alias = "bmdb_tls_key_path")]
    pub tls_key_path: Option<PathBuf>,
    /// PEM client certificate for database TLS authentication.
    #[arg(
        long = "bmdb-tls-certificate-path",
        alias = "bmdb_tls_certificate_path"
    )]
    pub tls_certificate_path: Option<PathBuf>,
    /// PEM CA certificate to verify the database server with (enables verify-full TLS).
    #[arg(
        long = "bmdb-tls-ca-certificate-path",
        alias = "bmdb_tls_ca_certificate_path"
    )]
    pub tls_ca_certificate_path: Option<PathBuf>,
    /// Database user.
    #[arg(
        long = "bmdb-user-name",
        alias = "bmdb_user_name",
        default_value = "bmdb"
    )]
    pub user_name: String,
    /// Database name.
    #[arg(
        long = "bmdb-database-name",
        alias = "bmdb_database_name",
        default_value = "bmdb"
    )]
    pub database_name: String,
    /// Start a throwaway local PostgreSQL for this run and use it. All data is lost on exit.
    #[arg(long = "bmdb-eat-my-data", alias = "bmdb_eat_my_data")]
    pub eat_my_data: bool,
}

impl BmdbFlags {
    /// Connection options from the flags (not for `--bmdb-eat-my-data`). PG* environment
    /// variables (e.g. PGPASSWORD) apply to what the flags leave open.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        if let Some(dsn) = &self.dsn {
            return dsn
                .parse()
                .map_err(|e| Error::Config(format!("--bmdb-dsn: {e}")));
        }
        let Some(endpoint) = &self.endpoint_host else {
            return Err(Error::Config(
                "give --bmdb-endpoint-host (or --bmdb-dsn), or --bmdb-eat-my-data".into(),
            ));
        };
        let (host, port) = split_host_port(endpoint)?;
        let mut options = PgConnectOptions::new()
            .host(&host)
            .username(&self.user_name)
            .database(&self.database_name);
        if let Some(port) = port {
            options = options.port(port);
        }
        if let Some(ca) = &self.tls_ca_certificate_path {
            options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
        }
        match (&self.tls_certificate_path, &self.tls_key_path) {
            (Some(cert), Some(key)) => {
                options = options.ssl_client_cert(cert).ssl_client_key(key);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "--bmdb-tls-certificate-path and --bmdb-tls-key-path go together".into(),
                ));
            }
        }
        Ok(options)
    }
}

/// `host`, `host:port`, `[v6]:port`.
fn split_host_port(endpoint: &str) -> Result<(String, Option<u16>)> {
    let bad = || Error::Config(format!("invalid --bmdb-endpoint-host {endpoint:?}"));
    if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Ok((host.to_string(), Some(port.parse().map_err(|_| bad())?)))
        }
        _ if !endpoint.is_empty() => Ok((endpoint.to_string(), None)),
        _ => Err(bad()),
    }
}

/// Every flag of `bmaas-server`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "bmaas-server",
    about = "BMaaS server: agent callback API, operator API, debug page"
)]
pub struct ServerFlags {
    #[command(flatten)]
    pub component: ComponentFlags,
    #[command(flatten)]
    pub bmdb: BmdbFlags,
    /// Public (agent-facing) gRPC listen address; `:port` = every interface.
    #[arg(
        long = "srv-public-grpc-listen-address",
        alias = "srv_public_grpc_listen_address",
        default_value = ":8080"
    )]
    pub public_grpc_listen_address: String,
    /// Debug web page listen address; unset = no debug page.
    #[arg(long = "webug-listen-address", alias = "webug_listen_address")]
    pub webug_listen_address: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("db").ok(), Some(("db".into(), None)));
        assert_eq!(
            split_host_port("db:26257").ok(),
            Some(("db".into(), Some(26257)))
        );
        assert_eq!(
            split_host_port("[::1]:5432").ok(),
            Some(("::1".into(), Some(5432)))
        );
        assert!(split_host_port("db:port").is_err());
    }

    #[test]
    fn upstream_spellings_and_defaults() {
        let f = ServerFlags::try_parse_from([
            "bmaas-server",
            "--srv_dev_certs",
            "--bmdb-eat-my-data",
            "--webug-listen-address",
            "127.0.0.1:0",
            "--srv_prometheus_listen_address",
            "127.0.0.1:0",
            "--srv_prometheus_insecure",
        ])
        .expect("flags parse");
        assert!(f.component.dev_certs && f.bmdb.eat_my_data);
        assert_eq!(f.component.grpc_listen_address, ":4242");
        assert_eq!(f.public_grpc_listen_address, ":8080");
        assert_eq!(f.bmdb.user_name, "bmdb");
        assert_eq!(f.webug_listen_address.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            f.component.prometheus_listen_address.as_deref(),
            Some("127.0.0.1:0")
        );
        assert!(f.component.prometheus_insecure);
    }
}
