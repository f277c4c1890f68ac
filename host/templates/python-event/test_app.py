"""Unit tests, run on your machine with the bindings generated once:

    componentize-py -d wit -w event-function bindings bindings
    PYTHONPATH=bindings python3 -m unittest
"""

import unittest

from componentize_py_types import Err
from wit_world.imports.ferry_function_types import Error_InvalidEvent, Event

from app import respond


def event(data):
    return Event(
        id="1",
        source="/test",
        specversion="1.0",
        type="com.example.thing",
        datacontenttype="application/json",
        dataschema=None,
        subject=None,
        time=None,
        extensions=[],
        data=data,
    )


class RespondTest(unittest.TestCase):
    def test_an_event_with_data_is_answered(self):
        out = respond(event(b"{}"))
        self.assertEqual(out.type, "com.example.thing.handled")
        self.assertEqual(out.data, b"{}")

    def test_an_event_without_data_is_invalid(self):
        with self.assertRaises(Err) as refused:
            respond(event(None))
        self.assertIsInstance(refused.exception.value, Error_InvalidEvent)


if __name__ == "__main__":
    unittest.main()
