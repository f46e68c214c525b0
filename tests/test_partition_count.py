"""Changing ALERTBRIDGE_PARTITIONS, on a real server with the real roles
(deploy/nats-server.conf): provisioning refuses a new count while alerts wait (a symbol
moved to another partition could execute a newer alert before an older one), applies it
once the queue is empty and deletes the consumers beyond it; a worker whose count is
smaller than the server's refuses to consume (partitions beyond its count would wait
forever), at start and while it runs; re-provisioning the same count with alerts waiting
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.messages import Executed
from contracts.subjects import ALERTS_STREAM
from contracts.topology import Topology
from ops.platform import provision
from ops.platform.settings import load
from ops.tools.events import read_events
from tests.secured import Secured, publish_alert
from tests.support import eventually, python_module
from tests.workers import make_alert, partition_of, settled
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
WAITING = 12  # alerts published with no worker running, each of its own symbol
EXIT_WITHIN = 30.0  # seconds a worker gets to start, check and refuse


def topology(secured: Secured, partitions: int) -> Topology:
    env = secured.env("ops", ALERTBRIDGE_PARTITIONS=str(partitions))
    return load(WorkerSettings, env).topology()


async def provision_cli(secured: Secured, tmp_path: Path, partitions: int) -> tuple[int, str]:
    """`alertbridge provision` as ops with this count: (exit status, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALERTBRIDGE_")}
    env = {**clean, **secured.env("ops", ALERTBRIDGE_PARTITIONS=str(partitions)),
           "ALERTBRIDGE_VAR": str(tmp_path / "var"), "ALERTBRIDGE_LOG_FORMAT": "text"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        ALERTBRIDGE, "provision", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def server_count(js: JetStreamContext) -> int | None:
    """The partition count in the stream's transform, as the server holds it."""
    return provision.partition_count((await js.stream_info(ALERTS_STREAM)).config.subject_transform)


async def partitions(js: JetStreamContext) -> list[int]:
    """The partition consumers on ALERTS, by index."""
    return sorted(await provision.partition_consumers(js, ALERTS_STREAM))


async def publish_waiting(secured: Secured, ingress: Client) -> list[int]:
    """WAITING alerts, as the ingress stores them; their stream sequences."""
    js = secured.js("ingress", ingress)
    return [await publish_alert(js, make_alert(f"pc-{i}", symbol=f"PC{i}")) for i in range(WAITING)]


async def exit_of(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    """A worker's exit status within EXIT_WITHIN (killed after), and its log."""
    try:
        code = await eventually(lambda: asyncio.to_thread(proc.poll), within=EXIT_WITHIN)
    finally:
        proc.kill()
        proc.wait(15)
    return code, await asyncio.to_thread(log.read_text, encoding="utf-8")


def worker_env(secured: Secured, tmp_path: Path, partitions: int) -> dict[str, str]:
    return secured.env("worker", ALERTBRIDGE_PARTITIONS=str(partitions),
                       ALERTBRIDGE_PAPER_DB=str(tmp_path / f"paper-{partitions}.db"))  # fmt: skip


async def test_a_count_change_waits_for_an_empty_queue_and_drops_the_extra_consumers(
    secured: Secured, as_ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    await provision.apply(as_ops, topology(secured, 16))
    await publish_waiting(secured, as_ingress)

    # (a) Refused while they wait: non-zero, what the count is, what was asked, how many wait.
    code, err = await provision_cli(secured, tmp_path, 64)
    assert code != 0 and "Traceback" not in err, err  # said as the CLI says an error
    assert "has 16 partitions" in err and "asks for 64" in err, err
    assert f"{WAITING} alerts wait" in err and "stop the ingress" in err, err
    assert await server_count(as_ops) == 16, "the transform changed anyway"
    assert await partitions(as_ops) == list(range(16))

    # (b) A real worker finishes the queue; then the change goes through.
    log = tmp_path / "worker.log"
    proc = python_module("worker", worker_env(secured, tmp_path, 16), log)
    try:
        await eventually(lambda: settled(as_ops, 16), within=30)
    finally:
        proc.terminate()
        proc.wait(15)
    executed = [e for e in await read_events(as_ops) if isinstance(e, Executed)]
    assert len(executed) == WAITING, log.read_text(encoding="utf-8")
    code, err = await provision_cli(secured, tmp_path, 64)
    assert code == 0, err
    assert await server_count(as_ops) == 64
    assert await partitions(as_ops) == list(range(64))

    # Back to 16 with the queue empty: worker-p16..63 go, none lingers.
    code, err = await provision_cli(secured, tmp_path, 16)
    assert code == 0, err
    assert await server_count(as_ops) == 16
    assert await partitions(as_ops) == list(range(16))
    assert "deleted consumers ALERTS/worker-p16..worker-p63" in err, err


async def test_the_same_count_with_alerts_waiting_is_provisioned_again(
    secured: Secured, as_ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    """(d) Idempotent: nothing refused, nothing moved, nothing dropped."""
    await provision.apply(as_ops, topology(secured, 16))
    await publish_waiting(secured, as_ingress)
    code, err = await provision_cli(secured, tmp_path, 16)
    assert code == 0, err
    assert await server_count(as_ops) == 16
    assert await partitions(as_ops) == list(range(16))
    info = await provision.partition_consumers(as_ops, ALERTS_STREAM)
    assert sum(c.num_pending or 0 for c in info.values()) == WAITING


async def test_a_worker_with_fewer_partitions_than_the_server_refuses_to_consume(
    secured: Secured, as_ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    """(c) Ops provisioned 64, an old worker config says 16: it exits, consuming nothing."""
    await provision.apply(as_ops, topology(secured, 64))
    seqs = await publish_waiting(secured, as_ingress)
    assert min([await partition_of(as_ops, s) for s in seqs]) < 16  # it could take one
    log = tmp_path / "worker.log"
    proc = python_module("worker", worker_env(secured, tmp_path, 16), log)
    code, text = await exit_of(proc, log)
    assert code == 2, text
    assert "has 64 partitions" in text and "ALERTBRIDGE_PARTITIONS is 16" in text, text
    assert "ERROR" in text or '"level": "ERROR"' in text, text
    assert not [e for e in await read_events(as_ops) if isinstance(e, Executed)]


async def test_a_running_worker_stops_once_ops_provisions_more_partitions(
    secured: Secured, as_ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    """A worker left running through a count change (the steps skipped): at its next
    check it finishes what it holds and exits 2, naming both counts; while the count is
    its own, the checks leave it consuming."""
    await provision.apply(as_ops, topology(secured, 16))
    log = tmp_path / "worker.log"
    env = {**worker_env(secured, tmp_path, 16), "ALERTBRIDGE_PARTITION_RECHECK": "0.3"}
    proc = python_module("worker", env, log)
    try:
        await publish_alert(secured.js("ingress", as_ingress), make_alert("rc-1", symbol="RC1"))
        await eventually(lambda: settled(as_ops, 16), within=EXIT_WITHIN)
        await asyncio.sleep(1.5)  # several checks with the count unchanged
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        code, err = await provision_cli(secured, tmp_path, 64)
        assert code == 0, err
    except BaseException:
        proc.kill()
        proc.wait(15)
        raise
    status, text = await exit_of(proc, log)
    assert status == 2, text
    # The count as found, maybe mid-provisioning (consumers worker-p16.. being created).
    found = re.search(r"has (\d+) partitions", text)
    assert found and int(found.group(1)) > 16 and "ALERTBRIDGE_PARTITIONS is 16" in text, text
    assert "finishing what it holds, then stopping" in text, text
    assert "worker stopped" in text, text  # a stop, not a crash
    executed = [e for e in await read_events(as_ops) if isinstance(e, Executed)]
    assert [e.alert_id for e in executed] == ["rc-1"]


async def test_a_worker_with_more_partitions_than_the_server_waits_for_provisioning(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> None:
    """The other way round (as before): it names the missing consumers at ERROR and waits."""
    await provision.apply(as_ops, topology(secured, 16))
    log = tmp_path / "worker.log"
    proc = python_module("worker", worker_env(secured, tmp_path, 64), log)
    try:

        async def complained() -> str | None:
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            return text if "alertbridge provision" in text else None

        text = await eventually(complained, within=EXIT_WITHIN)
        assert "consumer ALERTS/worker-p16" in text and "ALERTBRIDGE_PARTITIONS=64" in text, text
        assert proc.poll() is None, text
    finally:
        proc.terminate()
        proc.wait(15)


async def test_the_worker_role_finds_the_servers_count_by_consumer_name(
    secured: Secured, as_ops: JetStreamContext, as_worker: Client
) -> None:
    """`partitions_beyond` with the worker's rights (CONSUMER.INFO, no list), any count."""
    js = secured.js("worker", as_worker)
    for count in (1, 37, 64):
        await provision.apply(as_ops, topology(secured, count))
        assert await partitions(as_ops) == list(range(count))
        for own in (1, 5, 16, 36, 37, 64):
            expected = count if own < count else None
            found = await provision.partitions_beyond(js, ALERTS_STREAM, own)
            assert found == expected, (count, own)


async def test_consumers_stranded_by_an_unchecked_change_are_kept_contiguous(
    secured: Secured,
    as_ops: JetStreamContext,
    as_ingress: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Alerts stored under 64 partitions, then the transform cut to 16 without the check (an
    older release, or alerts arriving while the count changed): provisioning 16 deletes the
    empty consumers from the top and keeps the highest that holds alerts with all below it,
    so a worker of 16 sees the server's larger count (and refuses) instead of missing them."""
    await provision.apply(as_ops, topology(secured, 64))
    seqs = await publish_waiting(secured, as_ingress)
    highest = max([await partition_of(as_ops, s) for s in seqs])
    assert highest >= 16  # the case under test
    await as_ops.update_stream(provision.stream_config(topology(secured, 16).streams[0]))
    with caplog.at_level(logging.INFO, logger="ops.platform.provision"):
        await provision.apply(as_ops, topology(secured, 16))
    assert await server_count(as_ops) == 16
    assert await partitions(as_ops) == list(range(highest + 1))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and f"worker-p{highest} holds" in errors[0], errors
    assert await provision.partitions_beyond(as_ops, ALERTS_STREAM, 16) == highest + 1
