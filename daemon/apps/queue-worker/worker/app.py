import json


def process(body):
    job = json.loads(body)
    if "task" not in job:
        raise ValueError("a job names its task")
    return job["task"]


def handler(event, context):
    failures, done = [], []
    for record in event.get("Records", []):
        try:
            done.append(process(record["body"]))
        except Exception as e:  # reported, so only this message is retried
            print(f"message {record['messageId']} failed: {e}")
            failures.append({"itemIdentifier": record["messageId"]})
    print(f"processed {len(done)} job(s)")
    return {"batchItemFailures": failures}
