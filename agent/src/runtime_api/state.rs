//! The Runtime API's state machine, free of I/O so that it can be tested alone.
//!
//! Lambda's runtime lifecycle: the runtime initialises, calls `next` (which
//! ends init), receives one event at a time and answers each with exactly one
//! `response` or `error`. Every request is checked against the current state
//! before anything changes.

use std::collections::VecDeque;

/// Lambda's limit on a synchronous response, 6 MiB.
pub const MAX_RESPONSE: usize = 6 * 1024 * 1024;

/// One event handed to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub request_id: String,
    pub payload: Vec<u8>,
    pub deadline_unix_ms: u64,
    pub invoked_function_arn: String,
    pub trace_id: String,
    pub client_context: String,
    pub cognito_identity: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The runtime is starting and has not asked for an event yet.
    Initializing,
    /// The runtime reported an init error; nothing more is accepted.
    InitFailed,
    /// Init is done and the runtime waits in `restore/next` for the
    /// snapshot to be restored.
    RestoreWait,
    /// Restored: the runtime runs its after-restore hooks.
    Restoring,
    /// Waiting for (or holding) the next event.
    Idle,
    /// The runtime is working on this request.
    Busy(String),
}

/// A rejected request: Lambda's status code and error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("Invalid request ID")]
    InvalidRequestId,
    #[error("Transition from {from} to {to} is not allowed")]
    InvalidStateTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("Exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).")]
    PayloadTooLarge,
}

impl StateError {
    pub fn status(&self) -> u16 {
        match self {
            StateError::InvalidRequestId => 400,
            StateError::InvalidStateTransition { .. } => 403,
            StateError::PayloadTooLarge => 413,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            StateError::InvalidRequestId => "InvalidRequestID",
            StateError::InvalidStateTransition { .. } => "InvalidStateTransition",
            StateError::PayloadTooLarge => "RequestEntityTooLarge",
        }
    }
}

/// What a `next` call means besides its event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The first `next`: init is over.
    pub ends_init: bool,
    /// The first `next` after a restore: the instance is ready.
    pub ends_restore: bool,
}

/// What the agent does when the host resumes a restored snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum OnResume {
    /// No runtime yet (a runtime snapshot): nothing.
    Nothing,
    /// Release the runtime's parked `restore/next`.
    ReleaseRestore,
    /// The runtime already waits for an event: ready at once.
    Ready,
}

/// What `next` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// An event is ready; the runtime is now busy with it.
    Event(Event),
    /// No event yet; the caller parks until one is delivered.
    Wait,
}

#[derive(Debug)]
pub struct RuntimeState {
    phase: Phase,
    queue: VecDeque<Event>,
    /// Whether a `next` call is parked waiting for an event.
    parked: bool,
}

impl Default for RuntimeState {
    fn default() -> Self {
        Self {
            phase: Phase::Initializing,
            queue: VecDeque::new(),
            parked: false,
        }
    }
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Initializing => "INIT",
        Phase::InitFailed => "INIT_FAILED",
        Phase::RestoreWait => "RESTORE_WAIT",
        Phase::Restoring => "RESTORE",
        Phase::Idle => "READY",
        Phase::Busy(_) => "INVOKE",
    }
}

impl RuntimeState {
    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// `GET /runtime/invocation/next`. Returns whether this call ends init,
    /// and either an event or `Wait`.
    pub fn next(&mut self) -> Result<(Milestones, Next), StateError> {
        let m = match &self.phase {
            Phase::Initializing => Milestones {
                ends_init: true,
                ends_restore: false,
            },
            Phase::Restoring => Milestones {
                ends_init: false,
                ends_restore: true,
            },
            // While an invocation is in flight the runtime owes its
            // answer; a second `next` beside a parked one is refused too
            // (the parked one keeps waiting).
            other @ (Phase::InitFailed | Phase::RestoreWait | Phase::Busy(_)) => {
                return Err(StateError::InvalidStateTransition {
                    from: phase_name(other),
                    to: "READY",
                })
            }
            Phase::Idle if self.parked => {
                return Err(StateError::InvalidStateTransition {
                    from: "READY",
                    to: "READY",
                })
            }
            Phase::Idle => Milestones::default(),
        };
        match self.queue.pop_front() {
            Some(ev) => {
                self.phase = Phase::Busy(ev.request_id.clone());
                self.parked = false;
                Ok((m, Next::Event(ev)))
            }
            None => {
                self.phase = Phase::Idle;
                self.parked = true;
                Ok((m, Next::Wait))
            }
        }
    }

