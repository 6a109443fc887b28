import os

from common import respond


def handler(event, context):
    params = event.get("queryStringParameters") or {}
    name = params.get("name", "world")
    return respond(200, {"message": f"{os.environ['GREETING']}, {name}!"})
