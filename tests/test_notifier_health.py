"""The notifier's /healthz, /readyz and /metrics, for real: `python -m notifier` as the
notifier role on the secured nats-server (deploy/nats-server.conf), asked over HTTP.

/readyz says what is wrong: a target that refuses every send for longer than
ALERTBRIDGE_TARGET_DOWN_AFTER (named by its variable, never its URL), nats-server
killed with SIGKILL, its consumer or the DLQ stream deleted; and it is 200 again once
that is over. No answer and no log line holds a target's URL or its token.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.subjects import DLQ_STREAM, EVENTS_STREAM
from contracts.topology import NOTIFIER
from notifier.settings import NotifierSettings
from ops.platform import provision
from ops.platform.settings import load
from tests.notifier_support import TOKEN, NotifierProcess, Publisher, Receiver, rejected
from tests.secured import Secured
from tests.support import eventually, free_port
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
DOWN_AFTER = 4.0  # seconds: ALERTBRIDGE_TARGET_DOWN_AFTER here
NOT_READY = 503


def owed(metrics: str, target: str) -> float:
    """The `alertbridge_notifier_owed` sample of `target` in a /metrics answer."""
    sample = re.search(
        rf'^alertbridge_notifier_owed{{[^}}]*target="{target}"}} (\S+)$', metrics, re.M
    )
    assert sample is not None, metrics
    return float(sample[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


class Probed:
    """The notifier process and an HTTP client for its health port."""

    def __init__(self, process: NotifierProcess, port: int, receiver: Receiver) -> None:
        self.process = process
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)
        self.secrets = (TOKEN, receiver.url("everything"), receiver.url("a-only"))
        self.said: list[str] = []  # every answer's body, checked for secrets at the end

    async def get(self, path: str) -> httpx.Response | None:
        """The answer, or None while nothing listens yet."""
        try:
            answer = await self.http.get(path)
        except httpx.TransportError:
            return None
        self.said.append(answer.text)
        return answer

    async def ready(self) -> dict[str, Any]:
        """/readyz once it says 200."""

        async def ok() -> dict[str, Any] | None:
            answer = await self.get("/readyz")
            return answer.json() if answer is not None and answer.status_code == 200 else None

        return await eventually(ok, within=25)

    async def unready(self, *reasons: str) -> list[str]:
        """/readyz's problems once it says 503 with each of `reasons` in one of them."""

        async def saying() -> list[str] | None:
            answer = await self.get("/readyz")
            if answer is None or answer.status_code != NOT_READY:
                return None
            problems: list[str] = answer.json()["problems"]
            found = all(any(r in p for p in problems) for r in reasons)
            return problems if found else None

        return await eventually(saying, within=25)

    def check_no_secret(self) -> None:
        for text in [*self.said, self.process.logged()]:
            for secret in self.secrets:
                assert secret not in text


@pytest.fixture
async def probed(
    secured: Secured, receiver: Receiver, as_ops: JetStreamContext, tmp_path: Path
) -> AsyncIterator[Probed]:
    port = free_port()
    process = NotifierProcess(secured, receiver, tmp_path)
    process.env["ALERTBRIDGE_HEALTH_PORT"] = str(port)
    process.env["ALERTBRIDGE_TARGET_DOWN_AFTER"] = str(DOWN_AFTER)
    found = Probed(process.start(), port, receiver)
    yield found
    await found.http.aclose()
    process.stop()
    found.check_no_secret()


@pytest.fixture
async def events(secured: Secured, as_worker: Client) -> AsyncIterator[Publisher]:
    yield Publisher(secured.js("worker", as_worker))


async def test_alive_and_ready_with_the_owed_gauge(probed: Probed) -> None:
    assert (await probed.ready()) == {"ok": True, "problems": []}
    healthz = await probed.get("/healthz")
    assert healthz is not None
    assert (healthz.status_code, healthz.json()) == (200, {"ok": True})
    metrics = await probed.get("/metrics")
    assert metrics is not None and metrics.status_code == 200
    assert [owed(metrics.text, v) for v in ("ALERTBRIDGE_NOTIFY_URL", "ALERTBRIDGE_NOTIFY_A")] == [
        0.0, 0.0,
    ]  # fmt: skip


