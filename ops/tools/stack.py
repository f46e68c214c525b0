"""`alertbridge up`: the whole local stack as child processes, kept running, stopped in order.

nats-server (JetStream, storage under var/nats) → provisioning → worker(s) →
notifier → projector → console → ingress. A child that dies is started again after a
backoff, and the others reconnect to it (ops.tools.supervisor); one that keeps dying (more than
`--restart-limit` times within `--restart-window`) stops the stack, and `up` exits
1 naming it, with its last lines. Ctrl-C (or SIGTERM) stops the ingress first (no
new alerts), then the console, the projector, the notifier and the workers (finish
in-flight orders), then nats-server, and `up` exits 0. Data stays in var/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from ops.platform import provision
from ops.platform.natsconn import connect, jetstream
from ops.platform.settings import Common, SettingsError, load
from ops.tools.paths import (
    NATS_ROLES,
    console_token_file,
    ensure_console_token,
    ensure_nats_passwords,
    ensure_secret,
    nats_config_file,
    nats_identity,
    nats_server_binary,
    nats_server_password,
    nats_server_password_var,
    read_secret,
    write_ingress_url,
    write_nats_context,
)
from ops.tools.supervisor import Child, CrashLoop, RestartPolicy, tend

if TYPE_CHECKING:
    from pathlib import Path

EXIT_CRASH_LOOP = 1  # a child kept dying: the stack is stopped (a service manager restarts it)
# Ingress processes by default: one per core, at most this many. Each holds a NATS
# connection and its own memory; past a few cores nats-server's fsyncs, not the
# ingress's Python, bound the rate (docs/performance.md).
MAX_DEFAULT_INGRESSES = 8


def default_ingresses() -> int:
    """One ingress process per core this process may run on, capped."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_DEFAULT_INGRESSES))


@dataclass
class Stack:
    """What `up` runs."""

    var: Path
    nats_port: int = 4222
    monitor_port: int = 8222
    http_port: int = 8080
    workers: int = 1
    ingresses: int = 1
    otel_endpoint: str | None = None
    health_port: int | None = None  # the first worker's; None: http_port + 1
    console_port: int = 8090
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: list[Child] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        """The local server's client URL."""
        return f"nats://127.0.0.1:{self.nats_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The children's environment: the caller's, plus the stack's settings."""
        env = dict(os.environ)
        env["ALERTBRIDGE_NATS_URL"] = self.nats_url  # the stack's own server, always
        if self.otel_endpoint:  # our own Jaeger: it takes traces, not metrics
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otel_endpoint
            env["OTEL_METRICS_EXPORTER"] = "none"
        env.setdefault("ALERTBRIDGE_PAPER_DB", str(self.var / "paper.db"))
        env.setdefault("ALERTBRIDGE_DEFAULT_QUANTITY", "1")
        for role in NATS_ROLES:  # the server's passwords reach the server only
            env.pop(nats_server_password_var(role), None)
        env.update(extra)
        return env

    def env_as(self, role: str, **extra: str) -> dict[str, str]:
        """`env`, as the NATS user `role` (its password file under var/, nothing else)."""
        return self.env(**nats_identity(self.var, role), **extra)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], *, essential: bool = True
    ) -> None:
        """Start a supervised child (restarted if it dies) in its own process group;
        one not `essential` that keeps dying is given up on, the others run on."""
        if sys.stderr.isatty():  # it writes to our terminal through a pipe: logs for people
            env = {"ALERTBRIDGE_LOG_FORMAT": "text", **env}
        self.children.append(Child(name, argv, env, essential=essential))

    def stop(self, grace: float = 15.0) -> None:
        """Stop the children in reverse start order: ingress, worker, then nats-server."""
        for child in reversed(self.children):
            child.stop(grace)


