"""The one place alertbridge reaches into nats-py's internals (checked against 2.16).

- `client_of(js)`: the connection behind a JetStream context (`js._nc`), and
  `api_prefix(js)`: its API prefix (`js._prefix`). `worker.pull` builds its own pull
  requests: nats-py's `fetch` sends one request (and runs a task and a timer) per
  batch, where one long-lived request per consumer is enough; 2.16 has no public way
  to do that, nor priority groups (the pull request's `group` and pin `id`, and
  `CONSUMER.UNPIN`, are sent by `worker.pull` through the same two). This goes when
  nats-py grows a consume API.
- `client_of_msg(msg)`: the connection a message came on (`msg._client`), to publish
  `+TERM <reason>`: nats-py's `term()` takes no reason, and the reason reaches the
  MSG_TERMINATED advisory (the DLQ's "why"). This goes when `term(reason)` exists.

`pyproject.toml` pins nats-py to the minor version named here, and
`tests/test_compat.py` fails when the installed one differs: an upgrade fails a test,
not production.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

CHECKED: Final = "2.16"


def client_of(js: JetStreamContext) -> Client:
    """The connection a JetStream context sends on."""
    client: Client = js._nc
    return client


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API prefix of a context (`$JS.API`, or an imported one)."""
    prefix: str = js._prefix
    return prefix


def client_of_msg(msg: Msg) -> Client:
    """The connection a message was delivered on."""
    client: Client = msg._client
    return client
