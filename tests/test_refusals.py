"""Every refusal is logged once, with its status, reason, source and (a configured)
account, never the secret, the body or the path; a flood of them logs a bounded number
of lines and one that counts the rest. Against a real uvicorn serving the real app (the
431 and 408 come from its protocol, before the app) and a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from nats.aio.client import Client

from ingress import refusals
from ingress.refusals import RefusalLog
from tests.ingress_support import SECRET, alert, serving_ingress, settings
from tests.support import NatsServer, eventually

PATH_SECRET = "not-the-secret-but-a-path-7c1d"
LOGGER = "ingress.refusals"
Request = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> RefusalLog:
    """A full bucket for each test (the process's one is shared by every test)."""
    log = RefusalLog()
    monkeypatch.setattr(refusals, "process_log", log)
    caplog.set_level(logging.INFO, logger=LOGGER)
    return log


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def _text(caplog: pytest.LogCaptureFixture) -> str:
    """Every line as it would be written, extra fields included."""
    return "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)


async def _slow_body(port: int) -> bytes:
    """A head for a 100-byte body and one byte of it; what the server says before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /webhook/{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
    writer.write(head.encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_each_refusal_is_logged_once_without_the_secret(
    nats_server: NatsServer, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(
        nats_server.url,
        max_body_bytes="512",
        max_header_bytes="1024",
        body_timeout="1",
        account_rate_limit="2/minute",
    )
    secret_url = f"/webhook/{SECRET}"
    async with serving_ingress(config) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        pad = {"X-Pad": "p" * 2000}
        # (status, the account the line names, the request; None: a body too slow)
        requests: list[tuple[int, str | None, Request | None]] = [
            (405, None, lambda: client.get(secret_url)),
            (404, None, lambda: client.post(f"{secret_url}/extra", content=alert())),
            (401, "default", lambda: client.post(f"/webhook/{PATH_SECRET}", content=alert())),
            (413, None, lambda: client.post(secret_url, content=alert(note="n" * 600))),
            (422, None, lambda: client.post(secret_url, content=b"not json")),
            (431, None, lambda: client.post(secret_url, content=alert(), headers=pad)),
            (408, None, None),
            (422, "default", lambda: client.post("/webhook", content=alert(side="hold"))),
            (200, None, lambda: client.post("/webhook", content=alert())),  # 2nd of 2/minute
            (429, "default", lambda: client.post("/webhook", content=alert(qty=2))),
        ]
        for status, account, request in requests:
            before = len(_lines(caplog))
            if request is None:
                answer = await _slow_body(int(url.rsplit(":", 1)[1]))
                assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            else:
                assert (await request()).status_code == status
            new = _lines(caplog)[before:]
            if status == 200:
                assert new == []
                continue
            assert len(new) == 1, (status, [r.getMessage() for r in new])
            (line,) = new
            assert getattr(line, "status", None) == status
            assert line.levelno == (logging.WARNING if status == 401 else logging.INFO)
            assert getattr(line, "source", None) == "127.0.0.1"
            assert line.getMessage().startswith(f"refused {status}: ")
            assert getattr(line, "reason", "") in line.getMessage()
            assert getattr(line, "account", None) == account
    reasons = {getattr(r, "status", 0): getattr(r, "reason", "") for r in _lines(caplog)}
    assert reasons[401] == "missing or wrong secret"
    assert reasons[413] == "body over 512 bytes"
    assert reasons[431] == "request line and headers over 1024 bytes"
    assert reasons[408] == "body not received within 1 s"
    assert reasons[429] == "too many alerts for this account"
    text = _text(caplog)
    assert SECRET not in text and PATH_SECRET not in text and "not json" not in text


async def test_a_refused_source_address_is_a_warning(
    nats_server: NatsServer, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(nats_server.url, allow_ips="10.0.0.0/8")
    async with serving_ingress(config) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        assert (await client.post(f"/webhook/{SECRET}", content=alert())).status_code == 403
    (line,) = _lines(caplog)
    assert (line.levelno, getattr(line, "status", None)) == (logging.WARNING, 403)
    assert getattr(line, "reason", None) == "source address not allowed"
    assert getattr(line, "source", None) == "127.0.0.1"
    assert SECRET not in _text(caplog)


async def test_a_flood_of_refusals_logs_a_bounded_number_of_lines(
    nats_server: NatsServer,
    nc: Client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flood = 100
    async with serving_ingress(settings(nats_server.url)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            started = time.monotonic()
            monkeypatch.setattr(refusals, "process_log", RefusalLog(per_second=5))
            answers = await asyncio.gather(
                *(client.post(f"/webhook/{PATH_SECRET}", content=alert()) for _ in range(flood))
            )
            elapsed = time.monotonic() - started
        assert {a.status_code for a in answers} == {401}

        def summaries() -> list[logging.LogRecord]:
            return [r for r in _lines(caplog) if hasattr(r, "suppressed")]

        async def counted() -> bool | None:  # the count comes a second after the first left out
            return True if summaries() else None

        await eventually(counted)
    logged = [r for r in _lines(caplog) if hasattr(r, "status")]
    left_out = sum(getattr(r, "suppressed", 0) for r in summaries())
    print(f"{flood} refusals in {elapsed:.2f} s: {len(logged)} lines, {left_out} counted")
    assert len(logged) <= 5 + 5 * elapsed  # the burst, then 5 a second
    assert len(logged) + left_out == flood  # none lost: each is a line or counted
    assert all(r.levelno == logging.WARNING for r in summaries())
    assert PATH_SECRET not in _text(caplog)


def test_the_bound_and_the_summary_with_a_clock_of_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without an event loop (no timer) the count comes with the next refusal."""
    now = [0.0]
    log = RefusalLog(per_second=3, clock=lambda: now[0])
    for _ in range(10):
        log.note(422, "invalid alert", source="192.0.2.1", account=None)
    assert len(_lines(caplog)) == 3
    now[0] = 0.5  # 1.5 lines' worth: one more line, no summary yet
    log.note(422, "invalid alert", source="192.0.2.1", account=None)
    assert len(_lines(caplog)) == 4
    now[0] = 1.0
    log.note(401, "missing or wrong secret", source=None, account="default")
    *_, summary, last = _lines(caplog)
    assert getattr(summary, "suppressed", None) == 7
    assert summary.getMessage() == "7 refusals not logged in 1.0 s (at most 3 lines a second)"
    assert last.getMessage() == (
        "refused 401: missing or wrong secret (from an unknown address, account default)"
    )
    log.flush()  # nothing left out since: no second summary
    assert len(_lines(caplog)) == 6
