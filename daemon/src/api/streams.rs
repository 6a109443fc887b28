//! gRPC service `flint.node.v1.Streams`: Kinesis-shaped streams on the
//! node's broker. Proto in, the broker's calls, proto out.
//!
//! A shard iterator is opaque to callers: `STREAM/SHARD/AFTER`, base64,
//! where AFTER is the last sequence number read (empty: before the oldest).

use std::sync::Arc;

use base64::Engine as _;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::streams_server::{Streams, StreamsServer};
use tonic::{Request, Response, Status};

use crate::broker::stream::{entry_id, sequence_number};
use crate::broker::{BrokerError, Position, StreamInfo};
use crate::node::{Node, NodeError};

pub struct StreamsService {
    node: Arc<Node>,
}

impl StreamsService {
    pub fn server(node: Arc<Node>) -> StreamsServer<Self> {
        StreamsServer::new(Self { node })
    }

    fn description(&self, s: &StreamInfo) -> pb::StreamDescription {
        let c = self.node.config();
        pb::StreamDescription {
            stream_name: s.name.clone(),
            stream_arn: format!(
                "arn:aws:kinesis:{}:{}:stream/{}",
                c.region, c.account_id, s.name
            ),
            stream_status: "ACTIVE".into(),
            shard_ids: (0..s.shards).map(crate::broker::stream::shard_id).collect(),
            retention_period_hours: s.retention_h,
            stream_creation_timestamp: crate::time::rfc3339_ms(s.created_ms),
        }
    }
}

fn bad(field: &'static str, rule: impl Into<String>) -> Status {
    NodeError::from(BrokerError::Invalid {
        field,
        rule: rule.into(),
    })
    .into()
}

fn iterator(stream: &str, shard: &str, after: Option<&str>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{stream}/{shard}/{}", after.unwrap_or("")))
}

fn parse_iterator(it: &str) -> Result<(String, String, Option<String>), Status> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(it)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad("ShardIterator", "not a shard iterator"))?;
    let mut parts = raw.splitn(3, '/');
    let (Some(stream), Some(shard), Some(after)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("ShardIterator", "not a shard iterator"));
    };
    Ok((
        stream.to_string(),
        shard.to_string(),
        Some(after.to_string()).filter(|a| !a.is_empty()),
    ))
}

/// The sequence number just before `seq` (for AT_SEQUENCE_NUMBER).
fn before(seq: &str) -> Option<String> {
    let id = entry_id(seq)?;
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    let prev = if n > 0 {
        format!("{ms}-{}", n - 1)
    } else {
        format!("{}-{}", ms.checked_sub(1)?, u32::MAX)
    };
    sequence_number(&prev)
}

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::StreamDescription>, Status> {
        let r = request.into_inner();
        let s = self
            .node
            .broker()?
            .create_stream(&r.stream_name, r.shard_count, r.retention_period_hours)
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(self.description(&s)))
    }

    async fn delete_stream(
        &self,
        request: Request<pb::StreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let r = request.into_inner();
        self.node
            .broker()?
            .delete_stream(&r.stream_name)
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(pb::DeleteStreamResponse {}))
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let names = self
            .node
            .broker()?
            .list_streams()
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(pb::ListStreamsResponse {
            stream_names: names,
        }))
    }

    async fn describe_stream(
        &self,
        request: Request<pb::StreamRequest>,
    ) -> Result<Response<pb::StreamDescription>, Status> {
        let r = request.into_inner();
        let s = self
            .node
            .broker()?
            .describe_stream(&r.stream_name)
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(self.description(&s)))
    }

    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let r = request.into_inner();
        let (shard_id, sequence_number) = self
            .node
            .broker()?
            .put_record(&r.stream_name, &r.partition_key, &r.data)
            .await
            .map_err(NodeError::from)?;
        Ok(Response::new(pb::PutRecordResponse {
            shard_id,
            sequence_number,
        }))
    }

    async fn get_shard_iterator(
        &self,
        request: Request<pb::GetShardIteratorRequest>,
    ) -> Result<Response<pb::GetShardIteratorResponse>, Status> {
        let r = request.into_inner();
        let b = self.node.broker()?;
        let (stream, shard) = (&r.stream_name, &r.shard_id);
        let position = |p| async move {
            b.starting_point(stream, shard, p)
                .await
                .map_err(NodeError::from)
        };
        let after = match r.shard_iterator_type.as_str() {
            "TRIM_HORIZON" => position(Position::TrimHorizon).await?,
            "LATEST" => position(Position::Latest).await?,
            "AT_TIMESTAMP" => position(Position::AtTimestamp((r.timestamp * 1000.0) as i64)).await?,
            "AFTER_SEQUENCE_NUMBER" => {
                entry_id(&r.starting_sequence_number)
                    .ok_or_else(|| bad("StartingSequenceNumber", "not a sequence number"))?;
                // Checks the stream and shard.
                position(Position::TrimHorizon).await?;
                Some(r.starting_sequence_number.clone())
            }
            "AT_SEQUENCE_NUMBER" => {
                position(Position::TrimHorizon).await?;
                Some(
                    before(&r.starting_sequence_number)
                        .ok_or_else(|| bad("StartingSequenceNumber", "not a sequence number"))?,
                )
            }
            other => {
                return Err(bad(
                    "ShardIteratorType",
                    format!("{other:?}: TRIM_HORIZON, LATEST, AT_TIMESTAMP, AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER"),
                ))
            }
        };
        Ok(Response::new(pb::GetShardIteratorResponse {
            shard_iterator: iterator(&r.stream_name, &r.shard_id, after.as_deref()),
        }))
    }

    async fn get_records(
        &self,
        request: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<pb::GetRecordsResponse>, Status> {
        let r = request.into_inner();
        let (stream, shard, after) = parse_iterator(&r.shard_iterator)?;
        let limit = if r.limit == 0 { 10_000 } else { r.limit };
        if limit > 10_000 {
            return Err(bad("Limit", "must be between 1 and 10000"));
        }
        let records = self
            .node
            .broker()?
            .get_records(&stream, &shard, after.as_deref(), limit as usize)
            .await
            .map_err(NodeError::from)?;
        let next = records.last().map(|r| r.sequence_number.clone()).or(after);
        Ok(Response::new(pb::GetRecordsResponse {
            next_shard_iterator: iterator(&stream, &shard, next.as_deref()),
            records: records
                .into_iter()
                .map(|r| pb::StreamRecordMessage {
                    sequence_number: r.sequence_number,
                    partition_key: r.partition_key,
                    data: r.data,
                    approximate_arrival_timestamp: crate::time::rfc3339_ms(r.arrival_ms),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterators_round_trip_and_at_sequence_number_starts_before() {
        let it = iterator("s", "shardId-000000000001", Some("42"));
        assert_eq!(
            parse_iterator(&it).unwrap(),
            ("s".into(), "shardId-000000000001".into(), Some("42".into()))
        );
        assert_eq!(parse_iterator(&iterator("s", "x", None)).unwrap().2, None);
        assert!(parse_iterator("!!").is_err());
        let seq = sequence_number("1700000000000-3").unwrap();
        assert_eq!(entry_id(&before(&seq).unwrap()).unwrap(), "1700000000000-2");
        let seq = sequence_number("1700000000000-0").unwrap();
        assert_eq!(
            entry_id(&before(&seq).unwrap()).unwrap(),
            format!("1699999999999-{}", u32::MAX)
        );
    }
}
