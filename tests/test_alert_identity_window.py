"""Who an alert is, checked from outside: a body without `id` is one alert only within the
resend window (held in NATS: across ingress processes and a restart), an explicit id
keeps the long window, and a signed request's id covers its timestamp. Real nats-server,
real HTTP (uvicorn or `python -m ingress`), orders counted at the broker boundary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.subjects import RESENDS_STREAM
from ingress.auth import sign
from ops.platform import provision
from ops.platform.settings import load
from tests.alert_identity_support import (
    Counting,
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    http_fixture,  # noqa: F401 (the `http` fixture)
    paper_fixture,  # noqa: F401 (the `paper` fixture)
    post,
    stored_alerts,
    tv,
    url_fixture,  # noqa: F401 (the `url` fixture)
    worked_off,
    worker_settings_fixture,  # noqa: F401 (the `worker_settings` fixture)
)
from tests.ingress_support import Process, ingress_env, ingress_process, serving_ingress, wait_ready
from tests.ingress_support import settings as ingress_settings
from tests.support import NatsServer, eventually
from tests.workers import paper_rows
from worker.execute import client_order_id
from worker.settings import WorkerSettings

HMAC_KEY = "k" * 32
Shorten = Callable[[], Awaitable[None]]


@pytest.fixture
def shorten(nc: Client, worker_env: dict[str, str]) -> Shorten:
    """Provision as an operator would with ALERTBRIDGE_RESEND_WINDOW=1 (the stream's
    max_age: the window's only source)."""
    short = load(WorkerSettings, {**worker_env, "ALERTBRIDGE_RESEND_WINDOW": "1"})
    return lambda: provision.apply(nc.jetstream(), short.topology())


async def window_over(js: JetStreamContext) -> bool | None:
    """True once every resend key has aged out of RESENDS."""
    return True if (await js.stream_info(RESENDS_STREAM)).state.messages == 0 else None


# --- bodies without `id`: the resend window --------------------------------------------


async def test_a_resend_within_the_window_is_the_same_alert(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient
) -> None:
    js = nc.jetstream()
    first = await post(http, url, tv())
    await asyncio.sleep(5)  # the condition under test: the same body, 5 s later
    second = await post(http, url, tv())
    assert first["duplicate"] is False and second == {**first, "duplicate": True}
    await eventually(lambda: worked_off(js))
    assert broker.placed == {client_order_id("default", first["id"]): 1}
    assert [a.id for a in await stored_alerts(js)] == [first["id"]]


async def test_after_the_window_the_same_body_is_a_new_alert(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient, shorten: Shorten,
    worker_settings: WorkerSettings,
) -> None:  # fmt: skip
    js = nc.jetstream()
    await shorten()
    first = await post(http, url, tv())
    assert (await js.stream_info(RESENDS_STREAM)).state.messages == 1  # its key
    await eventually(lambda: window_over(js))
    second = await post(http, url, tv())
    assert first["duplicate"] is False and second["duplicate"] is False
    assert second["id"] != first["id"]
    await eventually(lambda: worked_off(js))
    assert broker.placed == {client_order_id("default", a["id"]): 1 for a in (first, second)}
    assert len(paper_rows(worker_settings.paper_db)) == 2


async def test_the_window_holds_across_ingress_processes_and_a_restart(
    nats_server: NatsServer, nc: Client, tmp_path: Path, http: httpx.AsyncClient,
    shorten: Shorten,
) -> None:  # fmt: skip
    js = nc.jetstream()
    env = ingress_env(nats_server.url)

    def at(process: Process) -> str:
        return f"http://127.0.0.1:{process.port}"

    with (
        ingress_process(env, tmp_path / "a.log") as a,
        ingress_process(env, tmp_path / "b.log") as b,
    ):
        await asyncio.gather(wait_ready(at(a), http), wait_ready(at(b), http))
        first = await post(http, at(a), tv())
        via_b = await post(http, at(b), tv())
        await asyncio.to_thread(a.stop)
        with ingress_process(env, tmp_path / "a2.log") as restarted:
            await wait_ready(at(restarted), http)
            after_restart = await post(http, at(restarted), tv())
        await shorten()  # the window ends: the key ages out of RESENDS
        await eventually(lambda: window_over(js))
        later = await post(http, at(b), tv())
    assert first["duplicate"] is False
    assert via_b == after_restart == {**first, "duplicate": True}
    assert later["duplicate"] is False and later["id"] != first["id"]
    assert [x.id for x in await stored_alerts(js)] == [first["id"], later["id"]]


async def test_an_explicit_id_keeps_the_long_window(
    nc: Client, url: str, http: httpx.AsyncClient, shorten: Shorten
) -> None:
    js = nc.jetstream()
    await shorten()
    first = await post(http, url, tv(id="explicit-1"))
    witness = await post(http, url, tv(qty=2))  # no id: its key marks the window
    await eventually(lambda: window_over(js))
    again = await post(http, url, tv(id="explicit-1"))
    witness_again = await post(http, url, tv(qty=2))
    assert first == {"ok": True, "id": "explicit-1", "duplicate": False}
    assert again == {**first, "duplicate": True}
    assert witness_again["duplicate"] is False  # the resend window did pass
    ids = [a.id for a in await stored_alerts(js)]
    assert ids == ["explicit-1", witness["id"], witness_again["id"]]


async def test_a_signed_request_is_known_by_its_timestamp_not_the_resend_window(
    nats_server: NatsServer, nc: Client, http: httpx.AsyncClient, shorten: Shorten
) -> None:
    js = nc.jetstream()
    await shorten()  # 1 s: far shorter than the 300 s HMAC window
    body = tv(secret=None, qty=3)

    def signed(timestamp: int) -> dict[str, str]:
        return {"X-Signature": sign(HMAC_KEY.encode(), str(timestamp), body),
                "X-Timestamp": str(timestamp)}  # fmt: skip

    signed_at = int(time.time())
    async with serving_ingress(ingress_settings(nats_server.url, hmac_secrets=HMAC_KEY)) as url:
        first = await post(http, url, body, signed(signed_at))
        witness = await post(http, url, tv(qty=7))  # unsigned, no id: marks the window
        await eventually(lambda: window_over(js))
        replayed = await post(http, url, body, signed(signed_at))  # a captured request
        resigned_at = int(time.time())
        assert resigned_at > signed_at  # a second or more has passed
        resigned = await post(http, url, body, signed(resigned_at))
    assert first["duplicate"] is False
    assert replayed == {**first, "duplicate": True}
    assert resigned["duplicate"] is False and resigned["id"] != first["id"]
    ids = [a.id for a in await stored_alerts(js)]
    assert ids == [first["id"], witness["id"], resigned["id"]]
