//! SQS-shaped queues on the broker: at-least-once delivery with a
//! visibility timeout, receive counts, delay, retention, a redrive policy
//! (`maxReceiveCount` → a dead-letter queue) and FIFO queues (`.fifo`:
//! order, deduplication for five minutes, and one batch in flight per
//! message group).
//!
//! The keys of a queue and what each holds are described at the top of
//! `lua/common.lua`. Each operation is one Lua script, so a receive that
//! hides a message, counts it and perhaps moves it to the dead-letter queue
//! happens whole or not at all.
//!
//! Why not a Redis consumer group: it has one idle time per group rather
//! than a visibility per message, no delay, and no way to hold back a FIFO
//! group while a batch of it is in flight.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use md5::{Digest as _, Md5};
use redis::Value;
use serde::{Deserialize, Serialize};

use super::{hash, int, items, text, Broker, BrokerError};

/// SQS's defaults and bounds.
pub const DEFAULT_VISIBILITY_S: u32 = 30;
pub const MAX_VISIBILITY_S: u32 = 43_200;
pub const MAX_DELAY_S: u32 = 900;
pub const DEFAULT_RETENTION_S: u32 = 345_600;
pub const RETENTION_RANGE_S: (u32, u32) = (60, 1_209_600);
pub const MAX_RECEIVE_COUNT: u32 = 1000;
/// SQS's message limit (256 KiB); larger bodies are refused.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

const COMMON: &str = include_str!("lua/common.lua");
fn script(body: &str) -> String {
    format!("{COMMON}\n{body}")
}
static SEND: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/send.lua")));
static RECEIVE: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/receive.lua")));
static DELETE: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/delete.lua")));
static PURGE: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/purge.lua")));
static INFO: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/info.lua")));
static RELEASE: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/release.lua")));

/// SQS's `RedrivePolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedrivePolicy {
    pub dead_letter_target_arn: String,
    pub max_receive_count: u32,
}

/// Attributes given to `create-queue`; `None` keeps what the queue has
/// (or SQS's default for a new queue).
#[derive(Debug, Clone, Default)]
pub struct QueueSettings {
    pub visibility_timeout_s: Option<u32>,
    pub delay_s: Option<u32>,
    pub retention_s: Option<u32>,
    pub fifo: Option<bool>,
    pub content_based_deduplication: Option<bool>,
    /// `Some(None)` removes the policy.
    pub redrive_policy: Option<Option<RedrivePolicy>>,
}

/// What `send-message` may add to a body.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Standard queues only; FIFO queues delay by the queue's setting.
    pub delay_s: Option<u32>,
    /// FIFO queues only, and required there.
    pub group_id: Option<String>,
    /// FIFO queues only; required unless content-based deduplication.
    pub deduplication_id: Option<String>,
}

/// A message handed out by a receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub receive_count: u64,
    pub sent_ms: i64,
    pub first_receive_ms: i64,
    pub group_id: Option<String>,
    pub deduplication_id: Option<String>,
}

impl Message {
    /// The hex MD5 of the body, as SQS reports it.
    pub fn md5_of_body(&self) -> String {
        hex::encode(Md5::digest(self.body.as_bytes()))
    }
}

/// A queue's attributes and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub visibility_timeout_s: u32,
    pub delay_s: u32,
    pub retention_s: u32,
    pub fifo: bool,
    pub content_based_deduplication: bool,
    /// The dead-letter queue's name and the receive count that sends a
    /// message there.
    pub redrive: Option<(String, u32)>,
    pub created_ms: i64,
    /// Messages ready to be handed out, handed out and not deleted yet,
    /// and delayed.
    pub visible: u64,
    pub not_visible: u64,
    pub delayed: u64,
}

/// What a queue keeps of a message.
#[derive(Serialize, Deserialize)]
struct Stored {
    body: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    sent_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedup: Option<String>,
}

fn prefix(name: &str) -> String {
    format!("flint:queue:{name}")
}

fn invalid(field: &'static str, rule: impl Into<String>) -> BrokerError {
    BrokerError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// SQS's queue-name rule: 1 to 80 of `[A-Za-z0-9_-]`, where a FIFO
/// queue's name ends in `.fifo` (counted).
pub fn validate_queue_name(name: &str) -> Result<(), BrokerError> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = !base.is_empty()
        && name.len() <= 80
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "QueueName",
            format!("{name:?}: 1 to 80 of A-Z a-z 0-9 - _, with .fifo at the end of a FIFO queue"),
        ))
    }
}

/// The message group and deduplication ids' rule: 1 to 128 printable
/// ASCII characters.
fn validate_id(field: &'static str, v: &str) -> Result<(), BrokerError> {
    if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(
            field,
            format!("{v:?}: 1 to 128 printable ASCII characters"),
        ));
    }
    Ok(())
}

