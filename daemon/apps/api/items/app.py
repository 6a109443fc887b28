from common import respond

ITEMS = {"1": {"id": "1", "name": "flint"}, "2": {"id": "2", "name": "steel"}}


def handler(event, context):
    item_id = (event.get("pathParameters") or {}).get("id")
    if item_id is None:
        return respond(200, {"items": sorted(ITEMS)})
    if item_id not in ITEMS:
        return respond(404, {"message": f"no item {item_id}"})
    return respond(200, ITEMS[item_id])
