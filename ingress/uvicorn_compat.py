"""The one place alertbridge reaches into uvicorn's internals (checked against 0.54).

`ingress.serve.IngressProtocol` extends uvicorn's httptools protocol, which is not a
public API: it overrides the parser callbacks (`on_message_begin`, `on_url`,
`on_header`, `on_headers_complete`, `on_body`, `on_message_complete`),
`data_received`, `connection_made` and `connection_lost`, and reads `loop`,
`transport`, `app`, `client` and the current request's `cycle`. uvicorn has no hook for
a cap on the request head, a deadline for the whole request, or the client
certificate in the ASGI scope; this can go when it has them.

`pyproject.toml` pins uvicorn to the minor version named here, and
`tests/test_compat.py` fails when the installed one differs: an upgrade fails a test,
not production.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CHECKED: Final = "0.54"

__all__ = ["CHECKED", "HttpToolsProtocol", "answer_begun", "answer_pending"]


def answer_pending(protocol: HttpToolsProtocol) -> bool:
    """Whether the app is still answering a request on this connection (uvicorn keeps
    that on its private `cycle` object)."""
    cycle = protocol.cycle
    return cycle is not None and not cycle.response_complete


def answer_begun(protocol: HttpToolsProtocol) -> bool:
    """Whether the answer to the current request has begun to be sent."""
    cycle = protocol.cycle
    return cycle is not None and bool(cycle.response_started)
