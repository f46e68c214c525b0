"""Phase `burst`: 10,000 alerts started over 1 s, each on a fresh connection
(loadgen.py burst), against the reference (node + redis, started here) and alertbridge:
one ingress, then as many as `alertbridge up` starts by default (`--burst-ingresses`),
at the one-second level (nats-server `sync_interval: 1s`, Redis `everysec`), and
those again with every write fsynced (`always`), whose slowest answer is reported."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bench import procs, tools
from bench.common import AB_SECRET, REF_SECRET, BenchError, log
from bench.procs import PROCS, http, wait_listening
from bench.results import Burst, BurstResult
from bench.streams import settle
from bench.system import rss

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bench.harness import Harness
    from bench.procs import Popen


def run(h: Harness) -> None:
    """The burst against each design, then against several ingresses on one port."""
    res = Burst()
    h.results.burst = res
    o = h.opts
    args = ["--requests", str(o.burst_n), "--over", str(o.burst_over),
            "--dup-every", "20", "--dup-lag", "100", "--timeout", "10"]  # fmt: skip
    log("burst: reference (Express + Redis)")
    res.reference = ref_burst(h, args)
    h.save()
    levels = o.levels()
    if "1s" in levels:
        log("burst: alertbridge, one ingress, sync 1s")
        res.alertbridge = ab_burst(h, args, sync="1s")
        h.save()
    n = max(1, o.burst_ingresses)
    for level in levels:
        log(f"burst: alertbridge, {n} ingress processes on one port, unpinned, sync {level}")
        scaled = msgspec.structs.replace(ab_burst(h, args, n, sync=level), ingresses=n)
        if level == "1s":
            res.alertbridge_scaled = scaled
        else:
            res.alertbridge_fsync = scaled
        h.save()


def verdict(r: BurstResult) -> BurstResult:
    """Judged: OK when every answer came within 3 s, the store holds exactly the ids
    accepted, and none twice."""
    r.max_under_3s = r.max_ms is not None and r.max_ms < 3000 and r.over_3s == 0
    r.stored_equals_accepted = r.stored == r.accepted_unique_ids
    ok = r.max_under_3s and r.stored_equals_accepted and r.doubled == 0
    r.verdict = "OK" if ok else "FAIL"
    log(
        f"  {r.sent} sent over {r.send_span_s} s, peak {r.peak_concurrency} open; "
        f"status {r.status}; p99 {r.p99_ms} ms max {r.max_ms} ms; stored "
        f"{r.stored} accepted {r.accepted_unique_ids} doubled {r.doubled} -> {r.verdict}"
    )
    return r


def ab_burst(
    h: Harness, args: list[str], ingresses: int = 1, *, sync: str | None = None
) -> BurstResult:
    """The burst against alertbridge (`ingresses` processes sharing the port; `sync`:
    nats-server's fsync policy)."""
    tag = ("burst" if ingresses == 1 else f"burst-x{ingresses}") + (f"-{sync}" if sync else "")
    with h.running(tag, ingresses=ingresses, sync=sync) as started:
        ing = started.the_ingress()
        tools.loadgen("count", h.opts.ab_port, AB_SECRET, "--requests", "5000", "--conns", "64")
        streams = h.streams
        count0 = settle(streams.stored)
        pre = h.quiet()
        lg = tools.loadgen("burst", h.opts.ab_port, AB_SECRET, *args)
        stored = settle(streams.stored) - count0
        doubled = streams.ids("ALERTS").doubled
        rss_after = rss(ing.pid).vm_rss
    return verdict(
        BurstResult(**msgspec.structs.asdict(lg), stored=stored, doubled=doubled,
                    stored_unique_ids=stored - doubled, pre_busy_pct=pre,
                    rss_kib_ingress_after=rss_after)
    )  # fmt: skip


def ensure_ref_deps(h: Harness) -> None:
    """`npm ci` in the reference's copy, unless its node_modules are there."""
    app = h.opts.ref_dir / "seed-ref"
    if not (app / "node_modules/express").is_dir() or not (app / "node_modules/redis").is_dir():
        log("installing seed-ref deps (npm ci)")
        procs.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=app, check=True, timeout=600)


