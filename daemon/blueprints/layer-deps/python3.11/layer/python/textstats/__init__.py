"""textstats: the dependency this blueprint keeps in its layer.

A layer's python/ folder is on the function's import path (/opt/python).
"""
import os


def stats(text):
    words = text.split()
    return {
        "words": len(words),
        "longest": max(words, key=len) if words else "",
        "from": os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    }