    /// `GET /runtime/restore/next`: init is over and the runtime waits for
    /// the restore. Only during init.
    pub fn restore_next(&mut self) -> Result<(), StateError> {
        match &self.phase {
            Phase::Initializing => {
                self.phase = Phase::RestoreWait;
                Ok(())
            }
            other => Err(StateError::InvalidStateTransition {
                from: phase_name(other),
                to: "RESTORE_WAIT",
            }),
        }
    }

    /// The host resumed a restored snapshot.
    pub fn resume(&mut self) -> OnResume {
        match &self.phase {
            Phase::RestoreWait => {
                self.phase = Phase::Restoring;
                OnResume::ReleaseRestore
            }
            Phase::Idle if self.parked => OnResume::Ready,
            _ => OnResume::Nothing,
        }
    }

    /// `POST /runtime/restore/error`: only while the after-restore hooks run.
    pub fn restore_error(&mut self) -> Result<(), StateError> {
        match &self.phase {
            Phase::Restoring => {
                self.phase = Phase::InitFailed;
                Ok(())
            }
            other => Err(StateError::InvalidStateTransition {
                from: phase_name(other),
                to: "RESTORE_ERROR",
            }),
        }
    }

    /// An event arrives from the host. If a `next` call is parked, the event is
    /// returned for it to take (and the runtime is busy with it); otherwise it
    /// is queued.
    pub fn deliver(&mut self, ev: Event) -> Option<Event> {
        if self.parked && self.queue.is_empty() {
            self.parked = false;
            self.phase = Phase::Busy(ev.request_id.clone());
            Some(ev)
        } else {
            self.queue.push_back(ev);
            None
        }
    }

    /// The parked `next` call went away (its connection closed) before an
    /// event came: a new one may park.
    pub fn abandon_wait(&mut self) {
        self.parked = false;
    }

    /// An event handed to a parked `next` that had gone away: it goes back
    /// to the front of the queue and the runtime is idle again.
    pub fn requeue(&mut self, ev: Event) {
        self.parked = false;
        self.phase = Phase::Idle;
        self.queue.push_front(ev);
    }

    /// `POST /runtime/invocation/{id}/response`.
    pub fn respond(&mut self, request_id: &str, len: usize) -> Result<(), StateError> {
        self.check(request_id, "RESPONSE")?;
        // An oversize response still ends the invocation (as a failure).
        self.phase = Phase::Idle;
        if len > MAX_RESPONSE {
            return Err(StateError::PayloadTooLarge);
        }
        Ok(())
    }

    /// `POST /runtime/invocation/{id}/error`.
    pub fn error(&mut self, request_id: &str) -> Result<(), StateError> {
        self.check(request_id, "ERROR")?;
        self.phase = Phase::Idle;
        Ok(())
    }

    /// `POST /runtime/init/error`: only while initialising.
    pub fn init_error(&mut self) -> Result<(), StateError> {
        match &self.phase {
            Phase::Initializing => {
                self.phase = Phase::InitFailed;
                Ok(())
            }
            other => Err(StateError::InvalidStateTransition {
                from: phase_name(other),
                to: "INIT_ERROR",
            }),
        }
    }

