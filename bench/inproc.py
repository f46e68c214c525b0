"""The ingress app's CPU per webhook without HTTP: a steadier measure than wrk here.

    uv run python bench/inproc.py [--requests 20000] [--rounds 3] [--concurrency 64]

Starts a nats-server (temp storage, CPU 0) and provisions it, builds the ingress app
as `python -m ingress` does (settings from the environment, the same telemetry,
start-up objects frozen), and on CPU 1 sends it `--requests` webhooks straight
through ASGI from `--concurrency` coroutines: the real checks, the real publish and
PubAck, no sockets on the HTTP side. Prints one JSON line per round and the median:
webhooks per second and the process's CPU microseconds per webhook; every answer must
be a 200 (else it exits 1).

On this 2-core machine ten-second wrk runs of the same code differ by ±20 % within
minutes; these rounds differ by about ±10 %. Use it for A/B steps between code
versions (run it in each worktree), and `just bench` for the issue's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent

SECRET = "inproc-secret-0123456789"  # noqa: S105 (a throwaway bench secret)
BODY = b'{"secret":"%s","id":"inproc-%d-%d","symbol":"BTCUSDT","action":"buy","qty":1}'


@contextlib.contextmanager
def nats_server(store: Path) -> Iterator[str]:
    """A JetStream nats-server on a free loopback port, on CPU 0; yields its URL."""
    from bench.procs import PROCS, free_port, nats_sync_config, wait_listening
    from ops.tools.paths import nats_server_binary

    port = free_port()
    argv = [nats_server_binary(), "-c", str(nats_sync_config(store)), "-js", "-sd", str(store),
            "-a", "127.0.0.1", "-p", str(port)]  # fmt: skip
    cpu = 0 if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else None
    proc = PROCS.start(
        "nats-server", argv, env=dict(os.environ), log_to=store / "nats.log", cpu=cpu
    )
    try:
        wait_listening(port, proc, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        PROCS.stop(proc)


async def drive(app: Any, requests: int, concurrency: int, ids: itertools.count[int]) -> Any:
    """Send `requests` webhooks from `concurrency` coroutines; the answers' statuses."""
    statuses: dict[int, int] = {}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 40000), "scheme": "http",
        "method": "POST", "root_path": "", "path": "/webhook", "raw_path": b"/webhook",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1:8080"),
        (b"content-type", b"application/json"), (b"content-length", b"100")],
    }  # fmt: skip

    async def sender(n: int) -> None:
        status = [0]

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]

        for _ in range(n):
            body = BODY % (SECRET.encode(), os.getpid(), next(ids))
            message = {"type": "http.request", "body": body, "more_body": False}

            async def receive(message: dict[str, Any] = message) -> dict[str, Any]:
                return message

            await app(dict(scope), receive, send)
            statuses[status[0]] = statuses.get(status[0], 0) + 1

    share, extra = divmod(requests, concurrency)
    await asyncio.gather(*(sender(share + (i < extra)) for i in range(concurrency)))
    return statuses


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ingress.app import create_app
    from ingress.settings import load_ingress
    from ops.platform import heap, logs, telemetry

    logs.setup("alertbridge-ingress")
    providers = telemetry.setup("alertbridge-ingress")
    settings, accounts = load_ingress(os.environ)
    app = create_app(settings, accounts, spans=providers.records_spans)
    ids = itertools.count()
    rounds = []
    async with app.lifespan():
        deadline = time.monotonic() + 10
        while (await drive(app, 1, 1, ids)).get(200) != 1:  # connected and provisioned
            if time.monotonic() > deadline:
                raise SystemExit("the ingress app never answered 200")
            await asyncio.sleep(0.1)
        await drive(app, 2_000, args.concurrency, ids)  # warm-up
        heap.freeze_startup_objects()
        for n in range(args.rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            statuses = await drive(app, args.requests, args.concurrency, ids)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            result = {
                "round": n + 1,
                "webhooks_per_s": round(args.requests / wall),
                "cpu_us_per_webhook": round(cpu / args.requests * 1e6, 1),
                "statuses": statuses,
            }
            print(json.dumps(result), flush=True)
            rounds.append(result)
    providers.shutdown()
    return rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    from bench.procs import run

    with tempfile.TemporaryDirectory(prefix="inproc-") as tmp, nats_server(Path(tmp)) as url:
        os.environ.update(
            ALERTBRIDGE_NATS_URL=url, ALERTBRIDGE_SECRETS=SECRET, ALERTBRIDGE_VAR=tmp,
            ALERTBRIDGE_HEALTH_PORT="0",
        )  # fmt: skip
        alertbridge = Path(sys.executable).parent / "alertbridge"
        run([str(alertbridge), "provision"], check=True, timeout=60)
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        import uvloop

        rounds = uvloop.run(measure(args))
    cpu = statistics.median(r["cpu_us_per_webhook"] for r in rounds)
    rate = statistics.median(r["webhooks_per_s"] for r in rounds)
    print(json.dumps({"median_webhooks_per_s": rate, "median_cpu_us_per_webhook": cpu}))
    return 0 if all(set(r["statuses"]) == {200} for r in rounds) else 1


if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0]: the checkout's root goes first, so that
    # `bench` is the package (not bench/bench.py).
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
