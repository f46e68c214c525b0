"""The ingress's Publisher against a real nats-server: what it counts (503s, duplicates),
the ids it gives bodies without one, and a stop that really lets go of NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from ingress.publisher import Publisher, UnavailableError
from ingress.telemetry import IngressMetrics
from tests.support import NatsServer, eventually, free_port
from tests.test_ingress import settings_for
from tests.workers import make_alert


async def _ready(publisher: Publisher) -> bool | None:
    return True if await publisher.ready() == [] else None


async def test_each_503_and_each_duplicate_is_counted_once(
    nats_server: NatsServer, nc: Client
) -> None:
    metrics = IngressMetrics()
    down = Publisher(settings_for(f"nats://127.0.0.1:{free_port()}"), metrics)
    await down.start()
    try:
        for _ in range(2):
            try:
                await down.publish(make_alert("down"))
            except UnavailableError as exc:
                assert str(exc) == "not connected to NATS"
            else:
                raise AssertionError("published without a server")
    finally:
        await down.stop()
    assert (metrics.unavailable, metrics.duplicates) == (2, 0)

    up = Publisher(settings_for(nats_server.url), metrics)
    await up.start()
    try:
        await eventually(lambda: _ready(up))
        alert = make_alert("counted")
        assert await up.publish(alert) == ("counted", False)
        for _ in range(2):
            assert await up.publish(alert) == ("counted", True)
    finally:
        await up.stop()
    assert (metrics.unavailable, metrics.duplicates) == (2, 2)


async def test_a_body_without_id_gets_its_hash_and_receipt_and_keeps_them_for_resends(
    nats_server: NatsServer, nc: Client
) -> None:
    publisher = Publisher(settings_for(nats_server.url), IngressMetrics())
    await publisher.start()
    try:
        await eventually(lambda: _ready(publisher))
        alert = make_alert("")
        ms = int(alert.received_at.timestamp() * 1000)
        one, two = "a" * 32, "b" * 32
        assert await publisher.publish(alert, digest=one) == (f"{one}-{ms}", False)
        # Another body (another hash) at the same moment is another alert, not a resend.
        assert await publisher.publish(alert, digest=two) == (f"{two}-{ms}", False)
        later = make_alert("", symbol="NYSE:KO")  # a resend: received later, same hash
        assert await publisher.publish(later, digest=one) == (f"{one}-{ms}", True)
    finally:
        await publisher.stop()


async def test_stop_closes_the_connection(nats_server: NatsServer, nc: Client) -> None:
    publisher = Publisher(settings_for(nats_server.url), IngressMetrics())
    await publisher.start()
    await eventually(lambda: _ready(publisher))
    await publisher.stop()
    assert await publisher.ready() == ["nats: not connected"]


async def test_a_publisher_stopped_before_nats_came_up_never_connects(tmp_path: Path) -> None:
    """stop() ends the background connect: a server that comes up later finds no one."""
    port = free_port()
    publisher = Publisher(settings_for(f"nats://127.0.0.1:{port}"), IngressMetrics())
    await publisher.start()
    await publisher.stop()
    server = NatsServer(tmp_path / "late", port=port).start()
    try:
        # What is tested is that time passes and nothing happens: a connect still going
        # on retries every second (ops.platform.natsconn) and would be in by now.
        await asyncio.sleep(3)
        assert await publisher.ready() == ["nats: not connected"]
    finally:
        server.stop()
