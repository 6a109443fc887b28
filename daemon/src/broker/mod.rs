//! The event broker: SQS-shaped queues held in Redis Streams on the
//! broker that flintd's configuration names (`[broker] url`).
//!
//! A queue `NAME` is the stream `flint:queue:NAME:messages` with the
//! consumer group `flint`. Its attributes are the hash `flint:queue:NAME`,
//! and the set `flint:queues` lists the queues.
//! - **Sending** is `XADD`.
//! - **Receiving** first claims messages that were handed out longer ago
//!   than the visibility timeout and were not deleted (`XAUTOCLAIM`, which
//!   counts a new delivery). It then reads new ones (`XREADGROUP`). A
//!   message's receive count is its delivery count in the group.
//! - **Deleting** is `XACK` and `XDEL` of the receipt handle (the entry's
//!   id).
//!
//! Every command has a deadline. A broker that is down or slow answers
//! [`BrokerError::Unreachable`], and the next call connects again.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

/// SQS's defaults and bounds.
pub const DEFAULT_VISIBILITY_S: u32 = 30;
pub const MAX_VISIBILITY_S: u32 = 43_200;
/// SQS's message limit (256 KiB); larger bodies are refused.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
const GROUP: &str = "flint";
const CONSUMER: &str = "flintd";
const DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("AWS.SimpleQueueService.NonExistentQueue: the queue {0} does not exist")]
    NoSuchQueue(String),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("the broker answered something unexpected: {0}")]
    Protocol(String),
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
}

/// A queue's attributes and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub visibility_timeout_s: u32,
    pub created_ms: i64,
    /// Messages not handed out, and handed out but not deleted.
    pub visible: u64,
    pub not_visible: u64,
}

pub struct Broker {
    url: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

fn messages_key(name: &str) -> String {
    format!("flint:queue:{name}:messages")
}

fn attributes_key(name: &str) -> String {
    format!("flint:queue:{name}")
}

/// SQS's queue-name rule: 1 to 80 of `[A-Za-z0-9_-]`.
pub fn validate_queue_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Invalid {
            field: "QueueName",
            rule: format!("{name:?}: 1 to 80 of A-Z a-z 0-9 - _"),
        })
    }
}