fn in_range(field: &'static str, v: u32, lo: u32, hi: u32) -> Result<u32, BrokerError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("must be between {lo} and {hi} (got {v})"),
        ))
    }
}

/// A receipt handle is `ID#TOKEN`: the token is the receive count of the
/// receive that handed the message out, so a stale handle is told apart.
fn parse_receipt(handle: &str) -> Result<(&str, &str), BrokerError> {
    handle
        .rsplit_once('#')
        .filter(|(id, t)| !id.is_empty() && t.parse::<u64>().is_ok())
        .ok_or_else(|| {
            BrokerError::ReceiptHandleIsInvalid(format!("{handle:?} is not a receipt handle"))
        })
}

fn no_queue(name: &str, e: BrokerError) -> BrokerError {
    match e {
        BrokerError::Protocol(m) if m.contains("NOQUEUE") => {
            BrokerError::NoSuchQueue(name.to_string())
        }
        other => other,
    }
}

impl Broker {
    async fn queue_script(
        &self,
        script: &str,
        name: &str,
        args: &[String],
    ) -> Result<Value, BrokerError> {
        validate_queue_name(name)?;
        self.eval(script, &prefix(name), args)
            .await
            .map_err(|e| no_queue(name, e))
    }

    async fn queue_attributes(&self, name: &str) -> Result<BTreeMap<String, String>, BrokerError> {
        validate_queue_name(name)?;
        let a = hash(&self.run(redis::cmd("HGETALL").arg(prefix(name))).await?);
        if !a.contains_key("created_ms") {
            return Err(BrokerError::NoSuchQueue(name.to_string()));
        }
        Ok(a)
    }

    /// Creates a queue, or sets the given attributes of one that exists
    /// (whether it is FIFO cannot change).
    pub async fn create_queue(&self, name: &str, s: &QueueSettings) -> Result<(), BrokerError> {
        validate_queue_name(name)?;
        let fifo_name = name.ends_with(".fifo");
        if s.fifo.is_some_and(|f| f != fifo_name) {
            return Err(invalid(
                "FifoQueue",
                "a FIFO queue's name ends in .fifo, and only a FIFO queue's does",
            ));
        }
        if s.content_based_deduplication == Some(true) && !fifo_name {
            return Err(invalid(
                "ContentBasedDeduplication",
                "only FIFO queues deduplicate",
            ));
        }
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(v) = s.visibility_timeout_s {
            let v = in_range("VisibilityTimeout", v, 0, MAX_VISIBILITY_S)?;
            fields.push(("visibility_ms", (u64::from(v) * 1000).to_string()));
        }
        if let Some(v) = s.delay_s {
            let v = in_range("DelaySeconds", v, 0, MAX_DELAY_S)?;
            fields.push(("delay_ms", (u64::from(v) * 1000).to_string()));
        }
        if let Some(v) = s.retention_s {
            let (lo, hi) = RETENTION_RANGE_S;
            let v = in_range("MessageRetentionPeriod", v, lo, hi)?;
            fields.push(("retention_ms", (u64::from(v) * 1000).to_string()));
        }
        if let Some(v) = s.content_based_deduplication {
            fields.push(("content_dedup", if v { "1" } else { "0" }.into()));
        }
        match &s.redrive_policy {
            Some(Some(p)) => {
                in_range("maxReceiveCount", p.max_receive_count, 1, MAX_RECEIVE_COUNT)?;
                let dlq = p
                    .dead_letter_target_arn
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                validate_queue_name(&dlq)?;
                if dlq == name {
                    return Err(invalid(
                        "deadLetterTargetArn",
                        "a queue cannot be its own dead-letter queue",
                    ));
                }
                let target = self.queue_attributes(&dlq).await?;
                if (target.get("fifo").map(String::as_str) == Some("1")) != fifo_name {
                    return Err(invalid(
                        "deadLetterTargetArn",
                        "the dead-letter queue of a FIFO queue must be FIFO, and of a standard queue standard",
                    ));
                }
                fields.push(("dead_letter", dlq));
                fields.push(("max_receive_count", p.max_receive_count.to_string()));
            }
            Some(None) => fields.push(("max_receive_count", "0".into())),
            None => {}
        }
        let key = prefix(name);
        self.run(
            redis::cmd("HSETNX")
                .arg(&key)
                .arg("visibility_ms")
                .arg(u64::from(DEFAULT_VISIBILITY_S) * 1000),
        )
        .await?;
        self.run(
            redis::cmd("HSETNX")
                .arg(&key)
                .arg("fifo")
                .arg(if fifo_name { "1" } else { "0" }),
        )
        .await?;
        if !fields.is_empty() {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            for (k, v) in &fields {
                cmd.arg(*k).arg(v);
            }
            self.run(&cmd).await?;
        }
        // Last: a queue exists once it has a creation time.
        self.run(
            redis::cmd("HSETNX")
                .arg(&key)
                .arg("created_ms")
                .arg(crate::time::now_ms()),
        )
        .await?;
        self.run(redis::cmd("SADD").arg("flint:queues").arg(name))
            .await?;
        Ok(())
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.queue_script(&PURGE, name, &["delete".into()]).await?;
        Ok(())
    }

