# ruff: noqa: S603, S607, S105, S106, RUF001, E501, E731
"""`just bench` (via bench/run.sh): the reference design (Express + Redis, from a copy of
../shared/bench) and alertbridge side by side, as issue 5 asks. Prints ONE table.

Phases (`--phases`, default all, in this order):
  throughput  wrk + load/alerts.lua, 64 connections, server + its store pinned to CPU 0,
              wrk to CPU 1; alternating rounds reference / alertbridge, each round a fresh
              server lifetime with a warm-up; the reference runs through
              run-seed-ref.sh itself (--reps 1 per round), alertbridge through the same
              loop re-done here (its answers and its store differ: see README.md).
              After each alertbridge run the ALERTS stream is counted and its
              Nats-Msg-Ids checked for doubles.
  burst       10,000 alerts started evenly over 1 s, each on a fresh connection
              (loadgen.py burst), both designs; every 20th repeats an earlier id.
  worker      end-to-end latency at 1,000 alerts/s (the `latency` of `executed`
              events), drain rate with the paper broker (64 symbols, and 1 symbol).
  scaling     drain rate with 1, 2, 4 worker processes against a 20 ms HTTP broker
              (slow_broker.py via the signed HTTP forwarder), with 16 and with 64
              partitions (one alert in flight per partition).
  memory      RSS of ingress and worker at rest and after N alerts.
  dedup       nats-server RSS after K publishes with unique Nats-Msg-Ids vs without.
  profile     py-spy on the ingress under wrk load (needs py-spy: see run.sh).

Every process started here is recorded by PID and stopped by that PID (TERM, then
KILL) when its phase ends or the bench is interrupted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import natsq  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PY = sys.executable
AB_SECRET = "s3cret-bench-0123"  # alertbridge wants >= 8 characters; the reference: s3cret
REF_SECRET = "s3cret"
HZ = os.sysconf("SC_CLK_TCK")
PHASES = ("throughput", "burst", "worker", "scaling", "memory", "dedup", "profile")


def symbols(n: int) -> str:
    """The loadgen's `--symbols`: SYM00, SYM01, ... (as `natsq.py publish --symbols n`)."""
    return ",".join(f"SYM{i:02d}" for i in range(n))


SYMBOLS_64 = symbols(64)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


@dataclass
class Running:
    """What `Bench.running` started: its environment and processes."""

    env: dict[str, str]
    nats: subprocess.Popen[bytes]
    ingress: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    more_ingresses: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def the_ingress(self) -> subprocess.Popen[bytes]:
        """The ingress (for a run started with one)."""
        if self.ingress is None:
            raise BenchError("this run has no ingress")
        return self.ingress


class BenchError(Exception):
    """A phase could not run or its checks could not be made."""


# ----------------------------------------------------------------- processes
class Procs:
    """Children by PID; stop() ends exactly that PID (TERM, then KILL)."""

    def __init__(self) -> None:
        self.live: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log_to: Path,
        cwd: Path | None = None,
        cpu: int | None = None,
    ) -> subprocess.Popen[bytes]:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the PID is the app's
        with log_to.open("ab") as fh:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.live.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.live = [(n, p) for n, p in self.live if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.live)):
            self.stop(proc, grace=5.0)


PROCS = Procs()


def ticks(pid: int) -> int:
    """utime + stime of a process (clock ticks, all threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def ours_ticks() -> int:
    """CPU ticks of every process the bench runs now (servers, workers, brokers) and
    of the bench itself with its reaped children (loadgen, natsq, wrk)."""
    total = 0
    for _, proc in PROCS.live:
        with contextlib.suppress(OSError):
            total += ticks(proc.pid)
    own = os.times()
    return total + round((own.user + own.system + own.children_user + own.children_system) * HZ)


def cpu_snap() -> dict[str, list[int]]:
    snap = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *vals = line.split()
            snap[name] = [int(v) for v in vals]
    return snap


def cpu_delta(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, float]:
    """Per-CPU busy %, steal %, and busy ticks (idle, iowait and steal excluded)."""
    out: dict[str, float] = {}
    steal = total_all = busy_ticks = 0
    for cpu, before in a.items():
        d = [y - x for x, y in zip(before, b[cpu], strict=False)]
        tot = sum(d)
        idle, iowait, st = d[3], d[4], d[7]
        out[f"{cpu}_busy_pct"] = round(100 * (tot - idle - iowait) / tot) if tot else 0
        steal += st
        total_all += tot
        busy_ticks += tot - idle - iowait - st
    out["steal_pct"] = round(100 * steal / total_all, 1) if total_all else 0.0
    out["busy_ticks"] = busy_ticks
    return out


def machine_busy_pct() -> int:
    a = cpu_snap()
    time.sleep(1)
    d = cpu_delta(a, cpu_snap())
    return round(100 * d["busy_ticks"] / HZ / os.cpu_count())  # type: ignore[operator]


def wait_quiet(max_wait: float, pct: int) -> int:
    """run-seed-ref.sh's quiet-wait: until all-CPU busy <= pct % over 1 s, or max_wait."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = machine_busy_pct()
        if busy <= pct or time.monotonic() >= deadline:
            return busy
        log(f"machine busy {busy}% (> {pct}%), load {loadavg()}: waiting for a quiet moment")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def calib_ms(cpu: int) -> int:
    """run-seed-ref.sh's host-speed probe: sha256 of 128 MiB on the server CPU."""
    t0 = time.monotonic()
    subprocess.run(  # noqa: S602
        f"head -c 128M /dev/zero | taskset -c {cpu} sha256sum >/dev/null",
        shell=True,
        check=True,
        timeout=60,
    )
    return round((time.monotonic() - t0) * 1000)


