//! Serving the node's API on its listeners until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::api::{
    FunctionsService, NodeService, PipelinesService, QueuesService, SchedulerService,
    StacksService, StreamsService,
};
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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Observe(#[from] crate::observe::ObserveError),
    #[error(transparent)]
    Stacks(#[from] crate::stacks::StackError),
    #[error(transparent)]
    Pipelines(#[from] crate::pipelines::PipelineError),
    #[error("reading the TLS file {0} failed")]
    TlsFile(std::path::PathBuf, #[source] std::io::Error),
}

/// The server side of mutual TLS: flintd's identity, and the CA every
/// client certificate must chain to (a client without one is refused).
fn server_tls(
    files: &crate::config::TlsFiles,
) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ServerError::TlsFile(p.to_path_buf(), e))
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .client_ca_root(Certificate::from_pem(read(&files.ca)?))
        .client_auth_optional(false))
}

/// Opens the node, serves until `shutdown` resolves, then stops every VM.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.check()?;
    let listen = config.listen.clone();
    let socket_group = config.socket_group.clone();
    let tls = config.tls.as_ref().map(server_tls).transpose()?;
    let node = Arc::new(Node::open(config)?);
    let stacks = crate::stacks::Stacks::open(node.clone())?;
    let pipelines = crate::pipelines::Pipelines::open(
        node.clone(),
        stacks.clone(),
        node.config().pipeline_poll,
    )?;
    let watcher = tokio::spawn(pipelines.clone().run());
    // The Prometheus endpoint, where configured.
    let scrapes = match node.config().metrics_listen.clone() {
        Some(addr) => {
            let listener = crate::observe::http::bind(&addr).await?;
            tracing::info!(listen = %addr, "serving Prometheus metrics at /metrics");
            let n = node.clone();
            Some(tokio::spawn(crate::observe::http::serve(
                listener,
                Arc::new(move || n.prometheus_text()),
            )))
        }
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<flint_proto::node::v1::functions_server::FunctionsServer<FunctionsService>>()
        .await;
    health
        .set_serving::<flint_proto::node::v1::node_server::NodeServer<NodeService>>()
        .await;
    // Reflection in both versions: v1, and v1alpha that many clients still use.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(flint_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(FunctionsService::new(node.clone()).into_server())
        .add_service(NodeService::new(node.clone()).into_server())
        .add_service(QueuesService::server(node.clone()))
        .add_service(StreamsService::server(node.clone()))
        .add_service(SchedulerService::server(node.clone()))
        .add_service(StacksService::server(stacks))
        .add_service(PipelinesService::server(pipelines))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
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
                let ul = bind_unix(path, &socket_group)
                    .map_err(|e| ServerError::Bind(l.to_string(), e))?;
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
                // `check` made sure there is TLS for every TCP listener.
                let tls = tls.clone().ok_or_else(|| {
                    crate::config::ConfigError::Invalid(format!("listen {l}: no TLS"))
                })?;
                servers.spawn(
                    tonic::transport::Server::builder()
                        .tls_config(tls)?
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
    notify_systemd("READY=1");

    // Log retention, now and then hourly.
    let logs = node.logs().clone();
    let records = node.events().clone();
    let retention = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let n = logs.enforce_retention();
            if n > 0 {
                tracing::info!(files = n, "old log files removed");
            }
            match records.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "old invocation records removed"),
                Err(e) => tracing::warn!(error = %e, "removing old invocation records failed"),
            }
        }
    });

    // Idle instances are reclaimed in the background.
    let reclaimer_node = node.clone();
    let reclaimer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            reclaimer_node.reclaim_idle().await;
        }
    });

    // Provisioned-concurrency configs are kept at their instance count.
    let provisioner_node = node.clone();
    let provisioner = tokio::spawn(async move {
        loop {
            provisioner_node.reconcile_provisioned().await;
            provisioner_node
                .provisioning()
                .wait(std::time::Duration::from_secs(1))
                .await;
        }
    });

    // Queued asynchronous events run as they fall due.
    let settings = node.config().events;
    if settings.time_scale != 1.0 {
        tracing::warn!(
            scale = settings.time_scale,
            "testing.async_time_scale shortens Lambda's async delays: a setting for tests only"
        );
    }
    let dispatcher = tokio::spawn(node.events().clone().run());
    // Event source mappings poll their sources.
    let pollers = tokio::spawn(node.sources().clone().run());
    // Schedules fire as they come due.
    let schedules = tokio::spawn(node.sources().clone().run_schedules());

    // Provisioned concurrency follows load where a scalable target says so.
    let autoscaler_node = node.clone();
    let autoscaler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(autoscaler_node.autoscaling_tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            autoscaler_node.autoscale();
        }
    });

    tokio::select! {
        _ = shutdown => {}
        Some(r) = servers.join_next() => {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "a listener failed");
            }
        }
    }
    notify_systemd("STOPPING=1");
    retention.abort();
    reclaimer.abort();
    provisioner.abort();
    autoscaler.abort();
    watcher.abort();
    if let Some(s) = scrapes {
        s.abort();
    }
    dispatcher.abort();
    pollers.abort();
    schedules.abort();
    // Stop accepting; in-flight calls (invocations) get the grace period.
    let _ = stop_tx.send(true);
    health.set_not_serving::<flint_proto::node::v1::functions_server::FunctionsServer<FunctionsService>>().await;
    let grace = node.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "calls still running after the grace period; stopping them"
        );
        servers.abort_all();
        while servers.join_next().await.is_some() {}
    }
    node.shutdown().await;
    for l in &listen {
        if let Listen::Unix(p) = l {
            let _ = std::fs::remove_file(p);
        }
    }
    tracing::info!("flintd stopped");
    Ok(())
}

/// Binds a unix socket of mode 0660, owned by root and `group`, whatever
/// the umask: it is bound under a private name, given its mode and group,
/// then renamed into place, so it is never reachable with other rights.
/// Without the group (not created by `scripts/setup`), root's group owns it.
fn bind_unix(path: &std::path::Path, group: &str) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid),
        _ => {
            tracing::warn!(
                group,
                "socket group not found: only root may use the socket"
            );
            None
        }
    };
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let ul = UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        nix::unistd::chown(&tmp, None, gid).map_err(std::io::Error::from)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(ul)
}

/// Tells systemd (`Type=notify`) about readiness and stopping, when run by it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = std::path::PathBuf::from(path);
    let sent = if let Some(abstract_name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}
