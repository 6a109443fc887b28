import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "report"))

import app  # noqa: E402


class Report(unittest.TestCase):
    def test_names_its_report(self):
        self.assertEqual(app.handler({"report": "billing"}, None)["report"], "billing")


if __name__ == "__main__":
    unittest.main()
