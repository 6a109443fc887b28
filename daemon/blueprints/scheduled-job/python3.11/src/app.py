"""A scheduled job: a nightly clean-up.

The schedule (cron(0 3 * * ? *), every day at 03:00 UTC) invokes it with
EventBridge's scheduled event. The job works from the event's `time`, not
the clock, so a late or repeated firing does the same work.
"""
import datetime
import os

RETENTION_DAYS = int(os.environ.get("RETENTION_DAYS", "30"))


def handler(event, context):
    when = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    cutoff = (when - datetime.timedelta(days=RETENTION_DAYS)).date().isoformat()
    print(f"clean-up for {event['time']}: deleting what is older than {cutoff}")
    return {
        "job": "cleanup",
        "trigger": event.get("detail-type"),
        "scheduled_for": event["time"],
        "delete_before": cutoff,
    }
