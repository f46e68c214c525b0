"""Shared by the kill-switch and limits tests: worker processes on the real secured
server, a broker that keeps the history (tests.chaos_broker) and can be told to refuse,
the `alertbridge` CLI as the ops user, and what the streams say about each alert."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from nats.js.client import JetStreamContext

from contracts.messages import Executed, HaltEvent, Rejected, halt_event_decoder
from contracts.subjects import EVENTS_STREAM
from ops.platform import provision
from ops.platform.settings import load
from ops.tools.events import read_events
from ops.tools.streams import read_all
from tests.chaos_broker import SECRET, SECRET_ENV, Receiver
from tests.fleet import Fleet
from tests.secured import Secured, publish_alert
from tests.support import eventually, serving_aiohttp
from tests.workers import make_alert
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
# The workers here: four partitions, so that alerts of several symbols run at once.
WORKER_ENV = {"ALERTBRIDGE_PARTITIONS": "4", "ALERTBRIDGE_MAX_ALERT_AGE": "0"}


class Refusing:
    """The chaos broker, except that it refuses (422) orders for the symbols in `refuse`."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self.refuse: set[str] = set()
        self.refused = 0

    def app(self) -> web.Application:
        """The chaos broker's routes, with the refusal first."""
        app = web.Application()
        app.router.add_post("/orders/{worker}", self._place)
        app.router.add_get("/orders/{worker}/{coid}", self.receiver._lookup)
        return app

    async def _place(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("symbol") in self.refuse:
            self.refused += 1
            return web.json_response({"error": "insufficient buying power"}, status=422)
        return await self.receiver._place(request)

    def placed_tags(self) -> set[int]:
        return set(self.receiver.placements())


def accounts_file(path: Path, url: str, limits: dict[str, str] | None = None) -> Path:
    """Accounts `default` and `capped` on the `http` broker at `url`; `capped` has `limits`
    (TOML values as written)."""
    text = ""
    for name in ("default", "capped"):
        text += (
            f'[accounts.{name}]\nbroker = "http"\n'
            'sizing = { kind = "fixed_quantity", quantity = 1 }\n'
            f'[accounts.{name}.http]\nurl = "{url}"\nsecret_env = "{SECRET_ENV}"\n'
            "lookup = true\ntimeout = 5\n"
        )
    if limits:
        text += "[accounts.capped.limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items())
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def broker_and_fleet(
    secured: Secured, tmp_path: Path, workers: int, limits: dict[str, str] | None = None
) -> AsyncIterator[tuple[Refusing, Fleet]]:
    """A refusing chaos broker and `workers` worker processes (all up) as the worker role."""
    broker = Refusing()
    async with serving_aiohttp(broker.app()) as base:

        def env_of(slot: int) -> dict[str, str]:
            accounts = accounts_file(tmp_path / f"accounts-{slot}.toml", f"{base}/orders/w{slot}",
                                     limits)  # fmt: skip
            return secured.env(
                "worker", ALERTBRIDGE_CONFIG=str(accounts), **{SECRET_ENV: SECRET}, **WORKER_ENV
            )

        fleet = Fleet(env_of, workers, tmp_path)
        try:
            await fleet.start()
            yield broker, fleet
        finally:
            await fleet.stop()


def cli(secured: Secured, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`alertbridge <args>` as the ops user, its password in a file."""
    password = tmp_path / "ops.password"
    password.write_text(secured.passwords["ops"] + "\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALERTBRIDGE_")}
    env = {
        **clean,
        "ALERTBRIDGE_NATS_URL": secured.server.url,
        "ALERTBRIDGE_NATS_USER": "ops",
        "ALERTBRIDGE_NATS_PASSWORD_FILE": str(password),
        "ALERTBRIDGE_VAR": str(tmp_path / "var"),
        **WORKER_ENV,
    }
    return subprocess.run(
        [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def run_cli(secured: Secured, tmp_path: Path, *args: str) -> str:
    """Run the CLI; its stdout, after checking it exited 0."""
    done = await asyncio.to_thread(cli, secured, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def send(ingress: JetStreamContext, tag: int, account: str = "default") -> str:
    """Publish alert `a<tag>` (the broker knows it by its price, the tag) as the ingress."""
    alert = make_alert(f"a{tag}", symbol=f"SYM{tag % 7}", account=account, price=float(tag))
    await publish_alert(ingress, alert)
    return alert.id


async def finished(ops: JetStreamContext, ids: set[str]) -> dict[str, Executed | Rejected]:
    """Wait until each alert of `ids` has its executed or rejected event; by alert id."""

    async def all_there() -> dict[str, Executed | Rejected] | None:
        found = {
            e.alert_id: e
            for e in await read_events(ops)
            if isinstance(e, Executed | Rejected) and e.alert_id in ids
        }
        return found if set(found) == ids else None

    return await eventually(all_there, within=30, interval=0.1)


@pytest.fixture(name="ops")
async def ops_fixture(secured: Secured, as_ops: JetStreamContext) -> JetStreamContext:
    """The operators' JetStream context, the streams provisioned for WORKER_ENV's workers."""
    await provision.apply(as_ops, load(WorkerSettings, secured.env("ops", **WORKER_ENV)).topology())
    return as_ops


async def halt_events(ops: JetStreamContext) -> list[HaltEvent]:
    """Every halted and resumed event, oldest first."""
    msgs = [
        *await read_all(ops, EVENTS_STREAM, "events.halted.>"),
        *await read_all(ops, EVENTS_STREAM, "events.resumed.>"),
    ]
    msgs.sort(key=lambda m: m.metadata.sequence.stream)
    return [halt_event_decoder.decode(m.data) for m in msgs]
