//! Connecting to flintd, for flintctl, the benchmark and tests.

use std::path::PathBuf;

use flint_proto::node::v1::functions_client::FunctionsClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{Listen, DEFAULT_SOCKET};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    #[error("cannot connect to flintd at {0}")]
    Connect(String, #[source] tonic::transport::Error),
}

/// Where flintctl looks when neither `--endpoint` nor `FLINT_ENDPOINT` is set.
pub fn default_endpoint() -> String {
    format!("unix:{DEFAULT_SOCKET}")
}

/// Opens a channel to `endpoint`: `unix:PATH`, a socket path, or host:port.
pub async fn channel(endpoint: &str) -> Result<Channel, ClientError> {
    let listen: Listen = endpoint
        .parse()
        .map_err(|_| ClientError::Endpoint(endpoint.into()))?;
    match listen {
        Listen::Unix(path) => {
            let path: PathBuf = path;
            Endpoint::try_from("http://flintd.local")
                .map_err(|_| ClientError::Endpoint(endpoint.into()))?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| ClientError::Connect(endpoint.into(), e))
        }
        Listen::Tcp(addr) => Endpoint::try_from(format!("http://{addr}"))
            .map_err(|_| ClientError::Endpoint(endpoint.into()))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ClientError::Connect(endpoint.into(), e)),
    }
}

/// A client of the Functions service with message limits for packages.
pub async fn functions(endpoint: &str) -> Result<FunctionsClient<Channel>, ClientError> {
    Ok(FunctionsClient::new(channel(endpoint).await?)
        .max_decoding_message_size(crate::api::MAX_MESSAGE)
        .max_encoding_message_size(crate::api::MAX_MESSAGE))
}
