//! Kinesis-shaped streams on the broker: a fixed number of shards, each a
//! Redis Stream; records routed to a shard by the MD5 of their partition
//! key as Kinesis does (the 128-bit hash key space split evenly), sequence
//! numbers that order the records of a shard, and retention (24 hours by
//! default; older records are trimmed as new ones arrive).
//!
//! Keys: `flint:streams` (set of names), `flint:stream:NAME` (hash:
//! `shards`, `retention_h`, `created_ms`) and
//! `flint:stream:NAME:shard:NNNNNNNNNNNN` (a Redis Stream of `pk`, `data`,
//! `ts`). A sequence number is the entry id `MS-SEQ` written as the
//! decimal `MS` (20 digits) followed by `SEQ` (10 digits), so that it sorts
//! as a number and as a string.

use std::collections::BTreeMap;

use md5::{Digest as _, Md5};
use redis::Value;

use super::{hash, items, text, Broker, BrokerError};

pub const MAX_SHARDS: u32 = 64;
pub const DEFAULT_RETENTION_H: u32 = 24;
pub const RETENTION_RANGE_H: (u32, u32) = (24, 8760);
/// Kinesis's limit on one record's data.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// A stream's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    pub shards: u32,
    pub retention_h: u32,
    pub created_ms: i64,
}

/// One record of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Vec<u8>,
    pub arrival_ms: i64,
}

/// Where a reader starts in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest record kept.
    TrimHorizon,
    /// Only records written from now on.
    Latest,
    /// Records that arrived at or after this time (ms).
    AtTimestamp(i64),
}

