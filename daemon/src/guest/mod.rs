//! The host side of the agent protocol (`flint.agent.v1`, length-prefixed
//! protobuf frames over the VM's virtio-serial channel): the one framed
//! reader and the one writer every part of flintd that talks to a guest
//! uses. A guest is hostile: a frame over the protocol's limit or one that
//! does not decode ends the conversation, and what is buffered from it is
//! bounded by the frame limit.
//!
//! [`GuestLink`] is a live conversation: typed messages out, one way to wait
//! for what comes back. Lambda's error documents for what a guest does
//! wrong are written here, and nowhere else.

mod events;
mod link;

use std::io::Read;
use std::time::{Duration, SystemTime};

use flint_proto::agent::v1::{AgentMessage, HostMessage};
use flint_proto::frame::{self, FrameBuffer, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use events::{AgentEvent, QueuedEvents, MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS};
pub use link::{AgentChannel, Answer, End, FunctionFailure, GuestLink, Invocation, Setup, Waited};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("the agent channel is closed")]
    ChannelClosed,
    #[error("the guest broke the protocol")]
    BadFrame(#[source] FrameError),
    #[error("the agent did not answer within {0:?}")]
    TimedOut(Duration),
}

/// How much is read from the channel at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads agent messages from a channel, frame by frame.
pub struct FrameReader<R> {
    rd: R,
    received: FrameBuffer,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `rd`, with frames already received from it first.
    pub fn new(rd: R, received: FrameBuffer) -> Self {
        Self {
            rd,
            received,
            buf: vec![0u8; READ_CHUNK],
        }
    }

    /// The next message. `Ok(None)`: the channel is closed (or failed).
    /// `Err`: the guest sent something that is not a frame of the protocol.
    pub async fn next(&mut self) -> Result<Option<AgentMessage>, FrameError> {
        loop {
            if let Some(m) = self.received.next_frame::<AgentMessage>()? {
                return Ok(Some(m));
            }
            match self.rd.read(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.received.extend(&self.buf[..n]),
            }
        }
    }

    /// The channel back, with what was received and not read yet.
    pub fn into_parts(self) -> (R, FrameBuffer) {
        (self.rd, self.received)
    }
}

/// Writes one message as a frame.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &HostMessage) -> std::io::Result<()> {
    w.write_all(&frame::encode(msg)).await
}

/// A spare's warm-up, on a channel that no link reads yet: `Warm` (a clock,
/// entropy and a host name; the agent runs the paths a restore will run),
/// then its `Warmed`, within `limit`. Anything else the guest says
/// meanwhile (a log line of a runtime printing while parked) is dropped.
/// Returns the channel, with what arrived after `Warmed`, and the agent's
/// time.
pub async fn warm_up(
    mut stream: tokio::net::UnixStream,
    instance_id: &str,
    limit: Duration,
) -> Result<(AgentChannel, Duration), GuestError> {
    use flint_proto::agent::v1::{agent_message, host_message, Warm};
    let msg = HostMessage {
        kind: Some(host_message::Kind::Warm(Warm {
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy: entropy(),
            instance_id: instance_id.to_string(),
        })),
    };
    send(&mut stream, &msg)
        .await
        .map_err(|_| GuestError::ChannelClosed)?;
    let mut reader = FrameReader::new(stream, FrameBuffer::default());
    let answer = async {
        loop {
            match reader.next().await {
                Ok(Some(AgentMessage {
                    kind: Some(agent_message::Kind::Warmed(w)),
                })) => return Ok(Duration::from_micros(w.duration_us)),
                Ok(Some(_)) => {}
                Ok(None) => return Err(GuestError::ChannelClosed),
                Err(e) => return Err(GuestError::BadFrame(e)),
            }
        }
    };
    let took = tokio::time::timeout(limit, answer)
        .await
        .map_err(|_| GuestError::TimedOut(limit))??;
    let (stream, received) = reader.into_parts();
    Ok((AgentChannel { stream, received }, took))
}

/// Lambda's error document: `{"errorType": ..., "errorMessage": ...}`.
pub fn error_doc(error_type: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errorType": error_type, "errorMessage": message})
        .to_string()
        .into_bytes()
}

/// The error document of an invocation whose runtime exited (`end` is not
/// `None`: with its reason) or whose guest went away.
pub fn exit_error(request_id: &str, end: Option<(i32, i32)>) -> Vec<u8> {
    let why = match end {
        Some((code, signal)) => format!("Runtime exited with error: {}", exit_reason(code, signal)),
        None => "Runtime exited without providing a reason".into(),
    };
    error_doc(
        "Runtime.ExitError",
        &format!("RequestId: {request_id} Error: {why}"),
    )
}

/// The error document of an invocation that ran out of time.
pub fn timeout_error(request_id: &str, timeout: Duration) -> Vec<u8> {
    error_doc(
        "Sandbox.Timedout",
        &format!(
            "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
            timeout.as_secs_f64()
        ),
    )
}

/// The error document of an invocation whose guest broke the protocol.
pub fn protocol_error(request_id: &str, what: &str) -> Vec<u8> {
    error_doc(
        "Sandbox.ProtocolError",
        &format!("RequestId: {request_id} Error: the instance broke the agent protocol ({what}) and was stopped"),
    )
}

/// Milliseconds since the Unix epoch, as the protocol carries times.
pub use crate::time::unix_ms;

/// Fresh entropy for a guest (every clone of a snapshot gets its own).
pub fn entropy() -> Vec<u8> {
    let mut e = vec![0u8; 64];
    if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
        let _ = r.read_exact(&mut e);
    }
    e
}

/// Lambda's wording of a process end: `exit status 1` or `signal: killed`.
pub fn exit_reason(exit_code: i32, signal: i32) -> String {
    if signal != 0 {
        let name = match signal {
            9 => "killed".to_string(),
            6 => "aborted".to_string(),
            11 => "segmentation fault".to_string(),
            15 => "terminated".to_string(),
            n => format!("{n}"),
        };
        format!("signal: {name}")
    } else {
        format!("exit status {exit_code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_proto::agent::v1::{agent_message, Ready};

    fn ready() -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Ready(Ready::default())),
        }
    }

    #[tokio::test]
    async fn messages_come_whole_whatever_the_chunks_and_buffered_ones_first() {
        let (mut host, mut guest) = tokio::io::duplex(8);
        let mut early = FrameBuffer::default();
        early.extend(&frame::encode(&ready()));
        let writer = tokio::spawn(async move {
            let bytes = frame::encode(&ready());
            for b in bytes.chunks(3) {
                guest.write_all(b).await.unwrap();
            }
        });
        let mut r = FrameReader::new(&mut host, early);
        assert_eq!(r.next().await.unwrap(), Some(ready()));
        assert_eq!(r.next().await.unwrap(), Some(ready()));
        writer.await.unwrap();
        // The guest's end is gone: closed, not an error.
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_an_error_without_buffering_it() {
        let (mut host, mut guest) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = guest.write_all(&u32::MAX.to_be_bytes()).await;
            let _ = guest.write_all(&[0u8; 32]).await;
        });
        let mut r = FrameReader::new(&mut host, FrameBuffer::default());
        assert!(matches!(r.next().await, Err(FrameError::TooLarge(_))));
    }
}
