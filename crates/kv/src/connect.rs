//! Connecting an etcd client over the member's unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

use crate::error::{Error, Result};

/// Connects an etcd client to the etcd member listening on the unix socket `socket_path`.
///
/// The connection is made eagerly, so a missing or dead socket is reported here; afterwards the
/// channel reconnects through the same socket path by itself (e.g. after etcd restarts).
pub async fn connect_unix(socket_path: impl AsRef<Path>) -> Result<etcd_client::Client> {
    let path: PathBuf = socket_path.as_ref().to_path_buf();
    // The URI only feeds the HTTP/2 :authority header; the connector ignores it and dials the
    // socket, which is why any well-formed http URI works here.
    let endpoint = Endpoint::from_static("http://localhost");
    let dial = path.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(dial).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect { path, source })?;
    Ok(etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
}
