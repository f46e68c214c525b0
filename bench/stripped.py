"""`python -m bench.stripped`: the floor under the ingress, served as the ingress is.

The ingress's own server, protocol, settings and Litestar app shape (`ingress.serve`,
an ASGI mount at /webhook), but the webhook only reads the body, publishes it to
`ALERTS` with `publish_async` and a `Nats-Msg-Id`, waits for the PubAck and answers:
no checks, no secret, no trace context, no metrics. The throughput phase serves it
beside the shipped ingress in every round, so that the shipped webhook's CPU per
request can be stated against this floor measured in the same minutes
(docs/performance.md, "Where the ingress's time goes").

Not a product: nothing here is reachable from `alertbridge up`; it lives in the bench.
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, asgi, get

from ingress import serve
from ingress.settings import load_ingress
from ops.platform.natsconn import connect, jetstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar.types import Receive, Scope, Send

_ANSWER = b'{"ok":true,"id":"%s","duplicate":%s}'
_START: Any = {"type": "http.response.start", "status": 200,
          "headers": [(b"content-type", b"application/json")]}  # fmt: skip


def create_app(settings: Any) -> Litestar:
    """The stripped webhook: read, publish_async, answer."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        nc = await connect(settings, name="bench-stripped")
        state["js"] = jetstream(nc, settings)
        try:
            yield
        finally:
            await nc.drain()

    @asgi("/webhook", is_mount=True, copy_scope=False)
    async def webhook(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message: Any = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        msg_id = hashlib.blake2b(body, digest_size=16).hexdigest()  # a stand-in for the id
        future = await state["js"].publish_async(
            "alerts.in.default.STRIPPED", body, headers={"Nats-Msg-Id": msg_id}
        )
        ack = await future
        await send(_START)
        duplicate = b"true" if ack.duplicate else b"false"
        answer: Any = {"type": "http.response.body", "body": _ANSWER % (msg_id.encode(), duplicate)}
        await send(answer)

    @get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ok": "js" in state}

    return Litestar(route_handlers=[webhook, readyz], lifespan=[lifespan], openapi_config=None)


def main() -> int:
    """Serve until SIGINT/SIGTERM, with the ingress's settings from the environment."""
    settings, _ = load_ingress(os.environ)
    app = create_app(settings)
    server = serve.server(app, settings)
    sock = serve.listening_socket(settings)
    server.run(sockets=[sock] if sock is not None else None)
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