def run(stack: Stack) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM (0) or a crash loop (1)."""
    secret, created = ensure_secret(stack.var)
    token, token_created = ensure_console_token(stack.var)
    click.echo(
        f"webhook secret: {'generated in' if created else 'read from'} {secret} "
        "(alertbridge send uses it)",
        err=True,
    )
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _start(stack, secret)
        click.echo(
            f"alertbridge up: POST http://127.0.0.1:{stack.http_port}/webhook, "
            f"nats {stack.nats_url}, data in {stack.var}. Ctrl-C stops.",
            err=True,
        )
        click.echo(
            f"console: http://127.0.0.1:{stack.console_port}/ (its token: "
            f"{'generated in' if token_created else 'read from'} {token})",
            err=True,
        )
        while not stop_requested:
            tend(stack.children, stack.policy, time.monotonic())
            time.sleep(0.1)
    except CrashLoop as exc:
        click.echo(f"{exc}\nstopping the stack", err=True)
        return EXIT_CRASH_LOOP
    finally:
        stack.stop()
        click.echo("alertbridge stopped; data kept in " + str(stack.var), err=True)
    return 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _jaeger(stack: Stack) -> None:
    """Start Jaeger (all-in-one, OTLP on 4317/4318, UI on 16686) when one is at hand."""
    binary = os.environ.get("JAEGER_BIN") or shutil.which("jaeger")
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        click.echo(
            "traces: Jaeger not started, since OTEL_EXPORTER_OTLP_ENDPOINT is set: traces "
            "(and metrics, unless OTEL_METRICS_EXPORTER=none) go to that endpoint",
            err=True,
        )
        return
    if binary is None:
        click.echo(
            "traces: off. For Jaeger, put its `jaeger` binary (v2, from the Jaeger releases) "
            "on PATH or set JAEGER_BIN; or set OTEL_EXPORTER_OTLP_ENDPOINT to a collector.",
            err=True,
        )
        return
    stack.spawn("jaeger", [binary], stack.env(), essential=False)  # traces are a nicety
    stack.otel_endpoint = "http://127.0.0.1:4318"
    click.echo("traces: Jaeger UI on http://127.0.0.1:16686", err=True)


def _start(stack: Stack, secret: Path) -> None:
    # One generated password per NATS user (deploy/nats-server.conf), kept under var/.
    passwords = ensure_nats_passwords(stack.var)
    try:
        settings = load(Common, stack.env_as("ops"))  # a bad setting stops us first
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    _jaeger(stack)
    write_nats_context(stack.nats_url, stack.var)
    write_ingress_url(stack.var, stack.http_port)  # where `alertbridge send` posts
    store = stack.var / "nats"
    store.mkdir(parents=True, exist_ok=True)
    # The flags override the file: the store, the loopback address and the ports.
    stack.spawn(
        "nats-server",
        [
            nats_server_binary(), "--config", str(nats_config_file()),
            "--jetstream", "--store_dir", str(store),
            "--addr", "127.0.0.1", "--port", str(stack.nats_port),
            "--http_port", str(stack.monitor_port), "--server_name", "alertbridge-local",
        ],
        stack.env(
            **{nats_server_password_var(r): nats_server_password(read_secret(p))
               for r, p in passwords.items()},  # hashed: the server never holds them
            ALERTBRIDGE_NATS_SYNC=settings.nats_sync,
        ),
    )  # fmt: skip
    asyncio.run(_provision(settings, stack.nats_port))
    first = stack.http_port + 1 if stack.health_port is None else stack.health_port
    for i in range(stack.workers):
        port = first + i if first else 0  # 0: off, for each of them
        env = stack.env_as("worker", ALERTBRIDGE_HEALTH_PORT=str(port))
        stack.spawn(f"worker-{i}", [sys.executable, "-m", "worker"], env)
    # The notifier: [notify] targets of the accounts file; its state under var/. No health
    # port: the caller's ALERTBRIDGE_HEALTH_PORT is the first worker's.
    env = stack.env_as(
        "notifier", ALERTBRIDGE_NOTIFIER_DB=str(stack.var / "notifier.db"),
        ALERTBRIDGE_HEALTH_PORT="0",
    )  # fmt: skip
    stack.spawn("notifier", [sys.executable, "-m", "notifier"], env)
    # The projector: the read models (`alertbridge orders`, the console) under var/; no
    # health port either (the caller's is the first worker's).
    env = stack.env_as(
        "projector", ALERTBRIDGE_PROJECTIONS_DB=str(stack.var / "projections.db"),
        ALERTBRIDGE_HEALTH_PORT="0",
    )  # fmt: skip
    stack.spawn("projector", [sys.executable, "-m", "projector"], env)
    # The console: its own port and token; not on the order path, so not essential.
    env = stack.env_as(
        "console", ALERTBRIDGE_CONSOLE_PORT=str(stack.console_port),
        ALERTBRIDGE_CONSOLE_TOKEN_FILE=str(console_token_file(stack.var)),
        ALERTBRIDGE_PROJECTIONS_DB=str(stack.var / "projections.db"),
    )  # fmt: skip
    if stack.otel_endpoint:  # our own Jaeger (above): an alert's page links to its trace
        env.setdefault("ALERTBRIDGE_JAEGER_URL", "http://127.0.0.1:16686")
    stack.spawn("console", [sys.executable, "-m", "console"], env, essential=False)
    env = stack.env_as(
        "ingress",
        ALERTBRIDGE_SECRETS_FILE=str(secret),
        ALERTBRIDGE_HTTP_PORT=str(stack.http_port),
        ALERTBRIDGE_INGRESS_PROCESSES="1",  # `up` runs and supervises each one itself
    )
    if stack.ingresses > 1:  # one port, the kernel spreads the connections
        env["ALERTBRIDGE_HTTP_REUSE_PORT"] = "true"
    for i in range(stack.ingresses):
        name = "ingress" if stack.ingresses == 1 else f"ingress-{i}"
        stack.spawn(name, [sys.executable, "-m", "ingress"], env)


async def _provision(settings: Common, port: int, wait: float = 15.0) -> None:
    """Wait for the server to accept connections, then apply the topology."""
    deadline = time.monotonic() + wait
    while not _listening(port):  # quietly: the client would log each refused attempt
        if time.monotonic() > deadline:
            raise click.ClickException(f"nats-server at {settings.nats_url} did not come up")
        await asyncio.sleep(0.05)
    try:
        nc = await asyncio.wait_for(connect(settings, name="alertbridge-provision"), wait)
    except SettingsError as exc:  # e.g. var/nats-ops.password does not match the server's
        raise click.ClickException(str(exc)) from None
    try:
        await provision.apply(jetstream(nc, settings), settings.topology())
    except SettingsError as exc:  # e.g. a partition count that cannot change while alerts wait
        raise click.ClickException(str(exc)) from None
    finally:
        await nc.close()
