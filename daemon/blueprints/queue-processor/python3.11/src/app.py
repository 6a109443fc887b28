"""A queue processor that reports batch item failures.

Each message is an order, {"order": ID, "amount": N}. The batch is not
all-or-nothing: messages that fail are listed in batchItemFailures, and
only they become visible again on the queue (the mapping has
ReportBatchItemFailures); the others are deleted.
"""
import json


class BadOrder(Exception):
    pass


def process(body):
    try:
        order = json.loads(body)
    except ValueError as e:
        raise BadOrder(f"not JSON: {e}") from e
    if not isinstance(order, dict) or "order" not in order:
        raise BadOrder("no order id")
    if order.get("amount", 0) < 0:
        raise BadOrder(f"order {order['order']}: negative amount")
    print(f"processed order {order['order']} ({order.get('amount', 0)})")


def handler(event, context):
    failures = []
    for record in event.get("Records", []):
        try:
            process(record["body"])
        except BadOrder as e:
            print(f"message {record['messageId']} failed: {e}")
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
