"""A function that imports its dependency from a layer: the package
`textstats` is not in this code, it is in the layer deployed with it."""
import textstats


def handler(event, context):
    return textstats.stats(event.get("text", ""))
