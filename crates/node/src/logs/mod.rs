//! Logs: the NodeManagement service with its Logs RPC over the node's logtree,
//! the request validation and entry conversion behind it ([`query`]), and the printer that
//! copies every logtree entry to stdout ([`printer`]).

pub mod printer;
pub mod query;
pub mod service;

pub use printer::Printer;
pub use service::NodeManagementService;