    /// Queue names, sorted, that start with `prefix`.
    pub async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, BrokerError> {
        let v = self
            .run(&redis::cmd("SMEMBERS").arg("flint:queues").to_owned())
            .await?;
        let mut names: Vec<String> = items(&v)
            .iter()
            .filter_map(text)
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Adds a message; returns its id (for a FIFO duplicate, the first
    /// one's).
    pub async fn send_message(
        &self,
        name: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
        o: &SendOptions,
    ) -> Result<String, BrokerError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(invalid(
                "MessageBody",
                format!(
                    "must be at most {MAX_MESSAGE_BYTES} bytes (got {})",
                    body.len()
                ),
            ));
        }
        if body.is_empty() {
            return Err(invalid("MessageBody", "must not be empty"));
        }
        let fifo = name.ends_with(".fifo");
        let mut delay: i64 = -1;
        let (mut group, mut dedup) = (None, None);
        if fifo {
            if o.delay_s.is_some() {
                return Err(invalid(
                    "DelaySeconds",
                    "a FIFO queue delays by its own DelaySeconds, not per message",
                ));
            }
            let g = o
                .group_id
                .clone()
                .ok_or_else(|| invalid("MessageGroupId", "a FIFO queue needs one"))?;
            validate_id("MessageGroupId", &g)?;
            let d = match &o.deduplication_id {
                Some(d) => {
                    validate_id("MessageDeduplicationId", d)?;
                    d.clone()
                }
                None => {
                    let a = self.queue_attributes(name).await?;
                    if a.get("content_dedup").map(String::as_str) != Some("1") {
                        return Err(invalid(
                            "MessageDeduplicationId",
                            "the queue has no content-based deduplication, so a message needs one",
                        ));
                    }
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()))
                }
            };
            group = Some(g);
            dedup = Some(d);
        } else {
            if o.group_id.is_some() || o.deduplication_id.is_some() {
                return Err(invalid(
                    "MessageGroupId",
                    "only FIFO queues have message groups and deduplication ids",
                ));
            }
            if let Some(d) = o.delay_s {
                delay = i64::from(in_range("DelaySeconds", d, 0, MAX_DELAY_S)?) * 1000;
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let stored = Stored {
            body: body.to_string(),
            attributes: attributes.clone(),
            sent_ms: crate::time::now_ms(),
            group: group.clone(),
            dedup: dedup.clone(),
        };
        let json =
            serde_json::to_string(&stored).map_err(|e| BrokerError::Protocol(e.to_string()))?;
        let v = self
            .queue_script(
                &SEND,
                name,
                &[
                    crate::time::now_ms().to_string(),
                    id,
                    json,
                    delay.to_string(),
                    group.unwrap_or_default(),
                    dedup.unwrap_or_default(),
                ],
            )
            .await?;
        text(&v).ok_or_else(|| BrokerError::Protocol(format!("a send answered {v:?}")))
    }

    /// Hands out up to `max` (1–10) messages, hiding each for `visibility`
    /// seconds (the queue's visibility timeout when `None`).
    pub async fn receive_message(
        &self,
        name: &str,
        max: u32,
        visibility_s: Option<u32>,
    ) -> Result<Vec<Message>, BrokerError> {
        in_range("MaxNumberOfMessages", max, 1, 10)?;
        let vis = match visibility_s {
            Some(v) => i64::from(in_range("VisibilityTimeout", v, 0, MAX_VISIBILITY_S)?) * 1000,
            None => -1,
        };
        let v = self
            .queue_script(
                &RECEIVE,
                name,
                &[
                    crate::time::now_ms().to_string(),
                    max.to_string(),
                    vis.to_string(),
                ],
            )
            .await?;
        let mut out = Vec::new();
        for m in items(&v) {
            let f = items(m);
            let (Some(id), Some(json), Some(count), Some(first)) = (
                f.first().and_then(text),
                f.get(1).and_then(text),
                f.get(2).and_then(int),
                f.get(3).and_then(int),
            ) else {
                return Err(BrokerError::Protocol(format!("a receive answered {m:?}")));
            };
            let s: Stored =
                serde_json::from_str(&json).map_err(|e| BrokerError::Protocol(e.to_string()))?;
            out.push(Message {
                receipt_handle: format!("{id}#{count}"),
                message_id: id,
                body: s.body,
                attributes: s.attributes,
                receive_count: count as u64,
                sent_ms: s.sent_ms,
                first_receive_ms: first,
                group_id: s.group,
                deduplication_id: s.dedup,
            });
        }
        Ok(out)
    }

    /// Deletes a message handed out by a receive. A handle of a receive
    /// that was followed by another is `ReceiptHandleIsInvalid`.
    pub async fn delete_message(
        &self,
        name: &str,
        receipt_handle: &str,
    ) -> Result<(), BrokerError> {
        let stale = self
            .delete_messages(name, &[receipt_handle.to_string()])
            .await?;
        match stale.first() {
            None => Ok(()),
            Some(id) => Err(BrokerError::ReceiptHandleIsInvalid(format!(
                "the message {id} was received again after this receipt"
            ))),
        }
    }

    /// Deletes many messages in one step; answers the ids whose receipt
    /// was stale (those are left alone).
    pub async fn delete_messages(
        &self,
        name: &str,
        receipt_handles: &[String],
    ) -> Result<Vec<String>, BrokerError> {
        if receipt_handles.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![crate::time::now_ms().to_string()];
        for h in receipt_handles {
            let (id, token) = parse_receipt(h)?;
            args.push(id.to_string());
            args.push(token.to_string());
        }
        let v = self.queue_script(&DELETE, name, &args).await?;
        Ok(items(&v).iter().filter_map(text).collect())
    }

    /// Returns messages that were handed out but never reached a consumer:
    /// visible again after `delay_ms`, their receive not counted (so that a
    /// throttle never moves a message to the dead-letter queue). Stale
    /// receipts are skipped. Answers how many were returned.
    pub async fn release_messages(
        &self,
        name: &str,
        receipt_handles: &[String],
        delay_ms: u64,
    ) -> Result<u64, BrokerError> {
        if receipt_handles.is_empty() {
            return Ok(0);
        }
        let mut args = vec![crate::time::now_ms().to_string(), delay_ms.to_string()];
        for h in receipt_handles {
            let (id, token) = parse_receipt(h)?;
            args.push(id.to_string());
            args.push(token.to_string());
        }
        let v = self.queue_script(&RELEASE, name, &args).await?;
        Ok(int(&v).unwrap_or(0).max(0) as u64)
    }

    /// Removes every message.
    pub async fn purge_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.queue_script(&PURGE, name, &["purge".into()]).await?;
        Ok(())
    }

    pub async fn queue_info(&self, name: &str) -> Result<QueueInfo, BrokerError> {
        let a = self.queue_attributes(name).await?;
        let counts = self
            .queue_script(&INFO, name, &[crate::time::now_ms().to_string()])
            .await?;
        let c: Vec<u64> = items(&counts)
            .iter()
            .map(|v| int(v).unwrap_or(0).max(0) as u64)
            .collect();
        let (total, visible, delayed) = (
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        );
        let num = |k: &str, default: u64| {
            a.get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let max_rc = num("max_receive_count", 0) as u32;
        Ok(QueueInfo {
            name: name.to_string(),
            visibility_timeout_s: (num("visibility_ms", 30_000) / 1000) as u32,
            delay_s: (num("delay_ms", 0) / 1000) as u32,
            retention_s: (num("retention_ms", u64::from(DEFAULT_RETENTION_S) * 1000) / 1000) as u32,
            fifo: a.get("fifo").map(String::as_str) == Some("1"),
            content_based_deduplication: a.get("content_dedup").map(String::as_str) == Some("1"),
            redrive: a
                .get("dead_letter")
                .filter(|_| max_rc > 0)
                .map(|d| (d.clone(), max_rc)),
            created_ms: num("created_ms", 0) as i64,
            visible,
            not_visible: total.saturating_sub(visible + delayed),
            delayed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for good in ["orders-dlq_1", "orders.fifo", &"x".repeat(80)] {
            assert!(validate_queue_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a.b", ".fifo", &"x".repeat(81), "a.fifo.fifo"] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn receipts_name_the_receive() {
        assert_eq!(parse_receipt("abc-1#3").unwrap(), ("abc-1", "3"));
        for bad in ["", "abc", "abc#", "#3", "abc#x"] {
            assert!(
                matches!(
                    parse_receipt(bad),
                    Err(BrokerError::ReceiptHandleIsInvalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn group_ids_are_printable_ascii() {
        assert!(validate_id("MessageGroupId", "user-42").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(validate_id("MessageGroupId", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn md5_of_body_is_sqs_s() {
        let m = Message {
            message_id: "1".into(),
            receipt_handle: "1#1".into(),
            body: "hello".into(),
            attributes: BTreeMap::new(),
            receive_count: 1,
            sent_ms: 0,
            first_receive_ms: 0,
            group_id: None,
            deduplication_id: None,
        };
        assert_eq!(m.md5_of_body(), "5d41402abc4b2a76b9719d911017c592");
    }
}
