//! Serving the node's API on its listeners until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::api::FunctionsService;
use crate::config::{Config, Listen};
use crate::node::{Node, NodeError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("binding {0} failed")]
    Bind(String, #[source] std::io::Error),
    #[error("building the reflection service failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving gRPC failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the node, serves until `shutdown` resolves, then stops every VM.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let listen = config.listen.clone();
    let node = Arc::new(Node::open(config)?);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<flint_proto::node::v1::functions_server::FunctionsServer<FunctionsService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flint_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(FunctionsService::new(node.clone()).into_server())
        .add_service(health_service)
        .add_service(reflection);
    let routes = routes.routes();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for l in &listen {
        let routes = routes.clone();
        let mut stop = stop_rx.clone();
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match l {
            Listen::Unix(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::remove_file(path);
                let ul =
                    UnixListener::bind(path).map_err(|e| ServerError::Bind(l.to_string(), e))?;
                let incoming = UnixListenerStream::new(ul);
                servers.spawn(
                    tonic::transport::Server::builder()
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(incoming, signal),
                );
            }
            Listen::Tcp(addr) => {
                let tl = TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServerError::Bind(l.to_string(), e))?;
                let incoming = TcpListenerStream::new(tl);
                servers.spawn(
                    tonic::transport::Server::builder()
                        .tcp_nodelay(true)
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(incoming, signal),
                );
            }
        }
        tracing::info!(listen = %l, "serving flint.node.v1");
    }
    let accel = node.accel();
    tracing::info!(accel = accel.accel.name(), reason = %accel.reason, "flintd ready");

    tokio::select! {
        _ = shutdown => {}
        Some(r) = servers.join_next() => {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "a listener failed");
            }
        }
    }
    let _ = stop_tx.send(true);
    health.set_not_serving::<flint_proto::node::v1::functions_server::FunctionsServer<FunctionsService>>().await;
    node.shutdown().await;
    while servers.join_next().await.is_some() {}
    for l in &listen {
        if let Listen::Unix(p) = l {
            let _ = std::fs::remove_file(p);
        }
    }
    tracing::info!("flintd stopped");
    Ok(())
}
