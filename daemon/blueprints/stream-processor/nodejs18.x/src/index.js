// A stream processor that keeps per-shard order.
//
// A batch comes from one shard, in sequence order. Records are handled one
// after the other; at the first one that fails the function stops and
// reports it in batchItemFailures: the mapping then checkpoints before it
// and hands the shard's records again from there, so no record is handled
// before one that came earlier on its shard.
const handle = (text) => {
  if (text === "POISON") {
    throw new Error("a record this function cannot handle");
  }
  console.log(`handled: ${text}`);
};

exports.handler = async (event) => {
  const processed = [];
  for (const record of event.Records || []) {
    const k = record.kinesis;
    const text = Buffer.from(k.data, "base64").toString("utf8");
    try {
      handle(text);
    } catch (e) {
      console.log(`record ${k.sequenceNumber} failed: ${e.message}; later records wait`);
      return { batchItemFailures: [{ itemIdentifier: k.sequenceNumber }], processed };
    }
    processed.push(text);
  }
  return { batchItemFailures: [], processed };
};
