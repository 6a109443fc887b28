//! The poller of a stream-shaped source: one reader per shard, in order.
//!
//! A reader takes the records after its checkpoint, skips those no filter
//! matches, and invokes the function with Lambda's Kinesis event. With a
//! `ParallelizationFactor` above 1, a chunk's records are split by
//! partition key into that many lanes that run at once, each in order.
//! A failed batch is retried (bisected when asked) until
//! `MaximumRetryAttempts` or `MaximumRecordAgeInSeconds`; then its metadata
//! goes to the on-failure queue and the shard moves on. The checkpoint is
//! stored after every settled chunk and never passes a record that was not
//! processed or given up on. Tumbling windows pass a state from one
//! invocation to the next within a window, stored with the checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::filter::Filters;
use super::mapping::{Checkpoint, Mapping};
use super::{Sources, SourcesError, Stats};
use crate::broker::{Broker, Position, StreamRecord};
use crate::functions::FunctionsError;
use crate::invoke::{InvocationType, InvokeError, InvokeRequest};

const PAYLOAD_LIMIT: usize = crate::invoke::MAX_SYNC_PAYLOAD - 4096;
const IDLE_FIRST: Duration = Duration::from_millis(50);
const IDLE_MAX: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A stream on the broker, as the poller reads it.
#[async_trait::async_trait]
pub trait StreamSource: Send + Sync {
    async fn shards(&self) -> Result<Vec<String>, SourcesError>;
    async fn start(&self, shard: &str, position: Position) -> Result<Option<String>, SourcesError>;
    async fn read(
        &self,
        shard: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<StreamRecord>, SourcesError>;
    async fn behind(&self, shard: &str, after: Option<&str>) -> Result<u64, SourcesError>;
    /// Writes an on-failure record to a queue.
    async fn send_failure(&self, queue: &str, body: &str) -> Result<(), SourcesError>;
}

pub struct BrokerStream {
    pub broker: Arc<Broker>,
    pub name: String,
}

#[async_trait::async_trait]
impl StreamSource for BrokerStream {
    async fn shards(&self) -> Result<Vec<String>, SourcesError> {
        let info = self.broker.describe_stream(&self.name).await?;
        Ok((0..info.shards)
            .map(crate::broker::stream::shard_id)
            .collect())
    }

    async fn start(&self, shard: &str, position: Position) -> Result<Option<String>, SourcesError> {
        Ok(self
            .broker
            .starting_point(&self.name, shard, position)
            .await?)
    }

    async fn read(
        &self,
        shard: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<StreamRecord>, SourcesError> {
        Ok(self
            .broker
            .get_records(&self.name, shard, after, max)
            .await?)
    }

    async fn behind(&self, shard: &str, after: Option<&str>) -> Result<u64, SourcesError> {
        Ok(self.broker.records_behind(&self.name, shard, after).await?)
    }

    async fn send_failure(&self, queue: &str, body: &str) -> Result<(), SourcesError> {
        self.broker
            .send_message(queue, body, &Default::default(), &Default::default())
            .await?;
        Ok(())
    }
}

/// A record as Lambda's Kinesis event has it.
pub fn kinesis_record(r: &StreamRecord, arn: &str, region: &str) -> Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": r.partition_key,
            "sequenceNumber": r.sequence_number,
            "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
            "approximateArrivalTimestamp": r.arrival_ms as f64 / 1000.0,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{}:{}", r.shard_id, r.sequence_number),
        "eventName": "aws:kinesis:record",
        "awsRegion": region,
        "eventSourceARN": arn,
    })
}

/// What filter patterns see of a stream record: `data` decoded and parsed
/// when it is JSON (Lambda's rule for Kinesis).
fn filter_view(record: &Value, data: &[u8]) -> Value {
    let mut v = record.clone();
    if let Ok(parsed) = serde_json::from_slice::<Value>(data) {
        v["data"] = parsed;
    }
    v
}

