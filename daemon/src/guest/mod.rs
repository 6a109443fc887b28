//! The host side of the agent protocol (`flint.agent.v1`, length-prefixed
//! protobuf frames over the VM's virtio-serial channel): the one framed
//! reader and the one writer every part of flintd that talks to a guest
//! uses. A guest is hostile: a frame over the protocol's limit or one that
//! does not decode ends the conversation, and what is buffered from it is
//! bounded by the frame limit.

use flint_proto::agent::v1::{AgentMessage, HostMessage};
use flint_proto::frame::{self, FrameBuffer, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Lambda's error document: `{"errorType": ..., "errorMessage": ...}`.
pub fn error_doc(error_type: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errorType": error_type, "errorMessage": message})
        .to_string()
        .into_bytes()
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
