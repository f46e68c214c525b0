"""One bench run's state and the alertbridge it starts: a fresh nats-server for each
measurement, provisioned, with an ingress and workers, all stopped by PID afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import tools
from bench.common import AB_SECRET, PY, ROOT, BenchError
from bench.procs import PROCS, free_port, http, listening, nats_sync_config, run, wait_listening
from bench.results import Results
from bench.streams import Streams
from bench.system import machine, wait_quiet
from ops.tools.paths import nats_server_binary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from bench.options import Options
    from bench.procs import Popen
    from bench.results_worker import LoadSummary


@dataclass
class Running:
    """What `Harness.running` started: its environment and processes."""

    env: dict[str, str]
    nats: Popen
    ingress: Popen | None = None
    workers: list[Popen] = field(default_factory=list)
    more_ingresses: list[Popen] = field(default_factory=list)

    def the_ingress(self) -> Popen:
        """The ingress (for a run started with one)."""
        if self.ingress is None:
            raise BenchError("this run has no ingress")
        return self.ingress


class Harness:
    """The options, folders and results of one run, and the servers it starts."""

    def __init__(self, opts: Options) -> None:
        for port in (opts.ab_port, opts.broker_port, opts.ref_port, opts.redis_port):
            if listening(port):
                raise BenchError(f"127.0.0.1:{port} is in use (not ours; refusing to touch it)")
        self.opts = opts
        self.out = opts.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="alertbridge-bench.", dir="/var/tmp"))
        self.results = Results(machine=machine(), settings=opts)
        self.nats_bin = nats_server_binary()
        self.ab_cli = str(ROOT / ".venv/bin/alertbridge")
        self.lua = opts.ref_dir / "load/alerts.lua"
        self.seq = 0
        self.nats_port = self.mon_port = 0  # chosen afresh by every start_nats()

    def save(self) -> None:
        """results.json, as it stands now."""
        text = json.dumps(self.results.to_builtins(), indent=1)
        (self.out / "results.json").write_text(text)

    @property
    def streams(self) -> Streams:
        """The streams of the nats-server running now."""
        return Streams(f"nats://127.0.0.1:{self.nats_port}")

    @property
    def webhook(self) -> str:
        """The ingress's webhook URL."""
        return f"http://127.0.0.1:{self.opts.ab_port}/webhook"

    def quiet(self) -> int:
        """run-seed-ref.sh's quiet-wait, if asked for: the machine's busy % (-1: not asked)."""
        if not self.opts.quiet_wait:
            return -1
        return wait_quiet(self.opts.quiet_wait, self.opts.quiet_pct)

    # -------------------------------------------------------- alertbridge's processes
    def ab_env(self, **extra: str) -> dict[str, str]:
        """alertbridge's environment against the nats-server running now, plus `extra`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERTBRIDGE_", "OTEL_"))}
        env.update(
            {
                "ALERTBRIDGE_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
                "ALERTBRIDGE_VAR": str(self.tmp / "var"),  # no local-stack credentials
                "ALERTBRIDGE_HTTP_HOST": "127.0.0.1",
                "ALERTBRIDGE_HTTP_PORT": str(self.opts.ab_port),
                "ALERTBRIDGE_SECRETS": AB_SECRET,
                "ALERTBRIDGE_HEALTH_PORT": "0",
                "ALERTBRIDGE_PAPER_DB": str(self.tmp / "paper.db"),
            }
        )
        env.update(self.opts.ab_env_extra)
        env.update(extra)
        return env

    def start_nats(self, tag: str, cpu: int | None, sync: str | None = None) -> tuple[Popen, Path]:
        """A JetStream nats-server with a new store, on new ports; `sync`: its fsync
        policy (default: nats_sync_config's)."""
        self.seq += 1
        store = self.tmp / f"nats-{self.seq}"
        store.mkdir()
        # A fresh port per server: a client left over from anything earlier (which would
        # reconnect and quietly consume the bench's alerts) can never find this one.
        self.nats_port, self.mon_port = free_port(), free_port()
        argv = [self.nats_bin, "-c", str(nats_sync_config(store, sync)), "-js", "-sd", str(store),
                "-a", "127.0.0.1", "-p", str(self.nats_port), "-m", str(self.mon_port),
                "--server_name", f"bench-{self.seq}"]  # fmt: skip
        log_to = self.out / f"{tag}.nats.log"
        proc = PROCS.start("nats-server", argv, env=dict(os.environ), log_to=log_to, cpu=cpu)
        wait_listening(self.nats_port, proc, "nats-server")
        return proc, store

    @contextlib.contextmanager
    def running(
        self,
        tag: str,
        env: Callable[[], dict[str, str]] | None = None,
        *,
        ingress: bool = True,
        ingresses: int = 1,
        sync: str | None = None,
        module: str = "ingress",
    ) -> Iterator[Running]:
        """A fresh nats-server (CPU 0), provisioned, and an ingress (CPU 0) unless told
        otherwise, with `env` built once the server's port is known (default: ab_env).
        With `ingresses` > 1, that many ingress processes share the port
        (SO_REUSEPORT), none pinned. Workers put in `run.workers`, the ingresses and
        the server are stopped on exit and the store removed. `sync`: nats-server's
        fsync policy; `module`: what serves the webhook (`bench.stripped`: the floor)."""
        nats_p, store = self.start_nats(tag, cpu=0, sync=sync)
        started = Running((env or self.ab_env)(), nats_p)
        try:
            self.provision(started.env)
            if ingress and ingresses > 1:
                started.env["ALERTBRIDGE_HTTP_REUSE_PORT"] = "true"
                started.ingress = self.start_ingress(tag, started.env, cpu=None, module=module)
                started.more_ingresses = [
                    self.start_ingress(
                        f"{tag}{i}", started.env, cpu=None, shared=True, module=module
                    )
                    for i in range(2, ingresses + 1)
                ]
            elif ingress:
                started.ingress = self.start_ingress(tag, started.env, cpu=0, module=module)
            yield started
        finally:
            for proc in [*started.workers, *started.more_ingresses]:
                PROCS.stop(proc)
            PROCS.stop(started.ingress)
            PROCS.stop(nats_p)
            shutil.rmtree(store, ignore_errors=True)

    def provision(self, env: dict[str, str]) -> None:
        """`alertbridge provision`: the streams and consumers."""
        done = run([self.ab_cli, "provision"], env=env, cwd=self.tmp, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"alertbridge provision failed: {done.stderr.decode()[-500:]}")

    def start_ingress(
        self,
        tag: str,
        env: dict[str, str],
        cpu: int | None,
        *,
        shared: bool = False,
        module: str = "ingress",
    ) -> Popen:
        """`python -m ingress` (or `module`), waited for until /readyz says 200 (40 s at most)."""
        if not shared and listening(self.opts.ab_port):
            raise BenchError(f"127.0.0.1:{self.opts.ab_port} is taken (a leftover ingress?)")
        log_to = self.out / f"{tag}.ingress.log"
        argv = [PY, "-m", module]
        proc = PROCS.start("ingress", argv, env=env, cwd=self.tmp, log_to=log_to, cpu=cpu)
        ready = f"http://127.0.0.1:{self.opts.ab_port}/readyz"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"ingress exited ({proc.returncode}); see {tag}.ingress.log")
            if http("GET", ready)[0] == 200:
                return proc
            time.sleep(0.1)
        raise BenchError("ingress not ready within 40 s")

    def start_workers(
        self, tag: str, n: int, env: dict[str, str], cpu: int | None, module: str = "worker"
    ) -> list[Popen]:
        """`n` times `python -m worker` (or `module`), checked to be still running 1.5 s
        later."""
        procs = self.spawn_workers(tag, n, env, cpu, module)
        self.check_workers(tag, procs)
        return procs

    def spawn_workers(
        self, tag: str, n: int, env: dict[str, str], cpu: int | None, module: str = "worker"
    ) -> list[Popen]:
        """`n` times `python -m worker` (or `module`), not waited for."""
        procs = []
        for i in range(n):
            log_to = self.out / f"{tag}.worker{i}.log"
            argv = [PY, "-m", module]
            procs.append(
                PROCS.start(f"worker-{i}", argv, env=env, cwd=self.tmp, log_to=log_to, cpu=cpu)
            )
        return procs

    def check_workers(self, tag: str, procs: list[Popen]) -> None:
        """Wait 1.5 s; a worker that exited meanwhile is an error."""
        time.sleep(1.5)
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"worker exited ({p.returncode}); see {tag}.worker*.log")

    # -------------------------------------------------------- through the ingress
    def fill(self, n: int, symbols: str, *extra: str) -> LoadSummary:
        """`n` alerts through the ingress over 64 keep-alive connections, as fast as it takes."""
        return tools.loadgen("count", self.opts.ab_port, AB_SECRET, "--requests", str(n),
                             "--conns", "64", "--symbols", symbols, *extra)  # fmt: skip

    def smoke(self) -> None:
        """fresh / duplicate / bad secret / missing symbol, then one message stored."""

        def body(secret: str, alert_id: str, *, symbol: bool = True) -> bytes:
            fields = {"secret": secret, "id": alert_id, **({"symbol": "BTCUSDT"} if symbol else {}),
                      "action": "buy", "qty": 1}  # fmt: skip
            return json.dumps(fields).encode()

        c1, b1 = http("POST", self.webhook, body(AB_SECRET, "smoke-1"))
        c2, b2 = http("POST", self.webhook, body(AB_SECRET, "smoke-1"))
        c3, _ = http("POST", self.webhook, body("nope-nope-nope", "smoke-2"))
        c4, _ = http("POST", self.webhook, body(AB_SECRET, "smoke-3", symbol=False))
        n = self.streams.stored()
        got = (c1, b'"duplicate":false' in b1, c2, b'"duplicate":true' in b2, c3, c4, n)
        if got != (200, True, 200, True, 401, 422, 1):
            raise BenchError(f"alertbridge smoke test failed: {got} ({b1!r} {b2!r})")
