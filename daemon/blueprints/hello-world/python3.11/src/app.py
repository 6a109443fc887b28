"""Hello world: greets the caller by the name in the event."""
import os

GREETING = os.environ.get("GREETING", "Hello")


def handler(event, context):
    name = event.get("name", "world")
    print(f"greeting {name} (request {context.aws_request_id})")
    return {"message": f"{GREETING}, {name}!"}
