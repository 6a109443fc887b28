"""An asynchronous worker with destinations.

Callers invoke it with --invocation-type Event and do not wait. Its answer
goes, with the request, to the success destination (the event bus
<function>-succeeded); an error, once the retry is spent too, goes to the
failure destination (<function>-failed). Read them with
`flintctl subscribe-invocation-records --event-bus <function>-succeeded`.
"""


def handler(event, context):
    if "image" not in event:
        raise ValueError("the task names no image")
    size = int(event.get("size", 64))
    print(f"{event.get('task')}: {event['image']} at {size}x{size}")
    return {
        "task": event.get("task"),
        "image": event["image"],
        "status": "done",
        "size": f"{size}x{size}",
    }
