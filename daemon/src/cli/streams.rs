//! flintctl's stream commands, shaped like `aws kinesis …`, on the node's
//! broker.

use base64::Engine as _;
use flint_proto::node::v1 as pb;
use flint_proto::node::v1::streams_client::StreamsClient;
use serde_json::json;
use tonic::transport::Channel;

use super::commands::{svc, Command};
use super::{emit, CliError, Output};

fn description_json(d: &pb::StreamDescription) -> serde_json::Value {
    json!({"StreamDescription": {
        "StreamName": d.stream_name,
        "StreamARN": d.stream_arn,
        "StreamStatus": d.stream_status,
        "Shards": d.shard_ids.iter().map(|s| json!({"ShardId": s})).collect::<Vec<_>>(),
        "RetentionPeriodHours": d.retention_period_hours,
        "StreamCreationTimestamp": d.stream_creation_timestamp,
    }})
}

pub async fn run(
    s: &mut StreamsClient<Channel>,
    output: Output,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::CreateStream {
            stream_name,
            shard_count,
            retention_period_hours,
        } => {
            let d = s
                .create_stream(pb::CreateStreamRequest {
                    stream_name,
                    shard_count,
                    retention_period_hours,
                })
                .await
                .map_err(svc("CreateStream"))?
                .into_inner();
            emit(output, description_json(&d), &[], vec![]);
        }
        Command::DeleteStream { stream_name } => {
            s.delete_stream(pb::StreamRequest { stream_name })
                .await
                .map_err(svc("DeleteStream"))?;
        }
        Command::ListStreams => {
            let r = s
                .list_streams(pb::ListStreamsRequest {})
                .await
                .map_err(svc("ListStreams"))?
                .into_inner();
            emit(output, json!({"StreamNames": r.stream_names}), &[], vec![]);
        }
        Command::DescribeStream { stream_name } => {
            let d = s
                .describe_stream(pb::StreamRequest { stream_name })
                .await
                .map_err(svc("DescribeStream"))?
                .into_inner();
            emit(output, description_json(&d), &[], vec![]);
        }
        Command::PutRecord {
            stream_name,
            partition_key,
            data,
        } => {
            let r = s
                .put_record(pb::PutRecordRequest {
                    stream_name,
                    partition_key,
                    data: data.into_bytes(),
                })
                .await
                .map_err(svc("PutRecord"))?
                .into_inner();
            emit(
                output,
                json!({"ShardId": r.shard_id, "SequenceNumber": r.sequence_number}),
                &[],
                vec![],
            );
        }
        Command::GetShardIterator {
            stream_name,
            shard_id,
            shard_iterator_type,
            starting_sequence_number,
            timestamp,
        } => {
            let r = s
                .get_shard_iterator(pb::GetShardIteratorRequest {
                    stream_name,
                    shard_id,
                    shard_iterator_type,
                    starting_sequence_number,
                    timestamp,
                })
                .await
                .map_err(svc("GetShardIterator"))?
                .into_inner();
            emit(
                output,
                json!({"ShardIterator": r.shard_iterator}),
                &[],
                vec![],
            );
        }
        Command::GetRecords {
            shard_iterator,
            limit,
        } => {
            let r = s
                .get_records(pb::GetRecordsRequest {
                    shard_iterator,
                    limit,
                })
                .await
                .map_err(svc("GetRecords"))?
                .into_inner();
            let records: Vec<_> = r
                .records
                .iter()
                .map(|x| {
                    json!({
                        "SequenceNumber": x.sequence_number,
                        "PartitionKey": x.partition_key,
                        "Data": base64::engine::general_purpose::STANDARD.encode(&x.data),
                        "ApproximateArrivalTimestamp": x.approximate_arrival_timestamp,
                    })
                })
                .collect();
            emit(
                output,
                json!({"Records": records, "NextShardIterator": r.next_shard_iterator}),
                &[],
                vec![],
            );
        }
        _ => unreachable!("not a stream command"),
    }
    Ok(())
}
