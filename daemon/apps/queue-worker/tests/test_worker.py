import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "worker"))

import app  # noqa: E402


class Worker(unittest.TestCase):
    def test_a_bad_message_is_reported_alone(self):
        event = {"Records": [
            {"messageId": "a", "body": '{"task": "x"}'},
            {"messageId": "b", "body": "{}"},
        ]}
        self.assertEqual(app.handler(event, None), {"batchItemFailures": [{"itemIdentifier": "b"}]})


if __name__ == "__main__":
    unittest.main()
