//! What an agent says, as the host reads it: events (log lines aside,
//! which go straight to the instance's log), and the bounds on what a
//! guest can make the host hold before it reads them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flint_proto::agent::v1::{agent_message, AgentMessage};

use crate::logs::LogStream;

/// What the agent reports, apart from log lines (written to the stream
/// directly by the reader task).
#[derive(Debug)]
pub enum AgentEvent {
    Ready,
    InitDone {
        init_duration: Duration,
    },
    InitError {
        error_type: String,
        payload: Vec<u8>,
        init_duration: Duration,
    },
    Response {
        request_id: String,
        payload: Vec<u8>,
        max_memory_kb: u64,
    },
    Error {
        request_id: String,
        error_type: String,
        payload: Vec<u8>,
        max_memory_kb: u64,
        unhandled: bool,
    },
    RuntimeExit {
        exit_code: i32,
        signal: i32,
    },
    /// The agent applied a `Resume`.
    Resumed,
    RestoreDone {
        restore_duration: Duration,
    },
    RestoreError {
        error_type: String,
        payload: Vec<u8>,
    },
    /// The agent did what clones would otherwise repeat (`PrepareSnapshot`).
    SnapshotPrepared {
        files: u32,
        bytes: u64,
        duration: Duration,
    },
    /// The guest broke the protocol (a bad frame, a flood); the channel
    /// closes after it.
    Broken(String),
    /// The channel closed: the VM is gone.
    Closed,
}

impl AgentEvent {
    /// The event's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::Ready => "Ready",
            AgentEvent::InitDone { .. } => "InitDone",
            AgentEvent::InitError { .. } => "InitError",
            AgentEvent::Response { .. } => "InvokeResponse",
            AgentEvent::Error { .. } => "InvokeError",
            AgentEvent::RuntimeExit { .. } => "RuntimeExit",
            AgentEvent::Resumed => "Resumed",
            AgentEvent::RestoreDone { .. } => "RestoreDone",
            AgentEvent::RestoreError { .. } => "RestoreError",
            AgentEvent::SnapshotPrepared { .. } => "SnapshotPrepared",
            AgentEvent::Broken(_) => "Broken",
            AgentEvent::Closed => "Closed",
        }
    }
}

/// At most this many agent events wait for the host to read them. A
/// well-behaved agent has one or two outstanding (init, then a response).
pub const MAX_QUEUED_EVENTS: usize = 64;
/// At most this many payload bytes wait in them: two whole frames.
pub const MAX_QUEUED_BYTES: usize = 2 * flint_proto::frame::MAX_FRAME;

/// The count and payload bytes of the events waiting in a link's queue:
/// what a guest can make flintd hold.
#[derive(Debug, Default)]
pub struct QueuedEvents {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl QueuedEvents {
    fn weight(ev: &AgentEvent) -> usize {
        match ev {
            AgentEvent::InitError { payload, .. }
            | AgentEvent::Response { payload, .. }
            | AgentEvent::Error { payload, .. }
            | AgentEvent::RestoreError { payload, .. } => payload.len(),
            _ => 0,
        }
    }

    /// Counts `ev` in if it fits; `false` when the guest is over a bound.
    pub fn admit(&self, ev: &AgentEvent) -> bool {
        let w = Self::weight(ev);
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = self.bytes.fetch_add(w, Ordering::AcqRel) + w;
        count <= MAX_QUEUED_EVENTS && bytes <= MAX_QUEUED_BYTES
    }

    /// Counts `ev` out as the host reads it.
    pub fn taken(&self, ev: &AgentEvent) {
        if matches!(ev, AgentEvent::Closed | AgentEvent::Broken(_)) {
            return;
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(Self::weight(ev), Ordering::AcqRel);
    }
}

pub(super) fn dispatch(msg: AgentMessage, log: &LogStream) -> Option<AgentEvent> {
    use agent_message::Kind;
    Some(match msg.kind? {
        Kind::Ready(_) => AgentEvent::Ready,
        Kind::InitDone(d) => AgentEvent::InitDone {
            init_duration: Duration::from_micros(d.init_duration_us),
        },
        Kind::InitError(e) => AgentEvent::InitError {
            error_type: e.error_type,
            payload: e.payload,
            init_duration: Duration::from_micros(e.init_duration_us),
        },
        Kind::Response(r) => AgentEvent::Response {
            request_id: r.request_id,
            payload: r.payload,
            max_memory_kb: r.max_memory_used_kb,
        },
        Kind::Error(e) => AgentEvent::Error {
            request_id: e.request_id,
            error_type: e.error_type,
            payload: e.payload,
            max_memory_kb: e.max_memory_used_kb,
            unhandled: e.unhandled,
        },
        Kind::RuntimeExit(x) => AgentEvent::RuntimeExit {
            exit_code: x.exit_code,
            signal: x.signal,
        },
        Kind::Resumed(_) => AgentEvent::Resumed,
        Kind::RestoreDone(d) => AgentEvent::RestoreDone {
            restore_duration: Duration::from_micros(d.restore_duration_us),
        },
        Kind::RestoreError(e) => AgentEvent::RestoreError {
            error_type: e.error_type,
            payload: e.payload,
        },
        Kind::SnapshotPrepared(p) => AgentEvent::SnapshotPrepared {
            files: p.files,
            bytes: p.bytes,
            duration: Duration::from_micros(p.duration_us),
        },
        Kind::Log(l) => {
            log.line(&l.request_id, &l.line);
            return None;
        }
        // Only a spare's warm-up asks for it (and reads it itself).
        Kind::Warmed(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_guest_is_over_the_event_bounds() {
        let q = QueuedEvents::default();
        for _ in 0..MAX_QUEUED_EVENTS {
            assert!(q.admit(&AgentEvent::Ready));
        }
        assert!(!q.admit(&AgentEvent::Ready), "one event too many");
        let q = QueuedEvents::default();
        let big = || AgentEvent::Response {
            request_id: String::new(),
            payload: vec![0; flint_proto::frame::MAX_FRAME],
            max_memory_kb: 0,
        };
        assert!(q.admit(&big()) && q.admit(&big()));
        assert!(!q.admit(&big()), "bytes over the bound");
        // What the host reads makes room again.
        let q = QueuedEvents::default();
        for _ in 0..1000 {
            assert!(q.admit(&big()));
            q.taken(&big());
        }
    }
}
