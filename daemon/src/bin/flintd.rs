//! flintd: the Flint execution node daemon.

use std::path::PathBuf;

use clap::Parser;
use flint_daemon::config::{AccelChoice, Config, Listen};

#[derive(Parser)]
#[command(version, about = "Flint execution node: Lambda functions in microVMs")]
struct Args {
    /// TOML configuration file (default: /etc/flint/flintd.toml when it exists).
    #[arg(long, env = "FLINT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: metadata, code, logs, instance files.
    #[arg(long, env = "FLINT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address: a unix socket path or host:port. Repeatable.
    #[arg(long, env = "FLINT_LISTEN", value_delimiter = ',')]
    listen: Vec<Listen>,
    /// Guest kernel and runtime images, as scripts/setup leaves them.
    #[arg(long, env = "FLINT_ARTIFACTS_DIR")]
    artifacts_dir: Option<PathBuf>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "FLINT_ACCEL")]
    accel: Option<AccelChoice>,
}

/// `info`, except the netlink parser's complaints about attributes newer
/// than it knows (every link read on a current kernel), which say nothing
/// to an operator.
const DEFAULT_FILTER: &str = "info,netlink_packet_route=error";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_FILTER.into()),
        )
        .init();
    let args = Args::parse();
    let default_file = PathBuf::from("/etc/flint/flintd.toml");
    let mut config = match args.config {
        Some(path) => Config::load(&path)?,
        None if default_file.exists() => Config::load(&default_file)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if let Some(a) = args.artifacts_dir {
        config.artifacts_dir = a;
    }
    if let Some(a) = args.accel {
        config.accel = a;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(flint_daemon::server::run(config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }))?;
    Ok(())
}
