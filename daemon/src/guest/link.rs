//! A live conversation with one guest's agent: the frames it sends are read
//! by a task of their own (log lines go to the instance's log stream, the
//! rest into a bounded queue of events), and the host speaks through typed
//! methods. Every wait for the agent goes through [`GuestLink::wait`]: one
//! deadline, and the ways a guest can end a conversation handled once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flint_proto::agent::v1::{
    host_message, Configure, HostMessage, Invoke, PrepareSnapshot, Resume,
};
use flint_proto::frame::FrameBuffer;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::events::{dispatch, AgentEvent, QueuedEvents, MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS};
use super::{entropy, error_doc, exit_reason, unix_ms, GuestError};
use crate::functions::Function;
use crate::logs::LogStream;

/// The host end of an agent channel, with what was read from it and not
/// yet handled (a spare's warm-up reads from it before a link exists).
pub struct AgentChannel {
    pub stream: UnixStream,
    pub received: FrameBuffer,
}

/// How a conversation ended while the host waited for something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The channel closed: the VM is gone.
    Closed,
    /// The guest broke the protocol.
    Broken(String),
    /// The runtime process exited (the agent lives on, the function not).
    Exited { exit_code: i32, signal: i32 },
}

/// What a wait for the agent came to.
#[derive(Debug)]
pub enum Waited<T> {
    Got(T),
    Ended(End),
    TimedOut,
}

/// A runtime's init or restore that failed: the function's error, as
/// Lambda reports it, not a node failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionFailure {
    pub error_type: String,
    pub payload: Vec<u8>,
    /// How long the init ran, where it ran.
    pub init_duration: Option<Duration>,
}

impl FunctionFailure {
    fn new(error_type: &str, message: &str, init_duration: Option<Duration>) -> Self {
        Self {
            error_type: error_type.into(),
            payload: error_doc(error_type, message),
            init_duration,
        }
    }

    /// The guest went away before its init began.
    pub fn exited_early() -> Self {
        Self::exited(&End::Closed)
    }

    /// The runtime exited (with a reason) or the guest went away (without).
    fn exited(end: &End) -> Self {
        let message = match end {
            End::Exited { exit_code, signal } => format!(
                "Runtime exited with error: {}",
                exit_reason(*exit_code, *signal)
            ),
            End::Closed => "Runtime exited without providing a reason".into(),
            End::Broken(what) => {
                return Self::new(
                    "Sandbox.ProtocolError",
                    &format!("the instance broke the agent protocol ({what}) and was stopped"),
                    None,
                )
            }
        };
        Self::new("Runtime.ExitError", &message, None)
    }
}

/// How an invocation ended in the guest.
#[derive(Debug)]
pub enum Answer {
    Response {
        payload: Vec<u8>,
        max_memory_kb: u64,
    },
    /// The function's error; `unhandled` where the runtime is in an
    /// unknown state after it (an oversize response).
    Error {
        payload: Vec<u8>,
        max_memory_kb: u64,
        unhandled: bool,
    },
    /// The conversation ended before the answer.
    Ended(End),
    /// The guest sent something out of order: it is not trusted further.
    OutOfOrder(String),
    TimedOut,
}

/// What the host tells the agent about the function it runs (`Configure`).
pub struct Setup<'a> {
    pub function: &'a Function,
    pub instance_id: &'a str,
    pub function_arn: String,
    pub region: &'a str,
    pub log_stream: &'a str,
    pub has_layers: bool,
    /// The init builds a function snapshot (SnapStart's init type).
    pub snap_start: bool,
}

/// One invocation as the agent receives it.
pub struct Invocation<'a> {
    pub request_id: &'a str,
    pub payload: &'a [u8],
    pub timeout: Duration,
    pub invoked_function_arn: String,
    pub trace_id: String,
    pub client_context: &'a str,
}

/// The host's side of one guest's agent channel.
pub struct GuestLink {
    to_agent: mpsc::UnboundedSender<HostMessage>,
    events: mpsc::UnboundedReceiver<AgentEvent>,
    /// What `events` holds, bounded.
    queued: Arc<QueuedEvents>,
}

