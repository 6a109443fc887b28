"""A SnapStart-style function.

Its init (loading a "model") runs once, when the version is published and
its snapshot is taken; every instance of the version starts from that
snapshot and skips it. The hooks show where to drop what must not be
shared between clones (connections, secrets, randomness) and where to
make it fresh again.
"""
import os
import time
import uuid

from snapshot_restore_py import register_after_restore, register_before_snapshot

INIT_TYPE = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
time.sleep(0.5)  # an expensive init: a restored instance does not pay it
MODEL = {"state": "loaded", "loaded_at": time.time()}
HOOKS = {"before": 0, "after": 0}
CLONE = {"id": None}


@register_before_snapshot
def before_snapshot():
    # Drop what must not be shared by every clone of the snapshot.
    HOOKS["before"] += 1
    CLONE["id"] = None


@register_after_restore
def after_restore():
    # Make it fresh in each clone.
    HOOKS["after"] += 1
    CLONE["id"] = str(uuid.uuid4())


def handler(event, context):
    return {
        "init_type": INIT_TYPE,
        "model": MODEL["state"],
        "before_snapshot_hooks": HOOKS["before"],
        "after_restore_hooks": HOOKS["after"],
        "clone": CLONE["id"],
        "question": event.get("question"),
    }
