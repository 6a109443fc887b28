//! The host channel: one virtio-serial port, read and written on the same fd.
//! A reader thread decodes frames into a tokio channel; a writer thread
//! encodes frames from any task or thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc;

use flint_proto::agent::v1::{AgentMessage, HostMessage};
use flint_proto::frame;
use tokio::sync::mpsc as tmpsc;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("opening the host channel {path} failed")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Sends messages to the host. Cheap to clone.
#[derive(Clone)]
pub struct HostSink {
    tx: mpsc::Sender<AgentMessage>,
}

impl HostSink {
    pub fn send(&self, msg: AgentMessage) {
        // The writer only goes away when the host is gone, and then the VM ends.
        let _ = self.tx.send(msg);
    }
}

/// The device node of the virtio-serial port called `name`.
fn port_path(name: &str) -> Option<String> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let n = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    None
}

/// Opens the port named `name` and starts the reader and writer threads. The
/// receiver yields `None` once the host closes the channel.
pub fn open(name: &str) -> Result<(HostSink, tmpsc::UnboundedReceiver<HostMessage>), ChannelError> {
    // The port appears once the virtio-serial control queue has announced it,
    // shortly after the driver binds: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let file = loop {
        let path = port_path(name).unwrap_or_else(|| format!("/dev/virtio-ports/{name}"));
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => break f,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(source) => {
                return Err(ChannelError::Open {
                    path: name.into(),
                    source,
                })
            }
        }
    };
    let path = name;
    let mut reader = file.try_clone().map_err(|source| ChannelError::Open {
        path: path.into(),
        source,
    })?;
    let mut writer = file;

    let (in_tx, in_rx) = tmpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("channel-rx".into())
        .spawn(move || loop {
            match frame::read::<HostMessage, _>(&mut reader) {
                Ok(msg) => {
                    if in_tx.send(msg).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("flint-agent: host channel: {e}");
                    break;
                }
            }
        })
        .expect("spawning a thread");

    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>();
    std::thread::Builder::new()
        .name("channel-tx".into())
        .spawn(move || {
            for msg in out_rx {
                let bytes = frame::encode(&msg);
                if writer
                    .write_all(&bytes)
                    .and_then(|_| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("spawning a thread");

    Ok((HostSink { tx: out_tx }, in_rx))
}
