//! The poller of a queue-shaped source: it gathers batches within the
//! batching window and the payload limit, filters them, invokes the
//! function with each, and settles every message by the outcome.
//!
//! A source is anything behind [`QueueSource`]: receive with a lease,
//! delete, return unconsumed, and count the backlog. The broker's queues
//! are one ([`super::sqs::BrokerQueue`]); `docs/event-sources.md` says
//! what NATS JetStream or the SQS API would need.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::filter::Filters;
use super::mapping::Mapping;
use super::{Sources, SourcesError, Stats};
use crate::functions::FunctionsError;
use crate::invoke::{InvocationType, InvokeError, InvokeRequest};

/// A record's share of the 6 MB payload is counted with this much room
/// for the envelope.
const PAYLOAD_LIMIT: usize = crate::invoke::MAX_SYNC_PAYLOAD - 1024;
/// An empty queue is polled again after 50 ms, growing to 1 s.
const IDLE_FIRST: Duration = Duration::from_millis(50);
const IDLE_MAX: Duration = Duration::from_secs(1);
/// A broker that fails is tried again after 1 s, growing to 30 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A throttled batch is returned to the queue for this long.
const THROTTLE_DELAY_MS: u64 = 1000;

/// One message as a source hands it out.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub id: String,
    pub handle: String,
    /// The event record, in the source's AWS shape.
    pub record: Value,
    /// What filter patterns are matched against.
    pub filter_view: Value,
}

#[async_trait::async_trait]
pub trait QueueSource: Send + Sync {
    /// Up to `max` (1–10) messages, each leased until its visibility
    /// timeout.
    async fn receive(&self, max: u32) -> Result<Vec<SourceMessage>, SourcesError>;
    /// Consumed: gone for good.
    async fn delete(&self, handles: &[String]) -> Result<(), SourcesError>;
    /// Never given to the function: visible again after `delay_ms`, the
    /// receive not counted.
    async fn release(&self, handles: &[String], delay_ms: u64) -> Result<(), SourcesError>;
    /// Messages waiting or in flight.
    async fn backlog(&self) -> Result<u64, SourcesError>;
}

