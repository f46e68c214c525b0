"""A worker cannot keep an alert out of the views: the hole that was, closed (docs/security.md
§9, "The projector holds no consumer on ALERTS"), on a real nats-server running
deploy/nats-server.conf, with the projector as a process of its own.

The worker's account imports `$JS.API.CONSUMER.MSG.NEXT.ALERTS.*` and `$JS.ACK.ALERTS.>`
for its partition consumers, and a subject wildcard matches any consumer name: every
consumer on ALERTS is within a worker's reach. The projector used to read ALERTS through
its own durable there, so a worker could take an alert from it and the views missed the
alert until the next one came. Now it reads ALERTS by sequence and holds no consumer
there. The test replays the old attack on a `projector` durable left on ALERTS by an
older version: the worker takes the alert from it and acks it, and the alert is in the
views all the same, with no second alert needed and no lag left. (The worker's own
partition consumers are its to take from in any case.) The worker still reaches no
projector consumer on EVENTS or DLQ.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, event_subject
from contracts.topology import PROJECTOR, partition_durable
from ops.platform import projections as views
from ops.platform.settings import Common, load
from tests.secured import DENIED_WITHIN, Secured, publish_alert
from tests.support import eventually, projections_or_none, python_module
from tests.workers import make_alert

DENIED = (TimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


def start(secured: Secured, db: Path) -> subprocess.Popen[bytes]:
    """`python -m projector` as the projector role, its file `db`."""
    env = secured.env(
        "projector", ALERTBRIDGE_PROJECTIONS_DB=str(db), ALERTBRIDGE_LAG_INTERVAL="0.2"
    )
    return python_module("projector", env, db.with_name("projector.log"))


def _read(db: Path) -> tuple[list[str], dict[str, int]] | None:
    """The alert ids the views hold, and the ALERTS lag they record (None: no views yet)."""
    conn = projections_or_none(db)
    if conn is None:
        return None
    try:
        ids = [a.alert_id for a in views.list_alerts(conn, limit=views.MAX_LIMIT).items]
        return ids, {row.stream: row.lag for row in views.lag(conn)}
    finally:
        conn.close()


def test_the_projector_has_no_consumer_on_alerts() -> None:
    topology = load(Common, {"ALERTBRIDGE_PARTITIONS": "4"}).topology()
    on_alerts = [c.durable for c in topology.consumers if c.stream == ALERTS_STREAM]
    assert PROJECTOR not in on_alerts
    assert on_alerts == [partition_durable(p) for p in range(4)]  # the worker's wildcard's


async def test_a_worker_taking_every_alerts_delivery_keeps_nothing_from_the_views(
    secured: Secured, as_ops: JetStreamContext, as_worker: Client, tmp_path: Path
) -> None:
    projector_db = tmp_path / "projections.db"
    # A deployment upgraded from the version that had one still has this durable.
    await as_ops.add_consumer(
        ALERTS_STREAM, ConsumerConfig(durable_name=PROJECTOR, ack_policy=AckPolicy.EXPLICIT)
    )
    await publish_alert(as_ops, make_alert("coveted"))
    worker = secured.js("worker", as_worker)
    sub = await worker.pull_subscribe_bind(durable=PROJECTOR, stream=ALERTS_STREAM)
    (msg,) = await sub.fetch(1, timeout=3)  # still allowed: the wildcard, see above
    await msg.ack_sync()
    await sub.unsubscribe()
    info = await as_ops.consumer_info(ALERTS_STREAM, PROJECTOR)
    assert info.ack_floor.stream_seq == 1 and info.num_pending == 0  # taken for good
    proc = start(secured, projector_db)
    try:

        async def in_the_views() -> bool | None:
            if (found := await asyncio.to_thread(_read, projector_db)) is None:
                return None
            ids, lag = found
            return True if ids == ["coveted"] and lag[ALERTS_STREAM] == 0 else None

        # No second alert is needed to bring it in (the old projector waited for one).
        await eventually(in_the_views, within=30, interval=0.2)
        await publish_alert(as_ops, make_alert("next"))

        async def both() -> bool | None:
            if (found := await asyncio.to_thread(_read, projector_db)) is None:
                return None
            ids, lag = found
            return True if sorted(ids) == ["coveted", "next"] and lag[ALERTS_STREAM] == 0 else None

        await eventually(both, within=30, interval=0.2)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


@pytest.mark.parametrize("stream", [EVENTS_STREAM, DLQ_STREAM])
async def test_the_worker_reaches_no_projector_consumer(
    secured: Secured, as_ops: JetStreamContext, as_worker: Client, stream: str
) -> None:
    subject = "dlq.alerts.a.X" if stream == DLQ_STREAM else event_subject("expired", "a", "X")
    await as_ops.publish(subject, b"{}")
    worker = secured.js("worker", as_worker, timeout=1)
    sub = await worker.pull_subscribe_bind(durable=PROJECTOR, stream=stream)
    try:
        with pytest.raises(DENIED):
            await asyncio.wait_for(sub.fetch(1, timeout=DENIED_WITHIN), 2)
    finally:
        await sub.unsubscribe()
    info = await as_ops.consumer_info(stream, PROJECTOR)
    assert info.delivered.stream_seq == 0 and info.num_pending == 1