class _Redis:
    """redis-cli against the reference's redis-server."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, *args: str) -> str:
        done = procs.run(["redis-cli", "-p", str(self.port), *args], check=True, timeout=30)
        return done.stdout.decode().strip()


@contextlib.contextmanager
def reference(h: Harness) -> Iterator[tuple[Popen, Popen]]:
    """redis-server and the reference's ingress.js on CPU 0, fresh; (node, redis)."""
    o = h.opts
    data = Path(tempfile.mkdtemp(prefix="seed-ref-redis.", dir="/var/tmp"))
    persist = ["--appendonly", "yes", "--appendfsync", "everysec"]
    redis_args = ["redis-server", "--bind", "127.0.0.1", "--port", str(o.redis_port),
                  "--protected-mode", "yes", "--daemonize", "no", "--save", "", "--dir", str(data),
                  *(persist if o.ref_mode == "durable" else ["--appendonly", "no"])]  # fmt: skip
    env = dict(os.environ, PORT=str(o.ref_port), HOST="127.0.0.1", WEBHOOK_SECRET=REF_SECRET,
               REDIS_URL=f"redis://127.0.0.1:{o.redis_port}", NODE_ENV="production")  # fmt: skip
    redis = node = None
    try:
        redis = PROCS.start("redis-server", redis_args, env=dict(os.environ),
                            log_to=h.out / "burst.redis.log", cpu=0)  # fmt: skip
        wait_listening(o.redis_port, redis, "redis-server")
        node = PROCS.start("seed-ref", ["node", "seed-ref/ingress.js"], env=env, cwd=o.ref_dir,
                           log_to=h.out / "burst.seed-ref.log", cpu=0)  # fmt: skip
        url = f"http://127.0.0.1:{o.ref_port}/webhook"
        deadline = time.monotonic() + 20
        while http("POST", url, b"{}")[0] != 401:
            if time.monotonic() > deadline or node.poll() is not None:
                raise BenchError("seed-ref did not start; see burst.seed-ref.log")
            time.sleep(0.1)
        yield node, redis
    finally:
        PROCS.stop(node)
        PROCS.stop(redis)
        shutil.rmtree(data, ignore_errors=True)


def ref_burst(h: Harness, args: list[str]) -> BurstResult:
    """The burst against the reference; its ids read back from the `alerts` list."""
    ensure_ref_deps(h)
    port, rcli = h.opts.ref_port, _Redis(h.opts.redis_port)
    with reference(h) as (node, redis):
        tools.loadgen("count", port, REF_SECRET, "--requests", "5000", "--conns", "64")
        rcli("FLUSHALL")
        rss0 = rss(node.pid).vm_rss + rss(redis.pid).vm_rss
        pre = h.quiet()
        lg = tools.loadgen("burst", port, REF_SECRET, *args)
        stored = settle(lambda: int(rcli("LLEN", "alerts")))
        listed = rcli("LRANGE", "alerts", "0", "-1").splitlines()
        ids = [_alert_id(x) for x in listed if x.startswith("{")]
        rss1 = rss(node.pid).vm_rss + rss(redis.pid).vm_rss
    return verdict(
        BurstResult(**msgspec.structs.asdict(lg), stored=stored, stored_unique_ids=len(set(ids)),
                    doubled=len(ids) - len(set(ids)), pre_busy_pct=pre,
                    rss_kib_node_redis_before=rss0, rss_kib_node_redis_after=rss1)
    )  # fmt: skip


class _Stored(msgspec.Struct):
    id: str | int


def _alert_id(line: str) -> str | int:
    return msgspec.json.decode(line, type=_Stored).id
