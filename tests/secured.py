"""A real nats-server on deploy/nats-server.conf (one NATS account per role) for the
security tests, and a connection as each role made by the code the processes use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from contracts.headers import MSG_ID
from contracts.messages import Alert, alert_encoder, alert_msg_id
from contracts.subjects import ALERTS_STREAM, REPLAY_SERVICE, alert_subject
from contracts.topology import partition_durable
from ops.platform import provision
from ops.platform.natsconn import connect, jetstream
from ops.platform.settings import Common, load
from ops.tools.paths import (
    NATS_ROLES,
    nats_config_file,
    nats_js_api,
    nats_server_password_var,
    new_nats_password,
)
from tests.support import NatsServer, eventually
from worker.replays import ReplayService
from worker.settings import WorkerSettings

# The worker's topology here: two partitions, quick retries, two deliveries at most.
TOPOLOGY = {
    "ALERTBRIDGE_PARTITIONS": "2",
    "ALERTBRIDGE_MAX_DELIVER": "2",
    "ALERTBRIDGE_ACK_WAIT": "5",
    "ALERTBRIDGE_RETRY_BACKOFF": "0.2",
    "ALERTBRIDGE_FETCH_TIMEOUT": "0.5",
    "ALERTBRIDGE_SHUTDOWN_GRACE": "3",
    "ALERTBRIDGE_HEALTH_PORT": "0",
}
VIOLATION = re.compile(
    r'"[^"/]+/user:(?P<user>[^"]+)" - (?P<kind>Publish|Subscription) Violation'
    r' - Subject "(?P<subject>[^"]+)"'
)
DENIED_WITHIN = 0.5  # seconds a refused request waits for the answer that never comes
# What an attempt outside a role's imports gets: nobody answers under the role's prefix
# (no responders, or a PubAck that never comes); under the default `$JS.API` the role's
# own account answers that it has no JetStream.
DENIED = (TimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


@dataclass
class Untouched:
    """What a refused attempt must leave as it was: each stream's messages and config, the
    number of consumers on some of them, and partition 0's deliveries (none)."""

    streams: dict[str, StreamInfo]
    consumers: dict[str, int]

    @classmethod
    async def of(
        cls, js: JetStreamContext, streams: Iterable[str], consumers_of: Iterable[str]
    ) -> Untouched:
        """A snapshot, taken through `js` (a role that may look: ops)."""
        return cls(
            streams={name: await js.stream_info(name) for name in streams},
            consumers={name: len(await js.consumers_info(name)) for name in consumers_of},
        )

    async def check(self, js: JetStreamContext) -> None:
        """Assert that nothing of the snapshot changed."""
        for name, before in self.streams.items():
            after = await js.stream_info(name)
            assert after.state.messages == before.state.messages, name  # nothing in or out
            assert after.config == before.config, name
        for name, count in self.consumers.items():
            assert len(await js.consumers_info(name)) == count, name
        partition = await js.consumer_info(ALERTS_STREAM, partition_durable(0))
        assert partition.num_ack_pending == 0 and partition.delivered.stream_seq == 0


async def fetch_one(js: JetStreamContext, stream: str, durable: str) -> object:
    """Pull one message from an existing durable: what a role must not be able to do."""
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    try:
        return await sub.fetch(1, timeout=DENIED_WITHIN)
    finally:
        await sub.unsubscribe()


