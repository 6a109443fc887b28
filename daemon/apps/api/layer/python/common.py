"""Shared by the application's functions (the Common layer, in /opt/python)."""

import json


def respond(status, body):
    """An API Gateway proxy response with a JSON body."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }
