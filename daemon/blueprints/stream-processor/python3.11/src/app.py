"""A stream processor that keeps per-shard order.

A batch comes from one shard, in sequence order. Records are handled one
after the other; at the first one that fails the function stops and reports
it in batchItemFailures: the mapping then checkpoints before it and hands
the shard's records again from there, so no record is handled before one
that came earlier on its shard.
"""
import base64


def handle(text):
    if text == "POISON":
        raise ValueError("a record this function cannot handle")
    print(f"handled: {text}")


def handler(event, context):
    processed = []
    for record in event.get("Records", []):
        k = record["kinesis"]
        text = base64.b64decode(k["data"]).decode("utf-8", "replace")
        try:
            handle(text)
        except ValueError as e:
            print(f"record {k['sequenceNumber']} failed: {e}; later records wait")
            return {
                "batchItemFailures": [{"itemIdentifier": k["sequenceNumber"]}],
                "processed": processed,
            }
        processed.append(text)
    return {"batchItemFailures": [], "processed": processed}