/// A queue's name from its ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`) of
/// this node's region and account.
pub fn parse_queue_arn(arn: &str, region: &str, account: &str) -> Result<String, BrokerError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let bad = |rule: String| BrokerError::Invalid {
        field: "QueueArn",
        rule,
    };
    if parts.len() != 6 || parts[..3] != ["arn", "aws", "sqs"] {
        return Err(bad(format!("{arn:?} is not a queue ARN")));
    }
    if parts[3] != region || parts[4] != account {
        return Err(bad(format!(
            "{arn:?} is not in this node's region {region} and account {account}"
        )));
    }
    validate_queue_name(parts[5])?;
    Ok(parts[5].to_string())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]`; deleted entries
/// (a nil field list) are left out.
fn entries(v: &Value) -> Vec<(String, BTreeMap<String, String>)> {
    items(v)
        .iter()
        .filter_map(|e| {
            let e = items(e);
            let id = text(e.first()?)?;
            let fields = e.get(1)?;
            if matches!(fields, Value::Nil) {
                return None;
            }
            let kv = items(fields);
            let map = kv
                .chunks(2)
                .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
                .collect();
            Some((id, map))
        })
        .collect()
}

impl Broker {
    /// A broker client; nothing is connected until the first command.
    pub fn new(url: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| BrokerError::Invalid {
            field: "broker.url",
            rule: e.to_string(),
        })?;
        Ok(Self {
            url: url.to_string(),
            client,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> BrokerError {
        BrokerError::Unreachable {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }

    /// Runs one command with a deadline; a failure drops the connection.
    async fn run(&self, cmd: &redis::Cmd) -> Result<Value, BrokerError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let c = tokio::time::timeout(DEADLINE, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| self.unreachable("no connection within 3 s"))?
                .map_err(|e| self.unreachable(e))?;
            *guard = Some(c);
        }
        let conn = guard.as_mut().expect("connected above");
        match tokio::time::timeout(DEADLINE, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                *guard = None;
                Err(self.unreachable(e))
            }
            Ok(Err(e)) => Err(BrokerError::Protocol(e.to_string())),
            Err(_) => {
                *guard = None;
                Err(self.unreachable("no answer within 3 s"))
            }
        }
    }

    async fn exists(&self, name: &str) -> Result<(), BrokerError> {
        let v = self
            .run(redis::cmd("SISMEMBER").arg("flint:queues").arg(name))
            .await?;
        if matches!(v, Value::Int(1)) {
            Ok(())
        } else {
            Err(BrokerError::NoSuchQueue(name.to_string()))
        }
    }

    /// Creates a queue; creating one that exists is not an error (as in
    /// SQS when the attributes match).
    pub async fn create_queue(
        &self,
        name: &str,
        visibility_timeout_s: Option<u32>,
    ) -> Result<(), BrokerError> {
        validate_queue_name(name)?;
        let vis = visibility_timeout_s.unwrap_or(DEFAULT_VISIBILITY_S);
        if vis > MAX_VISIBILITY_S {
            return Err(BrokerError::Invalid {
                field: "VisibilityTimeout",
                rule: format!("must be between 0 and {MAX_VISIBILITY_S} (got {vis})"),
            });
        }
        let created = crate::time::now_ms();
        self.run(
            redis::cmd("HSETNX")
                .arg(attributes_key(name))
                .arg("created_ms")
                .arg(created),
        )
        .await?;
        self.run(
            redis::cmd("HSET")
                .arg(attributes_key(name))
                .arg("visibility_timeout_s")
                .arg(vis),
        )
        .await?;
        match self
            .run(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(messages_key(name))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await
        {
            Ok(_) => {}
            Err(BrokerError::Protocol(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.run(redis::cmd("SADD").arg("flint:queues").arg(name))
            .await?;
        Ok(())
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.exists(name).await?;
        self.run(
            redis::cmd("DEL")
                .arg(messages_key(name))
                .arg(attributes_key(name)),
        )
        .await?;
        self.run(redis::cmd("SREM").arg("flint:queues").arg(name))
            .await?;
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

    /// Adds a message; returns its id.
    pub async fn send_message(
        &self,
        name: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, BrokerError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(BrokerError::Invalid {
                field: "MessageBody",
                rule: format!(
                    "must be at most {MAX_MESSAGE_BYTES} bytes (got {})",
                    body.len()
                ),
            });
        }
        self.exists(name).await?;
        let attrs = serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into());
        let v = self
            .run(
                redis::cmd("XADD")
                    .arg(messages_key(name))
                    .arg("*")
                    .arg("body")
                    .arg(body)
                    .arg("attributes")
                    .arg(attrs)
                    .arg("sent_ms")
                    .arg(crate::time::now_ms()),
            )
            .await?;
        text(&v).ok_or_else(|| BrokerError::Protocol(format!("XADD answered {v:?}")))
    }

    async fn visibility_ms(&self, name: &str) -> Result<u64, BrokerError> {
        let v = self
            .run(
                redis::cmd("HGET")
                    .arg(attributes_key(name))
                    .arg("visibility_timeout_s"),
            )
            .await?;
        Ok(text(&v)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(DEFAULT_VISIBILITY_S.into())
            * 1000)
    }

    /// Hands out up to `max` (1–10) messages: those whose visibility
    /// timeout ran out first, then new ones.
    pub async fn receive_message(&self, name: &str, max: u32) -> Result<Vec<Message>, BrokerError> {
        if !(1..=10).contains(&max) {
            return Err(BrokerError::Invalid {
                field: "MaxNumberOfMessages",
                rule: format!("must be between 1 and 10 (got {max})"),
            });
        }
        self.exists(name).await?;
        let key = messages_key(name);
        let idle = self.visibility_ms(name).await?;
        let claimed = self
            .run(
                redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(CONSUMER)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max),
            )
            .await?;
        let mut got = entries(items(&claimed).get(1).unwrap_or(&Value::Nil));
        if got.len() < max as usize {
            let fresh = self
                .run(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(CONSUMER)
                        .arg("COUNT")
                        .arg(max as usize - got.len())
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">"),
                )
                .await?;
            // [[key, entries]] or nil; RESP3 may answer a map.
            let streams = match &fresh {
                Value::Map(m) => m.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
                other => items(other)
                    .iter()
                    .filter_map(|s| items(s).get(1).cloned())
                    .collect(),
            };
            for s in streams {
                got.extend(entries(&s));
            }
        }
        let mut out = Vec::new();
        for (id, fields) in got {
            let pending = self
                .run(
                    redis::cmd("XPENDING")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(&id)
                        .arg(&id)
                        .arg(1),
                )
                .await?;
            let receive_count = items(&pending)
                .first()
                .and_then(|p| items(p).get(3))
                .and_then(text)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            out.push(Message {
                message_id: id.clone(),
                receipt_handle: id,
                body: fields.get("body").cloned().unwrap_or_default(),
                attributes: fields
                    .get("attributes")
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or_default(),
                receive_count,
                sent_ms: fields
                    .get("sent_ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Deletes a message handed out by a receive.
    pub async fn delete_message(
        &self,
        name: &str,
        receipt_handle: &str,
    ) -> Result<(), BrokerError> {
        self.exists(name).await?;
        let key = messages_key(name);
        self.run(redis::cmd("XACK").arg(&key).arg(GROUP).arg(receipt_handle))
            .await?;
        self.run(redis::cmd("XDEL").arg(&key).arg(receipt_handle))
            .await?;
        Ok(())
    }

    /// Removes every message.
    pub async fn purge_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.exists(name).await?;
        let key = messages_key(name);
        self.run(redis::cmd("DEL").arg(&key)).await?;
        self.run(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await?;
        Ok(())
    }

    pub async fn queue_info(&self, name: &str) -> Result<QueueInfo, BrokerError> {
        self.exists(name).await?;
        let key = messages_key(name);
        let len = self.run(redis::cmd("XLEN").arg(&key)).await?;
        let len = text(&len).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let pending = self
            .run(redis::cmd("XPENDING").arg(&key).arg(GROUP))
            .await?;
        let not_visible = items(&pending)
            .first()
            .and_then(text)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let created = self
            .run(
                redis::cmd("HGET")
                    .arg(attributes_key(name))
                    .arg("created_ms"),
            )
            .await?;
        Ok(QueueInfo {
            name: name.to_string(),
            visibility_timeout_s: (self.visibility_ms(name).await? / 1000) as u32,
            created_ms: text(&created).and_then(|s| s.parse().ok()).unwrap_or(0),
            visible: len.saturating_sub(not_visible),
            not_visible,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_and_arns() {
        assert!(validate_queue_name("orders-dlq_1").is_ok());
        for bad in ["", "a/b", "a.b", &"x".repeat(81)] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_queue_arn(
                "arn:aws:sqs:us-east-1:000000000000:q",
                "us-east-1",
                "000000000000"
            )
            .unwrap(),
            "q"
        );
        for bad in [
            "arn:aws:sqs:eu-west-1:000000000000:q",
            "arn:aws:sns:us-east-1:000000000000:q",
            "arn:aws:sqs:us-east-1:000000000000:bad/name",
        ] {
            assert!(
                parse_queue_arn(bad, "us-east-1", "000000000000").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn stream_entries_leave_out_deleted_ones() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Array(vec![b("1-0"), Value::Array(vec![b("body"), b("hi")])]),
            Value::Array(vec![b("2-0"), Value::Nil]),
        ]);
        let e = entries(&v);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "1-0");
        assert_eq!(e[0].1["body"], "hi");
    }
}
