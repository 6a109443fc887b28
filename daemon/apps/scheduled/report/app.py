import datetime


def handler(event, context):
    kind = event.get("report", "usage")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"building the {kind} report at {now}")
    return {"report": kind, "generated": now}
