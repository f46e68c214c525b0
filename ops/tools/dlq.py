"""The operators' side of the dead-letter stream: list, show, replay, purge.

Reading one entry and replaying it is ops.platform.deadletters, shared with the console;
what a replay does is said there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.errors import APIError, NotFoundError

from contracts.subjects import DLQ_PREFIX, DLQ_STREAM
from ops.platform.deadletters import (
    DeadLetter,
    DlqError,
    NoEntryError,
    decode_entry,
    entry,
    replay,
)
from ops.tools.streams import read_all

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["DeadLetter", "DlqError", "NoEntryError", "entries", "entry", "purge", "replay"]


async def entries(js: JetStreamContext, reason: str | None = None) -> list[DeadLetter]:
    """Every DLQ entry, oldest first; `reason` keeps those whose reason starts with it."""
    found = [
        decode_entry(msg.metadata.sequence.stream, msg.data, msg.headers)
        for msg in await read_all(js, DLQ_STREAM, f"{DLQ_PREFIX}.>")
    ]
    return [e for e in found if reason is None or e.reason.startswith(reason)]


# nats-server's error codes for deleting a sequence the stream does not hold: one
# deleted already (10043), one past its last (10057, "stream store EOF").
NO_MESSAGE = frozenset({10043, 10057})


async def purge(js: JetStreamContext, dlq_seq: int) -> None:
    """Remove one entry for good."""
    try:
        await js.delete_msg(DLQ_STREAM, dlq_seq)
    except NotFoundError:
        raise NoEntryError(f"no DLQ entry {dlq_seq}") from None
    except APIError as exc:  # a purged entry, or one past the end, is not "not found"
        if exc.err_code not in NO_MESSAGE:
            raise
        raise NoEntryError(f"no DLQ entry {dlq_seq}") from None
