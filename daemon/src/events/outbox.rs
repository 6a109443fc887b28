//! The outbox: messages for the broker (queue destinations and dead-letter
//! queues), committed with their event's outcome and written to the broker
//! afterwards, waiting while it is down.

use std::sync::Arc;
use std::time::Duration;

use super::record::{Condition, LastResponse};
use super::{backoff_ms, now_ms, Events, OutboxMessage, QueuedEvent};

/// A dead-letter message's `ErrorMessage` is cut to 1 KB.
const MAX_DLQ_ERROR: usize = 1024;
/// Writes to a broker that is down are tried again after 1 s doubling to
/// this.
const OUTBOX_BACKOFF_MAX_MS: i64 = 30_000;

impl Events {
    /// Writes broker messages (destination records, dead-letter messages)
    /// once their event's outcome is committed. A broker that is down keeps
    /// them waiting, with a warning, until it is back.
    pub(super) async fn run_outbox(self: Arc<Self>) {
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let due = match self.blocking(|q| q.outbox_due(now_ms(), 64)).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the broker outbox failed");
                    Vec::new()
                }
            };
            for m in &due {
                match self.send_outbox(m).await {
                    Ok(()) => {
                        if let Some(t) = down_since.take() {
                            tracing::info!(
                                down_s = t.elapsed().as_secs(),
                                "the broker is back; waiting messages are delivered"
                            );
                        }
                    }
                    Err(e) => {
                        if down_since.is_none() {
                            down_since = Some(std::time::Instant::now());
                        }
                        tracing::warn!(queue = %m.queue, function = %m.function, error = %e,
                            "a message for the broker waits: it is not reachable");
                        let attempts = m.attempts + 1;
                        let delay = backoff_ms(attempts, OUTBOX_BACKOFF_MAX_MS);
                        let seq = m.seq;
                        let _ = self
                            .blocking(move |q| q.outbox_retry(seq, now_ms() + delay, attempts))
                            .await;
                        // The rest wait for the broker too.
                        break;
                    }
                }
            }
            if due.len() == 64 && down_since.is_none() {
                continue;
            }
            tokio::select! {
                _ = self.outbox_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Writes one outbox message; `Err` only when the broker is not
    /// reachable (other failures drop the message with an error).
    async fn send_outbox(&self, m: &OutboxMessage) -> Result<(), crate::broker::BrokerError> {
        let result = match &self.broker {
            Some(b) => {
                b.send_message(&m.queue, &m.body, &m.attributes, &Default::default())
                    .await
            }
            None => Err(crate::broker::BrokerError::Unreachable {
                url: "(none configured)".into(),
                reason: "this node has no broker".into(),
            }),
        };
        match result {
            Ok(_) => {}
            Err(e @ crate::broker::BrokerError::Unreachable { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(queue = %m.queue, function = %m.function, error = %e,
                "a destination or dead-letter message cannot be delivered; it is dropped");
                // A dead-letter message carries the failure's ErrorCode.
                let metric = if m.attributes.contains_key("ErrorCode") {
                    crate::observe::Metric::DeadLetterErrors
                } else {
                    crate::observe::Metric::DestinationDeliveryFailures
                };
                self.invoker.observe.record(
                    metric,
                    &crate::observe::Labels::invoked(&m.function, "", ""),
                    1.0,
                );
            }
        }
        let seq = m.seq;
        if let Err(e) = self.blocking(move |q| q.outbox_done(seq)).await {
            tracing::warn!(error = %e, "a delivered broker message could not be marked; it may be sent again");
        }
        Ok(())
    }

    /// The dead-letter message of a dropped event, when the version it
    /// resolves to has a dead-letter queue: the unchanged event with
    /// `RequestID`, `ErrorCode` and `ErrorMessage`.
    pub(super) fn dead_letter(
        &self,
        ev: &QueuedEvent,
        condition: Condition,
        last: Option<&LastResponse>,
    ) -> Option<OutboxMessage> {
        let f = self.invoker.resolve(&ev.function, &ev.qualifier).ok()?;
        let target = f.dead_letter_target.as_deref()?;
        let (region, account) = self.invoker.region_account();
        let queue = match crate::broker::parse_queue_arn(target, region, account) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(function = %ev.function, error = %e, "the dead-letter queue is not valid");
                self.invoker.observe.record(
                    crate::observe::Metric::DeadLetterErrors,
                    &crate::observe::Labels::qualified(&ev.function, &ev.qualifier),
                    1.0,
                );
                return None;
            }
        };
        let (code, mut message) = match last {
            Some(r) => (
                r.status_code.to_string(),
                serde_json::from_str::<serde_json::Value>(&r.payload)
                    .ok()
                    .and_then(|v| v["errorMessage"].as_str().map(String::from))
                    .unwrap_or_else(|| r.payload.clone()),
            ),
            None => (
                "EventAgeExceeded".to_string(),
                format!(
                    "{}: the event was not run before its maximum age",
                    condition.name()
                ),
            ),
        };
        if message.len() > MAX_DLQ_ERROR {
            let mut cut = MAX_DLQ_ERROR;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Some(OutboxMessage {
            function: ev.function.clone(),
            queue,
            body: String::from_utf8_lossy(&ev.payload).into_owned(),
            attributes: [
                ("RequestID".to_string(), ev.request_id.clone()),
                ("ErrorCode".to_string(), code),
                ("ErrorMessage".to_string(), message),
            ]
            .into(),
            ..OutboxMessage::default()
        })
    }
}
