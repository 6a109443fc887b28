//! Asynchronous invocation: an `Event` invoke is queued durably
//! ([`queue`]) and answered 202; the dispatcher here runs queued events
//! when they fall due, within each function's reserved concurrency, and
//! decides what becomes of each: success, a retry after a function error
//! (1 minute, then 2), a backoff after a throttle or a system error (1 s
//! doubling to 5 minutes), or a drop when retries are exhausted or the event
//! is older than its maximum age. The invocation record goes to the
//! destinations of the function's event invoke configuration in the same
//! transaction that removes the event, so that nothing completed is lost.
//!
//! Layering: `node/` → `events/` → `invoke/`.

mod commit;
mod outbox;
pub mod queue;
mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::functions::event_config::{parse_destination, Destination, EventInvokeConfig};
use crate::functions::{FunctionStore, FunctionsError, LATEST};
use crate::invoke::{InvocationType, InvokeError, InvokeRequest, InvokeResult, Invoker};
use crate::observe::{Labels, Metric};

pub use queue::{
    BusRecord, DroppedEvent, EventQueue, Finish, NewEvent, OutboxMessage, QueuedEvent,
};
pub use record::{Condition, LastResponse};

use commit::{spawn_committer, Accepting};

/// Lambda's limit on an asynchronous event, 1 MB.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Function errors are retried after 1 minute, then 2.
const RETRY_DELAY_MS: i64 = 60_000;
/// Throttles and system errors back off from 1 s to 5 minutes.
const BACKOFF_FIRST_MS: i64 = 1_000;
const BACKOFF_MAX_MS: i64 = 300_000;
/// The `n`th wait (from 1) of a backoff from 1 s, doubling up to `max_ms`.
fn backoff_ms(n: u32, max_ms: i64) -> i64 {
    BACKOFF_FIRST_MS
        .saturating_mul(1 << n.saturating_sub(1).min(20))
        .min(max_ms)
}

/// Records on an event bus are kept this long for subscribers to catch up.
pub const RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "Request must be smaller than {limit} bytes for an asynchronous invocation (got {size})"
    )]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("the node's event queue cannot take the event: its disk is full; the event was not accepted")]
    DiskFull,
    #[error("the event queue's store failed")]
    Store(#[source] rusqlite::Error),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("the event queue's commit failed: {0}")]
    Commit(String),
}

impl From<rusqlite::Error> for EventsError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                EventsError::DiskFull
            }
            _ => EventsError::Store(e),
        }
    }
}

/// How the dispatcher runs.
#[derive(Debug, Clone, Copy)]
pub struct EventSettings {
    /// Events running at once, over all functions.
    pub concurrency: usize,
    /// Multiplies every delay and age of the async clock (retry delays,
    /// backoffs, maximum event age). 1 for users; tests shrink it.
    pub time_scale: f64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            time_scale: 1.0,
        }
    }
}

/// A function's queue as `flintctl` shows it.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    pub function: String,
    pub waiting: u64,
    pub in_flight: u64,
    pub oldest_age_ms: u64,
    pub received: u64,
    pub succeeded: u64,
    pub dropped: u64,
    pub last_event_age_ms: u64,
    pub recent_drops: Vec<DroppedEvent>,
    /// Destination and dead-letter messages not yet written to the broker.
    pub undelivered: u64,
}

#[derive(Default)]
struct Running {
    ids: HashMap<i64, String>,
    per_function: HashMap<String, usize>,
    /// AsyncEventAge of the last event taken, per function.
    last_age_ms: HashMap<String, u64>,
    /// Events whose outcome could not be stored (a full disk): left alone
    /// until then, so that they do not run again and again meanwhile.
    held: HashMap<i64, std::time::Instant>,
}

/// How long an event whose outcome could not be stored is left alone.
const HOLD: Duration = Duration::from_secs(5);

pub struct Events {
    queue: Arc<EventQueue>,
    committer: std::sync::mpsc::Sender<Accepting>,
    invoker: Arc<Invoker>,
    store: Arc<FunctionStore>,
    broker: Option<Arc<crate::broker::Broker>>,
    settings: EventSettings,
    wake: tokio::sync::Notify,
    outbox_wake: tokio::sync::Notify,
    written: tokio::sync::watch::Sender<u64>,
    running: Mutex<Running>,
}

