//! One function instance: a VM, the agent protocol spoken over its channel,
//! and its log stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flint_proto::agent::v1::{
    agent_message, host_message, AgentMessage, HostMessage, PrepareSnapshot,
};
use flint_proto::frame::FrameBuffer;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::engine::Vm;
use crate::functions::Function;
use crate::logs::LogStream;

use super::PoolError;

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A cold boot, then the function's init.
    Boot,
    /// A restore of the runtime snapshot, then the function's init.
    RuntimeSnapshot,
    /// A restore of the function snapshot (its init ran in the snapshot).
    FunctionSnapshot,
    /// A VM that builds a snapshot; it never serves an invocation.
    SnapshotBuild,
}

impl Origin {
    /// As `ListInstances` and `flintctl instances` show it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Boot => "boot",
            Origin::RuntimeSnapshot => "runtime-snapshot",
            Origin::FunctionSnapshot => "function-snapshot",
            Origin::SnapshotBuild => "snapshot-build",
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Initializing,
    Idle,
    Busy,
    /// Idle with its vCPUs stopped: it uses no CPU until thawed.
    Frozen,
}

/// What the node shows of an instance (`ListInstances`), shared between the
/// instance and the pool's registry.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: String,
    pub function: String,
    pub version: String,
    pub state: InstanceState,
    pub memory_mb: u32,
    pub created: SystemTime,
    pub invocations: u64,
    pub last_used: Option<SystemTime>,
    /// How it started.
    pub start_kind: Origin,
    pub pid: u32,
    /// Kept ready by a provisioned-concurrency config.
    pub provisioned: bool,
}

pub type Registry = Arc<Mutex<HashMap<String, Arc<Mutex<InstanceInfo>>>>>;

pub struct Instance {
    pub id: String,
    /// The function revision this instance runs.
    pub revision: u64,
    pub code_sha256: String,
    pub log: LogStream,
    pub created: SystemTime,
    pub state: InstanceState,
    pub invocations: u64,
    /// Set until the first invocation has reported it.
    pub pending_init: Option<Duration>,
    /// Set (for a restored function snapshot) until the first invocation
    /// has reported it.
    pub pending_restore: Option<Duration>,
    /// Whether the vCPUs are under the function's CPU quota yet.
    cpu_limited: bool,
    vm: Box<dyn Vm>,
    to_agent: mpsc::UnboundedSender<HostMessage>,
    events: mpsc::UnboundedReceiver<AgentEvent>,
    /// What `events` holds, bounded.
    queued: Arc<QueuedEvents>,
    info: Arc<Mutex<InstanceInfo>>,
    registry: Registry,
}

/// The host end of an agent channel, with what was read from it and not
/// yet handled.
pub struct AgentChannel {
    pub stream: UnixStream,
    pub received: FrameBuffer,
}

impl Instance {
    /// Wires the agent channel of a freshly booted VM.
    pub fn attach(
        f: &Function,
        id: String,
        mut vm: Box<dyn Vm>,
        log: LogStream,
        registry: Registry,
        start_kind: Origin,
    ) -> Result<Self, PoolError> {
        let stream = vm.take_channel().ok_or(PoolError::NoChannel)?;
        let channel = AgentChannel {
            stream,
            received: FrameBuffer::default(),
        };
        Ok(Self::attach_channel(
            f, id, vm, channel, log, registry, start_kind,
        ))
    }

