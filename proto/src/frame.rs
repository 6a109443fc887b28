//! Length-prefixed frames for the host <-> agent channel.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of an
//! encoded protobuf message. The channel is a byte stream (virtio-serial), so
//! the reader keeps partial frames until they are complete.

use std::io::Read;

use prost::Message;

/// Largest frame accepted: a 6 MiB payload plus headroom.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("channel closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    #[error("channel I/O failed")]
    Io(#[from] std::io::Error),
    #[error("malformed frame")]
    Decode(#[from] prost::DecodeError),
}

/// Encodes `msg` as one frame.
pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf).expect("Vec grows as needed");
    buf
}

/// Reads one whole frame, blocking until it is complete.
pub fn read<M: Message + Default, R: Read>(r: &mut R) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    read_exact(r, &mut buf)?;
    Ok(M::decode(buf.as_slice())?)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Incremental decoder for frames arriving in arbitrary chunks.
#[derive(Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: a partial frame, at most 4 + [`MAX_FRAME`] once every
    /// complete frame has been taken.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete frame, if there is one.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = M::decode(&self.buf[4..4 + len])?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::{agent_message::Kind, AgentMessage, Log};

    fn log(line: &str) -> AgentMessage {
        AgentMessage {
            kind: Some(Kind::Log(Log {
                line: line.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn frames_survive_arbitrary_chunking() {
        let mut wire = Vec::new();
        for i in 0..20 {
            wire.extend(encode(&log(&format!("line {i}"))));
        }
        let mut fb = FrameBuffer::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            fb.extend(chunk);
            while let Some(m) = fb.next_frame::<AgentMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 20);
        assert_eq!(got[19], log("line 19"));
    }

    #[test]
    fn blocking_read_round_trips_and_reports_close() {
        let wire = encode(&log("hello"));
        let mut r = std::io::Cursor::new(wire);
        let m: AgentMessage = read(&mut r).unwrap();
        assert_eq!(m, log("hello"));
        assert!(matches!(
            read::<AgentMessage, _>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_length_is_refused() {
        let mut fb = FrameBuffer::default();
        fb.extend(&(u32::MAX).to_be_bytes());
        assert!(matches!(
            fb.next_frame::<AgentMessage>(),
            Err(FrameError::TooLarge(_))
        ));
    }

    /// Cases per property: 256 in the test suite; set FLINT_PROPTEST_CASES
    /// for a longer run (docs/security.md).
    fn cases() -> u32 {
        std::env::var("FLINT_PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(256)
    }

    use crate::agent::v1::{host_message, HostMessage, Invoke};
    use proptest::prelude::*;

    fn drain<M: Message + Default>(fb: &mut FrameBuffer) -> Result<Vec<M>, FrameError> {
        let mut out = Vec::new();
        while let Some(m) = fb.next_frame::<M>()? {
            out.push(m);
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Garbage from a guest, in any chunks: decoding (host side and
        /// agent side) never panics, and what stays buffered is bounded.
        #[test]
        fn garbage_never_panics_and_stays_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..600,
        ) {
            for side in 0..2 {
                let mut fb = FrameBuffer::default();
                for c in data.chunks(chunk) {
                    fb.extend(c);
                    let r = if side == 0 {
                        drain::<AgentMessage>(&mut fb).map(drop)
                    } else {
                        drain::<HostMessage>(&mut fb).map(drop)
                    };
                    if r.is_err() {
                        break; // the reader closes the channel
                    }
                    prop_assert!(fb.buffered() <= 4 + MAX_FRAME);
                }
            }
        }

        /// Real messages survive any chunking and any mix, both ways.
        #[test]
        fn messages_round_trip_in_any_chunks(
            lines in proptest::collection::vec(".{0,64}", 1..16),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..300,
        ) {
            let mut wire = Vec::new();
            for l in &lines {
                wire.extend(encode(&log(l)));
            }
            let mut fb = FrameBuffer::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                fb.extend(c);
                got.extend(drain::<AgentMessage>(&mut fb).unwrap());
            }
            prop_assert_eq!(got, lines.iter().map(|l| log(l)).collect::<Vec<_>>());
            let inv = HostMessage {
                kind: Some(host_message::Kind::Invoke(Invoke {
                    request_id: "r".into(),
                    payload,
                    ..Default::default()
                })),
            };
            let wire = encode(&inv);
            let mut fb = FrameBuffer::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                fb.extend(c);
                got.extend(drain::<HostMessage>(&mut fb).unwrap());
            }
            prop_assert_eq!(got, vec![inv]);
        }
    }
}