fn invalid(field: &'static str, rule: impl Into<String>) -> BrokerError {
    BrokerError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// Kinesis's stream-name rule: 1 to 128 of `[A-Za-z0-9_.-]`.
pub fn validate_stream_name(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "StreamName",
            format!("{name:?}: 1 to 128 of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// Kinesis's shard ids: `shardId-000000000000`.
pub fn shard_id(i: u32) -> String {
    format!("shardId-{i:012}")
}

fn shard_index(id: &str) -> Option<u32> {
    id.strip_prefix("shardId-")?.parse().ok()
}

fn attributes_key(name: &str) -> String {
    format!("flint:stream:{name}")
}

fn shard_key(name: &str, shard: u32) -> String {
    format!("flint:stream:{name}:shard:{shard:012}")
}

/// The shard a partition key goes to among `shards`.
pub fn shard_for(partition_key: &str, shards: u32) -> u32 {
    let h = u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into());
    let width = u128::MAX / u128::from(shards.max(1));
    ((h / width) as u32).min(shards.max(1) - 1)
}

/// A Redis entry id `MS-SEQ` as a sequence number, and back.
pub fn sequence_number(entry_id: &str) -> Option<String> {
    let (ms, seq) = entry_id.split_once('-')?;
    Some(format!(
        "{:020}{:010}",
        ms.parse::<u64>().ok()?,
        seq.parse::<u64>().ok()?
    ))
}

pub fn entry_id(sequence_number: &str) -> Option<String> {
    if sequence_number.len() != 30 || !sequence_number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = sequence_number[..20].parse().ok()?;
    let seq: u64 = sequence_number[20..].parse().ok()?;
    Some(format!("{ms}-{seq}"))
}

impl Broker {
    async fn stream_info_raw(&self, name: &str) -> Result<StreamInfo, BrokerError> {
        validate_stream_name(name)?;
        let a: BTreeMap<String, String> = hash(
            &self
                .run(redis::cmd("HGETALL").arg(attributes_key(name)))
                .await?,
        );
        let num = |k: &str| a.get(k).and_then(|v| v.parse::<i64>().ok());
        let (Some(shards), Some(created_ms)) = (num("shards"), num("created_ms")) else {
            return Err(BrokerError::NoSuchStream(name.to_string()));
        };
        Ok(StreamInfo {
            name: name.to_string(),
            shards: shards as u32,
            retention_h: num("retention_h").unwrap_or(DEFAULT_RETENTION_H.into()) as u32,
            created_ms,
        })
    }

    /// Creates a stream of `shards` shards (1–64).
    pub async fn create_stream(
        &self,
        name: &str,
        shards: u32,
        retention_h: Option<u32>,
    ) -> Result<StreamInfo, BrokerError> {
        validate_stream_name(name)?;
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(invalid(
                "ShardCount",
                format!("must be between 1 and {MAX_SHARDS} (got {shards})"),
            ));
        }
        let retention = retention_h.unwrap_or(DEFAULT_RETENTION_H);
        let (lo, hi) = RETENTION_RANGE_H;
        if !(lo..=hi).contains(&retention) {
            return Err(invalid(
                "RetentionPeriodHours",
                format!("must be between {lo} and {hi} (got {retention})"),
            ));
        }
        let created = self
            .run(
                redis::cmd("HSETNX")
                    .arg(attributes_key(name))
                    .arg("shards")
                    .arg(shards),
            )
            .await?;
        if !matches!(created, Value::Int(1)) {
            return Err(BrokerError::StreamExists(name.to_string()));
        }
        self.run(
            redis::cmd("HSET")
                .arg(attributes_key(name))
                .arg("retention_h")
                .arg(retention)
                .arg("created_ms")
                .arg(crate::time::now_ms()),
        )
        .await?;
        self.run(redis::cmd("SADD").arg("flint:streams").arg(name))
            .await?;
        self.stream_info_raw(name).await
    }

    pub async fn delete_stream(&self, name: &str) -> Result<(), BrokerError> {
        let info = self.stream_info_raw(name).await?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(attributes_key(name));
        for i in 0..info.shards {
            cmd.arg(shard_key(name, i));
        }
        self.run(&cmd).await?;
        self.run(redis::cmd("SREM").arg("flint:streams").arg(name))
            .await?;
        Ok(())
    }

    pub async fn list_streams(&self) -> Result<Vec<String>, BrokerError> {
        let v = self
            .run(&redis::cmd("SMEMBERS").arg("flint:streams").to_owned())
            .await?;
        let mut names: Vec<String> = items(&v).iter().filter_map(text).collect();
        names.sort();
        Ok(names)
    }

    pub async fn describe_stream(&self, name: &str) -> Result<StreamInfo, BrokerError> {
        self.stream_info_raw(name).await
    }

    /// Writes a record; answers its shard id and sequence number.
    pub async fn put_record(
        &self,
        name: &str,
        partition_key: &str,
        data: &[u8],
    ) -> Result<(String, String), BrokerError> {
        if partition_key.is_empty() || partition_key.len() > 256 {
            return Err(invalid("PartitionKey", "1 to 256 characters"));
        }
        if data.len() > MAX_RECORD_BYTES {
            return Err(invalid(
                "Data",
                format!(
                    "must be at most {MAX_RECORD_BYTES} bytes (got {})",
                    data.len()
                ),
            ));
        }
        let info = self.stream_info_raw(name).await?;
        let shard = shard_for(partition_key, info.shards);
        let now = crate::time::now_ms();
        let oldest = now - i64::from(info.retention_h) * 3_600_000;
        let v = self
            .run(
                redis::cmd("XADD")
                    .arg(shard_key(name, shard))
                    .arg("MINID")
                    .arg("~")
                    .arg(oldest.max(0))
                    .arg("*")
                    .arg("pk")
                    .arg(partition_key)
                    .arg("data")
                    .arg(data)
                    .arg("ts")
                    .arg(now),
            )
            .await?;
        let id = text(&v).ok_or_else(|| BrokerError::Protocol(format!("XADD answered {v:?}")))?;
        let seq = sequence_number(&id)
            .ok_or_else(|| BrokerError::Protocol(format!("XADD answered id {id:?}")))?;
        Ok((shard_id(shard), seq))
    }

    /// Up to `max` records of a shard after the sequence number `after`
    /// (`None`: from the oldest kept).
    pub async fn get_records(
        &self,
        name: &str,
        shard: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<StreamRecord>, BrokerError> {
        let info = self.stream_info_raw(name).await?;
        let i = shard_index(shard)
            .filter(|i| *i < info.shards)
            .ok_or_else(|| invalid("ShardId", format!("{shard:?} is not a shard of {name}")))?;
        let start = match after {
            None => "-".to_string(),
            Some(s) => format!(
                "({}",
                entry_id(s).ok_or_else(|| invalid(
                    "SequenceNumber",
                    format!("{s:?} is not a sequence number")
                ))?
            ),
        };
        // Raw reply: data is binary, so the fields are read as bytes.
        let v = self
            .run(
                redis::cmd("XRANGE")
                    .arg(shard_key(name, i))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max.max(1)),
            )
            .await?;
        let mut out = Vec::new();
        for e in items(&v) {
            let e = items(e);
            let Some(id) = e.first().and_then(text) else {
                continue;
            };
            let kv = e.get(1).map(items).unwrap_or(&[]);
            let mut pk = String::new();
            let mut data = Vec::new();
            let mut ts = 0i64;
            for pair in kv.chunks(2) {
                let (Some(k), Some(val)) = (pair.first().and_then(text), pair.get(1)) else {
                    continue;
                };
                match k.as_str() {
                    "pk" => pk = text(val).unwrap_or_default(),
                    "data" => {
                        if let Value::BulkString(b) = val {
                            data = b.clone();
                        }
                    }
                    "ts" => ts = text(val).and_then(|t| t.parse().ok()).unwrap_or(0),
                    _ => {}
                }
            }
            let Some(seq) = sequence_number(&id) else {
                continue;
            };
            out.push(StreamRecord {
                shard_id: shard.to_string(),
                sequence_number: seq,
                partition_key: pk,
                data,
                arrival_ms: ts,
            });
        }
        Ok(out)
    }

    /// The sequence number a reader of `shard` starts after: `None` for the
    /// oldest record kept.
    pub async fn starting_point(
        &self,
        name: &str,
        shard: &str,
        position: Position,
    ) -> Result<Option<String>, BrokerError> {
        let info = self.stream_info_raw(name).await?;
        let i = shard_index(shard)
            .filter(|i| *i < info.shards)
            .ok_or_else(|| invalid("ShardId", format!("{shard:?} is not a shard of {name}")))?;
        match position {
            Position::TrimHorizon => Ok(None),
            Position::Latest => {
                let v = self
                    .run(
                        redis::cmd("XREVRANGE")
                            .arg(shard_key(name, i))
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(1),
                    )
                    .await?;
                let last = items(&v)
                    .first()
                    .and_then(|e| items(e).first())
                    .and_then(text);
                Ok(match last {
                    Some(id) => sequence_number(&id),
                    // An empty shard: everything from now on.
                    None => Some(format!("{:020}{:010}", crate::time::now_ms().max(1) - 1, 0)),
                })
            }
            Position::AtTimestamp(ms) => {
                Ok(Some(format!("{:020}{:010}", (ms - 1).max(0), u32::MAX)))
            }
        }
    }

    /// Records of a shard not yet read after `after` (approximate: Redis
    /// counts entries in a range by reading their ids).
    pub async fn records_behind(
        &self,
        name: &str,
        shard: &str,
        after: Option<&str>,
    ) -> Result<u64, BrokerError> {
        let i = shard_index(shard).unwrap_or(0);
        let start = match after.and_then(entry_id) {
            None => "-".to_string(),
            Some(id) => format!("({id}"),
        };
        // At most 10,000 are counted.
        let v = self
            .run(
                redis::cmd("XRANGE")
                    .arg(shard_key(name, i))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(10_000),
            )
            .await?;
        Ok(items(&v).len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_shards_and_sequence_numbers() {
        assert!(validate_stream_name("clicks.v2_a-b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
        assert_eq!(shard_id(3), "shardId-000000000003");
        assert_eq!(shard_index("shardId-000000000003"), Some(3));
        let s = sequence_number("1700000000123-7").unwrap();
        assert_eq!(s.len(), 30);
        assert_eq!(entry_id(&s).unwrap(), "1700000000123-7");
        assert!(sequence_number("1700000000123-8").unwrap() > s);
        assert!(entry_id("12x").is_none());
        // Every key lands on a shard; keys spread over all of them.
        let mut seen = std::collections::HashSet::new();
        for k in 0..200 {
            let s = shard_for(&format!("user-{k}"), 4);
            assert!(s < 4);
            seen.insert(s);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(shard_for("anything", 1), 0);
    }
}
