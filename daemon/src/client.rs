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
    #[error("flintd serves TCP only with mutual TLS: give the CA, certificate and key (--tls-ca, --tls-cert, --tls-key or FLINT_TLS_CA, FLINT_TLS_CERT, FLINT_TLS_KEY)")]
    NoTls,
    #[error("reading the TLS file {0} failed")]
    TlsFile(PathBuf, #[source] std::io::Error),
}

/// The client side of mutual TLS: the CA flintd's certificate chains to,
/// and this client's certificate and key.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name flintd's certificate is checked against (default: the
    /// endpoint's host).
    pub domain: Option<String>,
}

impl ClientTls {
    /// From `FLINT_TLS_CA`, `FLINT_TLS_CERT` and `FLINT_TLS_KEY`.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
        Some(Self {
            ca: var("FLINT_TLS_CA")?,
            cert: var("FLINT_TLS_CERT"),
            key: var("FLINT_TLS_KEY"),
            domain: None,
        })
    }

    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| ClientError::TlsFile(p.clone(), e));
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        Ok(c)
    }
}

/// Where flintctl looks when neither `--endpoint` nor `FLINT_ENDPOINT` is set.
pub fn default_endpoint() -> String {
    format!("unix:{DEFAULT_SOCKET}")
}

/// Opens a channel to `endpoint`: `unix:PATH`, a socket path, or host:port
/// (mutual TLS from [`ClientTls::from_env`]).
pub async fn channel(endpoint: &str) -> Result<Channel, ClientError> {
    channel_with(endpoint, ClientTls::from_env().as_ref()).await
}

/// Opens a channel to `endpoint`; TCP needs `tls`.
pub async fn channel_with(endpoint: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
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
        Listen::Tcp(addr) => {
            let tls = tls.ok_or(ClientError::NoTls)?.config()?;
            Endpoint::try_from(format!("https://{addr}"))
                .map_err(|_| ClientError::Endpoint(endpoint.into()))?
                .tls_config(tls)
                .map_err(|e| ClientError::Connect(endpoint.into(), e))?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| ClientError::Connect(endpoint.into(), e))
        }
    }
}

/// A client of the Functions service with message limits for packages.
pub async fn functions(endpoint: &str) -> Result<FunctionsClient<Channel>, ClientError> {
    Ok(FunctionsClient::new(channel(endpoint).await?)
        .max_decoding_message_size(crate::api::MAX_MESSAGE)
        .max_encoding_message_size(crate::api::MAX_MESSAGE))
}
