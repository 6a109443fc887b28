"""An HTTP-style handler behind an API Gateway proxy integration.

GET /hello?name=NAME answers a JSON greeting; POST /hello takes
{"name": ...} as its body; anything else is a 404 or a 405.
"""
import base64
import json


def respond(status, payload):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(payload, separators=(",", ":")),
    }


def handler(event, context):
    path = event.get("path") or "/"
    method = event.get("httpMethod") or "GET"
    if path != "/hello":
        return respond(404, {"message": f"no route for {path}"})
    if method == "GET":
        name = (event.get("queryStringParameters") or {}).get("name", "world")
    elif method == "POST":
        body = event.get("body") or "{}"
        if event.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        try:
            name = json.loads(body).get("name", "world")
        except (ValueError, AttributeError):
            return respond(400, {"message": "the body is not a JSON object"})
    else:
        return respond(405, {"message": f"{method} is not allowed"})
    return respond(200, {"message": f"hello, {name}", "method": method, "path": path})
