"""Unit tests, run on your machine with the bindings generated once:

    componentize-py -d wit -w http-function bindings bindings
    PYTHONPATH=bindings python3 -m unittest
"""

import unittest

from app import greeting


class GreetingTest(unittest.TestCase):
    def test_the_greeting_names_the_function_and_the_path(self):
        text = greeting("/hello?x=1")
        self.assertTrue(text.startswith("Hello from {{name}}!"), text)
        self.assertIn("/hello?x=1", text)


if __name__ == "__main__":
    unittest.main()