/// How one invocation of a batch ended.
enum Attempt {
    Done,
    /// Records from this index on failed (batch item failures), or all.
    Failed {
        from: usize,
        why: String,
    },
    /// Throttled or not started: try again without counting.
    Again(String),
}

struct Shard<'a> {
    sources: &'a Sources,
    m: &'a Mapping,
    src: &'a dyn StreamSource,
    stats: &'a Stats,
    shard: String,
    region: String,
}

impl Sources {
    pub(super) async fn run_stream(
        self: Arc<Self>,
        m: Mapping,
        src: Arc<dyn StreamSource>,
        stats: Arc<Stats>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut retry = RETRY_FIRST;
        let shards = loop {
            match src.shards().await {
                Ok(s) => break s,
                Err(e) => {
                    stats.set_error(&e.to_string());
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        return;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        };
        let mut tasks = Vec::new();
        for shard in shards {
            let (this, m, src, stats, stop) = (
                self.clone(),
                m.clone(),
                src.clone(),
                stats.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                this.run_shard(&m, &*src, &stats, shard, stop).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn run_shard(
        &self,
        m: &Mapping,
        src: &dyn StreamSource,
        stats: &Stats,
        shard: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let (region, _) = self.region_account();
        let s = Shard {
            sources: self,
            m,
            src,
            stats,
            shard,
            region,
        };
        let filters = Filters::parse(&m.filters).unwrap_or_default();
        let mut idle = IDLE_FIRST;
        let mut retry = RETRY_FIRST;
        let mut cp: Option<Checkpoint> = None;
        while !*stop.borrow() {
            let result = async {
                let current = match &cp {
                    Some(c) => c.clone(),
                    None => s.load_checkpoint().await?,
                };
                cp = Some(current.clone());
                s.step(&filters, current, &stop).await
            }
            .await;
            let wait = match result {
                Ok(Some(next)) => {
                    cp = Some(next);
                    retry = RETRY_FIRST;
                    idle = IDLE_FIRST;
                    continue;
                }
                Ok(None) => {
                    retry = RETRY_FIRST;
                    let w = idle;
                    idle = (idle * 2).min(IDLE_MAX);
                    w
                }
                Err(e) => {
                    tracing::warn!(uuid = %m.uuid, shard = %s.shard, error = %e,
                        retry_s = retry.as_secs(), "a stream shard cannot be read; it is retried");
                    stats.set_error(&e.to_string());
                    // Read the stored checkpoint again: what is in memory
                    // may be ahead of what was saved.
                    cp = None;
                    let w = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

impl Shard<'_> {
    async fn load_checkpoint(&self) -> Result<Checkpoint, SourcesError> {
        if let Some(cp) = self.sources.store.checkpoint(&self.m.uuid, &self.shard)? {
            return Ok(cp);
        }
        let position = match self.m.starting_position.as_deref() {
            Some("LATEST") => Position::Latest,
            Some("AT_TIMESTAMP") => {
                Position::AtTimestamp(self.m.starting_position_timestamp_ms.unwrap_or(0))
            }
            _ => Position::TrimHorizon,
        };
        let cp = Checkpoint {
            sequence: self.src.start(&self.shard, position).await?,
            ..Checkpoint::default()
        };
        // Fixed at the first start: LATEST means "from when the mapping
        // began", not "from each restart".
        self.sources
            .store
            .save_checkpoint(&self.m.uuid, &self.shard, &cp)?;
        Ok(cp)
    }

    fn save(&self, cp: &Checkpoint) -> Result<(), SourcesError> {
        self.sources
            .store
            .save_checkpoint(&self.m.uuid, &self.shard, cp)
    }

    /// One chunk: read, filter, process, checkpoint. `None` when there was
    /// nothing to read (and no window to close).
    async fn step(
        &self,
        filters: &Filters,
        cp: Checkpoint,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>, SourcesError> {
        let m = self.m;
        let deadline = Instant::now() + Duration::from_secs(m.window_s.into());
        let mut records = Vec::new();
        let mut size = 0;
        let mut after = cp.sequence.clone();
        loop {
            let want = m.batch_size as usize - records.len();
            let got = self.src.read(&self.shard, after.as_deref(), want).await?;
            let n = got.len();
            for r in got {
                let len = r.data.len() * 4 / 3 + r.partition_key.len() + 400;
                if size + len > PAYLOAD_LIMIT && !records.is_empty() {
                    break;
                }
                size += len;
                after = Some(r.sequence_number.clone());
                records.push(r);
            }
            if records.len() >= m.batch_size as usize
                || size >= PAYLOAD_LIMIT / 2
                || m.window_s == 0
                || Instant::now() >= deadline
                || *stop.borrow()
            {
                break;
            }
            if n < want {
                tokio::time::sleep(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                )
                .await;
            }
        }
        if m.tumbling_window_s > 0 {
            return self.step_window(filters, cp, records).await;
        }
        if records.is_empty() {
            return Ok(None);
        }
        let last = records.last().map(|r| r.sequence_number.clone());
        let matched = self.filter(filters, records);
        self.run_lanes(matched).await?;
        let next = Checkpoint {
            sequence: last,
            ..cp
        };
        self.save(&next)?;
        Ok(Some(next))
    }

    fn filter(&self, filters: &Filters, records: Vec<StreamRecord>) -> Vec<StreamRecord> {
        if filters.is_empty() {
            return records;
        }
        let before = records.len();
        let kept: Vec<StreamRecord> = records
            .into_iter()
            .filter(|r| {
                let rec = kinesis_record(r, &self.m.event_source_arn, &self.region);
                filters.matches(&filter_view(&rec["kinesis"], &r.data))
                    || filters.matches(&filter_view(&rec, &r.data))
            })
            .collect();
        self.stats
            .filtered
            .fetch_add((before - kept.len()) as u64, Ordering::Relaxed);
        kept
    }

    /// Splits a chunk by partition key into `ParallelizationFactor` lanes
    /// and processes them at once, each in order.
    async fn run_lanes(&self, records: Vec<StreamRecord>) -> Result<(), SourcesError> {
        let factor = self.m.parallelization_factor.max(1) as usize;
        let mut lanes: Vec<Vec<StreamRecord>> = vec![Vec::new(); factor];
        for r in records {
            let lane = crate::broker::stream::shard_for(&r.partition_key, factor as u32) as usize;
            lanes[lane].push(r);
        }
        let runs = lanes
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|l| self.process(l, None));
        for r in futures_join(runs).await {
            r?;
        }
        Ok(())
    }

    /// Processes records in order until each is done or given up on.
    /// Answers the window state the function returned (tumbling windows).
    async fn process(
        &self,
        records: Vec<StreamRecord>,
        window: Option<(i64, i64, Value, bool)>,
    ) -> Result<Option<Value>, SourcesError> {
        let mut pending: VecDeque<Vec<StreamRecord>> = VecDeque::from([records]);
        let mut state = window.as_ref().map(|w| w.2.clone());
        while let Some(batch) = pending.pop_front() {
            let mut batch = batch;
            let mut attempts: i64 = 0;
            let mut again = RETRY_FIRST;
            let labels =
                crate::observe::Labels::qualified(&self.m.function_name, &self.m.qualifier);
            let observe = &self.sources.invoker.observe;
            if let Some(last) = batch.last() {
                observe.record(
                    crate::observe::Metric::IteratorAge,
                    &labels,
                    (crate::time::now_ms() - last.arrival_ms).max(0) as f64 / 1000.0,
                );
            }
            loop {
                let w = window
                    .as_ref()
                    .map(|(s, e, _, fin)| (*s, *e, state.clone().unwrap_or(json!({})), *fin));
                let (attempt, new_state) = self.invoke(&batch, w).await;
                match attempt {
                    Attempt::Done => {
                        observe.record(crate::observe::Metric::EventSourceBatches, &labels, 1.0);
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .records
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        self.stats.set_ok();
                        if new_state.is_some() {
                            state = new_state;
                        }
                        break;
                    }
                    Attempt::Again(why) => {
                        self.stats.set_error(&why);
                        self.stats.throttles.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(again).await;
                        again = (again * 2).min(RETRY_MAX);
                    }
                    Attempt::Failed { from, why } => {
                        observe.record(crate::observe::Metric::EventSourceBatches, &labels, 1.0);
                        observe.record(
                            crate::observe::Metric::EventSourceFailedItems,
                            &labels,
                            batch.len().saturating_sub(from) as f64,
                        );
                        self.stats.fail_batch(&why);
                        // Records before the first failed item are done.
                        if from > 0 {
                            self.stats.records.fetch_add(from as u64, Ordering::Relaxed);
                            batch.drain(..from);
                        }
                        attempts += 1;
                        let m = self.m;
                        let oldest = batch.first().map(|r| r.arrival_ms).unwrap_or(0);
                        let too_old = m.max_record_age_s >= 0
                            && crate::time::now_ms() - oldest > m.max_record_age_s * 1000;
                        let exhausted =
                            m.max_retry_attempts >= 0 && attempts > m.max_retry_attempts;
                        if too_old || exhausted {
                            let condition = if too_old {
                                "RecordAgeExceeded"
                            } else {
                                "RetryAttemptsExhausted"
                            };
                            self.give_up(&batch, condition, attempts, &why).await?;
                            break;
                        }
                        if m.bisect_on_error && batch.len() > 1 {
                            let second = batch.split_off(batch.len() / 2);
                            pending.push_front(second);
                            // The halves start their count afresh, as
                            // Lambda's do.
                            attempts = 0;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(state)
    }

    /// Invokes the function once with a batch.
    async fn invoke(
        &self,
        batch: &[StreamRecord],
        window: Option<(i64, i64, Value, bool)>,
    ) -> (Attempt, Option<Value>) {
        let m = self.m;
        let records: Vec<Value> = batch
            .iter()
            .map(|r| kinesis_record(r, &m.event_source_arn, &self.region))
            .collect();
        let mut event = json!({ "Records": records });
        if let Some((start, end, state, fin)) = &window {
            event["window"] = json!({
                "start": crate::time::rfc3339_ms(*start),
                "end": crate::time::rfc3339_ms(*end),
            });
            event["state"] = state.clone();
            event["shardId"] = json!(self.shard);
            event["eventSourceARN"] = json!(m.event_source_arn);
            event["isFinalInvokeForWindow"] = json!(fin);
            event["isWindowTerminatedEarly"] = json!(false);
        }
        let req = InvokeRequest {
            function_name: m.function_name.clone(),
            qualifier: m.qualifier.clone(),
            invocation_type: InvocationType::RequestResponse,
            log_tail: false,
            payload: event.to_string().into_bytes(),
            client_context: String::new(),
            trace: None,
        };
        let result = match self.sources.invoker.resolve(&m.function_name, &m.qualifier) {
            Ok(f) => {
                self.sources
                    .invoker
                    .invoke_resolved(f, &req, uuid::Uuid::new_v4().to_string())
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(r) if r.function_error.is_none() => {
                let answer: Value = serde_json::from_slice(&r.payload).unwrap_or(Value::Null);
                let state = answer.get("state").cloned();
                if !m.report_batch_item_failures {
                    return (Attempt::Done, state);
                }
                match first_failed(&answer, batch) {
                    Ok(None) => (Attempt::Done, state),
                    Ok(Some(i)) => (
                        Attempt::Failed {
                            from: i,
                            why: "PROBLEM: the function reported batch item failures".into(),
                        },
                        None,
                    ),
                    Err(why) => (
                        Attempt::Failed {
                            from: 0,
                            why: format!(
                                "PROBLEM: the function's batchItemFailures are invalid ({why})"
                            ),
                        },
                        None,
                    ),
                }
            }
            Ok(r) => {
                let kind = r.function_error.map(|e| e.name()).unwrap_or("Unhandled");
                (
                    Attempt::Failed {
                        from: 0,
                        why: format!("PROBLEM: Function call failed ({kind})"),
                    },
                    None,
                )
            }
            Err(
                e @ InvokeError::Functions(
                    FunctionsError::NotFound(_) | FunctionsError::AliasNotFound(_),
                ),
            ) => (Attempt::Again(format!("PROBLEM: {e}")), None),
            Err(e) => (
                Attempt::Again(format!("PROBLEM: {}", crate::error_chain(&e))),
                None,
            ),
        }
    }

    /// A batch given up on: its metadata to the on-failure queue (retried
    /// until written: the shard waits rather than lose it).
    async fn give_up(
        &self,
        batch: &[StreamRecord],
        condition: &str,
        attempts: i64,
        why: &str,
    ) -> Result<(), SourcesError> {
        let m = self.m;
        tracing::warn!(uuid = %m.uuid, shard = %self.shard, records = batch.len(), condition,
            "a stream batch is given up on");
        self.stats
            .failed_items
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let Some(dest) = &m.on_failure else {
            return Ok(());
        };
        let (region, account) = self.sources.region_account();
        let queue = crate::broker::parse_queue_arn(dest, &region, &account)?;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let mut function_arn = crate::functions::function_arn(&region, &account, &m.function_name);
        if !m.qualifier.is_empty() {
            function_arn = format!("{function_arn}:{}", m.qualifier);
        }
        let body = json!({
            "requestContext": {
                "requestId": uuid::Uuid::new_v4().to_string(),
                "functionArn": function_arn,
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": if m.qualifier.is_empty() { "$LATEST" } else { m.qualifier.as_str() },
                "functionError": why,
            },
            "version": "1.0",
            "timestamp": crate::time::rfc3339_ms(crate::time::now_ms()),
            "KinesisBatchInfo": {
                "shardId": self.shard,
                "startSequenceNumber": first.sequence_number,
                "endSequenceNumber": last.sequence_number,
                "approximateArrivalOfFirstRecord": crate::time::rfc3339_ms(first.arrival_ms),
                "approximateArrivalOfLastRecord": crate::time::rfc3339_ms(last.arrival_ms),
                "batchSize": batch.len(),
                "streamArn": m.event_source_arn,
            },
        })
        .to_string();
        let mut wait = RETRY_FIRST;
        loop {
            match self.src.send_failure(&queue, &body).await {
                Ok(()) => return Ok(()),
                Err(SourcesError::Broker(crate::broker::BrokerError::Unreachable { .. })) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(uuid = %m.uuid, error = %e,
                        "a stream batch's on-failure record cannot be written; it is dropped");
                    self.stats.set_error(&e.to_string());
                    return Ok(());
                }
            }
        }
    }

    /// Tumbling windows: records go in windows of `TumblingWindowInSeconds`
    /// by arrival; the state the function returns is passed to the next
    /// invocation of the same window; a window ends with a final
    /// invocation (`isFinalInvokeForWindow`) once a record of a later
    /// window arrives or its end has passed.
    async fn step_window(
        &self,
        filters: &Filters,
        cp: Checkpoint,
        records: Vec<StreamRecord>,
    ) -> Result<Option<Checkpoint>, SourcesError> {
        let w = i64::from(self.m.tumbling_window_s) * 1000;
        let window_of = |ms: i64| ms - ms.rem_euclid(w);
        let mut cp = cp;
        let mut progressed = false;
        let now = crate::time::now_ms();
        let mut rest = records;
        loop {
            // Close the open window when its end has passed and nothing of
            // it is left.
            if let Some(start) = cp.window_start_ms {
                let first_later = rest.first().map(|r| window_of(r.arrival_ms) > start);
                let ended = start + w <= now && rest.is_empty();
                if first_later == Some(true) || ended {
                    let state: Value = cp
                        .window_state
                        .as_deref()
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or(json!({}));
                    self.process(Vec::new(), Some((start, start + w, state, true)))
                        .await?;
                    cp.window_start_ms = None;
                    cp.window_state = None;
                    self.save(&cp)?;
                    progressed = true;
                }
            }
            if rest.is_empty() {
                break;
            }
            let start = window_of(rest[0].arrival_ms);
            let cut = rest
                .iter()
                .position(|r| window_of(r.arrival_ms) != start)
                .unwrap_or(rest.len());
            let later = rest.split_off(cut);
            let chunk = std::mem::replace(&mut rest, later);
            let last = chunk.last().map(|r| r.sequence_number.clone());
            let matched = self.filter(filters, chunk);
            let state: Value = if cp.window_start_ms == Some(start) {
                cp.window_state
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(json!({}))
            } else {
                json!({})
            };
            let new_state = if matched.is_empty() {
                Some(state)
            } else {
                self.process(matched, Some((start, start + w, state, false)))
                    .await?
            };
            cp.sequence = last;
            cp.window_start_ms = Some(start);
            cp.window_state = new_state.map(|s| s.to_string());
            self.save(&cp)?;
            progressed = true;
        }
        Ok(progressed.then_some(cp))
    }
}

/// The index of the first record a function reported as failed, or why its
/// answer fails the whole batch. Kinesis's `itemIdentifier` is a sequence
/// number.
fn first_failed(answer: &Value, batch: &[StreamRecord]) -> Result<Option<usize>, String> {
    let list = match answer {
        Value::Null => return Ok(None),
        Value::Object(o) => match o.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("batchItemFailures is not a list".into()),
        },
        _ => return Err("the answer is not an object".into()),
    };
    let mut first: Option<usize> = None;
    for item in list {
        let id = item
            .get("itemIdentifier")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("an item has no itemIdentifier")?;
        let i = batch
            .iter()
            .position(|r| r.sequence_number == id)
            .ok_or_else(|| format!("{id:?} is not in the batch"))?;
        first = Some(first.map_or(i, |f: usize| f.min(i)));
    }
    Ok(first)
}

/// Runs futures at once on this task and collects their results in order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<_>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: &str) -> StreamRecord {
        StreamRecord {
            shard_id: "shardId-000000000000".into(),
            sequence_number: seq.into(),
            partition_key: "k".into(),
            data: b"{\"a\":1}".to_vec(),
            arrival_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn kinesis_records_and_item_failures() {
        let r = kinesis_record(&rec("1"), "arn:aws:kinesis:r:a:stream/s", "r");
        assert_eq!(r["eventSource"], "aws:kinesis");
        assert_eq!(r["kinesis"]["data"], "eyJhIjoxfQ==");
        assert_eq!(r["eventID"], "shardId-000000000000:1");
        assert_eq!(
            r["kinesis"]["approximateArrivalTimestamp"],
            1_700_000_000.123
        );
        let batch = [rec("1"), rec("2"), rec("3")];
        assert_eq!(first_failed(&json!({}), &batch), Ok(None));
        assert_eq!(
            first_failed(
                &json!({"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "2"}]}),
                &batch
            ),
            Ok(Some(1))
        );
        assert!(first_failed(
            &json!({"batchItemFailures": [{"itemIdentifier": "9"}]}),
            &batch
        )
        .is_err());
        assert!(first_failed(&json!("x"), &batch).is_err());
    }

    #[tokio::test]
    async fn lanes_run_at_once_and_answer_in_order() {
        let started = Instant::now();
        let out = futures_join((0..3).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            i
        }))
        .await;
        assert_eq!(out, vec![0, 1, 2]);
        assert!(started.elapsed() < Duration::from_millis(250));
    }
}