impl GuestLink {
    /// Starts the conversation on `channel`: a writer task, and a reader
    /// task that writes log lines to `log` and queues the rest.
    pub fn open(channel: AgentChannel, log: LogStream) -> Self {
        let AgentChannel {
            stream,
            received: fb,
        } = channel;
        let (mut rd, mut wr) = stream.into_split();
        let (to_agent, mut outbox) = mpsc::unbounded_channel::<HostMessage>();
        tokio::spawn(async move {
            while let Some(msg) = outbox.recv().await {
                if super::send(&mut wr, &msg).await.is_err() {
                    break;
                }
            }
        });
        let (ev_tx, events) = mpsc::unbounded_channel();
        let queued = Arc::new(QueuedEvents::default());
        let reader_queued = queued.clone();
        tokio::spawn(async move {
            // Frames already received (by a spare's warm-up) come first.
            let mut reader = super::FrameReader::new(&mut rd, fb);
            loop {
                match reader.next().await {
                    Ok(Some(msg)) => {
                        let Some(ev) = dispatch(msg, &log) else {
                            continue;
                        };
                        if !reader_queued.admit(&ev) {
                            // Nobody asked for these: a guest that floods
                            // its channel is closed, and no more is read.
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
            to_agent,
            events,
            queued,
        }
    }

    fn send(&self, msg: host_message::Kind) -> Result<(), GuestError> {
        self.to_agent
            .send(HostMessage { kind: Some(msg) })
            .map_err(|_| GuestError::ChannelClosed)
    }

    /// `Configure`: who the function is, and where its code and layers are;
    /// the agent then starts the runtime, whose init follows.
    pub fn configure(&self, s: &Setup<'_>) -> Result<(), GuestError> {
        let f = s.function;
        self.send(host_message::Kind::Configure(Configure {
            instance_id: s.instance_id.into(),
            function_name: f.name.clone(),
            function_version: f.version.clone(),
            function_arn: s.function_arn.clone(),
            handler: f.handler.clone(),
            runtime_entry: f.runtime.entry_point().into(),
            memory_size_mb: f.memory_mb,
            timeout_s: f.timeout_s,
            region: s.region.into(),
            log_group: crate::logs::FunctionLogs::group(&f.name),
            log_stream: s.log_stream.into(),
            environment: f.environment.clone().into_iter().collect(),
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy: entropy(),
            code_device: "/dev/vdb".into(),
            runtime: f.runtime.name().into(),
            ephemeral_storage_mb: f.ephemeral_mb,
            opt_device: if s.has_layers {
                "/dev/vdc".into()
            } else {
                String::new()
            },
            snap_start: s.snap_start,
        }))
    }

    /// `Resume`: the wall clock, fresh entropy and the instance's identity,
    /// applied by the agent before anything else after a restore.
    pub fn resume(&self, instance_id: &str) -> Result<(), GuestError> {
        self.send(host_message::Kind::Resume(Resume {
            wall_clock_unix_ms: unix_ms(SystemTime::now()),
            entropy: entropy(),
            instance_id: instance_id.into(),
        }))
    }

    /// `Invoke`: one event for the runtime.
    pub fn invoke(&self, i: &Invocation<'_>) -> Result<(), GuestError> {
        let now = SystemTime::now();
        self.send(host_message::Kind::Invoke(Invoke {
            request_id: i.request_id.into(),
            payload: i.payload.to_vec(),
            deadline_unix_ms: unix_ms(now + i.timeout),
            invoked_function_arn: i.invoked_function_arn.clone(),
            trace_id: i.trace_id.clone(),
            client_context: i.client_context.into(),
            cognito_identity: String::new(),
            host_unix_ms: unix_ms(now),
        }))
    }

    /// `PrepareSnapshot`: read what the guest's processes map into the page
    /// cache and settle the clocksource, before the VM is snapshotted.
    pub fn prepare_snapshot(&self) -> Result<(), GuestError> {
        self.send(host_message::Kind::PrepareSnapshot(PrepareSnapshot {}))
    }

    /// The one way to wait for the agent: until `pick` takes an event
    /// (`Some`), the conversation ends (the channel closes, the guest
    /// breaks the protocol, its runtime exits), or `deadline` passes.
    /// Events `pick` passes over are dropped.
    pub async fn wait<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(AgentEvent) -> Option<T>,
    ) -> Waited<T> {
        let d = tokio::time::Instant::from_std(deadline);
        loop {
            let ev = match tokio::time::timeout_at(d, self.events.recv()).await {
                Ok(Some(ev)) => {
                    self.queued.taken(&ev);
                    ev
                }
                Ok(None) => AgentEvent::Closed,
                Err(_) => return Waited::TimedOut,
            };
            match ev {
                AgentEvent::Closed => return Waited::Ended(End::Closed),
                AgentEvent::Broken(why) => return Waited::Ended(End::Broken(why)),
                AgentEvent::RuntimeExit { exit_code, signal } => {
                    return Waited::Ended(End::Exited { exit_code, signal })
                }
                ev => {
                    if let Some(t) = pick(ev) {
                        return Waited::Got(t);
                    }
                }
            }
        }
    }

    /// Waits for `Ready`: the agent of a booted guest is up.
    pub async fn ready(&mut self, deadline: Instant) -> Waited<()> {
        self.wait(deadline, |ev| matches!(ev, AgentEvent::Ready).then_some(()))
            .await
    }

    /// Waits for the agent's answer to `Resume`.
    pub async fn resumed(&mut self, deadline: Instant) -> Waited<()> {
        self.wait(deadline, |ev| {
            matches!(ev, AgentEvent::Resumed).then_some(())
        })
        .await
    }

    /// Waits for the runtime's init: its duration, or the function's
    /// failure (an init error, an exit, a timeout after `limit`).
    pub async fn init(&mut self, limit: Duration) -> Result<Duration, FunctionFailure> {
        let waited = self
            .wait(Instant::now() + limit, |ev| match ev {
                AgentEvent::InitDone { init_duration } => Some(Ok(init_duration)),
                AgentEvent::InitError {
                    error_type,
                    payload,
                    init_duration,
                } => Some(Err(FunctionFailure {
                    error_type,
                    payload,
                    init_duration: Some(init_duration),
                })),
                _ => None,
            })
            .await;
        match waited {
            Waited::Got(r) => r,
            Waited::Ended(end) => Err(FunctionFailure::exited(&end)),
            Waited::TimedOut => Err(FunctionFailure::new(
                "Sandbox.Timedout",
                &format!("Init timed out after {:.2} seconds", limit.as_secs_f64()),
                Some(limit),
            )),
        }
    }

    /// Waits for a restored runtime's after-restore hooks: their duration,
    /// or the function's failure. `Err(None)`: the guest did not answer.
    pub async fn restored(
        &mut self,
        deadline: Instant,
    ) -> Result<Duration, Option<FunctionFailure>> {
        let waited = self
            .wait(deadline, |ev| match ev {
                AgentEvent::RestoreDone { restore_duration } => Some(Ok(restore_duration)),
                AgentEvent::RestoreError {
                    error_type,
                    payload,
                } => Some(Err(FunctionFailure {
                    error_type,
                    payload,
                    init_duration: None,
                })),
                _ => None,
            })
            .await;
        match waited {
            Waited::Got(r) => r.map_err(Some),
            Waited::Ended(end @ End::Exited { .. }) => Err(Some(FunctionFailure::exited(&end))),
            Waited::Ended(_) | Waited::TimedOut => Err(None),
        }
    }

    /// Waits for `SnapshotPrepared`.
    pub async fn prepared(&mut self, deadline: Instant) -> Waited<(u32, u64, Duration)> {
        self.wait(deadline, |ev| match ev {
            AgentEvent::SnapshotPrepared {
                files,
                bytes,
                duration,
            } => Some((files, bytes, duration)),
            _ => None,
        })
        .await
    }

    /// Waits for the answer to invocation `request_id`. Any other event
    /// ends it: the guest has nothing else to say during an invocation.
    pub async fn answer(&mut self, request_id: &str, deadline: Instant) -> Answer {
        let waited = self
            .wait(deadline, |ev| {
                Some(match ev {
                    AgentEvent::Response {
                        request_id: id,
                        payload,
                        max_memory_kb,
                    } if id == request_id => Answer::Response {
                        payload,
                        max_memory_kb,
                    },
                    AgentEvent::Error {
                        request_id: id,
                        payload,
                        max_memory_kb,
                        unhandled,
                        ..
                    } if id == request_id => Answer::Error {
                        payload,
                        max_memory_kb,
                        unhandled,
                    },
                    other @ (AgentEvent::Response { .. } | AgentEvent::Error { .. }) => {
                        Answer::OutOfOrder(format!("an {} for another request", other.name()))
                    }
                    other => Answer::OutOfOrder(format!("{} during an invocation", other.name())),
                })
            })
            .await;
        match waited {
            Waited::Got(a) => a,
            Waited::Ended(end) => Answer::Ended(end),
            Waited::TimedOut => Answer::TimedOut,
        }
    }

    /// Whether the conversation goes on: nothing that arrived while the
    /// instance was idle (consumed here) says the runtime exited or the
    /// guest went away or broke the protocol.
    pub fn is_open(&mut self) -> bool {
        while let Ok(ev) = self.events.try_recv() {
            self.queued.taken(&ev);
            if matches!(
                ev,
                AgentEvent::RuntimeExit { .. } | AgentEvent::Closed | AgentEvent::Broken(_)
            ) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_that_ends_is_lambdas_exit_error() {
        let f = FunctionFailure::exited(&End::Exited {
            exit_code: 0,
            signal: 9,
        });
        assert_eq!(f.error_type, "Runtime.ExitError");
        let doc: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(
            doc["errorMessage"],
            "Runtime exited with error: signal: killed"
        );
        let f = FunctionFailure::exited(&End::Closed);
        let doc: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(
            doc["errorMessage"],
            "Runtime exited without providing a reason"
        );
    }
}
