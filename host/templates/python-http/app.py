"""{{name}}: an HTTP function for Ferry, in Python (componentize-py).

It targets Ferry's `http-function` world, which is the standard `wasi:http/proxy` world: it gets
the request as it arrived and writes its answer to the response body stream.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def greeting(path: str) -> str:
    """What the function answers to a request for `path` (path and query)."""
    return f"Hello from {{name}}! You asked for {path}\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        # What a function prints goes to its log: `ferry logs {{name}}`.
        print(f"request for {path}")
        body = greeting(path).encode()
        response = OutgoingResponse(
            Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        )
        outgoing = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with outgoing.write() as stream:
            # One write takes at most 4096 bytes; write bigger bodies in chunks.
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(outgoing, None)
