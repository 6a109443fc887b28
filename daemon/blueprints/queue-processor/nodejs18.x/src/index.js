// A queue processor that reports batch item failures.
//
// Each message is an order, {"order": ID, "amount": N}. The batch is not
// all-or-nothing: messages that fail are listed in batchItemFailures, and
// only they become visible again on the queue (the mapping has
// ReportBatchItemFailures); the others are deleted.
const process_ = (body) => {
  let order;
  try {
    order = JSON.parse(body);
  } catch (e) {
    throw new Error(`not JSON: ${e.message}`);
  }
  if (order === null || typeof order !== "object" || !("order" in order)) {
    throw new Error("no order id");
  }
  if ((order.amount || 0) < 0) {
    throw new Error(`order ${order.order}: negative amount`);
  }
  console.log(`processed order ${order.order} (${order.amount || 0})`);
};

exports.handler = async (event) => {
  const batchItemFailures = [];
  for (const record of event.Records || []) {
    try {
      process_(record.body);
    } catch (e) {
      console.log(`message ${record.messageId} failed: ${e.message}`);
      batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
};