    /// Whether `request_id` may be answered now (`to`: RESPONSE or ERROR).
    pub fn check(&self, request_id: &str, to: &'static str) -> Result<(), StateError> {
        match &self.phase {
            Phase::Busy(id) if id == request_id => Ok(()),
            Phase::Busy(_) | Phase::Idle => Err(StateError::InvalidRequestId),
            other => Err(StateError::InvalidStateTransition {
                from: phase_name(other),
                to,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        Event {
            request_id: id.into(),
            payload: b"{}".to_vec(),
            deadline_unix_ms: 1,
            invoked_function_arn: "arn".into(),
            trace_id: String::new(),
            client_context: String::new(),
            cognito_identity: String::new(),
        }
    }

    #[test]
    fn first_next_ends_init_and_parks() {
        let mut s = RuntimeState::default();
        let init = Milestones {
            ends_init: true,
            ends_restore: false,
        };
        assert_eq!(s.next().unwrap(), (init, Next::Wait));
        assert_eq!(s.phase(), &Phase::Idle);
        assert_eq!(s.deliver(ev("a")), Some(ev("a")));
        assert_eq!(s.phase(), &Phase::Busy("a".into()));
        s.respond("a", 2).unwrap();
        assert_eq!(s.next().unwrap(), (Milestones::default(), Next::Wait));
    }

    #[test]
    fn snapstart_restore_path() {
        let mut s = RuntimeState::default();
        s.restore_next().unwrap();
        assert_eq!(s.phase(), &Phase::RestoreWait);
        // Nothing else is accepted while waiting for the restore.
        assert_eq!(s.next().unwrap_err().status(), 403);
        assert_eq!(s.restore_error().unwrap_err().status(), 403);
        assert_eq!(s.resume(), OnResume::ReleaseRestore);
        let (m, n) = s.next().unwrap();
        assert!(m.ends_restore && !m.ends_init);
        assert_eq!(n, Next::Wait);
        // A second restore/next is refused.
        assert_eq!(s.restore_next().unwrap_err().status(), 403);
    }

    #[test]
    fn restore_without_hooks_is_ready_at_once() {
        let mut s = RuntimeState::default();
        s.next().unwrap();
        assert_eq!(s.resume(), OnResume::Ready);
        let mut fresh = RuntimeState::default();
        assert_eq!(fresh.resume(), OnResume::Nothing);
    }

    #[test]
    fn restore_error_only_after_a_restore() {
        let mut s = RuntimeState::default();
        s.restore_next().unwrap();
        s.resume();
        s.restore_error().unwrap();
        assert_eq!(s.next().unwrap_err().status(), 403);
    }

    #[test]
    fn queued_event_is_returned_at_once() {
        let mut s = RuntimeState::default();
        assert_eq!(s.deliver(ev("a")), None);
        let (m, n) = s.next().unwrap();
        assert!(m.ends_init);
        assert_eq!(n, Next::Event(ev("a")));
        s.error("a").unwrap();
        assert_eq!(s.phase(), &Phase::Idle);
    }

    #[test]
    fn wrong_or_repeated_request_id_is_400() {
        let mut s = RuntimeState::default();
        s.next().unwrap();
        s.deliver(ev("a"));
        let e = s.respond("b", 1).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.error_type(), "InvalidRequestID");
        s.respond("a", 1).unwrap();
        assert_eq!(s.respond("a", 1).unwrap_err().status(), 400);
        assert_eq!(s.error("a").unwrap_err().status(), 400);
    }

    #[test]
    fn oversize_response_is_413_and_frees_the_runtime() {
        let mut s = RuntimeState::default();
        s.next().unwrap();
        s.deliver(ev("a"));
        let e = s.respond("a", MAX_RESPONSE + 1).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(s.phase(), &Phase::Idle);
    }

    #[test]
    fn init_error_only_during_init() {
        let mut s = RuntimeState::default();
        s.init_error().unwrap();
        assert_eq!(s.next().unwrap_err().status(), 403);
        let mut s = RuntimeState::default();
        s.next().unwrap();
        let e = s.init_error().unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(e.error_type(), "InvalidStateTransition");
    }

    #[test]
    fn next_during_an_invocation_or_beside_a_parked_one_is_403() {
        let mut s = RuntimeState::default();
        s.next().unwrap();
        // A second parked `next`.
        let e = s.next().unwrap_err();
        assert_eq!(
            (e.status(), e.error_type()),
            (403, "InvalidStateTransition")
        );
        // Once the first one is gone, another may park.
        s.abandon_wait();
        assert_eq!(s.next().unwrap().1, Next::Wait);
        s.deliver(ev("a"));
        // The invocation is in flight: `next` does not drop it.
        let e = s.next().unwrap_err();
        assert_eq!(
            (e.status(), e.error_type()),
            (403, "InvalidStateTransition")
        );
        assert_eq!(s.phase(), &Phase::Busy("a".into()));
        s.respond("a", 1).unwrap();
        s.next().unwrap();
    }

    #[test]
    fn response_before_any_event_is_rejected() {
        let mut s = RuntimeState::default();
        assert_eq!(s.respond("x", 1).unwrap_err().status(), 403);
    }

    /// One call or event, as a hostile runtime (or host) might order them.
    #[derive(Debug, Clone)]
    enum Op {
        Next,
        Deliver,
        Respond(u8, usize),
        Error(u8),
        InitError,
        RestoreNext,
        Resume,
        RestoreError,
        AbandonWait,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Op::Next),
            Just(Op::Deliver),
            (0u8..4, prop_oneof![Just(0usize), Just(MAX_RESPONSE + 1)])
                .prop_map(|(i, n)| Op::Respond(i, n)),
            (0u8..4).prop_map(Op::Error),
            Just(Op::InitError),
            Just(Op::RestoreNext),
            Just(Op::Resume),
            Just(Op::RestoreError),
            Just(Op::AbandonWait),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("FLINT_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
        ))]
        /// Any order of Runtime API calls and deliveries: no panic, every
        /// rejection has Lambda's status and type, at most one invocation
        /// is in flight, and no delivered event is lost or handed out twice.
        #[test]
        fn any_call_order_keeps_the_state_machine_sound(ops in proptest::collection::vec(op(), 0..64)) {
            let mut s = RuntimeState::default();
            let (mut delivered, mut handed) = (0usize, 0usize);
            let mut in_flight: Option<String> = None;
            let mut n = 0;
            for o in ops {
                let r = match o {
                    Op::Next => s.next().map(|(_, next)| {
                        if let Next::Event(ev) = next {
                            handed += 1;
                            in_flight = Some(ev.request_id);
                        }
                    }),
                    Op::Deliver => {
                        n += 1;
                        delivered += 1;
                        if let Some(ev) = s.deliver(ev(&format!("r{n}"))) {
                            handed += 1;
                            in_flight = Some(ev.request_id);
                        }
                        Ok(())
                    }
                    Op::Respond(i, len) => {
                        let id = if i == 0 { in_flight.clone().unwrap_or_default() } else { format!("r{i}") };
                        let r = s.respond(&id, len);
                        if matches!(r, Ok(()) | Err(StateError::PayloadTooLarge)) { in_flight = None; }
                        r
                    }
                    Op::Error(i) => {
                        let id = if i == 0 { in_flight.clone().unwrap_or_default() } else { format!("r{i}") };
                        let r = s.error(&id);
                        if r.is_ok() { in_flight = None; }
                        r
                    }
                    Op::InitError => s.init_error(),
                    Op::RestoreNext => s.restore_next(),
                    Op::Resume => { s.resume(); Ok(()) }
                    Op::RestoreError => s.restore_error(),
                    Op::AbandonWait => { s.abandon_wait(); Ok(()) }
                };
                if let Err(e) = r {
                    proptest::prop_assert!([400, 403, 413].contains(&e.status()));
                    proptest::prop_assert!(!e.error_type().is_empty());
                }
                if let Phase::Busy(id) = s.phase() {
                    proptest::prop_assert_eq!(Some(id.clone()), in_flight.clone());
                }
                proptest::prop_assert_eq!(delivered, handed + s.queue.len());
            }
        }
    }
}