impl Sources {
    /// Runs one mapping's poller until `stop` turns true.
    pub(super) async fn run_queue(
        self: Arc<Self>,
        m: Mapping,
        src: Arc<dyn QueueSource>,
        stats: Arc<Stats>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let filters = Filters::parse(&m.filters).unwrap_or_default();
        let done = Arc::new(tokio::sync::Notify::new());
        let mut idle = IDLE_FIRST;
        let mut retry = RETRY_FIRST;
        // Batches allowed at once: one at first, one more for every full
        // batch while the backlog lasts (at most one more per 500 ms),
        // halved by a throttle.
        let mut target = 1usize;
        let mut grown = Instant::now();
        let mut throttles = stats.throttles.load(Ordering::Relaxed);
        loop {
            if *stop.borrow() {
                break;
            }
            // A throttle slows the poller down instead of piling up.
            if let Some(wait) = stats.paused() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let t = stats.throttles.load(Ordering::Relaxed);
            if t != throttles {
                throttles = t;
                target = (target / 2).max(1);
            }
            let ceiling = self.poller_limit(&m);
            let limit = target.min(ceiling);
            if stats.in_flight.load(Ordering::SeqCst) >= limit {
                tokio::select! {
                    _ = done.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let batch = match self.gather(&m, &*src, &filters, &stats, &stop).await {
                Ok(b) => {
                    retry = RETRY_FIRST;
                    b
                }
                Err(e) => {
                    tracing::warn!(uuid = %m.uuid, source = %m.event_source_arn, error = %e,
                        retry_s = retry.as_secs(), "an event source cannot be read; it is retried");
                    stats.set_error(&e.to_string());
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = stop.changed() => {}
                }
                idle = (idle * 2).min(IDLE_MAX);
                continue;
            }
            idle = IDLE_FIRST;
            if batch.len() >= m.batch_size as usize
                && target < ceiling
                && grown.elapsed() >= Duration::from_millis(500)
            {
                target += 1;
                grown = Instant::now();
            }
            stats.in_flight.fetch_add(1, Ordering::SeqCst);
            let (this, m2, src2, stats2, done2) = (
                self.clone(),
                m.clone(),
                src.clone(),
                stats.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                this.settle(&m2, &*src2, batch, &stats2).await;
                stats2.in_flight.fetch_sub(1, Ordering::SeqCst);
                done2.notify_one();
            });
        }
        // Stopped: the batches already running settle first.
        while stats.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                _ = done.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// One batch: up to `BatchSize` records, within the batching window
    /// and the payload limit. Records that no filter matches are deleted.
    async fn gather(
        &self,
        m: &Mapping,
        src: &dyn QueueSource,
        filters: &Filters,
        stats: &Stats,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Vec<SourceMessage>, SourcesError> {
        let deadline = Instant::now() + Duration::from_secs(m.window_s.into());
        let mut batch: Vec<SourceMessage> = Vec::new();
        let mut size = 0usize;
        loop {
            let want = (m.batch_size as usize - batch.len()).min(10) as u32;
            let got = src.receive(want).await?;
            let received = got.len();
            let mut over = Vec::new();
            let mut unmatched = Vec::new();
            for msg in got {
                if !filters.matches(&msg.filter_view) {
                    unmatched.push(msg.handle);
                    continue;
                }
                let n = msg.record.to_string().len() + 1;
                if size + n > PAYLOAD_LIMIT || !over.is_empty() {
                    over.push(msg.handle);
                    continue;
                }
                size += n;
                batch.push(msg);
            }
            if !unmatched.is_empty() {
                stats
                    .filtered
                    .fetch_add(unmatched.len() as u64, Ordering::Relaxed);
                src.delete(&unmatched).await?;
            }
            if !over.is_empty() {
                src.release(&over, 0).await?;
                break;
            }
            if *stop.borrow() {
                // Stopped while gathering: nothing of it runs.
                let handles: Vec<String> = batch.drain(..).map(|b| b.handle).collect();
                src.release(&handles, 0).await?;
                break;
            }
            if batch.len() >= m.batch_size as usize || m.window_s == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if received < want as usize {
                tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
            }
        }
        Ok(batch)
    }

    /// Invokes the function with a batch and settles each message.
    async fn settle(
        &self,
        m: &Mapping,
        src: &dyn QueueSource,
        batch: Vec<SourceMessage>,
        stats: &Stats,
    ) {
        let records: Vec<&Value> = batch.iter().map(|b| &b.record).collect();
        let payload = json!({ "Records": records }).to_string().into_bytes();
        let handles: Vec<String> = batch.iter().map(|b| b.handle.clone()).collect();
        let req = InvokeRequest {
            function_name: m.function_name.clone(),
            qualifier: m.qualifier.clone(),
            invocation_type: InvocationType::RequestResponse,
            log_tail: false,
            payload,
            client_context: String::new(),
            trace: None,
        };
        let result = match self.invoker.resolve(&m.function_name, &m.qualifier) {
            Ok(f) => {
                self.invoker
                    .invoke_resolved(f, &req, uuid::Uuid::new_v4().to_string())
                    .await
            }
            Err(e) => Err(e),
        };
        let labels = crate::observe::Labels::qualified(&m.function_name, &m.qualifier);
        let observe = &self.invoker.observe;
        if result.is_ok() {
            observe.record(crate::observe::Metric::EventSourceBatches, &labels, 1.0);
        }
        match result {
            Ok(r) if r.function_error.is_none() => {
                let failed = if m.report_batch_item_failures {
                    batch_item_failures(&r.payload, &batch)
                } else {
                    Ok(Vec::new())
                };
                match failed {
                    Ok(failed) => {
                        let ok: Vec<String> = batch
                            .iter()
                            .filter(|b| !failed.contains(&b.id))
                            .map(|b| b.handle.clone())
                            .collect();
                        stats.batches.fetch_add(1, Ordering::Relaxed);
                        stats.records.fetch_add(ok.len() as u64, Ordering::Relaxed);
                        stats
                            .failed_items
                            .fetch_add(failed.len() as u64, Ordering::Relaxed);
                        if !failed.is_empty() {
                            observe.record(
                                crate::observe::Metric::EventSourceFailedItems,
                                &labels,
                                failed.len() as f64,
                            );
                        }
                        if let Err(e) = src.delete(&ok).await {
                            // They reappear after their visibility timeout:
                            // at least once.
                            stats.set_error(&e.to_string());
                        } else if failed.is_empty() {
                            stats.set_ok();
                        }
                    }
                    Err(why) => {
                        stats.fail_batch(&format!(
                            "PROBLEM: the function's batchItemFailures are invalid ({why}); the whole batch is retried"
                        ));
                    }
                }
            }
            Ok(r) => {
                let kind = r.function_error.map(|e| e.name()).unwrap_or("Unhandled");
                observe.record(
                    crate::observe::Metric::EventSourceFailedItems,
                    &labels,
                    batch.len() as f64,
                );
                stats.fail_batch(&format!("PROBLEM: Function call failed ({kind})"));
            }
            Err(e) => {
                let gone = matches!(
                    e,
                    InvokeError::Functions(
                        FunctionsError::NotFound(_) | FunctionsError::AliasNotFound(_)
                    )
                );
                let throttled = matches!(e, InvokeError::Pool(_));
                stats.set_error(&format!("PROBLEM: {}", crate::error_chain(&e)));
                if throttled {
                    stats.throttles.fetch_add(1, Ordering::Relaxed);
                }
                let delay = if gone { 5_000 } else { THROTTLE_DELAY_MS };
                stats.pause(Duration::from_millis(delay));
                if let Err(e) = src.release(&handles, delay).await {
                    stats.set_error(&e.to_string());
                }
            }
        }
    }
}

/// The messages a function reported as failed (`ReportBatchItemFailures`),
/// or why its answer fails the whole batch.
pub fn batch_item_failures(payload: &[u8], batch: &[SourceMessage]) -> Result<Vec<String>, String> {
    let text = String::from_utf8_lossy(payload);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| "the answer is not JSON".to_string())?;
    let list = match &v {
        Value::Null => return Ok(Vec::new()),
        Value::Object(o) => match o.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("batchItemFailures is not a list".into()),
        },
        _ => return Err("the answer is not an object".into()),
    };
    let mut failed = Vec::new();
    for item in list {
        let id = item
            .get("itemIdentifier")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("an item has no itemIdentifier")?;
        if !batch.iter().any(|b| b.id == id) {
            return Err(format!("{id:?} is not in the batch"));
        }
        failed.push(id.to_string());
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> SourceMessage {
        SourceMessage {
            id: id.into(),
            handle: format!("{id}#1"),
            record: json!({}),
            filter_view: json!({}),
        }
    }

    #[test]
    fn batch_item_failures_as_lambda_reads_them() {
        let batch = [msg("a"), msg("b")];
        let ok: &[&str] = &[
            "",
            "null",
            "{}",
            r#"{"batchItemFailures": null}"#,
            r#"{"batchItemFailures": []}"#,
        ];
        for p in ok {
            assert_eq!(
                batch_item_failures(p.as_bytes(), &batch).unwrap(),
                Vec::<String>::new(),
                "{p}"
            );
        }
        assert_eq!(
            batch_item_failures(
                br#"{"batchItemFailures": [{"itemIdentifier": "b"}]}"#,
                &batch
            )
            .unwrap(),
            vec!["b".to_string()]
        );
        for bad in [
            "not json",
            "\"done\"",
            r#"{"batchItemFailures": "b"}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": "zz"}]}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": ""}]}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": null}]}"#,
            r#"{"batchItemFailures": [{"id": "a"}]}"#,
        ] {
            assert!(
                batch_item_failures(bad.as_bytes(), &batch).is_err(),
                "{bad}"
            );
        }
    }
}
