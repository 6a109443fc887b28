//! The synchronous invocation path: find the function, get its warm
//! instance or start one, hand the event to the agent, wait for the result
//! within the function's timeout, and write Lambda's START, END and REPORT
//! lines.
//!
//! Why one file of 600 lines: the invocation path reads top to bottom —
//! resolve, admit, lease, start, invoke, report — and Lambda's REPORT line
//! and ClientContext rules sit beside it with their tests.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::observe::trace::Attr;
use crate::observe::{InvocationTrace, Labels, Metric, Observer};

use crate::functions::{parse_qualifier, Function, FunctionStore, FunctionsError, Qualifier};
use crate::guest::{self, Answer, End, Invocation};
use crate::launch::{Images, Instance, InstanceState, LaunchError, Started};
use crate::logs::{FunctionLogs, LogStream, LogsError};
use crate::packages::CodeStore;
use crate::pool::{Pool, PoolError};

/// Lambda's limit on a synchronous request payload, 6 MB.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error(
        "Request must be smaller than {limit} bytes for the InvokeFunction operation (got {size})"
    )]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("preparing the layers failed: {0}")]
    Layers(String),
    #[error("ClientContext: {0}")]
    ClientContext(String),
    #[error("InvocationType: Event invocations are queued by the node, not run here")]
    EventUnsupported,
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("the instance could not be started")]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Logs(#[from] LogsError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub function_name: String,
    pub qualifier: String,
    pub invocation_type: InvocationType,
    pub log_tail: bool,
    pub payload: Vec<u8>,
    pub client_context: String,
    /// The caller's trace context, continued by the invocation's trace.
    pub trace: Option<crate::observe::trace::Incoming>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionError {
    Handled,
    Unhandled,
}

impl FunctionError {
    pub fn name(self) -> &'static str {
        match self {
            FunctionError::Handled => "Handled",
            FunctionError::Unhandled => "Unhandled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct InvokeResult {
    pub status_code: i32,
    pub function_error: Option<FunctionError>,
    pub payload: Vec<u8>,
    /// The invocation's last 4 KB of log, when asked for.
    pub log_tail: Option<String>,
    pub executed_version: String,
    pub request_id: String,
}

pub struct Invoker {
    pub store: Arc<FunctionStore>,
    pub code: Arc<CodeStore>,
    pub pool: Arc<Pool>,
    pub logs: FunctionLogs,
    pub region: String,
    pub account_id: String,
    pub tally: Tally,
    /// Metrics, statistics and traces of the invocations.
    pub observe: Arc<Observer>,
}

/// Invocations and failed invocations per function version since flintd
/// started; a gradual deployment judges a new version by them.
#[derive(Default)]
pub struct Tally(std::sync::Mutex<std::collections::HashMap<(String, String), (u64, u64)>>);

impl Tally {
    fn record(&self, name: &str, version: &str, failed: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry((name.to_string(), version.to_string()))
            .or_default();
        e.0 += 1;
        e.1 += u64::from(failed);
    }

    /// (invocations, failed) of one version.
    pub fn get(&self, name: &str, version: &str) -> (u64, u64) {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(name.to_string(), version.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Drops a deleted function's counts.
    pub fn forget(&self, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|(n, _), _| n != name);
    }
}

/// How an invocation ended, before it is turned into a result.
enum Outcome {
    Ok(Vec<u8>),
    Failed {
        kind: FunctionError,
        payload: Vec<u8>,
        /// The instance cannot be reused.
        destroy: bool,
        status: Option<&'static str>,
    },
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Invoker {
    /// The function version an invocation runs: `$LATEST`, a version, or
    /// (for an alias) one of its versions, picked by weight.
    pub fn resolve(&self, name: &str, qualifier: &str) -> Result<Function, InvokeError> {
        Ok(match parse_qualifier(qualifier)? {
            Qualifier::Latest => self.store.get(name)?,
            Qualifier::Version(v) => {
                self.store.get(name)?;
                self.store.get_version(name, v)?
            }
            Qualifier::Alias(a) => {
                let alias = self.store.get_alias(name, &a)?;
                let sample = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
                self.store.get_qualified(name, alias.route(sample))?
            }
        })
    }

    /// Starts an instance of `f` outside the books (the invocation path puts
    /// it in one; benchmarks and pre-warming keep it themselves).
    pub async fn start_instance(
        &self,
        f: &Function,
        instance_id: String,
        log: LogStream,
        deadline: Option<Instant>,
    ) -> Result<Started, InvokeError> {
        let images = self.images(f).await?;
        Ok(self
            .pool
            .start(f, images, instance_id, log, deadline)
            .await?)
    }

    /// Builds the function snapshot of a published version ahead of its
    /// first invocation; its state says how that went.
    pub async fn prepare(&self, f: &Function) {
        let images = match self.images(f).await {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(function = %f.name, version = %f.version, error = %e,
                    "the layers of a published version could not be prepared");
                return;
            }
        };
        match self.pool.launcher().prepare(f, images).await {
            Ok(None) => {}
            Ok(Some(error_type)) => tracing::warn!(function = %f.name, version = %f.version,
                %error_type, "the init of a published version failed"),
            Err(e) => tracing::warn!(function = %f.name, version = %f.version, error = %e.chain(),
                "building a published version's function snapshot failed"),
        }
    }

    /// The code image of `f`, and the merged image of its layers.
    async fn images(&self, f: &Function) -> Result<Images, InvokeError> {
        let code = self.code.image_path(&f.code_sha256_hex);
        let opt = if f.layers.is_empty() {
            None
        } else {
            let shas: Vec<String> = f.layers.iter().map(|l| l.sha256_hex.clone()).collect();
            let code = self.code.clone();
            Some(
                tokio::task::spawn_blocking(move || code.opt_image(&shas))
                    .await
                    .map_err(|e| InvokeError::Layers(e.to_string()))?
                    .map_err(|e| InvokeError::Layers(e.to_string()))?,
            )
        };
        Ok(Images { code, opt })
    }

    pub async fn invoke(&self, mut req: InvokeRequest) -> Result<InvokeResult, InvokeError> {
        let f = self.resolve(&req.function_name, &req.qualifier)?;
        if req.payload.len() > MAX_SYNC_PAYLOAD {
            return Err(InvokeError::PayloadTooLarge {
                size: req.payload.len(),
                limit: MAX_SYNC_PAYLOAD,
            });
        }
        req.client_context = decode_client_context(&req.client_context)?;
        let request_id = uuid::Uuid::new_v4().to_string();
        match req.invocation_type {
            InvocationType::DryRun => {
                return Ok(InvokeResult {
                    status_code: 204,
                    function_error: None,
                    payload: Vec::new(),
                    log_tail: None,
                    executed_version: f.version.clone(),
                    request_id,
                })
            }
            InvocationType::Event => return Err(InvokeError::EventUnsupported),
            InvocationType::RequestResponse => {}
        }
        self.invoke_resolved(f, &req, request_id).await
    }

    /// The region and account in this node's ARNs.
    pub fn region_account(&self) -> (&str, &str) {
        (&self.region, &self.account_id)
    }

    /// Runs a checked invocation of the resolved version `f` under
    /// `request_id` (an asynchronous event keeps its own across retries).
    pub async fn invoke_resolved(
        &self,
        f: Function,
        req: &InvokeRequest,
        request_id: String,
    ) -> Result<InvokeResult, InvokeError> {
        let (name, version) = (f.name.clone(), f.version.clone());
        let labels = Labels::invoked(&name, &req.qualifier, &version);
        let mut trace = self.observe.begin_trace(req.trace);
        // The Invoke span's attributes, only for a trace that is sent.
        let traced = trace
            .recording()
            .then(|| (f.arn(&self.region, &self.account_id), request_id.clone()));
        let r = self
            .run_resolved(f, req, request_id, &labels, &mut trace)
            .await;
        let o = &self.observe;
        let error = match &r {
            Ok(res) => {
                self.tally
                    .record(&name, &version, res.function_error.is_some());
                // Lambda's Invocations and Errors: the code ran (or its
                // init failed), whatever it answered.
                o.record(Metric::Invocations, &labels, 1.0);
                if res.function_error.is_some() {
                    o.record(Metric::Errors, &labels, 1.0);
                }
                res.function_error.map(|e| e.name().to_string())
            }
            // A throttle is not the version's failure.
            Err(e @ InvokeError::Pool(_)) => {
                o.record(Metric::Throttles, &labels, 1.0);
                Some(e.to_string())
            }
            // No start slot in time: a 429 too, so a Throttle.
            Err(e @ InvokeError::Launch(LaunchError::StartQueue(_))) => {
                self.tally.record(&name, &version, true);
                o.record(Metric::Throttles, &labels, 1.0);
                Some(e.to_string())
            }
            // The invocation never ran (the instance could not start):
            // neither an Invocation nor an Error, as Lambda counts them.
            Err(e) => {
                self.tally.record(&name, &version, true);
                Some(crate::error_chain(e))
            }
        };
        if let Some((arn, request_id)) = traced {
            let mut attrs = vec![
                ("faas.name", Attr::Str(name)),
                ("faas.version", Attr::Str(version)),
                ("faas.invocation_id", Attr::Str(request_id)),
                ("cloud.resource_id", Attr::Str(arn)),
            ];
            if !labels.alias.is_empty() {
                attrs.push(("flint.alias", Attr::Str(labels.alias.clone())));
            }
            trace.finish(attrs, error);
        }
        r
    }

    async fn run_resolved(
        &self,
        f: Function,
        req: &InvokeRequest,
        request_id: String,
        labels: &Labels,
        trace: &mut InvocationTrace,
    ) -> Result<InvokeResult, InvokeError> {
        // Admitted first (within the function's reserved concurrency or
        // the node's unreserved share), then given an instance.
        let arrived = SystemTime::now();
        let admission = |trace: &mut InvocationTrace, error: Option<String>| {
            trace.span(
                "Admission",
                None,
                None,
                arrived,
                SystemTime::now(),
                vec![],
                error,
            )
        };
        let _ticket = match self.pool.admit(&f.name) {
            Ok(t) => t,
            Err(e) => {
                admission(trace, Some(e.to_string()));
                return Err(e.into());
            }
        };
        let _running = self.observe.running(labels);
        let admitted = Instant::now();
        let mut lease = match self.pool.checkout(&f).await {
            Some(lease) => {
                admission(trace, None);
                lease
            }
            None => {
                // A start waits for a slot at most as long as the
                // invocation could take on its own: its init limit and its
                // timeout.
                let deadline = admitted
                    + self.pool.launcher().settings().init_timeout
                    + Duration::from_secs(f.timeout_s.into());
                let booked = self.pool.book(&f, None).await;
                admission(trace, booked.as_ref().err().map(|e| e.to_string()));
                let mut lease = booked?;
                let log = self.logs.open_stream(&f.name, &f.version, &lease.id)?;
                log.start_capture();
                let start_at = SystemTime::now();
                let started = self
                    .start_instance(&f, lease.id.clone(), log.clone(), Some(deadline))
                    .await;
                let start_end = SystemTime::now();
                let started = match started {
                    Ok(s) => s,
                    Err(e) => {
                        trace.span(
                            "Start",
                            None,
                            None,
                            start_at,
                            start_end,
                            vec![],
                            Some(crate::error_chain(&e)),
                        );
                        return Err(e);
                    }
                };
                match started {
                    Started::Ready(inst) => {
                        start_spans(trace, &inst, start_at, start_end);
                        lease.set(inst)
                    }
                    Started::InitFailed(failure) => {
                        let start = trace.span(
                            "Start",
                            None,
                            None,
                            start_at,
                            start_end,
                            vec![],
                            Some(failure.error_type.clone()),
                        );
                        if let Some(d) = failure.init_duration {
                            self.observe
                                .record(Metric::InitDuration, labels, d.as_secs_f64());
                            trace.span(
                                "Init",
                                None,
                                Some(start),
                                start_end.checked_sub(d).unwrap_or(start_at).max(start_at),
                                start_end,
                                vec![],
                                Some(failure.error_type.clone()),
                            );
                        }
                        return Ok(self.init_failed(
                            &f,
                            req,
                            &log,
                            request_id,
                            &failure.error_type,
                            failure.payload,
                            failure.init_duration,
                        ));
                    }
                }
                lease
            }
        };
        let inst = lease.instance().expect("a leased instance is started");
        if inst.pending_init.is_none() && inst.pending_restore.is_none() {
            inst.log.start_capture();
        }
        let provisioned = inst.is_provisioned();
        self.provisioned_metrics(&f, req, &lease.id, provisioned, labels);
        let inst = lease.instance().expect("a leased instance is started");
        let arn = f.arn(&self.region, &self.account_id);
        let arn = if req.qualifier.is_empty() {
            arn
        } else {
            format!("{arn}:{}", req.qualifier)
        };
        if inst.state() == InstanceState::Frozen {
            match inst.thaw().await {
                Ok(d) => {
                    tracing::debug!(instance = %inst.id, thaw_us = d.as_micros() as u64, "thawed")
                }
                Err(e) => tracing::warn!(instance = %inst.id, error = %e, "thawing failed"),
            }
        }
        let invocation_at = SystemTime::now();
        let header = trace.runtime_header();
        let (outcome, duration, max_kb) = run(inst, &f, req, &request_id, arn, header).await;
        let response_at = SystemTime::now();
        let init = inst.pending_init.take();
        let restore = inst.pending_restore.take();
        let log = inst.log.clone();
        let o = &self.observe;
        o.record(Metric::Duration, labels, duration.as_secs_f64());
        if let Some(r) = restore {
            o.record(Metric::RestoreDuration, labels, r.as_secs_f64());
        } else if let Some(i) = init {
            o.record(Metric::InitDuration, labels, i.as_secs_f64());
        }
        if trace.recording() {
            let failure = match &outcome {
                Outcome::Ok(_) => None,
                Outcome::Failed { kind, status, .. } => Some(match status {
                    Some(s) => format!("{}: {s}", kind.name()),
                    None => kind.name().to_string(),
                }),
            };
            let invocation_span = trace.invocation;
            trace.span(
                "Invocation",
                Some(invocation_span),
                None,
                invocation_at,
                response_at,
                vec![
                    (
                        "faas.coldstart",
                        Attr::Bool(init.is_some() || restore.is_some()),
                    ),
                    ("flint.provisioned", Attr::Bool(provisioned)),
                ],
                failure,
            );
        }

        let (function_error, payload, destroy, status) = match outcome {
            Outcome::Ok(p) => (None, p, false, None),
            Outcome::Failed {
                kind,
                payload,
                destroy,
                status,
            } => (Some(kind), payload, destroy, status),
        };
        log.line(&request_id, &format!("END RequestId: {request_id}"));
        log.line(
            &request_id,
            &report_line(
                &request_id,
                duration,
                f.memory_mb,
                max_kb,
                StartCost::from((init, restore)),
                status,
            ),
        );
        inst.set_state(InstanceState::Idle);
        if destroy {
            self.pool.discard(lease).await;
        } else {
            self.pool.release(lease);
        }
        let tail = log.take_capture();
        if trace.recording() {
            trace.span(
                "Response",
                None,
                None,
                response_at,
                SystemTime::now(),
                vec![("flint.response_bytes", Attr::Int(payload.len() as i64))],
                None,
            );
        }
        Ok(InvokeResult {
            status_code: 200,
            function_error,
            payload,
            log_tail: req.log_tail.then_some(tail),
            executed_version: f.version.clone(),
            request_id,
        })
    }

    /// Provisioned concurrency's numbers at an invocation: on a
    /// provisioned instance, its config's executions and utilization; on
    /// an on-demand one of a qualifier that has provisioned concurrency, a
    /// spillover.
    fn provisioned_metrics(
        &self,
        f: &Function,
        req: &InvokeRequest,
        lease_id: &str,
        provisioned: bool,
        labels: &Labels,
    ) {
        if provisioned {
            let Some(key) = self.pool.provisioned_key(lease_id) else {
                return;
            };
            let c = self.pool.provisioned_count(&key);
            let allocated = (c.ready + c.busy).max(1) as f64;
            // The gauges are the scrape's; the window keeps the samples.
            self.observe.sample(
                Metric::ProvisionedConcurrentExecutions,
                labels,
                c.busy as f64,
            );
            self.observe.sample(
                Metric::ProvisionedConcurrencyUtilization,
                labels,
                c.busy as f64 / allocated,
            );
        } else if !req.qualifier.is_empty() {
            let c = self
                .pool
                .provisioned_count(&format!("{}:{}", f.name, req.qualifier));
            if c.ready + c.busy + c.starting > 0 {
                self.observe.record(
                    Metric::ProvisionedConcurrencySpilloverInvocations,
                    labels,
                    1.0,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn init_failed(
        &self,
        f: &Function,
        req: &InvokeRequest,
        log: &LogStream,
        request_id: String,
        error_type: &str,
        payload: Vec<u8>,
        init_duration: Option<Duration>,
    ) -> InvokeResult {
        let init_ms = init_duration.map(ms).unwrap_or(0.0);
        log.line(
            "",
            &format!("INIT_REPORT Init Duration: {init_ms:.2} ms\tPhase: init\tStatus: error\tError Type: {error_type}"),
        );
        log.line(
            &request_id,
            &format!("START RequestId: {request_id} Version: {}", f.version),
        );
        log.line(&request_id, &format!("END RequestId: {request_id}"));
        log.line(
            &request_id,
            &format!(
                "{}\tStatus: error\tError Type: {error_type}",
                report_line(
                    &request_id,
                    Duration::ZERO,
                    f.memory_mb,
                    0,
                    StartCost::from((init_duration, None)),
                    None
                )
            ),
        );
        let tail = log.take_capture();
        InvokeResult {
            status_code: 200,
            function_error: Some(FunctionError::Unhandled),
            payload,
            log_tail: req.log_tail.then_some(tail),
            executed_version: f.version.clone(),
            request_id,
        }
    }
}

/// The `Start` span of an instance started for an invocation, with its
/// phases under it: `Boot` or `Restore`, then `Init` where one ran.
fn start_spans(trace: &mut InvocationTrace, inst: &Instance, at: SystemTime, end: SystemTime) {
    if !trace.recording() {
        return;
    }
    let origin = inst.origin();
    let start = trace.span(
        "Start",
        None,
        None,
        at,
        end,
        vec![("flint.start", Attr::Str(origin.name().to_string()))],
        None,
    );
    let init_from = inst
        .pending_init
        .and_then(|d| end.checked_sub(d))
        .map(|t| t.max(at));
    let first = match origin {
        crate::launch::Origin::Boot => "Boot",
        _ => "Restore",
    };
    trace.span(
        first,
        None,
        Some(start),
        at,
        init_from.unwrap_or(end),
        vec![],
        None,
    );
    if let Some(from) = init_from {
        trace.span("Init", None, Some(start), from, end, vec![], None);
    }
}

/// Sends the event and waits for its end.
async fn run(
    inst: &mut Instance,
    f: &Function,
    req: &InvokeRequest,
    request_id: &str,
    arn: String,
    trace_header: String,
) -> (Outcome, Duration, u64) {
    let log = inst.log.clone();
    log.line(
        request_id,
        &format!("START RequestId: {request_id} Version: {}", f.version),
    );
    let timeout = Duration::from_secs(f.timeout_s as u64);
    let started = Instant::now();
    let deadline = started + timeout;
    inst.set_state(InstanceState::Busy);
    if let Err(e) = inst.limit_cpu() {
        tracing::warn!(instance = %inst.id, error = %e, "putting the vCPUs under their quota failed");
    }
    let sent = inst.link().invoke(&Invocation {
        request_id,
        payload: &req.payload,
        timeout,
        invoked_function_arn: arn,
        trace_id: trace_header,
        client_context: &req.client_context,
    });
    if sent.is_err() {
        return (
            crashed(guest::exit_error(request_id, None)),
            started.elapsed(),
            0,
        );
    }
    // Every event ends the invocation: the one it waits for, or one that
    // shows the instance cannot serve it.
    match inst.link().answer(request_id, deadline).await {
        Answer::Response {
            payload,
            max_memory_kb,
        } => (Outcome::Ok(payload), started.elapsed(), max_memory_kb),
        Answer::Error {
            payload,
            max_memory_kb,
            unhandled,
        } => {
            let kind = if unhandled {
                FunctionError::Unhandled
            } else {
                FunctionError::Handled
            };
            // An unhandled failure (an oversize response) leaves the
            // runtime in an unknown state: the environment is reset.
            (
                Outcome::Failed {
                    kind,
                    payload,
                    destroy: unhandled,
                    status: None,
                },
                started.elapsed(),
                max_memory_kb,
            )
        }
        Answer::Ended(End::Exited { exit_code, signal }) => (
            crashed(guest::exit_error(request_id, Some((exit_code, signal)))),
            started.elapsed(),
            inst.rss_kb().min(f.memory_mb as u64 * 1024),
        ),
        Answer::Ended(End::Closed) => (
            crashed(guest::exit_error(request_id, None)),
            started.elapsed(),
            0,
        ),
        Answer::Ended(End::Broken(reason)) => {
            (protocol_error(request_id, &reason), started.elapsed(), 0)
        }
        // Anything else is out of order here: a guest that sends it is
        // not trusted to serve further.
        Answer::OutOfOrder(what) => (protocol_error(request_id, &what), started.elapsed(), 0),
        Answer::TimedOut => {
            let secs = timeout.as_secs_f64();
            log.line(
                request_id,
                &format!(
                    "{} {request_id} Task timed out after {secs:.2} seconds",
                    crate::time::rfc3339(SystemTime::now())
                ),
            );
            (
                Outcome::Failed {
                    kind: FunctionError::Unhandled,
                    payload: guest::timeout_error(request_id, timeout),
                    destroy: true,
                    status: Some("timeout"),
                },
                timeout,
                0,
            )
        }
    }
}

/// The guest broke the agent protocol: the invocation fails as Unhandled
/// with `Sandbox.ProtocolError`, and the instance is stopped.
fn protocol_error(request_id: &str, what: &str) -> Outcome {
    crate::observe::count(&crate::observe::NODE.guest_frames_rejected);
    tracing::warn!(
        request_id,
        what,
        "instance broke the agent protocol; stopping it"
    );
    Outcome::Failed {
        kind: FunctionError::Unhandled,
        payload: guest::protocol_error(request_id, what),
        destroy: true,
        status: Some("error\tError Type: Sandbox.ProtocolError"),
    }
}

fn crashed(payload: Vec<u8>) -> Outcome {
    crate::observe::count(&crate::observe::NODE.vmm_crashes);
    Outcome::Failed {
        kind: FunctionError::Unhandled,
        payload,
        destroy: true,
        status: Some("error\tError Type: Runtime.ExitError"),
    }
}

/// What starting the instance that served an invocation cost, for
/// `REPORT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartCost {
    Warm,
    /// Init ran: `Init Duration`.
    Init(Duration),
    /// Restored from a function snapshot: `Restore Duration`.
    Restore(Duration),
}

impl From<(Option<Duration>, Option<Duration>)> for StartCost {
    fn from((init, restore): (Option<Duration>, Option<Duration>)) -> Self {
        match (init, restore) {
            (_, Some(r)) => StartCost::Restore(r),
            (Some(i), None) => StartCost::Init(i),
            (None, None) => StartCost::Warm,
        }
    }
}

/// Lambda's REPORT line.
pub fn report_line(
    request_id: &str,
    duration: Duration,
    memory_mb: u32,
    max_memory_kb: u64,
    started: StartCost,
    status: Option<&str>,
) -> String {
    let d = ms(duration);
    let billed = d.ceil().max(1.0) as u64;
    let used_mb = max_memory_kb.div_ceil(1024);
    let mut line = format!(
        "REPORT RequestId: {request_id}\tDuration: {d:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {used_mb} MB"
    );
    match started {
        StartCost::Warm => {}
        StartCost::Init(i) => line.push_str(&format!("\tInit Duration: {:.2} ms", ms(i))),
        StartCost::Restore(r) => line.push_str(&format!("\tRestore Duration: {:.2} ms", ms(r))),
    }
    if let Some(s) = status {
        line.push_str(&format!("\tStatus: {s}"));
    }
    line
}

/// Lambda's limit on `ClientContext`: 3,583 bytes of base64.
pub const MAX_CLIENT_CONTEXT: usize = 3583;

/// Checks an invocation's `ClientContext` (base64 of a JSON object, at most
/// [`MAX_CLIENT_CONTEXT`] bytes) and returns the JSON the runtime receives
/// in `Lambda-Runtime-Client-Context`, as AWS's runtime clients expect.
pub fn decode_client_context(b64: &str) -> Result<String, InvokeError> {
    if b64.is_empty() {
        return Ok(String::new());
    }
    if b64.len() > MAX_CLIENT_CONTEXT {
        return Err(InvokeError::ClientContext(format!(
            "must be at most {MAX_CLIENT_CONTEXT} bytes of base64 (got {})",
            b64.len()
        )));
    }
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| InvokeError::ClientContext(format!("is not valid base64: {e}")))?;
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v.to_string()),
        Ok(_) => Err(InvokeError::ClientContext(
            "must be base64 of a JSON object".into(),
        )),
        Err(e) => Err(InvokeError::ClientContext(format!(
            "is not base64 of JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_context_is_base64_of_a_json_object_within_the_limit() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(decode_client_context("").unwrap(), "");
        let ok = decode_client_context(&b64(r#"{"custom": {"k": "v"}}"#)).unwrap();
        assert_eq!(ok, r#"{"custom":{"k":"v"}}"#);
        for bad in [
            "not base64!".to_string(),
            b64("[1, 2]"),
            b64("not json"),
            b64(&format!(r#"{{"k": "{}"}}"#, "x".repeat(3000))),
        ] {
            let e = decode_client_context(&bad).unwrap_err();
            assert!(matches!(e, InvokeError::ClientContext(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn report_line_has_lambda_fields() {
        let l = report_line(
            "r1",
            Duration::from_micros(2_430),
            128,
            39 * 1024 + 1,
            StartCost::Init(Duration::from_micros(132_570)),
            None,
        );
        assert_eq!(
            l,
            "REPORT RequestId: r1\tDuration: 2.43 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\tInit Duration: 132.57 ms"
        );
        let warm = report_line(
            "r2",
            Duration::from_micros(100),
            256,
            0,
            StartCost::Warm,
            Some("timeout"),
        );
        let restored = report_line(
            "r3",
            Duration::from_millis(1),
            128,
            1,
            StartCost::Restore(Duration::from_millis(40)),
            None,
        );
        assert!(
            restored.ends_with("Restore Duration: 40.00 ms"),
            "{restored}"
        );
        assert!(!restored.contains("Init Duration"));
        assert!(!warm.contains("Init Duration"));
        assert!(warm.contains("Billed Duration: 1 ms"));
        assert!(warm.ends_with("Status: timeout"));
    }
}
