"""{{name}}: an event function for Ferry, in Python (componentize-py).

It targets Ferry's `event-function` world: it gets one CloudEvent at a time and may answer with
one. `wit/` holds Ferry's WIT (`ferry wit` writes it again).
"""

from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.ferry_function_types import Error_InvalidEvent, Event


def respond(event: Event) -> Optional[Event]:
    """The answer to `event`: an event of type `<type>.handled` with the same data.

    An event without data is refused with the typed error `invalid-event`: it will never
    succeed, so Ferry does not retry it.
    """
    if event.data is None:
        raise Err(Error_InvalidEvent(
            f"{{name}} needs events with data; {event.id} from {event.source} has none"
        ))
    return Event(
        id=f"{event.id}-handled",
        source="/{{name}}",
        specversion="1.0",
        type=f"{event.type}.handled",
        datacontenttype=event.datacontenttype,
        dataschema=None,
        subject=event.subject,
        time=None,
        extensions=[],
        data=event.data,
    )


class Handler(exports.Handler):
    def handle(self, event: Event) -> Optional[Event]:
        # What a function prints goes to its log: `ferry logs {{name}}`.
        print(f"event {event.id} of type {event.type} from {event.source}")
        return respond(event)
