"""Reading ALERTS by sequence (projector.follow), as the projector role on a real
nats-server running deploy/nats-server.conf: what is read, and how far the views may be
marked read. Only what the stream no longer holds is ever skipped: never a sequence the
stream's state names but the read did not find (a replica behind the leader)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM
from ops.platform import projections as views
from ops.platform.settings import ROLE_JS_API
from projector.follow import unread
from tests.secured import Secured, publish_alert
from tests.support import eventually, projections_or_none, python_module
from tests.workers import make_alert


async def _state(js: JetStreamContext) -> tuple[int, int]:
    state = (await js.stream_info(ALERTS_STREAM)).state
    return state.first_seq, state.last_seq


async def _publish(as_ops: JetStreamContext, *ids: str) -> None:
    for alert_id in ids:
        await publish_alert(as_ops, make_alert(alert_id))


async def test_it_reads_what_follows_the_applied_sequence_in_order(
    as_ops: JetStreamContext, as_projector: Client
) -> None:
    await _publish(as_ops, "a", "b", "c")
    first, last = await _state(as_ops)
    found, up_to = await unread(as_projector, ROLE_JS_API, ALERTS_STREAM, 1, first, last)
    assert [m.seq for m in found] == [2, 3] and up_to == 3
    assert await unread(as_projector, ROLE_JS_API, ALERTS_STREAM, 3, first, last) == ([], 3)


async def test_what_the_stream_dropped_is_skipped_and_nothing_else(
    as_ops: JetStreamContext, as_projector: Client
) -> None:
    await _publish(as_ops, "a", "b", "c")
    await as_ops.purge_stream(ALERTS_STREAM, seq=3)  # 1 and 2 gone (as max_age would)
    first, last = await _state(as_ops)
    assert (first, last) == (3, 3)
    found, up_to = await unread(as_projector, ROLE_JS_API, ALERTS_STREAM, 0, first, last)
    assert [m.seq for m in found] == [3] and up_to == 3
    await as_ops.purge_stream(ALERTS_STREAM)  # all gone: first is past last
    first, last = await _state(as_ops)
    assert await unread(as_projector, ROLE_JS_API, ALERTS_STREAM, 0, first, last) == ([], 3)


async def test_a_sequence_named_but_not_found_is_not_marked_read(
    as_ops: JetStreamContext, as_projector: Client
) -> None:
    # As a direct get answered by a replica behind the leader's state: the state says 5,
    # the read finds nothing after 3. The views stay at 3 and ask again.
    await _publish(as_ops, "a", "b", "c")
    assert await unread(as_projector, ROLE_JS_API, ALERTS_STREAM, 3, 1, 5) == ([], 3)


async def test_the_projector_catches_up_past_dropped_alerts_with_no_lag(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> None:
    await _publish(as_ops, "gone-1", "gone-2", "kept")
    await as_ops.purge_stream(ALERTS_STREAM, seq=3)
    db = tmp_path / "projections.db"
    env = secured.env("projector", ALERTBRIDGE_PROJECTIONS_DB=str(db),
                      ALERTBRIDGE_LAG_INTERVAL="0.2")  # fmt: skip
    proc: subprocess.Popen[bytes] = python_module("projector", env, tmp_path / "projector.log")
    try:

        def read() -> tuple[list[str], dict[str, tuple[int, int]]] | None:
            conn = projections_or_none(db)
            if conn is None:
                return None
            try:
                ids = [a.alert_id for a in views.list_alerts(conn).items]
                return ids, {row.stream: (row.applied, row.lag) for row in views.lag(conn)}
            finally:
                conn.close()

        async def caught_up() -> bool | None:
            found = await asyncio.to_thread(read)
            if found is None:
                return None
            ids, lag = found
            return True if ids == ["kept"] and lag[ALERTS_STREAM] == (3, 0) else None

        await eventually(caught_up, within=30, interval=0.2)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