pub use crate::time::now_ms;

/// The stored key of an invocation's qualifier.
fn config_key(qualifier: &str) -> &str {
    if qualifier.is_empty() {
        LATEST
    } else {
        qualifier
    }
}

impl Events {
    pub fn open(
        path: &std::path::Path,
        invoker: Arc<Invoker>,
        store: Arc<FunctionStore>,
        broker: Option<Arc<crate::broker::Broker>>,
        settings: EventSettings,
    ) -> Result<Self, EventsError> {
        let queue = Arc::new(EventQueue::open(path)?);
        Ok(Self {
            committer: spawn_committer(queue.clone()),
            queue,
            invoker,
            store,
            broker,
            settings,
            wake: tokio::sync::Notify::new(),
            outbox_wake: tokio::sync::Notify::new(),
            written: tokio::sync::watch::channel(0).0,
            running: Mutex::new(Running::default()),
        })
    }

    pub fn broker(&self) -> Option<&Arc<crate::broker::Broker>> {
        self.broker.as_ref()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scaled(&self, ms: i64) -> i64 {
        (ms as f64 * self.settings.time_scale).round() as i64
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EventQueue) -> Result<T, EventsError> + Send + 'static,
    ) -> Result<T, EventsError> {
        let q = self.queue.clone();
        tokio::task::spawn_blocking(move || f(&q))
            .await
            .map_err(|e| EventsError::Join(e.to_string()))?
    }

