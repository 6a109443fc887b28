//! flintd's settings, with embedded defaults so that `flintd` alone runs.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid listen address {0:?}: expected a unix socket path or host:port")]
    Listen(String),
    #[error("invalid accelerator {0:?}: expected auto, kvm or tcg")]
    Accel(String),
}

/// Where the gRPC API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Listen::Unix(PathBuf::from(s)));
        }
        let s = s.strip_prefix("http://").unwrap_or(s);
        if let Ok(a) = s.parse() {
            return Ok(Listen::Tcp(a));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Ok(Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], p))));
            }
        }
        Err(ConfigError::Listen(s.into()))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Which accelerator the engine asks QEMU for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(ConfigError::Accel(other.into())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Metadata, code, logs and per-instance files.
    pub data_dir: PathBuf,
    pub listen: Vec<Listen>,
    /// Guest kernel (`vmlinux`) and runtime images (`<runtime>.erofs`), as
    /// `scripts/setup` leaves them.
    pub artifacts_dir: PathBuf,
    pub qemu: PathBuf,
    pub accel: AccelChoice,
    /// Region and account in ARNs and the guest environment.
    pub region: String,
    pub account_id: String,
    /// From QEMU start to the agent's first message.
    pub boot_timeout: Duration,
    /// From configuring the instance to the runtime's first `next` (Lambda: 10 s).
    pub init_timeout: Duration,
}

/// The default unix socket, shared by flintd and flintctl.
pub const DEFAULT_SOCKET: &str = "/run/flint/flintd.sock";
/// The default TCP address.
pub const DEFAULT_TCP: &str = "127.0.0.1:50051";

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/flint"),
            listen: vec![
                Listen::Unix(PathBuf::from(DEFAULT_SOCKET)),
                DEFAULT_TCP.parse().expect("valid default"),
            ],
            artifacts_dir: PathBuf::from("/var/cache/flint/current"),
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: AccelChoice::Auto,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            boot_timeout: Duration::from_secs(30),
            init_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("flint.db")
    }
    pub fn code_dir(&self) -> PathBuf {
        self.data_dir.join("code")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
    pub fn kernel(&self) -> PathBuf {
        self.artifacts_dir.join("vmlinux")
    }
    pub fn runtime_image(&self, runtime: &str) -> PathBuf {
        self.artifacts_dir.join(format!("{runtime}.erofs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "/tmp/x.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "unix:/a".parse::<Listen>().unwrap(),
            Listen::Unix("/a".into())
        );
        assert_eq!(
            "127.0.0.1:9".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            "localhost:9".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert!("nonsense".parse::<Listen>().is_err());
    }
}
