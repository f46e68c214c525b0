"""Reading ALERTS without a consumer: by sequence, from where the views stand.

Why not a durable consumer, as on EVENTS and DLQ: the worker's account imports
`$JS.API.CONSUMER.MSG.NEXT.ALERTS.*` for its partition consumers, and a subject wildcard
matches any consumer name, so any consumer on ALERTS is within a worker's reach: a
compromised worker could take the projector's messages and ack them (docs/security.md,
§9). Reading by sequence leaves nothing to take. The projector reads the stream's state
(its first and last sequence, which the lag needs anyway) and, while the last is past
what it has applied, the messages after that by batched direct get, in order, folded in
one transaction each with the new applied sequence, as a consumer's batch would be: a
projector killed anywhere starts again after the last sequence it committed.

Only messages the stream no longer holds are ever skipped: when nothing after the
applied sequence is found, the views are marked read up to the stream's first sequence
less one (what `max_age` removed), never up to the last sequence. A direct get answered
by a replica that has not stored the newest messages yet finds nothing and is asked
again at the next look, instead of marking them read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from projector.rebuild import read_range

if TYPE_CHECKING:
    from nats.aio.client import Client

    from projector.fold import Stored

# How often the stream's state is read once the views have caught up: the delay of an
# alert's first appearance in the views (its events come through EVENTS' consumer).
LOOK_EVERY: Final = 0.25


async def unread(
    nc: Client, js_api: str, stream: str, applied: int, first: int, last: int
) -> tuple[list[Stored], int]:
    """The next messages of `stream` after `applied` (at most one batch), and how far
    folding them marks the stream read. `first` and `last`: the stream's state."""
    if last <= applied:
        return [], applied
    found = await read_range(nc, js_api, stream, applied + 1, last)
    if found:
        return found, found[-1].seq
    return [], max(applied, min(last, first - 1))  # gone from the stream, or not yet seen