    /// Checks an `Event` invocation and queues it; when this returns the
    /// event is on disk and the caller hears 202 with its request id.
    pub async fn accept(&self, req: InvokeRequest) -> Result<InvokeResult, EventsError> {
        if req.payload.len() > MAX_ASYNC_PAYLOAD {
            return Err(EventsError::PayloadTooLarge {
                size: req.payload.len(),
                limit: MAX_ASYNC_PAYLOAD,
            });
        }
        // The function and qualifier must exist now; the version an alias
        // routes to is picked when the event runs.
        let f = self.invoker.resolve(&req.function_name, &req.qualifier)?;
        let event = NewEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            function: f.name.clone(),
            qualifier: req.qualifier.clone(),
            payload: req.payload,
            received_ms: now_ms(),
        };
        let request_id = event.request_id.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.committer
            .send((event, reply))
            .map_err(|_| EventsError::Commit("the committer has stopped".into()))?;
        answer
            .await
            .map_err(|_| EventsError::Commit("the committer has stopped".into()))??;
        self.invoker.observe.record(
            Metric::AsyncEventsReceived,
            &Labels::qualified(&f.name, &req.qualifier),
            1.0,
        );
        self.wake.notify_one();
        Ok(InvokeResult {
            status_code: 202,
            function_error: None,
            payload: Vec::new(),
            log_tail: None,
            executed_version: String::new(),
            request_id,
        })
    }

    /// Queues the event of a schedule's firing at `fire_ms` (its request
    /// id is derived from the schedule and the time), unless it already
    /// fired then: answers whether it was queued.
    pub async fn fire_schedule(
        &self,
        schedule: &str,
        fire_ms: i64,
        function: &str,
        qualifier: &str,
        payload: Vec<u8>,
    ) -> Result<bool, EventsError> {
        if payload.len() > MAX_ASYNC_PAYLOAD {
            return Err(EventsError::PayloadTooLarge {
                size: payload.len(),
                limit: MAX_ASYNC_PAYLOAD,
            });
        }
        let event = NewEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            function: function.to_string(),
            qualifier: qualifier.to_string(),
            payload,
            received_ms: now_ms(),
        };
        let schedule = schedule.to_string();
        let queued = self
            .blocking(move |q| q.fire_schedule(&schedule, fire_ms, &event))
            .await?;
        if queued {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// When a schedule last fired, and how often.
    pub async fn schedule_fired(&self, schedule: &str) -> Result<Option<(i64, u64)>, EventsError> {
        let schedule = schedule.to_string();
        self.blocking(move |q| q.schedule_fired(&schedule)).await
    }

    pub async fn forget_schedule(&self, schedule: &str) -> Result<(), EventsError> {
        let schedule = schedule.to_string();
        self.blocking(move |q| q.forget_schedule(&schedule)).await
    }

    /// Runs queued events as they fall due, and writes what they leave
    /// for the broker, for ever.
    pub async fn run(self: Arc<Self>) {
        tokio::join!(self.clone().run_outbox(), self.run_queue());
    }

    async fn run_queue(self: Arc<Self>) {
        loop {
            let wait = match self.dispatch().await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event queue failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Starts what is due and can run; returns how long to sleep.
    async fn dispatch(self: &Arc<Self>) -> Result<Duration, EventsError> {
        let caps: HashMap<String, usize> = self
            .store
            .reserved()
            .map_err(InvokeError::from)?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(f, n)| (f, n as usize))
            .collect();
        let (skip_ids, skip_functions, free) = {
            let mut r = self.running();
            let now = std::time::Instant::now();
            r.held.retain(|_, until| *until > now);
            let full: Vec<String> = r
                .per_function
                .iter()
                .filter(|(f, n)| caps.get(*f).is_some_and(|c| **n >= *c))
                .map(|(f, _)| f.clone())
                .collect();
            let ids: Vec<i64> = r.ids.keys().chain(r.held.keys()).copied().collect();
            (
                ids,
                full,
                self.settings.concurrency.saturating_sub(r.ids.len()),
            )
        };
        if free == 0 {
            return Ok(Duration::from_secs(1));
        }
        let now = now_ms();
        let (ids, fns) = (skip_ids.clone(), skip_functions.clone());
        let due = self
            .blocking(move |q| q.due(now, &ids, &fns, free * 4))
            .await?;
        let mut started = 0;
        let mut capped = false;
        for ev in due {
            if started == free {
                break;
            }
            {
                let mut r = self.running();
                let n = r.per_function.get(&ev.function).copied().unwrap_or(0);
                if caps.get(&ev.function).is_some_and(|c| n >= *c) {
                    capped = true;
                    continue;
                }
                r.ids.insert(ev.id, ev.function.clone());
                *r.per_function.entry(ev.function.clone()).or_default() += 1;
                r.last_age_ms
                    .insert(ev.function.clone(), (now - ev.received_ms).max(0) as u64);
            }
            started += 1;
            let me = self.clone();
            tokio::spawn(async move { me.attempt(ev).await });
        }
        // Full, or rows of a function that reached its reservation hid
        // others: look again (that function is now left out of the query).
        if started == free || capped {
            return Ok(Duration::ZERO);
        }
        let ids: Vec<i64> = {
            let r = self.running();
            r.ids.keys().chain(r.held.keys()).copied().collect()
        };
        let next = self.blocking(move |q| q.next_due(&ids)).await?;
        Ok(match next {
            // Due ones left over belong to functions at their limit: a
            // finishing event wakes the loop.
            Some(d) if d <= now => Duration::from_secs(1),
            Some(d) => Duration::from_millis((d - now_ms()).clamp(1, 1000) as u64),
            None => Duration::from_secs(1),
        })
    }

    async fn attempt(self: Arc<Self>, ev: QueuedEvent) {
        let id = ev.id;
        let function = ev.function.clone();
        let failed = self.process(ev).await.err();
        {
            let mut r = self.running();
            if let Some(e) = failed {
                // The event stays queued as it was and runs again later.
                tracing::warn!(%function, error = %e, "an asynchronous event's outcome could not be stored; it runs again in 5 s");
                r.held.insert(id, std::time::Instant::now() + HOLD);
            }
            r.ids.remove(&id);
            if let Some(n) = r.per_function.get_mut(&function) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.per_function.remove(&function);
                }
            }
        }
        self.wake.notify_one();
    }

    fn config(&self, ev: &QueuedEvent) -> EventInvokeConfig {
        let key = config_key(&ev.qualifier);
        match self.store.get_event_config(&ev.function, key) {
            Ok(Some(c)) => c,
            Ok(None) => EventInvokeConfig::defaults(&ev.function, key),
            Err(e) => {
                tracing::warn!(function = %ev.function, error = %e, "reading the event invoke configuration failed; using the defaults");
                EventInvokeConfig::defaults(&ev.function, key)
            }
        }
    }

    async fn process(&self, ev: QueuedEvent) -> Result<(), EventsError> {
        let cfg = self.config(&ev);
        let now = now_ms();
        let expiry = ev.received_ms + self.scaled(cfg.max_age_s() as i64 * 1000);
        if now >= expiry {
            let last = ev.last.as_deref().and_then(LastResponse::parse);
            return self
                .fail(&ev, &cfg, Condition::EventAgeExceeded, ev.attempts, last)
                .await;
        }
        let req = InvokeRequest {
            function_name: ev.function.clone(),
            qualifier: ev.qualifier.clone(),
            invocation_type: InvocationType::RequestResponse,
            log_tail: false,
            payload: ev.payload.clone(),
            client_context: String::new(),
            trace: None,
        };
        self.invoker.observe.record(
            Metric::AsyncEventAge,
            &Labels::qualified(&ev.function, &ev.qualifier),
            (now - ev.received_ms).max(0) as f64 / 1000.0,
        );
        let result = match self.invoker.resolve(&ev.function, &ev.qualifier) {
            Ok(f) => {
                self.invoker
                    .invoke_resolved(f, &req, ev.request_id.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let count = ev.attempts + 1;
        match result {
            Ok(r) if r.function_error.is_none() => {
                let response = LastResponse::of(&r);
                let mut finish = self.deliver(&ev, &cfg, Condition::Success, count, Some(response));
                finish.succeeded = true;
                self.finish(ev, finish).await
            }
            Ok(r) => {
                let response = LastResponse::of(&r);
                if count > cfg.retries() {
                    return self
                        .fail(
                            &ev,
                            &cfg,
                            Condition::RetriesExhausted,
                            count,
                            Some(response),
                        )
                        .await;
                }
                let due = (now_ms() + self.scaled(RETRY_DELAY_MS * count as i64)).min(expiry);
                tracing::info!(function = %ev.function, request_id = %ev.request_id, attempt = count,
                    error = ?r.function_error, "an asynchronous event failed; it is retried");
                let last = response.to_json();
                self.blocking(move |q| q.retry(ev.id, due, count, ev.backoffs, Some(&last)))
                    .await
            }
            Err(InvokeError::Functions(
                e @ (FunctionsError::NotFound(_) | FunctionsError::AliasNotFound(_)),
            )) => {
                tracing::warn!(function = %ev.function, request_id = %ev.request_id, error = %e,
                    "an asynchronous event's function is gone; the event is dropped");
                self.invoker.observe.record(
                    Metric::AsyncEventsDropped,
                    &Labels::qualified(&ev.function, &ev.qualifier),
                    1.0,
                );
                let finish = Finish {
                    dropped: Some("FunctionNotFound".into()),
                    ..Finish::default()
                };
                self.finish(ev, finish).await
            }
            Err(e) => {
                // A throttle or a system error: the invocation never ran.
                let backoffs = ev.backoffs + 1;
                let delay = backoff_ms(backoffs, BACKOFF_MAX_MS);
                let due = (now_ms() + self.scaled(delay)).min(expiry);
                tracing::debug!(function = %ev.function, request_id = %ev.request_id, error = %e,
                    delay_ms = delay, "an asynchronous event waits");
                self.blocking(move |q| q.retry(ev.id, due, ev.attempts, backoffs, None))
                    .await
            }
        }
    }

    async fn fail(
        &self,
        ev: &QueuedEvent,
        cfg: &EventInvokeConfig,
        condition: Condition,
        count: u32,
        last: Option<LastResponse>,
    ) -> Result<(), EventsError> {
        tracing::warn!(function = %ev.function, request_id = %ev.request_id,
            condition = condition.name(), invocations = count, "an asynchronous event is dropped");
        self.invoker.observe.record(
            Metric::AsyncEventsDropped,
            &Labels::qualified(&ev.function, &ev.qualifier),
            1.0,
        );
        let dead_letter = self.dead_letter(ev, condition, last.as_ref());
        let mut finish = self.deliver(ev, cfg, condition, count, last);
        finish.outbox.extend(dead_letter);
        finish.dropped = Some(condition.name().to_string());
        self.finish(ev.clone(), finish).await
    }

    /// The record and where it goes.
    fn deliver(
        &self,
        ev: &QueuedEvent,
        cfg: &EventInvokeConfig,
        condition: Condition,
        count: u32,
        last: Option<LastResponse>,
    ) -> Finish {
        let mut finish = Finish::default();
        let target = match condition {
            Condition::Success => cfg.on_success.as_deref(),
            _ => cfg.on_failure.as_deref(),
        };
        let Some(target) = target else {
            return finish;
        };
        let (region, account) = self.invoker.region_account();
        let arn = format!(
            "arn:aws:lambda:{region}:{account}:function:{}:{}",
            ev.function,
            config_key(&ev.qualifier)
        );
        let record = record::invocation_record(ev, &arn, condition, count, last.as_ref());
        match parse_destination(target, region, account) {
            Ok(Destination::EventBus(bus)) => finish.records.push((bus, record)),
            Ok(Destination::Queue(queue)) => finish.outbox.push(OutboxMessage {
                function: ev.function.clone(),
                queue,
                body: record,
                ..OutboxMessage::default()
            }),
            Ok(Destination::Function { name, qualifier }) => finish.follow_ups.push(NewEvent {
                request_id: uuid::Uuid::new_v4().to_string(),
                function: name,
                qualifier,
                payload: record.into_bytes(),
                received_ms: now_ms(),
            }),
            Err(e) => {
                tracing::warn!(function = %ev.function, destination = target, error = %e,
                "an invocation record's destination is not valid; the record is not sent");
                self.invoker.observe.record(
                    Metric::DestinationDeliveryFailures,
                    &Labels::qualified(&ev.function, &ev.qualifier),
                    1.0,
                );
            }
        }
        finish
    }

    async fn finish(&self, ev: QueuedEvent, finish: Finish) -> Result<(), EventsError> {
        let wrote = !finish.records.is_empty();
        let more = !finish.follow_ups.is_empty();
        let outbox = !finish.outbox.is_empty();
        self.blocking(move |q| q.finish(&ev, &finish, now_ms()))
            .await?;
        if wrote {
            self.written.send_modify(|n| *n += 1);
        }
        if more {
            self.wake.notify_one();
        }
        if outbox {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// Whether an event is still queued (waiting or running).
    pub async fn find(&self, request_id: &str) -> Result<bool, EventsError> {
        let id = request_id.to_string();
        Ok(self.blocking(move |q| q.find(&id)).await?.is_some())
    }

    /// Records on an event bus after a cursor, oldest first.
    pub async fn records_after(
        &self,
        bus: String,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusRecord>, EventsError> {
        self.blocking(move |q| q.records_after(&bus, after, limit))
            .await
    }

    /// Changes each time records are written.
    pub fn records_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Removes records older than [`RECORD_RETENTION`].
    pub async fn prune(&self) -> Result<usize, EventsError> {
        let before = now_ms() - RECORD_RETENTION.as_millis() as i64;
        self.blocking(move |q| q.prune_records(before)).await
    }

    /// The queue per function.
    pub async fn queues(&self) -> Result<Vec<QueueView>, EventsError> {
        let counts = self.blocking(|q| q.counts()).await?;
        let undelivered: HashMap<String, u64> = self
            .blocking(|q| q.outbox_waiting())
            .await?
            .into_iter()
            .collect();
        let now = now_ms();
        let mut views = Vec::new();
        for c in counts {
            let function = c.function.clone();
            let recent_drops = self.blocking(move |q| q.dropped(&function, 5)).await?;
            let r = self.running();
            let in_flight = r.per_function.get(&c.function).copied().unwrap_or(0) as u64;
            views.push(QueueView {
                waiting: c.waiting.saturating_sub(in_flight),
                in_flight,
                oldest_age_ms: c
                    .oldest_received_ms
                    .map(|t| (now - t).max(0) as u64)
                    .unwrap_or(0),
                received: c.received,
                succeeded: c.succeeded,
                dropped: c.dropped,
                last_event_age_ms: r.last_age_ms.get(&c.function).copied().unwrap_or(0),
                recent_drops,
                undelivered: undelivered.get(&c.function).copied().unwrap_or(0),
                function: c.function,
            });
        }
        Ok(views)
    }
}