async def test_a_target_down_longer_than_the_threshold_is_named_then_ready_again(
    probed: Probed, receiver: Receiver, events: Publisher
) -> None:
    await probed.ready()
    receiver.stop()  # refuses: nothing listens on its port
    await events(rejected("while-down"))  # account a: owed to both targets
    await failed_once(probed, times=1)
    early = await probed.get("/readyz")
    assert early is not None and early.status_code == 200, "down for less than the threshold"
    problems = await probed.unready("target ALERTBRIDGE_NOTIFY_URL", "target ALERTBRIDGE_NOTIFY_A")
    print("\n--- /readyz, targets down ---\n" + "\n".join(problems))
    assert len(problems) == 2
    assert all("has taken no message for" in p and "(1 owed)" in p for p in problems)
    metrics = await probed.get("/metrics")
    assert metrics is not None
    assert owed(metrics.text, "ALERTBRIDGE_NOTIFY_URL") == 1.0
    receiver.start()
    await receiver.wait_for("everything", "while-down")
    await receiver.wait_for("a-only", "while-down")
    assert (await probed.ready())["problems"] == []
    # The next outage is timed from its own first failure, not from the last one's.
    receiver.stop()
    await events(rejected("down-again"))
    await failed_once(probed, times=2)
    again = await probed.get("/readyz")
    assert again is not None and again.status_code == 200, "a new outage, under the threshold"


async def failed_once(probed: Probed, times: int) -> None:
    """Wait until a send to ALERTBRIDGE_NOTIFY_A failed at its first try `times` times."""

    async def failed() -> bool | None:
        logged = probed.process.logged()
        said = logged.count("ALERTBRIDGE_NOTIFY_A did not take a message (try 1)")
        return True if said >= times else None

    await eventually(failed, within=10)


async def test_nats_killed_is_not_ready_and_back_once_it_restarts(
    probed: Probed, secured: Secured
) -> None:
    await probed.ready()
    secured.server.kill()  # SIGKILL: a crash
    try:
        problems = await probed.unready("nats: not connected")
        assert problems == ["nats: not connected"]
        healthz = await probed.get("/healthz")
        assert healthz is not None and healthz.status_code == 200, "alive all the same"
    finally:
        secured.server.start()  # the same port and store: the module's other tests go on
    await probed.ready()


async def test_its_consumer_or_the_dlq_missing_is_not_ready(
    probed: Probed, secured: Secured, as_ops: JetStreamContext
) -> None:
    await probed.ready()
    await as_ops.delete_consumer(EVENTS_STREAM, NOTIFIER)
    await as_ops.delete_stream(DLQ_STREAM)  # its depth is watched (dlq_depth_threshold 2)
    problems = await probed.unready(
        f"consumer {EVENTS_STREAM}/{NOTIFIER}: missing", f"stream {DLQ_STREAM}: missing"
    )
    print("\n--- /readyz, not provisioned ---\n" + "\n".join(problems))
    assert all("alertbridge provision" in p for p in problems)
    await provision.apply(as_ops, load(WorkerSettings, secured.env("ops")).topology())
    await probed.ready()


async def test_a_health_port_in_use_leaves_the_notifier_working(
    secured: Secured, receiver: Receiver, events: Publisher, as_ops: JetStreamContext,
    tmp_path: Path,
) -> None:  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = NotifierProcess(secured, receiver, tmp_path)
        process.env["ALERTBRIDGE_HEALTH_PORT"] = str(port)
        process.start()
        try:
            expected = f"health/metrics port {port} unavailable; the notifier goes on without it"

            async def said() -> bool | None:
                return True if expected in process.logged() else None

            await eventually(said, within=10)
            await events(rejected("port-taken"))
            await receiver.wait_for("everything", "port-taken")
            assert process.proc is not None and process.proc.poll() is None
        finally:
            status = process.stop()
    assert status == 0
    assert TOKEN not in process.logged()


def test_the_health_port_is_off_unless_set() -> None:
    assert NotifierSettings().health_port == 0
    settings = load(NotifierSettings, {"ALERTBRIDGE_HEALTH_PORT": "9109"})
    assert (settings.health_port, settings.health_host) == (9109, "127.0.0.1")
    assert load(NotifierSettings, {}).target_down_after == 120.0


@pytest.mark.parametrize("compose_file", ["compose.yaml", "compose.prod.yaml"])
def test_compose_probes_the_port_the_unit_uses(compose_file: str) -> None:
    """As the worker: its port on the compose network only, /readyz as the healthcheck;
    the systemd unit's port the same, on the loopback."""
    document = yaml.safe_load((ROOT / compose_file).read_text(encoding="utf-8"))
    notifier = document["services"]["notifier"]
    env = notifier["environment"]
    port = env["ALERTBRIDGE_HEALTH_PORT"]
    assert env["ALERTBRIDGE_HEALTH_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
    assert port in [str(p) for p in notifier["expose"]] and "ports" not in notifier
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(notifier["healthcheck"]["test"])
    unit = (ROOT / "deploy" / "systemd" / "alertbridge-notifier.service").read_text("utf-8")
    assert f"Environment=ALERTBRIDGE_HEALTH_PORT={port}\n" in unit
    assert "Environment=ALERTBRIDGE_HEALTH_HOST=127.0.0.1\n" in unit