    /// Wires an agent channel already in use (a spare's).
    pub fn attach_channel(
        f: &Function,
        id: String,
        vm: Box<dyn Vm>,
        channel: AgentChannel,
        log: LogStream,
        registry: Registry,
        start_kind: Origin,
    ) -> Self {
        let (revision, code_sha256) = (f.revision, f.code_sha256_hex.clone());
        let info = Arc::new(Mutex::new(InstanceInfo {
            id: id.clone(),
            function: f.name.clone(),
            version: f.version.clone(),
            state: InstanceState::Initializing,
            memory_mb: f.memory_mb,
            created: SystemTime::now(),
            invocations: 0,
            last_used: None,
            start_kind,
            pid: vm.stats().pid,
            provisioned: false,
        }));
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), info.clone());
        let AgentChannel {
            stream,
            received: fb,
        } = channel;
        let (mut rd, mut wr) = stream.into_split();
        let (to_agent, mut outbox) = mpsc::unbounded_channel::<HostMessage>();
        tokio::spawn(async move {
            while let Some(msg) = outbox.recv().await {
                if crate::guest::send(&mut wr, &msg).await.is_err() {
                    break;
                }
            }
        });
        let (ev_tx, events) = mpsc::unbounded_channel();
        let queued = Arc::new(QueuedEvents::default());
        let reader_queued = queued.clone();
        let reader_log = log.clone();
        tokio::spawn(async move {
            // Frames already received (by a spare's warm-up) come first.
            let mut reader = crate::guest::FrameReader::new(&mut rd, fb);
            loop {
                match reader.next().await {
                    Ok(Some(msg)) => {
                        if let Some(ev) = dispatch(msg, &reader_log) {
                            if !reader_queued.admit(&ev) {
                                // Nobody asked for these: a guest that
                                // floods its channel is closed, and no
                                // more is read from it.
                                tracing::warn!(
                                    "agent sent more events than the host reads; closing instance"
                                );
                                let _ = ev_tx.send(AgentEvent::Broken(format!(
                                    "it sent more than {MAX_QUEUED_EVENTS} events or {} MiB that the host did not ask for",
                                    MAX_QUEUED_BYTES >> 20
                                )));
                                return;
                            }
                            let _ = ev_tx.send(ev);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad frame from agent; closing instance");
                        let _ = ev_tx.send(AgentEvent::Broken(format!("bad frame: {e}")));
                        return;
                    }
                }
            }
            let _ = ev_tx.send(AgentEvent::Closed);
        });
        Self {
            id,
            revision,
            code_sha256,
            log,
            created: SystemTime::now(),
            state: InstanceState::Initializing,
            invocations: 0,
            pending_init: None,
            pending_restore: None,
            cpu_limited: false,
            vm,
            to_agent,
            events,
            queued,
            info,
            registry,
        }
    }

    /// Records a state change (and, for `Idle` after `Busy`, a served invocation).
    pub fn set_state(&mut self, state: InstanceState) {
        let was_busy = self.state == InstanceState::Busy;
        self.state = state;
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        info.state = state;
        if was_busy && state != InstanceState::Busy {
            self.invocations += 1;
            info.invocations = self.invocations;
            info.last_used = Some(SystemTime::now());
        }
    }

    /// Puts the vCPUs under the function's CPU quota, once: from the first
    /// invocation on (init ran unthrottled).
    pub fn limit_cpu(&mut self) -> Result<(), PoolError> {
        if !self.cpu_limited {
            self.vm.limit_cpu()?;
            self.cpu_limited = true;
        }
        Ok(())
    }

    pub fn send(&self, msg: host_message::Kind) -> Result<(), PoolError> {
        self.to_agent
            .send(HostMessage { kind: Some(msg) })
            .map_err(|_| PoolError::ChannelClosed)
    }

    /// The next event, or `None` at the deadline.
    pub async fn next_event(&mut self, deadline: Instant) -> Option<AgentEvent> {
        let d = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(d, self.events.recv()).await {
            Ok(Some(ev)) => {
                self.queued.taken(&ev);
                Some(ev)
            }
            Ok(None) => Some(AgentEvent::Closed),
            Err(_) => None,
        }
    }

    /// Whether the instance can take an invocation: its VM runs and its
    /// runtime has not exited since the last invocation (events that arrived
    /// while idle are consumed here).
    pub fn is_alive(&mut self) -> bool {
        while let Ok(ev) = self.events.try_recv() {
            self.queued.taken(&ev);
            if matches!(
                ev,
                AgentEvent::RuntimeExit { .. } | AgentEvent::Closed | AgentEvent::Broken(_)
            ) {
                return false;
            }
        }
        !self.vm.has_exited()
    }

    /// Stops the vCPUs of an idle instance.
    pub async fn freeze(&mut self) -> Result<(), PoolError> {
        self.vm.pause().await?;
        self.set_state(InstanceState::Frozen);
        Ok(())
    }

    /// Restarts the vCPUs of a frozen instance; returns how long it took.
    pub async fn thaw(&mut self) -> Result<Duration, PoolError> {
        let t = Instant::now();
        self.vm.resume().await?;
        self.set_state(InstanceState::Idle);
        Ok(t.elapsed())
    }

    /// Marks it as kept by a provisioned-concurrency config, whose
    /// invocations report neither init nor restore.
    pub fn mark_provisioned(&mut self) {
        self.pending_init = None;
        self.pending_restore = None;
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .provisioned = true;
    }

    /// Loads a snapshot's state into this (incoming) VM; it stays paused.
    pub async fn load(&self, state: &std::path::Path) -> Result<(), PoolError> {
        self.vm.load(state).await.map_err(PoolError::from)
    }

    /// Runs a VM whose snapshot state is loaded ([`Vm::load`]).
    pub async fn run_loaded(&self) -> Result<(), PoolError> {
        self.vm.resume().await.map_err(PoolError::from)
    }

    /// Has the agent prepare the guest (`PrepareSnapshot`: the files its
    /// processes map read into the page cache, the kernel's clocksource
    /// settled), then pauses the VM and writes its state (a snapshot
    /// template).
    pub async fn snapshot(&mut self, state: &std::path::Path) -> Result<(), PoolError> {
        self.send(host_message::Kind::PrepareSnapshot(PrepareSnapshot {}))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.next_event(deadline).await {
                Some(AgentEvent::SnapshotPrepared {
                    files,
                    bytes,
                    duration,
                }) => {
                    tracing::debug!(instance = %self.id, files, bytes,
                        ms = duration.as_millis() as u64, "guest prepared for its snapshot");
                    break;
                }
                Some(AgentEvent::Closed) | Some(AgentEvent::RuntimeExit { .. }) => {
                    return Err(PoolError::Snapshot(format!(
                        "the guest stopped while preparing its snapshot: {}",
                        self.console_tail()
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(PoolError::Snapshot(
                        "the agent did not prepare the snapshot in 15 s".into(),
                    ))
                }
            }
        }
        self.vm.snapshot(state).await.map_err(PoolError::from)
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.vm.stats().pid
    }

    pub fn pss_kb(&self) -> u64 {
        self.vm.pss_kb()
    }

    pub fn console_tail(&self) -> String {
        self.vm.console_tail(2048)
    }

    pub fn rss_kb(&self) -> u64 {
        self.vm.stats().rss_kb
    }

    pub async fn stop(mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Err(e) = self.vm.stop().await {
            tracing::warn!(instance = %self.id, error = %e, "stopping instance");
        }
    }
}

/// At most this many agent events wait for the host to read them. A
/// well-behaved agent has one or two outstanding (init, then a response).
pub const MAX_QUEUED_EVENTS: usize = 64;
/// At most this many payload bytes wait in them: two whole frames.
pub const MAX_QUEUED_BYTES: usize = 2 * flint_proto::frame::MAX_FRAME;

/// The count and payload bytes of the events waiting in an instance's
/// queue: what a guest can make flintd hold.
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

fn dispatch(msg: AgentMessage, log: &LogStream) -> Option<AgentEvent> {
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

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
