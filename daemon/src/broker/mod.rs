//! The event broker: SQS-shaped queues ([`queue`]) and Kinesis-shaped
//! streams ([`stream`]) held in the Redis server that flintd's
//! configuration names (`[broker] url`).
//!
//! Every command has a deadline. A broker that is down or slow answers
//! [`BrokerError::Unreachable`], and the next call connects again. Every
//! change that touches more than one key is one Lua script, so that a crash
//! of flintd or of Redis never leaves half of it.

pub mod queue;
pub mod stream;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

pub use queue::{Message, QueueInfo, QueueSettings, RedrivePolicy, SendOptions};
pub use stream::{Position, StreamInfo, StreamRecord};

const DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("AWS.SimpleQueueService.NonExistentQueue: the queue {0} does not exist")]
    NoSuchQueue(String),
    #[error("ResourceNotFoundException: the stream {0} does not exist")]
    NoSuchStream(String),
    #[error("ResourceInUseException: the stream {0} exists")]
    StreamExists(String),
    #[error("ReceiptHandleIsInvalid: {0}")]
    ReceiptHandleIsInvalid(String),
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("the broker answered something unexpected: {0}")]
    Protocol(String),
}

pub struct Broker {
    url: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// An ARN's resource name, checked against this node's region and account:
/// `arn:aws:SERVICE:REGION:ACCOUNT:RESOURCE`.
fn arn_resource<'a>(
    arn: &'a str,
    service: &str,
    field: &'static str,
    region: &str,
    account: &str,
) -> Result<&'a str, BrokerError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let bad = |rule: String| BrokerError::Invalid { field, rule };
    if parts.len() != 6 || parts[..3] != ["arn", "aws", service] {
        return Err(bad(format!("{arn:?} is not an ARN of {service}")));
    }
    if parts[3] != region || parts[4] != account {
        return Err(bad(format!(
            "{arn:?} is not in this node's region {region} and account {account}"
        )));
    }
    Ok(parts[5])
}

/// A queue's name from its ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`) of
/// this node's region and account.
pub fn parse_queue_arn(arn: &str, region: &str, account: &str) -> Result<String, BrokerError> {
    let name = arn_resource(arn, "sqs", "QueueArn", region, account)?;
    queue::validate_queue_name(name)?;
    Ok(name.to_string())
}

/// A stream's name from its ARN
/// (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
pub fn parse_stream_arn(arn: &str, region: &str, account: &str) -> Result<String, BrokerError> {
    let res = arn_resource(arn, "kinesis", "StreamARN", region, account)?;
    let name = res.strip_prefix("stream/").ok_or(BrokerError::Invalid {
        field: "StreamARN",
        rule: format!("{arn:?} is not a stream ARN"),
    })?;
    stream::validate_stream_name(name)?;
    Ok(name.to_string())
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

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A hash's fields (`HGETALL`), in RESP2 or RESP3.
fn hash(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        other => items(other)
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
            .collect(),
    }
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
        let mut conn = {
            let mut guard = self.conn.lock().await;
            if guard.is_none() {
                let c =
                    tokio::time::timeout(DEADLINE, self.client.get_multiplexed_async_connection())
                        .await
                        .map_err(|_| self.unreachable("no connection within 3 s"))?
                        .map_err(|e| self.unreachable(e))?;
                *guard = Some(c);
            }
            guard.clone().expect("connected above")
        };
        // The connection is multiplexed: commands of many callers share it
        // without waiting for each other.
        let result = tokio::time::timeout(DEADLINE, cmd.query_async::<Value>(&mut conn)).await;
        let drop_conn = || async { *self.conn.lock().await = None };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                drop_conn().await;
                Err(self.unreachable(e))
            }
            Ok(Err(e)) => Err(BrokerError::Protocol(e.to_string())),
            Err(_) => {
                drop_conn().await;
                Err(self.unreachable("no answer within 3 s"))
            }
        }
    }

    /// Runs a Lua script (the shared helpers and `body`) on one key.
    async fn eval(&self, body: &str, key: &str, args: &[String]) -> Result<Value, BrokerError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(body).arg(1).arg(key);
        for a in args {
            cmd.arg(a);
        }
        self.run(&cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_arns() {
        assert_eq!(
            parse_stream_arn(
                "arn:aws:kinesis:us-east-1:000000000000:stream/clicks",
                "us-east-1",
                "000000000000"
            )
            .unwrap(),
            "clicks"
        );
        for bad in [
            "arn:aws:kinesis:us-east-1:000000000000:clicks",
            "arn:aws:kinesis:us-east-1:000000000000:stream/a b",
            "arn:aws:sqs:us-east-1:000000000000:stream/clicks",
        ] {
            assert!(
                parse_stream_arn(bad, "us-east-1", "000000000000").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn queue_arns() {
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
}