@dataclass
class Secured:
    """A nats-server on deploy/nats-server.conf, and the role passwords it was given."""

    server: NatsServer
    passwords: dict[str, str]

    def env(self, role: str, **extra: str) -> dict[str, str]:
        """ALERTBRIDGE_* variables that make a process `role`."""
        return {
            "ALERTBRIDGE_NATS_URL": self.server.url,
            "ALERTBRIDGE_NATS_USER": role,
            "ALERTBRIDGE_NATS_PASSWORD": self.passwords[role],
            "ALERTBRIDGE_NATS_JS_API": nats_js_api(role),
            **TOPOLOGY,
            **extra,
        }

    async def connect(self, role: str, **extra: str) -> Client:
        """A connection as `role`, made by the code the processes use."""
        return await connect(load(Common, self.env(role, **extra)), name=f"alertbridge-{role}")

    def js(self, role: str, client: Client, **options: int) -> JetStreamContext:
        """`role`'s JetStream context, as its process makes it (its account's API prefix)."""
        return jetstream(client, load(Common, self.env(role)), **options)

    def violations(self, user: str) -> list[tuple[str, str]]:
        """(Publish|Subscription, subject) the server refused `user`, in its log's order."""
        assert self.server.log is not None
        text = self.server.log.read_text(encoding="utf-8") if self.server.log.exists() else ""
        return [(m["kind"], m["subject"]) for m in VIOLATION.finditer(text) if m["user"] == user]

    async def refused(self, user: str, kind: str, subject: str) -> None:
        """Wait until the server has logged that it refused `user` this subject."""

        async def logged() -> bool | None:
            return True if (kind, subject) in self.violations(user) else None

        await eventually(logged, within=3)


def role_passwords() -> dict[str, str]:
    return {role: new_nats_password() for role in NATS_ROLES}


def server_env(passwords: dict[str, str]) -> dict[str, str]:
    return {
        **{nats_server_password_var(role): pw for role, pw in passwords.items()},
        "ALERTBRIDGE_NATS_SYNC": "always",
    }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One server on the real config for the module; its log shows every refusal."""
    root = tmp_path_factory.mktemp("nats-secured")
    passwords = role_passwords()
    server = NatsServer(
        root / "store", config=nats_config_file(), env=server_env(passwords), log=root / "log"
    ).start()
    yield Secured(server, passwords)
    server.stop()


@pytest.fixture
async def as_ops(secured: Secured) -> AsyncIterator[JetStreamContext]:
    """The operators' JetStream context; the streams start empty, provisioned by ops."""
    ops = await secured.connect("ops")
    js = ops.jetstream()
    for stream in await js.streams_info():
        await js.delete_stream(stream.config.name or "")
    await provision.apply(js, load(WorkerSettings, secured.env("ops")).topology())
    yield js
    await ops.close()


@pytest.fixture
async def as_ingress(secured: Secured, as_ops: JetStreamContext) -> AsyncIterator[Client]:
    client = await secured.connect("ingress")
    yield client
    await client.close()


@pytest.fixture
async def as_worker(secured: Secured, as_ops: JetStreamContext) -> AsyncIterator[Client]:
    client = await secured.connect("worker")
    yield client
    await client.close()


@pytest.fixture
async def as_notifier(secured: Secured, as_ops: JetStreamContext) -> AsyncIterator[Client]:
    client = await secured.connect("notifier")
    yield client
    await client.close()


@pytest.fixture
async def as_console(secured: Secured, as_ops: JetStreamContext) -> AsyncIterator[Client]:
    client = await secured.connect("console")
    yield client
    await client.close()


@pytest.fixture
async def as_projector(secured: Secured, as_ops: JetStreamContext) -> AsyncIterator[Client]:
    client = await secured.connect("projector")
    yield client
    await client.close()


async def publish_alert(js: JetStreamContext, alert: Alert) -> int:
    ack = await js.publish(
        alert_subject(alert.account, alert.symbol),
        alert_encoder.encode(alert),
        headers={MSG_ID: alert_msg_id(alert.account, alert.id)},
    )
    return ack.seq


ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `alertbridge` CLI as a process with `env` (and none of this one's ALERTBRIDGE_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALERTBRIDGE_")}
    return subprocess.run(
        [ALERTBRIDGE, *args], env={**clean, **env}, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def replay_service(secured: Secured, worker: Client) -> AsyncIterator[None]:
    """The workers' replay service (worker.replays), served as the worker role."""
    stopping = asyncio.Event()
    task = asyncio.create_task(ReplayService(secured.js("worker", worker)).run(stopping))

    async def serving() -> bool | None:  # subscribed: it answers (a request of nothing is refused)
        try:
            await worker.request(REPLAY_SERVICE, b"{}", timeout=1)
        except (NoRespondersError, NatsTimeoutError):
            return None
        return True

    await eventually(serving)
    try:
        yield
    finally:
        stopping.set()
        await task
