import json
import os
import sys
import unittest

HERE = os.path.dirname(__file__)
sys.path[:0] = [os.path.join(HERE, "..", "layer", "python"), os.path.join(HERE, "..", "items")]

import app  # noqa: E402


class Items(unittest.TestCase):
    def test_one_item(self):
        r = app.handler({"pathParameters": {"id": "2"}}, None)
        self.assertEqual(r["statusCode"], 200)
        self.assertEqual(json.loads(r["body"])["name"], "steel")

    def test_missing_item(self):
        self.assertEqual(app.handler({"pathParameters": {"id": "9"}}, None)["statusCode"], 404)


if __name__ == "__main__":
    unittest.main()