def nats_sync_config(directory: Path) -> Path:
    """A config file that sets only the server's fsync policy, as the product ships it:
    ALERTBRIDGE_NATS_SYNC, `always` by default (README "What a 200 means")."""
    sync = os.environ.get("ALERTBRIDGE_NATS_SYNC", "always")
    path = directory / "sync.conf"
    path.write_text(f"jetstream {{ sync_interval: {sync} }}\n")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening")
        if not port_free(port):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {seconds}s")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 3) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)  # noqa: S310
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.ref_dir: Path = args.ref_dir
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="alertbridge-bench.", dir="/var/tmp"))
        self.results: dict[str, Any] = {"machine": machine(), "settings": vars_json(args)}
        self.nats_bin = str(ROOT / ".venv/bin/nats-server")
        if not Path(self.nats_bin).exists():
            self.nats_bin = shutil.which("nats-server") or self.nats_bin
        self.ab_cli = str(ROOT / ".venv/bin/alertbridge")
        self.lua = self.ref_dir / "load/alerts.lua"
        self.seq = 0
        self.nats_port = self.mon_port = 0  # chosen afresh by every start_nats()
        for port in (
            args.ab_port,
            args.broker_port,
            args.ref_port,
            args.redis_port,
        ):
            if not port_free(port):
                raise BenchError(f"127.0.0.1:{port} is in use (not ours; refusing to touch it)")

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    # -------------------------------------------------------- alertbridge pieces
    def ab_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERTBRIDGE_", "OTEL_"))}
        env.update(
            {
                "ALERTBRIDGE_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
                "ALERTBRIDGE_VAR": str(self.tmp / "var"),  # no local-stack credentials
                "ALERTBRIDGE_HTTP_HOST": "127.0.0.1",
                "ALERTBRIDGE_HTTP_PORT": str(self.a.ab_port),
                "ALERTBRIDGE_SECRETS": AB_SECRET,
                "ALERTBRIDGE_HEALTH_PORT": "0",
                "ALERTBRIDGE_PAPER_DB": str(self.tmp / "paper.db"),
            }
        )
        env.update(self.a.ab_env_extra)
        env.update(extra)
        return env

    def start_nats(self, tag: str, cpu: int | None) -> tuple[subprocess.Popen[bytes], Path]:
        self.seq += 1
        store = self.tmp / f"nats-{self.seq}"
        store.mkdir()
        # A fresh port per server: a client left over from anything earlier (which would
        # reconnect and quietly consume the bench's alerts) can never find this one.
        self.nats_port, self.mon_port = free_port(), free_port()
        argv = [
            self.nats_bin,
            "-c",
            str(nats_sync_config(store)),
            "-js",
            "-sd",
            str(store),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.nats_port),
            "-m",
            str(self.mon_port),
            "--server_name",
            f"bench-{self.seq}",
        ]
        proc = PROCS.start(
            "nats-server", argv, env=dict(os.environ), log_to=self.out / f"{tag}.nats.log", cpu=cpu
        )
        wait_port(self.nats_port, proc, "nats-server")
        return proc, store

    @contextlib.contextmanager
    def running(
        self,
        tag: str,
        env: Callable[[], dict[str, str]] | None = None,
        *,
        ingress: bool = True,
        ingresses: int = 1,
    ) -> Iterator[Running]:
        """A fresh nats-server (CPU 0), provisioned, and an ingress (CPU 0) unless told
        otherwise, with `env` built once the server's port is known (default: ab_env).
        With `ingresses` > 1, that many ingress processes share the port
        (SO_REUSEPORT), none pinned. Workers put in `run.workers`, the ingresses and
        the server are stopped on exit and the store removed."""
        nats_p, store = self.start_nats(tag, cpu=0)
        run = Running((env or self.ab_env)(), nats_p)
        try:
            self.provision(run.env)
            if ingress and ingresses > 1:
                run.env["ALERTBRIDGE_HTTP_REUSE_PORT"] = "true"
                run.ingress = self.start_ingress(tag, run.env, cpu=None)
                run.more_ingresses = [
                    self.start_ingress(f"{tag}{i}", run.env, cpu=None, shared=True)
                    for i in range(2, ingresses + 1)
                ]
            elif ingress:
                run.ingress = self.start_ingress(tag, run.env, cpu=0)
            yield run
        finally:
            for w in run.workers:
                PROCS.stop(w)
            for i in run.more_ingresses:
                PROCS.stop(i)
            PROCS.stop(run.ingress)
            PROCS.stop(nats_p)
            shutil.rmtree(store, ignore_errors=True)

    def provision(self, env: dict[str, str]) -> None:
        r = subprocess.run(
            [self.ab_cli, "provision"],
            env=env,
            cwd=self.tmp,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if r.returncode != 0:
            raise BenchError(f"alertbridge provision failed: {r.stderr.decode()[-500:]}")

    def start_ingress(
        self, tag: str, env: dict[str, str], cpu: int | None, *, shared: bool = False
    ) -> subprocess.Popen[bytes]:
        if not shared and not port_free(self.a.ab_port):
            raise BenchError(f"127.0.0.1:{self.a.ab_port} is taken (a leftover ingress?)")
        proc = PROCS.start(
            "ingress",
            [PY, "-m", "ingress"],
            env=env,
            cwd=self.tmp,
            log_to=self.out / f"{tag}.ingress.log",
            cpu=cpu,
        )
        base = f"http://127.0.0.1:{self.a.ab_port}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"ingress exited ({proc.returncode}); see {tag}.ingress.log")
            if http("GET", base + "/readyz")[0] == 200:
                return proc
            time.sleep(0.1)
        raise BenchError("ingress not ready within 40 s")

    def start_workers(
        self, tag: str, n: int, env: dict[str, str], cpu: int | None
    ) -> list[subprocess.Popen[bytes]]:
        procs = [
            PROCS.start(
                f"worker-{i}",
                [PY, "-m", "worker"],
                env=env,
                cwd=self.tmp,
                log_to=self.out / f"{tag}.worker{i}.log",
                cpu=cpu,
            )
            for i in range(n)
        ]
        time.sleep(1.5)
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"worker exited ({p.returncode}); see {tag}.worker*.log")
        return procs

    def nq(self, coro_fn: str, *args: Any, **kw: Any) -> dict[str, Any]:
        """Run one natsq helper against the bench's nats-server (bounded)."""

        async def go() -> dict[str, Any]:
            import nats

            nc = await nats.connect(
                f"nats://127.0.0.1:{self.nats_port}", connect_timeout=3, allow_reconnect=False
            )
            try:
                fn = getattr(natsq, coro_fn)
                return await fn(nc, *args, **kw)  # type: ignore[no-any-return]
            finally:
                await nc.close()

        return asyncio.run(asyncio.wait_for(go(), 600))

    def stream_count(self, stream: str = "ALERTS", subjects: str | None = None) -> int:
        info = self.nq("count", stream, subjects)
        return int(info["subjects"] if subjects else info["messages"])

    def executed_count(self) -> int:
        return self.stream_count("EVENTS", "events.executed.>")

    def settle(self, fn: Any, rounds: int = 50, every: float = 0.2) -> int:
        """Poll fn() until two readings agree (requests in flight have finished)."""
        prev = -1
        cur = fn()
        for _ in range(rounds):
            if cur == prev:
                break
            prev = cur
            time.sleep(every)
            cur = fn()
        return int(cur)

    def loadgen(
        self, mode: str, port: int, secret: str, *extra: str, cpu: int = 1, timeout: float = 900
    ) -> dict[str, Any]:
        argv = [
            "taskset",
            "-c",
            str(cpu),
            PY,
            str(HERE / "loadgen.py"),
            mode,
            "--port",
            str(port),
            "--secret",
            secret,
            *extra,
        ]
        r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise BenchError(f"loadgen {mode} failed: {r.stderr.decode()[-800:]}")
        return json.loads(r.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

    def fill(self, n: int, symbols: str, *extra: str) -> dict[str, Any]:
        """`n` alerts through the ingress over 64 keep-alive connections, as fast as it takes."""
        return self.loadgen(
            "count",
            self.a.ab_port,
            AB_SECRET,
            "--requests",
            str(n),
            "--conns",
            "64",
            "--symbols",
            symbols,
            *extra,
        )

    def wrk(
        self,
        url: str,
        duration: str,
        env_extra: dict[str, str],
        script: Path,
        out: Path,
        latency: bool = True,
    ) -> tuple[dict[str, str], float]:
        """wrk pinned to CPU 1 with alerts.lua; (BENCH fields, wrk CPU seconds)."""
        argv = [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{self.a.conns}",
            f"-d{duration}",
            "--timeout",
            "5s",
            *(["--latency"] if latency else []),
            "-s",
            str(script),
            url,
        ]
        env = dict(os.environ, DUP_EVERY="0", **env_extra)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with out.open("w") as fh:
            fh.write("# " + " ".join(shlex.quote(x) for x in argv) + "\n")
            fh.flush()
            r = subprocess.run(
                argv,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=_secs(duration) + 60,
                check=False,
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise BenchError(f"wrk failed; see {out}")
        line = next((ln for ln in out.read_text().splitlines() if ln.startswith("BENCH ")), "")
        if not line:
            raise BenchError(f"no BENCH line in {out}")
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return fields, cpu

    # -------------------------------------------------------- phase: throughput
    def phase_throughput(self) -> None:
        rounds: dict[str, list[dict[str, Any]]] = {"reference": [], "alertbridge": []}
        self.results["throughput"] = rounds
        variants = self.a.variants
        for label in variants:
            rounds[f"alertbridge[{label}]"] = []
        for i in range(1, self.a.reps + 1):
            log(f"throughput round {i}/{self.a.reps}: reference (run-seed-ref.sh --reps 1)")
            rounds["reference"].append(self.ref_round(i))
            self.save()
            log(f"throughput round {i}/{self.a.reps}: alertbridge")
            rounds["alertbridge"].append(self.ab_round(i))
            self.save()
            for label, extra in variants.items():
                log(f"throughput round {i}/{self.a.reps}: alertbridge[{label}] {extra}")
                rounds[f"alertbridge[{label}]"].append(self.ab_round(i, label, extra))
                self.save()
        for side, runs in rounds.items():
            self.results[f"throughput_{side}_median"] = {
                k: median([float(r[k]) for r in runs if r.get(k) not in (None, "", "na")])
                for k in (
                    "rps",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "max_ms",
                    "srv_cpu_us_per_req",
                    "app_cpu_pct",
                    "store_cpu_pct",
                    "other_cpu_pct",
                    "calib_ms",
                )
            }
            self.results[f"throughput_{side}_checks"] = [r["check"] for r in runs]

    def ref_round(self, i: int) -> dict[str, Any]:
        out = self.out / f"ref-round{i}"
        argv = [
            str(self.ref_dir / "run-seed-ref.sh"),
            f"--{self.a.ref_mode}",
            "--reps",
            "1",
            "--duration",
            f"{self.a.duration}s",
            "--warmup",
            f"{self.a.warmup}s",
            "--conns",
            str(self.a.conns),
            "--port",
            str(self.a.ref_port),
            "--redis-port",
            str(self.a.redis_port),
            "--quiet-wait",
            str(self.a.quiet_wait),
            "--quiet-pct",
            str(self.a.quiet_pct),
            "--out",
            str(out),
        ]
        with (self.out / f"ref-round{i}.log").open("w") as fh:
            fh.write("# " + " ".join(shlex.quote(x) for x in argv) + "\n")
            fh.flush()
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                proc.wait(timeout=4 * self.a.quiet_wait + 300)
            except subprocess.TimeoutExpired:
                proc.terminate()  # its trap stops redis, node and wrk by PID
                proc.wait(30)
                raise BenchError(f"run-seed-ref.sh did not finish; see ref-round{i}.log") from None
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
        tsvs = sorted(out.glob("*/results.tsv"))
        if not tsvs:
            raise BenchError(f"run-seed-ref.sh left no results.tsv; see ref-round{i}.log")
        with tsvs[-1].open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        row = dict(row)
        row["store_cpu_pct"] = row.pop("redis_cpu_pct")
        row["stored"] = row.pop("llen_alerts")
        row["rc"] = proc.returncode
        row["run_dir"] = str(tsvs[-1].parent)
        log(
            f"  reference: {row['rps']} req/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms "
            f"stored {row['stored']} fresh {row['fresh_acks']} -> {row['check']} "
            f"(noise: {row['noise']}, other cpu {row['other_cpu_pct']}%)"
        )
        return row

    def ab_round(
        self, i: int, variant: str = "", extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        tag = f"ab{'-' + variant if variant else ''}-round{i}"
        with self.running(tag, lambda: self.ab_env(**(extra or {}))) as run:
            nats_p, ing = run.nats, run.the_ingress()
            self.ab_smoke()
            url = f"http://127.0.0.1:{self.a.ab_port}/webhook"
            wrk_env = {"SECRET": AB_SECRET, "BENCH_ALERTS_LUA": str(self.lua)}
            script = HERE / "alerts-ab.lua"
            if self.a.warmup > 0:
                pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
                log(f"  machine busy before warm-up: {pre}% | warm-up wrk {self.a.warmup}s")
                self.wrk(
                    url,
                    f"{self.a.warmup}s",
                    wrk_env,
                    script,
                    self.out / f"{tag}.warmup.wrk.txt",
                    latency=False,
                )
            self.settle(self.stream_count)
            time.sleep(1)
            pre_busy = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
            calib = calib_ms(0)
            count0 = self.stream_count()
            n0, r0, s0, t0 = ticks(ing.pid), ticks(nats_p.pid), cpu_snap(), time.monotonic()
            f, wrk_cpu = self.wrk(
                url, f"{self.a.duration}s", wrk_env, script, self.out / f"{tag}.wrk.txt"
            )
            n1, r1, s1, t1 = ticks(ing.pid), ticks(nats_p.pid), cpu_snap(), time.monotonic()
            stored = self.settle(self.stream_count) - count0
            ids = self.nq("ids", "ALERTS", time.monotonic() + 120)
        d = cpu_delta(s0, s1)
        el = t1 - t0
        reqs, fresh = int(f["requests"]), int(f["fresh"])
        sent_unique, non2xx = int(f["sent_unique"]), int(f["non2xx"])
        app_cpu = 100 * (n1 - n0) / HZ / el
        store_cpu = 100 * (r1 - r0) / HZ / el
        other = max(0.0, (d["busy_ticks"] - (n1 - n0) - (r1 - r0) - wrk_cpu * HZ) / HZ / el * 100)
        check = "OK"
        if not (fresh <= stored <= sent_unique) or stored - fresh > self.a.conns:
            check = "FAIL"
        if ids["doubled"] or ids["unique_ids"] != ids["messages"]:
            check = "FAIL(doubled)"
        if non2xx:
            check += "(non2xx)"
        noise = "noisy" if d["steal_pct"] > 5 or other > 10 or pre_busy > self.a.quiet_pct else "ok"
        row = {
            "rep": i,
            "rps": float(f["rps"]),
            "p50_ms": int(f["p50_us"]) / 1000,
            "p90_ms": int(f["p90_us"]) / 1000,
            "p99_ms": int(f["p99_us"]) / 1000,
            "max_ms": int(f["max_us"]) / 1000,
            "non2xx": non2xx,
            "requests": reqs,
            "fresh_acks": fresh,
            "dupe_acks": int(f["dupe"]),
            "sent_unique": sent_unique,
            "stored": stored,
            "stream_messages": ids["messages"],
            "stream_unique_ids": ids["unique_ids"],
            "doubled": ids["doubled"],
            "inflight_at_cutoff": stored - fresh,
            "check": check,
            "app_cpu_pct": round(app_cpu),
            "store_cpu_pct": round(store_cpu),
            "wrk_cpu_pct": round(100 * wrk_cpu / el),
            "other_cpu_pct": round(other),
            "cpu0_busy_pct": d["cpu0_busy_pct"],
            "cpu1_busy_pct": d["cpu1_busy_pct"],
            "steal_pct": d["steal_pct"],
            "pre_run_busy_pct": pre_busy,
            "calib_ms": calib,
            "srv_cpu_us_per_req": round(((n1 - n0) + (r1 - r0)) / HZ * 1e6 / reqs)
            if reqs
            else None,
            "noise": noise,
            "loadavg": loadavg(),
        }
        log(
            f"  alertbridge: {row['rps']:.0f} req/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms "
            f"stored {stored} fresh {fresh} sent {sent_unique} doubled {ids['doubled']} -> {check} "
            f"(noise: {noise}, other cpu {row['other_cpu_pct']}%)"
        )
        return row

    def ab_smoke(self) -> None:
        """fresh / duplicate / bad secret / missing symbol, then one message stored."""
        url = f"http://127.0.0.1:{self.a.ab_port}/webhook"
        body = lambda s, i, sym=True: json.dumps(
            {
                "secret": s,
                "id": i,
                **({"symbol": "BTCUSDT"} if sym else {}),
                "action": "buy",
                "qty": 1,
            }
        ).encode()
        c1, b1 = http("POST", url, body(AB_SECRET, "smoke-1"))
        c2, b2 = http("POST", url, body(AB_SECRET, "smoke-1"))
        c3, _ = http("POST", url, body("nope-nope-nope", "smoke-2"))
        c4, _ = http("POST", url, body(AB_SECRET, "smoke-3", sym=False))
        n = self.stream_count()
        got = (c1, b'"duplicate":false' in b1, c2, b'"duplicate":true' in b2, c3, c4, n)
        if got != (200, True, 200, True, 401, 422, 1):
            raise BenchError(f"alertbridge smoke test failed: {got} ({b1!r} {b2!r})")

    # -------------------------------------------------------- phase: burst
    def phase_burst(self) -> None:
        res: dict[str, Any] = {}
        self.results["burst"] = res
        args = [
            "--requests",
            str(self.a.burst_n),
            "--over",
            str(self.a.burst_over),
            "--dup-every",
            "20",
            "--dup-lag",
            "100",
            "--timeout",
            "10",
        ]
        log("burst: reference (Express + Redis)")
        res["reference"] = self.ref_burst(args)
        self.save()
        log("burst: alertbridge")
        res["alertbridge"] = self.ab_burst(args)
        self.save()
        if self.a.burst_ingresses > 1:
            n = self.a.burst_ingresses
            log(f"burst: alertbridge, {n} ingress processes on one port, unpinned")
            res["alertbridge_scaled"] = {"ingresses": n, **self.ab_burst(args, ingresses=n)}
            self.save()

    def ensure_ref_deps(self) -> None:
        app = self.ref_dir / "seed-ref"
        if not (app / "node_modules/express").is_dir() or not (app / "node_modules/redis").is_dir():
            log("installing seed-ref deps (npm ci)")
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=app,
                check=True,
                timeout=600,
                capture_output=True,
            )

    def ref_burst(self, args: list[str]) -> dict[str, Any]:
        self.ensure_ref_deps()
        data = Path(tempfile.mkdtemp(prefix="seed-ref-redis.", dir="/var/tmp"))
        rp = str(self.a.redis_port)
        redis_args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            rp,
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            str(data),
        ]
        if self.a.ref_mode == "durable":
            redis_args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            redis_args += ["--appendonly", "no"]
        rcli = lambda *a: (
            subprocess.run(
                ["redis-cli", "-p", rp, *a],
                capture_output=True,
                timeout=30,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        redis = node = None
        try:
            redis = PROCS.start(
                "redis-server",
                redis_args,
                env=dict(os.environ),
                log_to=self.out / "burst.redis.log",
                cpu=0,
            )
            wait_port(self.a.redis_port, redis, "redis-server")
            env = dict(
                os.environ,
                PORT=str(self.a.ref_port),
                HOST="127.0.0.1",
                REDIS_URL=f"redis://127.0.0.1:{rp}",
                WEBHOOK_SECRET=REF_SECRET,
                NODE_ENV="production",
            )
            node = PROCS.start(
                "seed-ref",
                ["node", "seed-ref/ingress.js"],
                env=env,
                cwd=self.ref_dir,
                log_to=self.out / "burst.seed-ref.log",
                cpu=0,
            )
            url = f"http://127.0.0.1:{self.a.ref_port}/webhook"
            deadline = time.monotonic() + 20
            while http("POST", url, b"{}")[0] != 401:
                if time.monotonic() > deadline or node.poll() is not None:
                    raise BenchError("seed-ref did not start; see burst.seed-ref.log")
                time.sleep(0.1)
            self.loadgen(
                "count", self.a.ref_port, REF_SECRET, "--requests", "5000", "--conns", "64"
            )
            rcli("FLUSHALL")
            rss0 = rss_kib(node.pid)["VmRSS"] + rss_kib(redis.pid)["VmRSS"]
            pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
            lg = self.loadgen("burst", self.a.ref_port, REF_SECRET, *args)
            stored = self.settle(lambda: int(rcli("LLEN", "alerts")))
            listed = rcli("LRANGE", "alerts", "0", "-1").splitlines()
            ids = [json.loads(x)["id"] for x in listed if x.startswith("{")]
            lg.update(
                {
                    "stored": stored,
                    "stored_unique_ids": len(set(ids)),
                    "doubled": len(ids) - len(set(ids)),
                    "pre_busy_pct": pre,
                    "rss_kib_node_redis_before": rss0,
                    "rss_kib_node_redis_after": rss_kib(node.pid)["VmRSS"]
                    + rss_kib(redis.pid)["VmRSS"],
                }
            )
        finally:
            PROCS.stop(node)
            PROCS.stop(redis)
            shutil.rmtree(data, ignore_errors=True)
        return burst_verdict(lg)

    def ab_burst(self, args: list[str], ingresses: int = 1) -> dict[str, Any]:
        tag = "burst" if ingresses == 1 else f"burst-x{ingresses}"
        with self.running(tag, ingresses=ingresses) as run:
            ing = run.the_ingress()
            self.loadgen("count", self.a.ab_port, AB_SECRET, "--requests", "5000", "--conns", "64")
            count0 = self.settle(self.stream_count)
            pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
            lg = self.loadgen("burst", self.a.ab_port, AB_SECRET, *args)
            stored = self.settle(self.stream_count) - count0
            ids = self.nq("ids", "ALERTS", time.monotonic() + 120)
            lg.update(
                {
                    "stored": stored,
                    "stored_unique_ids": stored - ids["doubled"],
                    "doubled": ids["doubled"],
                    "pre_busy_pct": pre,
                    "rss_kib_ingress_after": rss_kib(ing.pid)["VmRSS"],
                }
            )
        return burst_verdict(lg)

    # -------------------------------------------------------- phase: worker
    def phase_worker(self) -> None:
        res: dict[str, Any] = {}
        self.results["worker"] = res
        with self.running("worker", lambda: self.ab_env(ALERTBRIDGE_MAX_ALERT_AGE="0")) as run:
            env, workers = run.env, run.workers
            workers += self.start_workers("worker", 1, env, cpu=1)
            # warm up the path (and the paper book) before measuring
            self.loadgen(
                "paced",
                self.a.ab_port,
                AB_SECRET,
                "--rate",
                "500",
                "--duration",
                "3",
                "--conns",
                "32",
                "--symbols",
                SYMBOLS_64,
            )
            self.wait_executed(self.stream_count(), 60)
            # (a) end-to-end latency at a steady 1,000 alerts/s, 64 symbols. The load
            # generator runs on CPU 0 beside the ingress and nats-server (together about
            # 80 % of it at this rate) so that the worker has CPU 1 to itself: the latency
            # counts from the ingress's receipt, so it is the worker's and NATS's.
            since = self.nq("count", "EVENTS")["last_seq"] + 1
            pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
            w0, t0 = ticks(workers[0].pid), time.monotonic()
            lg = self.loadgen(
                "paced",
                self.a.ab_port,
                AB_SECRET,
                "--rate",
                str(self.a.e2e_rate),
                "--duration",
                str(self.a.e2e_seconds),
                "--conns",
                "32",
                "--symbols",
                SYMBOLS_64,
                cpu=0,
            )
            backlog = self.nq("pending")
            w1, t1 = ticks(workers[0].pid), time.monotonic()
            done = self.wait_executed(self.stream_count(), 120)
            ev = self.nq("executed", since, 0.05, time.monotonic() + 300)
            res["e2e"] = {
                "rate": self.a.e2e_rate,
                "seconds": self.a.e2e_seconds,
                "load": lg,
                "backlog_at_end_of_load": backlog,
                "all_executed": done,
                "worker_cpu_pct": round(100 * (w1 - w0) / HZ / (t1 - t0)),
                "pre_busy_pct": pre,
                **ev,
            }
            log(
                f"  e2e @ {self.a.e2e_rate}/s: p50 {ev.get('latency_p50_ms')} ms p99 "
                f"{ev.get('latency_p99_ms')} ms, worker cpu {res['e2e']['worker_cpu_pct']}%"
            )
            self.save()
            # (a2) the same rate offered to the worker alone: alerts published straight
            # into ALERTS (the ingress cannot take 1,000/s on one core), publisher on CPU 0
            res["e2e_sweep"] = [
                self.e2e_direct(workers[0], rate, self.a.e2e_sweep_seconds)
                for rate in self.a.e2e_sweep
            ]
            self.save()
            res["e2e_direct"] = self.e2e_direct(workers[0], self.a.e2e_rate, self.a.e2e_seconds)
            self.save()
            # (b) drain rate, paper broker: fill a backlog with the worker stopped
            for label, symbols, n in (
                ("paper_64_symbols", SYMBOLS_64, self.a.drain_n),
                ("paper_1_symbol", "BTCUSDT", self.a.drain_n_single),
            ):
                for w in workers:
                    PROCS.stop(w)
                workers.clear()
                res[label] = self.drain(label, env, symbols, n, 1, cpu=1)
                self.save()

    def e2e_direct(
        self, worker: subprocess.Popen[bytes], rate: int, seconds: int
    ) -> dict[str, Any]:
        since = self.nq("count", "EVENTS")["last_seq"] + 1
        target = self.stream_count() + int(rate * seconds)
        pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
        w0, t0 = ticks(worker.pid), time.monotonic()
        argv = [
            "taskset",
            "-c",
            "0",
            PY,
            str(HERE / "natsq.py"),
            "--max-seconds",
            str(seconds * 3 + 30),
            f"nats://127.0.0.1:{self.nats_port}",
            "publish",
            str(rate),
            str(seconds),
        ]
        r = subprocess.run(argv, capture_output=True, timeout=seconds * 3 + 60, check=False)
        if r.returncode != 0:
            raise BenchError(f"natsq publish failed: {r.stderr.decode()[-600:]}")
        pub = json.loads(r.stdout)
        backlog = self.nq("pending")
        w1, t1 = ticks(worker.pid), time.monotonic()
        done = self.wait_executed(target, 120)
        ev = self.nq("executed", since, 0.05, time.monotonic() + 300)
        out = {
            "rate": rate,
            "seconds": seconds,
            "publish": pub,
            "backlog_at_end_of_load": backlog,
            "all_executed": done,
            "pre_busy_pct": pre,
            "worker_cpu_pct": round(100 * (w1 - w0) / HZ / (t1 - t0)),
            **ev,
        }
        log(
            f"  e2e direct @ {pub['achieved_rate']}/s: p50 {ev.get('latency_p50_ms')} ms p99 "
            f"{ev.get('latency_p99_ms')} ms, worker cpu {out['worker_cpu_pct']}%, backlog "
            f"{backlog['num_pending']}"
        )
        return out

    def wait_executed(self, target: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.executed_count() >= target:
                return True
            time.sleep(0.5)
        return False

    def drain(
        self, label: str, env: dict[str, str], symbols: str, n: int, nworkers: int, cpu: int | None
    ) -> dict[str, Any]:
        """Fill n alerts through the ingress (no worker running), then time n workers."""
        before = self.executed_count()
        stored0 = self.stream_count()
        since = self.nq("count", "EVENTS")["last_seq"] + 1
        fill = self.fill(n, symbols)
        stored = self.settle(self.stream_count) - stored0
        pre = wait_quiet(self.a.quiet_wait, self.a.quiet_pct) if self.a.quiet_wait else -1
        t0 = time.monotonic()
        workers = self.start_workers(f"drain-{label}", nworkers, env, cpu=cpu)
        tk0 = sum(ticks(w.pid) for w in workers)
        ours0, s0, m0 = ours_ticks(), cpu_snap(), time.monotonic()
        done = self.wait_executed(before + stored, self.a.drain_max_seconds)
        ours1, s1, m1 = ours_ticks(), cpu_snap(), time.monotonic()
        tk1 = sum(ticks(w.pid) for w in workers if w.poll() is None)
        wall = time.monotonic() - t0
        busy = cpu_delta(s0, s1)["busy_ticks"]
        other = max(0.0, (busy - (ours1 - ours0)) / HZ / max(m1 - m0, 1e-9) * 100)
        for w in workers:
            PROCS.stop(w)
        ev = self.nq("executed", since, 0.0, time.monotonic() + 300)
        out = {
            "label": label,
            "workers": nworkers,
            "alerts": stored,
            "fill_rps": fill["achieved_rps"],
            "all_executed": done,
            "wall_s": round(wall, 2),
            "pre_busy_pct": pre,
            "other_cpu_pct": round(other),
            "noise": "noisy" if other > 10 else "ok",
            "worker_cpu_pct_sum": round(100 * (tk1 - tk0) / HZ / max(wall, 1e-9)),
            "executed": ev.get("executed"),
            "rate_per_s": ev.get("rate_per_s"),
            "rate_mid80_per_s": ev.get("rate_mid80_per_s"),
        }
        log(
            f"  drain {label} x{nworkers}: {out['executed']} executed, {out['rate_mid80_per_s']}/s "
            f"(middle 80 %), all executed: {done}; worker cpu {out['worker_cpu_pct_sum']}%, "
            f"other load {out['other_cpu_pct']}% of a core"
        )
        return out

    # -------------------------------------------------------- phase: scaling
    def scaling_env(self, partitions: int) -> dict[str, str]:
        """alertbridge's environment with one account on the signed HTTP forwarder."""
        accounts = self.tmp / "accounts-bench.toml"
        accounts.write_text(
            '[accounts.default]\nbroker = "http"\n'
            f'http = {{ url = "http://127.0.0.1:{self.a.broker_port}/orders", '
            'secret_env = "BENCH_FORWARD_SECRET" }\n'
        )
        return self.ab_env(
            ALERTBRIDGE_MAX_ALERT_AGE="0",
            ALERTBRIDGE_CONFIG=str(accounts),
            BENCH_FORWARD_SECRET="bench-forward-secret",
            ALERTBRIDGE_PARTITIONS=str(partitions),
        )

    def start_broker(self, tag: str) -> subprocess.Popen[bytes]:
        """slow_broker.py on CPU 1: 200 after --broker-delay, for the HTTP forwarder."""
        argv = [
            PY,
            str(HERE / "slow_broker.py"),
            "--port",
            str(self.a.broker_port),
            "--delay",
            str(self.a.broker_delay),
        ]
        if not port_free(self.a.broker_port):
            raise BenchError(f"127.0.0.1:{self.a.broker_port} is taken (a leftover broker?)")
        broker = PROCS.start(
            "slow-broker", argv, env=dict(os.environ), log_to=self.out / f"{tag}.broker.log", cpu=1
        )
        wait_port(self.a.broker_port, broker, "slow broker")
        return broker

    def phase_scaling(self) -> None:
        res: list[dict[str, Any]] = []
        self.results["scaling"] = res
        broker = self.start_broker("scaling")
        try:
            # 256 partitions over 1,024 symbols: partitions no longer bound one worker.
            for partitions, nsymbols in ((16, 64), (64, 64), (256, 1024)):
                for nworkers in (1, 2, 4):
                    tag = f"scaling-w{nworkers}-p{partitions}"
                    log(
                        f"scaling: {nworkers} worker(s), {partitions} partitions, broker {self.a.broker_delay * 1000:.0f} ms"
                    )
                    with self.running(tag, lambda p=partitions: self.scaling_env(p)) as run:
                        r = self.drain(
                            tag, run.env, symbols(nsymbols), self.a.scaling_n, nworkers, cpu=None
                        )
                        r["partitions"] = partitions
                        r["symbols"] = nsymbols
                        res.append(r)
                    self.save()
        finally:
            PROCS.stop(broker)

    # -------------------------------------------------------- phase: memory
    def phase_memory(self) -> None:
        res: dict[str, Any] = {}
        self.results["memory"] = res
        with self.running("memory", lambda: self.ab_env(ALERTBRIDGE_MAX_ALERT_AGE="0")) as run:
            nats_p, ing, workers = run.nats, run.the_ingress(), run.workers
            workers += self.start_workers("memory", 1, run.env, cpu=1)
            self.ab_smoke()
            time.sleep(5)
            res["at_rest"] = {
                "ingress": rss_kib(ing.pid),
                "worker": rss_kib(workers[0].pid),
                "nats": rss_kib(nats_p.pid),
            }
            log(
                f"memory: at rest ingress {res['at_rest']['ingress']['VmRSS']} KiB, "
                f"worker {res['at_rest']['worker']['VmRSS']} KiB; sending up to {self.a.mem_alerts} "
                f"alerts for at most {self.a.mem_max_seconds} s"
            )
            # In chunks, so the time bound holds whatever the rate.
            sent = 0
            t0 = time.monotonic()
            chunk = 100_000
            samples = []
            while sent < self.a.mem_alerts and time.monotonic() - t0 < self.a.mem_max_seconds:
                lg = self.fill(
                    min(chunk, self.a.mem_alerts - sent),
                    SYMBOLS_64,
                    "--max-seconds",
                    str(max(1.0, self.a.mem_max_seconds - (time.monotonic() - t0))),
                )
                sent += lg["sent"]
                samples.append(
                    {
                        "sent": sent,
                        "t": round(time.monotonic() - t0, 1),
                        "ingress_rss_kib": rss_kib(ing.pid)["VmRSS"],
                        "worker_rss_kib": rss_kib(workers[0].pid)["VmRSS"],
                        "executed": self.executed_count(),
                    }
                )
                log(f"  {samples[-1]}")
            load_s = time.monotonic() - t0
            stored = self.settle(self.stream_count) - 1
            drained = self.wait_executed(stored + 1, self.a.mem_drain_seconds)
            time.sleep(3)
            res.update(
                {
                    "alerts_sent": sent,
                    "alerts_stored": stored,
                    "load_seconds": round(load_s, 1),
                    "all_executed": drained,
                    "executed": self.executed_count(),
                    "samples": samples,
                    "after": {
                        "ingress": rss_kib(ing.pid),
                        "worker": rss_kib(workers[0].pid),
                        "nats": rss_kib(nats_p.pid),
                    },
                }
            )
            log(
                f"  after {stored} alerts: ingress {res['after']['ingress']} worker "
                f"{res['after']['worker']} (executed {res['executed']}, all: {drained})"
            )

    # -------------------------------------------------------- phase: dedup
    def phase_dedup(self) -> None:
        res: dict[str, Any] = {"k": self.a.dedup_ids}
        self.results["dedup"] = res
        for with_ids in (True, False):
            label = "with_ids" if with_ids else "without_ids"
            with self.running(f"dedup-{label}", ingress=False) as run:
                nats_p = run.nats
                time.sleep(2)
                base = rss_kib(nats_p.pid)["VmRSS"]
                argv = [
                    "taskset",
                    "-c",
                    "1",
                    PY,
                    str(HERE / "natsq.py"),
                    "--max-seconds",
                    "500",
                    f"nats://127.0.0.1:{self.nats_port}",
                    "fill",
                    str(self.a.dedup_ids),
                ]
                if not with_ids:
                    argv.append("--no-ids")
                r = subprocess.run(argv, capture_output=True, timeout=600, check=True)
                fill = json.loads(r.stdout)
                time.sleep(5)
                after = rss_kib(nats_p.pid)
                res[label] = {
                    "rss_kib_before": base,
                    "rss_kib_after": after["VmRSS"],
                    "hwm_kib": after["VmHWM"],
                    "fill": fill,
                    "stream_messages": self.stream_count(),
                }
                log(f"dedup {label}: nats RSS {base} -> {after['VmRSS']} KiB after {fill}")
            self.save()
        w, wo = res["with_ids"], res["without_ids"]
        delta = (w["rss_kib_after"] - w["rss_kib_before"]) - (
            wo["rss_kib_after"] - wo["rss_kib_before"]
        )
        res["bytes_per_id"] = round(delta * 1024 / self.a.dedup_ids)
        res["window_s"] = 3600
        res["mib_for_1h_at_1000_per_s"] = round(res["bytes_per_id"] * 3_600_000 / 2**20)

    # -------------------------------------------------------- phase: profile
    def phase_profile(self) -> None:
        res: dict[str, Any] = {}
        self.results["profile"] = res
        pyspy = self.a.pyspy.split() if self.a.pyspy else []
        if not pyspy:
            res["skipped"] = "py-spy not available (see bench/run.sh)"
            log("profile: skipped, py-spy not available")
            return
        with self.running("profile") as run:
            ing = run.the_ingress()
            url = f"http://127.0.0.1:{self.a.ab_port}/webhook"
            wrk_env = {"SECRET": AB_SECRET, "BENCH_ALERTS_LUA": str(self.lua)}
            self.wrk(
                url,
                "5s",
                wrk_env,
                HERE / "alerts-ab.lua",
                self.out / "profile.warmup.wrk.txt",
                latency=False,
            )
            raw = self.out / "profile.pyspy.txt"
            spy = self.spy(pyspy, ing.pid, self.a.profile_seconds, raw)
            time.sleep(0.5)
            f, _ = self.wrk(
                url,
                f"{self.a.profile_seconds + 3}s",
                wrk_env,
                HERE / "alerts-ab.lua",
                self.out / "profile.wrk.txt",
            )
            res["rps_while_profiled"] = float(f["rps"])
            res.update(self.spy_summary(spy, raw, "profile"))
        self.save()
        try:
            self.results["profile_worker"] = self.profile_worker(pyspy)
        except BenchError as exc:
            self.results["profile_worker"] = {"skipped": str(exc)}

    def profile_worker(self, pyspy: list[str]) -> dict[str, Any]:
        """py-spy on one worker draining a backlog into the 20 ms HTTP broker."""
        res: dict[str, Any] = {}
        broker = self.start_broker("profile-worker")
        try:
            with self.running("profile-worker", lambda: self.scaling_env(16)) as run:
                res.update(self.profile_draining_worker(pyspy, run))
        finally:
            PROCS.stop(broker)
        return res

    def profile_draining_worker(self, pyspy: list[str], run: Running) -> dict[str, Any]:
        """Fill a backlog through the ingress, then profile one worker draining it."""
        res: dict[str, Any] = {}
        n = max(2000, int(self.a.profile_seconds * 400))
        self.fill(n, SYMBOLS_64)
        before = self.executed_count()
        workers = run.workers
        workers += self.start_workers("profile-worker", 1, run.env, cpu=1)
        raw = self.out / "profile-worker.pyspy.txt"
        t0, tk0 = time.monotonic(), ticks(workers[0].pid)
        spy = self.spy(pyspy, workers[0].pid, self.a.profile_seconds, raw)
        res.update(self.spy_summary(spy, raw, "profile-worker"))
        el = time.monotonic() - t0
        res["worker_cpu_pct"] = round(100 * (ticks(workers[0].pid) - tk0) / HZ / el)
        res["executed_per_s_while_profiled"] = round((self.executed_count() - before) / el, 1)
        return res

    def spy(self, pyspy: list[str], pid: int, seconds: int, raw: Path) -> subprocess.Popen[bytes]:
        argv = [
            *pyspy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "100",
            "--full-filenames",
            "-f",
            "raw",
            "-o",
            str(raw),
        ]
        return subprocess.Popen(
            ["taskset", "-c", "1", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def spy_summary(self, spy: subprocess.Popen[bytes], raw: Path, tag: str) -> dict[str, Any]:
        try:
            spy_out, _ = spy.communicate(timeout=self.a.profile_seconds + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy_out, _ = spy.communicate()
        (self.out / f"{tag}.pyspy.log").write_bytes(spy_out or b"")
        if not raw.exists():
            return {"skipped": f"py-spy wrote nothing: {(spy_out or b'').decode()[-400:]}"}
        import pyspy_summary

        s = pyspy_summary.summarise(raw, 25)
        (self.out / f"{tag}.summary.txt").write_text(pyspy_summary.render(s) + "\n")
        log(f"{tag}:\n" + pyspy_summary.render(s))
        return s


def burst_verdict(lg: dict[str, Any]) -> dict[str, Any]:
    lg["max_under_3s"] = lg.get("max_ms") is not None and lg["max_ms"] < 3000 and lg["over_3s"] == 0
    lg["stored_equals_accepted"] = lg["stored"] == lg["accepted_unique_ids"]
    ok = lg["max_under_3s"] and lg["stored_equals_accepted"] and lg["doubled"] == 0
    lg["verdict"] = "OK" if ok else "FAIL"
    log(
        f"  {lg['sent']} sent over {lg['send_span_s']} s, peak {lg['peak_concurrency']} open; "
        f"status {lg['status']}; p99 {lg['p99_ms']} ms max {lg['max_ms']} ms; stored "
        f"{lg['stored']} accepted {lg['accepted_unique_ids']} doubled {lg['doubled']} -> {lg['verdict']}"
    )
    return lg


def _secs(d: str) -> float:
    return float(d.rstrip("s"))


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    mem = next(
        (
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        "0",
    )
    git = lambda *a: subprocess.run(
        ["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_product_files": git(
            "status", "--short", "--", "ingress", "worker", "ops", "contracts"
        ).splitlines(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(int(mem) / 2**20, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_at_start": loadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def vars_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ----------------------------------------------------------------- the table
def fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:  # noqa: C901
    rows: list[tuple[str, str, str, str, str]] = []
    yes = lambda b: "yes" if b else "NO"
    ref_m, ab_m = r.get("throughput_reference_median"), r.get("throughput_alertbridge_median")
    if ref_m and ab_m:
        n = len(r["throughput"]["alertbridge"])
        ratio = ab_m["rps"] / ref_m["rps"] if ref_m["rps"] else 0
        rows.append(
            (
                f"1 ingress req/s (median of {n}×{r['settings']['duration']} s, -c{r['settings']['conns']}, pinned)",
                fmt(ref_m["rps"]),
                fmt(ab_m["rps"]),
                f"≥ 1.5× ref = {fmt(1.5 * ref_m['rps'])}",
                f"{yes(ratio >= 1.5)} ({ratio:.2f}×)",
            )
        )
        rows.append(
            (
                "  p50 / p99 latency, ms",
                f"{fmt(ref_m['p50_ms'], 1)} / {fmt(ref_m['p99_ms'], 1)}",
                f"{fmt(ab_m['p50_ms'], 1)} / {fmt(ab_m['p99_ms'], 1)}",
                "p99 ≤ ref",
                yes(ab_m["p99_ms"] <= ref_m["p99_ms"]),
            )
        )
        rows.append(
            (
                "  server CPU per request (app + store), µs",
                fmt(ref_m["srv_cpu_us_per_req"]),
                fmt(ab_m["srv_cpu_us_per_req"]),
                "",
                "",
            )
        )
        rows.append(
            (
                "  app / store CPU, % of a core",
                f"{fmt(ref_m['app_cpu_pct'])} / {fmt(ref_m['store_cpu_pct'])}",
                f"{fmt(ab_m['app_cpu_pct'])} / {fmt(ab_m['store_cpu_pct'])}",
                "",
                "",
            )
        )
        rc, ac = r["throughput_reference_checks"], r["throughput_alertbridge_checks"]
        rows.append(
            (
                "  every 200 stored (runs OK)",
                f"{rc.count('OK')}/{len(rc)}",
                f"{ac.count('OK')}/{len(ac)}",
                "all",
                yes(all(c == "OK" for c in ac)),
            )
        )
        for side, vm in r.items():
            if not (side.startswith("throughput_alertbridge[") and side.endswith("_median")):
                continue
            label = side[len("throughput_alertbridge[") : -len("]_median")]
            env = (r["settings"].get("variants") or {}).get(label, {})
            what = ",".join(f"{k}={v}" for k, v in env.items())
            rows.append(
                (
                    f"  variant {label} ({what}): req/s, p50/p99 ms",
                    "",
                    f"{fmt(vm['rps'])}, {fmt(vm['p50_ms'], 1)} / {fmt(vm['p99_ms'], 1)}",
                    "",
                    f"{vm['rps'] / ref_m['rps']:.2f}× ref" if ref_m["rps"] else "",
                )
            )
        runs_total = sum(len(side) for side in r["throughput"].values())
        noisy = [x.get("noise") for side in r["throughput"].values() for x in side].count("noisy")
        rows.append(
            (
                "  noisy runs (other load > 10 % of a core / steal)",
                "",
                f"{noisy} of {runs_total}",
                "0",
                "",
            )
        )
    b = r.get("burst") or {}
    if b:
        rb, ab = b.get("reference", {}), b.get("alertbridge", {})
        g = lambda d, k: d.get(k)
        rows.append(
            (
                f"2 burst {fmt(g(ab, 'sent'))} over {r['settings']['burst_over']} s, fresh conns: max answer ms",
                fmt(g(rb, "max_ms")),
                fmt(g(ab, "max_ms")),
                "< 3,000",
                yes(ab.get("max_under_3s")),
            )
        )
        rows.append(
            (
                "  p50 / p99 answer ms",
                f"{fmt(g(rb, 'p50_ms'))} / {fmt(g(rb, 'p99_ms'))}",
                f"{fmt(g(ab, 'p50_ms'))} / {fmt(g(ab, 'p99_ms'))}",
                "",
                "",
            )
        )
        st = lambda d: " ".join(f"{k}:{v}" for k, v in (d.get("status") or {}).items())
        rows.append(
            (
                "  answers by status",
                st(rb),
                st(ab),
                "all 200",
                yes(list((ab.get("status") or {}).keys()) == ["200"]),
            )
        )
        rows.append(
            (
                "  sent over s / peak open connections",
                f"{fmt(g(rb, 'send_span_s'), 2)} / {fmt(g(rb, 'peak_concurrency'))}",
                f"{fmt(g(ab, 'send_span_s'), 2)} / {fmt(g(ab, 'peak_concurrency'))}",
                "≤ 1 s / ≥ 500",
                yes(
                    (g(ab, "send_span_s") or 9) <= 1.05 and (g(ab, "peak_concurrency") or 0) >= 500
                ),
            )
        )
        rows.append(
            (
                "  stored = accepted ids; doubled",
                f"{fmt(g(rb, 'stored'))} = {fmt(g(rb, 'accepted_unique_ids'))}; {fmt(g(rb, 'doubled'))}",
                f"{fmt(g(ab, 'stored'))} = {fmt(g(ab, 'accepted_unique_ids'))}; {fmt(g(ab, 'doubled'))}",
                "equal; 0",
                yes(ab.get("stored_equals_accepted") and ab.get("doubled") == 0),
            )
        )
        if sc := b.get("alertbridge_scaled"):
            rows.append(
                (
                    f"  {sc['ingresses']} ingress processes, one port, unpinned: max / p99 ms; 200s",
                    "",
                    f"{fmt(g(sc, 'max_ms'))} / {fmt(g(sc, 'p99_ms'))}; "
                    f"{fmt((sc.get('status') or {}).get('200'))}",
                    "< 3,000; all",
                    yes(sc.get("max_under_3s") and list(sc.get("status") or {}) == ["200"]),
                )
            )
            rows.append(
                (
                    "    stored = accepted ids; doubled",
                    "",
                    f"{fmt(g(sc, 'stored'))} = {fmt(g(sc, 'accepted_unique_ids'))}; "
                    f"{fmt(g(sc, 'doubled'))}",
                    "equal; 0",
                    yes(sc.get("stored_equals_accepted") and sc.get("doubled") == 0),
                )
            )
    w = r.get("worker") or {}
    if w.get("e2e"):
        e = w["e2e"]
        rows.append(
            (
                f"3 e2e latency, {e['rate']}/s offered via ingress (took {fmt(e['load']['achieved_rps'])}/s): p50 / p99 ms",
                "n/a",
                f"{fmt(e.get('latency_p50_ms'), 1)} / {fmt(e.get('latency_p99_ms'), 1)}",
                "p99 < 25",
                yes((e.get("latency_p99_ms") or 1e9) < 25),
            )
        )
        rows.append(
            (
                "  backlog at end of load; worker CPU %",
                "n/a",
                f"{fmt(e['backlog_at_end_of_load']['num_pending'])}; {fmt(e['worker_cpu_pct'])}",
                "",
                "",
            )
        )
    if w.get("e2e_sweep"):
        rows.append(
            (
                "  worker alone, straight to JetStream: p99 ms at "
                + " / ".join(f"{x['rate']}" for x in w["e2e_sweep"])
                + " alerts/s",
                "n/a",
                " / ".join(fmt(x.get("latency_p99_ms"), 1) for x in w["e2e_sweep"]),
                "p99 < 25 @ 1,000",
                "",
            )
        )
    if w.get("e2e_direct"):
        e = w["e2e_direct"]
        rows.append(
            (
                f"  same, alerts published straight to JetStream @ {fmt(e['publish']['achieved_rate'])}/s",
                "n/a",
                f"{fmt(e.get('latency_p50_ms'), 1)} / {fmt(e.get('latency_p99_ms'), 1)}",
                "p99 < 25",
                yes((e.get("latency_p99_ms") or 1e9) < 25),
            )
        )
    tgt = 1.5 * ref_m["rps"] if ref_m else None
    for key, text in (
        ("paper_64_symbols", "  drain rate, paper broker, 64 symbols, 1 worker, /s"),
        ("paper_1_symbol", "  drain rate, paper broker, 1 symbol (alerts.lua), /s"),
    ):
        if w.get(key):
            v = w[key]["rate_mid80_per_s"]
            star = "*" if w[key].get("noise") == "noisy" else ""
            rows.append(
                (
                    text,
                    "n/a",
                    fmt(v) + star,
                    f"≥ ingress target {fmt(tgt)}" if tgt else "≥ ingress target",
                    yes(tgt is not None and v is not None and v >= tgt) if tgt else "",
                )
            )
    sc = r.get("scaling") or []
    for n, partitions in enumerate(sorted({x["partitions"] for x in sc})):
        row = [x for x in sc if x["partitions"] == partitions]
        grows = len(row) >= 2 and (row[-1]["rate_mid80_per_s"] or 0) > 1.3 * (
            row[0]["rate_mid80_per_s"] or 1
        )
        label = (
            f"4 drain /s, {r['settings']['broker_delay'] * 1000:.0f} ms broker, "
            if n == 0
            else "  same, "
        )
        rows.append(
            (
                label
                + " / ".join(str(x["workers"]) for x in row)
                + f" workers ({partitions} partitions, {row[0].get('symbols', 64)} symbols)",
                "n/a",
                " / ".join(
                    fmt(x["rate_mid80_per_s"]) + ("*" if x.get("noise") == "noisy" else "")
                    for x in row
                ),
                "grows with workers" if partitions == max(y["partitions"] for y in sc) else "",
                yes(grows) if partitions == max(y["partitions"] for y in sc) else "",
            )
        )
    m = r.get("memory") or {}
    if m.get("after"):
        mib = lambda k: round(k / 1024)
        rows.append(
            (
                f"5 RSS ingress, at rest → after {fmt(m['alerts_stored'])} alerts, MiB",
                "n/a",
                f"{mib(m['at_rest']['ingress']['VmRSS'])} → {mib(m['after']['ingress']['VmRSS'])}",
                "after 1M",
                yes(m["alerts_stored"] >= 1_000_000),
            )
        )
        rows.append(
            (
                f"  RSS worker, at rest → after {fmt(m['executed'])} executed, MiB",
                "n/a",
                f"{mib(m['at_rest']['worker']['VmRSS'])} → {mib(m['after']['worker']['VmRSS'])}",
                "",
                "",
            )
        )
    d = r.get("dedup") or {}
    if d.get("bytes_per_id") is not None:
        rows.append(
            (
                f"  nats-server dedup map: bytes per id (K={fmt(d['k'])})",
                "n/a",
                fmt(d["bytes_per_id"]),
                "stated",
                "yes",
            )
        )
        rows.append(
            (
                "  default 1 h window at 1,000 alerts/s, MiB",
                "n/a",
                fmt(d["mib_for_1h_at_1000_per_s"]),
                "",
                "",
            )
        )
    if any("*" in row[2] for row in rows):
        rows.append(("  (* = other load > 10 % of a core during that run)", "", "", "", ""))
    return rows


def print_table(r: dict[str, Any]) -> str:
    rows = table(r)
    head = ("measurement", "reference (Express+Redis)", "alertbridge", "issue-5 target", "met")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
    line = lambda x: "  ".join(c.ljust(widths[i]) for i, c in enumerate(x)).rstrip()
    mach = r["machine"]
    out = [
        f"machine: {mach['nproc']} CPUs, {mach['cpu']}, {mach['ram_gib']} GiB RAM; "
        f"load at start {mach['loadavg_at_start']}",
        line(head),
        line(tuple("-" * w for w in widths)),
    ]
    out += [line(x) for x in rows]
    return "\n".join(out)


def markdown_table(r: dict[str, Any]) -> str:
    head = "| measurement | reference (Express+Redis) | alertbridge | issue-5 target | met |"
    sep = "|---|---|---|---|---|"
    return "\n".join(
        [head, sep] + [f"| {' | '.join(c.replace('|', '/') for c in x)} |" for x in table(r)]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--ref-dir", type=Path, required=True, help="a writable copy of ../shared/bench"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated of {PHASES}")
    ap.add_argument(
        "--reps", type=int, default=3, help="throughput rounds (each side once per round)"
    )
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured wrk run")
    ap.add_argument(
        "--warmup", type=int, default=5, help="seconds of wrk warm-up per server lifetime"
    )
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument(
        "--ref-mode",
        choices=["durable", "volatile"],
        default="durable",
        help="Redis persistence of the reference (README's numbers: durable)",
    )
    ap.add_argument(
        "--quiet-wait", type=int, default=300, help="max seconds to wait for an idle machine"
    )
    ap.add_argument("--quiet-pct", type=int, default=10)
    ap.add_argument("--burst-n", type=int, default=10_000)
    ap.add_argument("--burst-over", type=float, default=1.0)
    ap.add_argument(
        "--burst-ingresses",
        type=int,
        default=2,
        help="also the burst against this many ingress processes sharing the port (<2: not)",
    )
    ap.add_argument("--e2e-rate", type=int, default=1000)
    ap.add_argument("--e2e-seconds", type=int, default=30)
    ap.add_argument(
        "--e2e-sweep",
        default="100,300,500",
        help="worker alone: also these rates (alerts/s, comma-separated) straight into ALERTS",
    )
    ap.add_argument("--e2e-sweep-seconds", type=int, default=15)
    ap.add_argument("--drain-n", type=int, default=30_000)
    ap.add_argument("--drain-n-single", type=int, default=5_000)
    ap.add_argument("--drain-max-seconds", type=int, default=240)
    ap.add_argument("--scaling-n", type=int, default=5_000)
    ap.add_argument("--broker-delay", type=float, default=0.020)
    ap.add_argument("--mem-alerts", type=int, default=1_000_000)
    ap.add_argument("--mem-max-seconds", type=int, default=420, help="bound on sending")
    ap.add_argument(
        "--mem-drain-seconds", type=int, default=240, help="bound on the worker catching up"
    )
    ap.add_argument("--dedup-ids", type=int, default=1_000_000)
    ap.add_argument("--profile-seconds", type=int, default=15)
    ap.add_argument("--pyspy", default="", help="command that runs py-spy (run.sh finds one)")
    ap.add_argument(
        "--ab-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra environment for alertbridge's processes (e.g. ALERTBRIDGE_LOG_LEVEL=WARNING)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
        help="throughput phase: also run alertbridge with this environment in every round "
        "(e.g. quiet-logs:ALERTBRIDGE_LOG_LEVEL=WARNING); shown as extra rows",
    )
    ap.add_argument("--ab-port", type=int, default=18090)
    ap.add_argument("--broker-port", type=int, default=18400)
    ap.add_argument("--ref-port", type=int, default=18080)
    ap.add_argument("--redis-port", type=int, default=16379)
    args = ap.parse_args()
    args.ab_env_extra = dict(kv.split("=", 1) for kv in args.ab_env)
    args.e2e_sweep = [int(x) for x in str(args.e2e_sweep).split(",") if x.strip()]
    args.variants = {}
    for spec in args.variant:
        label, _, assignments = spec.partition(":")
        if not label or not assignments or not re.fullmatch(r"[\w.-]+", label):
            ap.error(f"--variant wants LABEL:VAR=VALUE[,VAR=VALUE], not {spec!r}")
        args.variants[label] = dict(kv.split("=", 1) for kv in assignments.split(","))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {sorted(unknown)}")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    rc = 0
    try:
        for phase in PHASES:
            if phase not in phases:
                continue
            log(f"=== phase {phase} (load {loadavg()})")
            try:
                getattr(bench, f"phase_{phase}")()
            except BenchError as exc:
                log(f"phase {phase} FAILED: {exc}")
                bench.results.setdefault("errors", {})[phase] = str(exc)
                rc = 1
            bench.save()
    except KeyboardInterrupt:
        log("interrupted: stopping what the bench started")
        rc = 130
    finally:
        PROCS.stop_all()
        shutil.rmtree(bench.tmp, ignore_errors=True)
        bench.results["machine"]["loadavg_at_end"] = loadavg()
        bench.save()
    text = print_table(bench.results)
    (args.out / "table.txt").write_text(text + "\n")
    (args.out / "table.md").write_text(markdown_table(bench.results) + "\n")
    print()
    print(text)
    print(
        f"\nresults: {args.out}/results.json (per run: {args.out}/); markdown: {args.out}/table.md"
    )
    if bench.results.get("errors"):
        print(f"phases that failed: {bench.results['errors']}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
