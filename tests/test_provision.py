"""Provisioning against a real server: idempotent, converges on changed settings."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from contracts.subjects import ALERTS_STREAM, DLQ_STREAM
from contracts.topology import partition_durable
from ops.platform import provision
from ops.platform.settings import load
from tests.support import NatsServer
from worker.settings import WorkerSettings


async def test_apply_is_idempotent_and_updates_what_changed(
    nc: Client, worker_env: dict[str, str]
) -> None:
    js = nc.jetstream()
    settings = load(WorkerSettings, worker_env)
    await provision.apply(js, settings.topology())  # a second time: nothing changes
    before = await js.stream_info(ALERTS_STREAM)
    assert before.config.duplicate_window == 3600 and before.config.allow_direct is True
    changed = load(WorkerSettings, {**worker_env, "ALERTBRIDGE_DUPLICATE_WINDOW": "600",
                                    "ALERTBRIDGE_MAX_DELIVER": "9"})  # fmt: skip
    await provision.apply(js, changed.topology())
    after = await js.stream_info(ALERTS_STREAM)
    assert after.config.duplicate_window == 600
    consumer = await js.consumer_info(ALERTS_STREAM, partition_durable(0))
    assert consumer.config.max_deliver == 9 and consumer.config.max_ack_pending == 1
    assert await provision.missing_streams(js, changed.topology()) == []
    await js.delete_stream(DLQ_STREAM)
    assert await provision.missing_streams(js, changed.topology()) == [DLQ_STREAM]


async def test_several_processes_provisioning_at_once_converge(
    nats_server: NatsServer, nc: Client, worker_env: dict[str, str]
) -> None:
    settings = load(WorkerSettings, worker_env)
    for stream in ("ALERTS", "EVENTS", "DLQ", "ADVISORIES"):
        await nc.jetstream().delete_stream(stream)  # all of them race to create everything
    clients = [await nats.connect(nats_server.url) for _ in range(4)]
    try:
        topology = settings.topology()
        await asyncio.gather(*(provision.apply(c.jetstream(), topology) for c in clients))
    finally:
        for client in clients:
            await client.close()
    names = {info.config.name for info in await nc.jetstream().streams_info()}
    assert names == {"ALERTS", "EVENTS", "DLQ", "ADVISORIES", "RESENDS", "KV_HALTS", "KV_LIMITS",
                     "KV_WORKERS"}  # fmt: skip
