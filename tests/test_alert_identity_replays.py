"""Who an alert is, checked from outside: no webhook can take a replay's message id, a
replay whose id is taken keeps its DLQ entry, and a replay run again after a crash is its
own duplicate. Real nats-server, real HTTP (uvicorn), orders counted at the broker
boundary."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.headers import MSG_ID
from contracts.messages import Alert, Executed, Replayed, alert_decoder, replay_msg_id
from contracts.subjects import ALERTS_STREAM, alert_subject
from ops.tools import dlq
from tests.alert_identity_support import (
    Counting,
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    http_fixture,  # noqa: F401 (the `http` fixture)
    paper_fixture,  # noqa: F401 (the `paper` fixture)
    post,
    stored_alerts,
    tv,
    url_fixture,  # noqa: F401 (the `url` fixture)
    worker_settings_fixture,  # noqa: F401 (the `worker_settings` fixture)
)
from tests.support import eventually
from tests.workers import events_of, make_alert, paper_rows, publish
from worker.dlq import DeadLetters
from worker.execute import client_order_id
from worker.settings import WorkerSettings


class CrashedError(Exception):
    """The operator's process died here."""


class CrashesBeforeDelete(JetStreamContext):
    """A real JetStream context whose DLQ delete never happens: a crash after the
    replay was published (and recorded), before its entry was removed."""

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        raise CrashedError


# --- replays: a message id no webhook can take -----------------------------------------


async def test_a_webhook_cannot_forge_a_replays_message_id(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient, worker_settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    ours = client_order_id("default", "x")
    broker.refuse_once.add(ours)  # x is dead-lettered on its first try
    # The replay id of x, round 1, in the old form and in the current one; then x.
    for forged in ("x:replay:1", "replay.1.alert.default.x", "x"):
        assert (await post(http, url, tv(id=forged)))["duplicate"] is False
    (entry,) = await eventually(lambda: _entries(js, 1))
    assert entry.alert_id == "x"
    event = await dlq.replay(js, entry.dlq_seq)
    assert await dlq.entries(js) == []
    raw = await js.get_msg(ALERTS_STREAM, seq=event.stream_seq, direct=True)
    stored = alert_decoder.decode(raw.data or b"")
    assert (stored.account, stored.id, stored.replay) == ("default", "x", 1)

    async def executed_again() -> Executed | None:
        done = [e for e in await events_of(js, "executed") if isinstance(e, Executed)]
        return next((e for e in done if (e.alert_id, e.replay) == ("x", 1)), None)

    assert (await eventually(executed_again)).client_order_id == ours
    assert [r[0] for r in paper_rows(worker_settings.paper_db)].count(ours) == 1
    assert broker.placed[ours] == 2  # refused once, then placed by the replay


async def _entries(js: JetStreamContext, n: int) -> list[dlq.DeadLetter] | None:
    found = await dlq.entries(js)
    return found if len(found) >= n else None


async def _dead_letter(js: JetStreamContext, alert: Alert) -> int:
    """Store `alert` on ALERTS and give it a DLQ entry, as the worker does; its DLQ seq."""
    seq = await publish(js, alert)
    raw = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    dlq_seq, _ = await DeadLetters(js).write(
        data=raw.data or b"", original_headers=raw.headers, subject=raw.subject or "",
        seq=seq, reason="terminated: refused", deliveries=1, last_error=None,
    )  # fmt: skip
    return dlq_seq


# What else holds the message id of x's replay 1 (published as the operator could).
IMPOSTORS: dict[str, Callable[[Alert], Alert]] = {
    "another alert": lambda x: make_alert("impostor", replay=1),
    "another account's": lambda x: msgspec.structs.replace(x, account="alpha", replay=1),
    "an earlier round": lambda x: x,
}


@pytest.mark.parametrize("impostor", list(IMPOSTORS))
async def test_a_replay_whose_id_is_taken_keeps_its_entry(nc: Client, impostor: str) -> None:
    js = nc.jetstream()
    x = make_alert("x")
    dlq_seq = await _dead_letter(js, x)
    taken = replay_msg_id(msgspec.structs.replace(x, replay=1))
    other: Alert = IMPOSTORS[impostor](x)
    await js.publish(
        alert_subject(other.account, other.symbol), msgspec.json.encode(other),
        headers={MSG_ID: taken},
    )  # fmt: skip
    with pytest.raises(dlq.DlqError, match="the entry is kept"):
        await dlq.replay(js, dlq_seq)
    assert [e.dlq_seq for e in await dlq.entries(js)] == [dlq_seq]
    assert [e for e in await events_of(js) if isinstance(e, Replayed)] == []
    assert len(await stored_alerts(js)) == 2  # x and the impostor, no replay


async def test_a_replay_run_again_after_a_crash_is_its_own_duplicate(nc: Client) -> None:
    js = nc.jetstream()
    dlq_seq = await _dead_letter(js, make_alert("x"))
    with pytest.raises(CrashedError):
        await dlq.replay(CrashesBeforeDelete(nc), dlq_seq)  # published, entry still there
    assert [e.dlq_seq for e in await dlq.entries(js)] == [dlq_seq]
    event = await dlq.replay(js, dlq_seq)  # the operator runs it again
    assert await dlq.entries(js) == []
    alerts = await stored_alerts(js)
    assert [(a.id, a.replay) for a in alerts] == [("x", 0), ("x", 1)]  # one replay stored
    assert event.stream_seq == 2 and event.replay == 1
    assert len([e for e in await events_of(js) if isinstance(e, Replayed)]) == 1
