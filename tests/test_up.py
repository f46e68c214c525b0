"""`alertbridge up` keeps its processes running, read from outside: the processes under
it (/proc), its output, and the paper broker's book.

Each child `kill -9`ed under one shared `up` comes back with a new pid and alerts keep
flowing (nats-server on its kept store, with nothing provisioned again); one that keeps
dying stops the stack, and `up` exits 1 naming it and showing its last lines; SIGTERM
stops every child and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from ops.tools.paths import read_secret
from ops.tools.supervisor import Child, CrashLoop, RestartPolicy, tend
from tests.support import free_port, free_stack_port
from tests.upstack import Up, launch, paper_orders, start, wait_ready

T = TypeVar("T")


def until(what: Callable[[], T | None], timeout: float = 30, why: str = "") -> T:
    """Poll `what` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := what()) is not None:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"not after {timeout}s: {why}")


ROLES = ("nats-server", "worker", "notifier", "projector", "console", "ingress")


def children(pid: int) -> dict[str, int]:
    """The live processes under `pid`, by role: nats-server, and each `python -m <role>`."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            kids += [int(k) for k in (task / "children").read_text().split()]
    named: dict[str, int] = {}
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:  # gone between the two reads
            continue
        if argv[0].endswith(b"nats-server"):
            named["nats-server"] = kid
        elif argv[1:2] == [b"-m"] and len(argv) > 2:
            named[argv[2].decode()] = kid
    return named  # a zombie (dead, not yet reaped) has an empty cmdline: not listed


def processes_of(var: Path) -> list[int]:
    """Every process, wherever it was reparented, that a stack on `var` started."""
    mark = f"ALERTBRIDGE_VAR={var}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return found


def send(up: Up, symbol: str) -> httpx.Response:
    """An alert with an id of its own, as `alertbridge send` posts it."""
    body = {"secret": read_secret(up.var / "secret"), "symbol": symbol, "side": "buy",
            "qty": 1, "id": uuid.uuid4().hex}  # fmt: skip
    return httpx.post(f"{up.url}/webhook", content=json.dumps(body), timeout=5,
                      headers={"Content-Type": "application/json"})  # fmt: skip


def wait_executed(up: Up, *symbols: str) -> None:
    """Wait until the paper broker's book holds an order for each symbol."""

    def held() -> bool | None:
        book = {row[0] for row in paper_orders(up.var)} if (up.var / "paper.db").exists() else set()
        return True if book >= set(symbols) else None

    until(held, why=f"orders for {symbols}:\n{up.log.read_text()}")


def wait_serving(up: Up) -> None:
    """The ingress and the worker both ready (the worker's health port: --port + 1)."""
    wait_ready(up, f"{up.url}/readyz")
    wait_ready(up, f"http://127.0.0.1:{up.http + 1}/readyz")


def replaced(up: Up, role: str, old: int) -> int:
    """Wait for `role` to run again under another pid; return it."""
    return until(
        lambda: pid if (pid := children(up.proc.pid).get(role)) not in (None, old) else None,
        why=f"{role} back with a new pid:\n{up.log.read_text()}",
    )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    var = tmp_path_factory.mktemp("up") / "var"
    running = start(var, free_stack_port(), free_port(), free_port())
    wait_serving(running)
    yield running
    assert running.stop() == 0, running.log.read_text()  # Ctrl-C
    assert processes_of(var) == []


@pytest.mark.parametrize(("role", "name"), [
    ("worker", "worker-0"), ("ingress", "ingress"), ("nats-server", "nats-server"),
    ("notifier", "notifier"), ("projector", "projector"), ("console", "console"),
])  # fmt: skip
def test_a_child_killed_comes_back_and_alerts_keep_flowing(up: Up, role: str, name: str) -> None:
    before = children(up.proc.pid)
    os.kill(before[role], signal.SIGKILL)
    during = []
    if role == "worker":  # the ingress stores it; the worker that comes back executes it
        answer = send(up, "DURING-WORKER-KILL")
        assert answer.status_code == 200, answer.text
        during.append("DURING-WORKER-KILL")
    pid = replaced(up, role, before[role])
    after = children(up.proc.pid)
    assert after == {**before, role: pid}  # only the dead one was restarted
    wait_serving(up)  # nats-server: the others reconnected, nothing provisioned again
    symbol = f"AFTER-{role.upper()}-KILL"
    answer = send(up, symbol)
    assert answer.status_code == 200, answer.text
    wait_executed(up, *during, symbol)
    assert f"{name} (pid {before[role]}) was killed by SIGKILL; restarting it in" in (
        up.log.read_text()
    )


def test_a_child_that_exits_0_by_itself_is_restarted_too(up: Up) -> None:
    worker = children(up.proc.pid)["worker"]
    os.kill(worker, signal.SIGTERM)  # not from `up`: the worker stops cleanly, exits 0
    replaced(up, "worker", worker)
    line = f"worker-0 (pid {worker}) exited with 0 without being asked to; restarting it in"
    assert line in up.log.read_text()
    wait_serving(up)
    assert send(up, "AFTER-WORKER-EXIT").status_code == 200
    wait_executed(up, "AFTER-WORKER-EXIT")


def test_a_child_that_keeps_dying_stops_the_stack_naming_it(tmp_path: Path) -> None:
    var = tmp_path / "var"
    crashing = launch(
        var, free_stack_port(), free_port(), free_port(),
        args=("--restart-limit", "2", "--restart-window", "120"),
        env={"ALERTBRIDGE_SHUTDOWN_GRACE": "soon"},  # the worker's own setting: it exits 2
    )  # fmt: skip
    assert crashing.proc.wait(60) == 1
    log = crashing.log.read_text()
    assert "worker-0 (pid " in log and "exited with 2; restarting it in 0.5s (crash 1 of 2" in log
    assert "exited with 2; restarting it in 1s (crash 2 of 2 allowed within 120s)" in log
    report = log[log.index("worker-0 crashed 3 times within 120s (more than the 2 allowed") :]
    assert "  | worker: ALERTBRIDGE_SHUTDOWN_GRACE='soon' is invalid" in report, log
    assert "stopping the stack" in report and "alertbridge stopped" in report
    assert processes_of(var) == []  # the ingress and nats-server were stopped too


def test_sigterm_stops_every_child_and_exits_0_logs_for_people_on_a_terminal(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    health = free_port()  # the worker's, from the environment
    running = launch(var, free_stack_port(), free_port(), free_port(), tty=True,
                     env={"ALERTBRIDGE_HEALTH_PORT": str(health)})  # fmt: skip
    wait_ready(running, f"http://127.0.0.1:{health}/readyz", timeout=60)
    assert set(children(running.proc.pid)) == set(ROLES)
    # On a terminal their logs are for people, though they reach it through `up`'s pipes.
    until(lambda: "INFO    worker: worker sharing" in running.log.read_text() or None)
    assert '"level": "INFO"' not in running.log.read_text()
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(45) == 0, running.log.read_text()
    assert processes_of(var) == []
    assert "alertbridge stopped" in running.log.read_text()


def test_a_bad_restart_setting_is_named(tmp_path: Path) -> None:
    bad = launch(tmp_path / "var", free_stack_port(), free_port(), free_port(),
                 env={"ALERTBRIDGE_RESTART_WINDOW": "-1"})  # fmt: skip
    assert bad.proc.wait(30) == 2
    assert "Invalid value for '--restart-window' (env var: 'ALERTBRIDGE_RESTART_WINDOW')" in (
        bad.log.read_text()
    )


def test_restarts_wait_longer_each_time_up_to_a_cap() -> None:
    policy = RestartPolicy(backoff=0.5, cap=4)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]


def test_crashes_older_than_the_window_are_forgiven() -> None:
    """`tend` with its clock in the test's hands, on a real process that exits at once."""
    policy = RestartPolicy(limit=1, window=10)
    quitter = Child("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"], {})
    children = [quitter]

    def dies_at(now: float) -> None:
        quitter.proc.wait(10)
        tend(children, policy, now)

    dies_at(0)  # crash 1 of 1
    assert quitter.restart_at == 0.5
    first = quitter.proc.pid
    tend(children, policy, 0.4)
    assert quitter.proc.pid == first  # not before its backoff
    tend(children, policy, 0.5)
    assert quitter.proc.pid != first
    dies_at(20)  # the crash at 0 is out of the window: crash 1 of 1 again
    assert list(quitter.crashes) == [20]
    tend(children, policy, 20.5)
    with pytest.raises(CrashLoop) as raised:
        dies_at(21)  # two within 10 s
    assert str(raised.value).startswith("quitter crashed 2 times within 10s (more than the 1")
    assert str(raised.value).endswith("  | bye\n  | bye\n  | bye")


def test_a_child_the_stack_can_do_without_is_given_up_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Jaeger that keeps dying (e.g. its port taken) must not stop the trading stack."""
    policy = RestartPolicy(limit=0, window=10)
    argv = [sys.executable, "-c", "raise SystemExit('port 4318 taken')"]
    jaeger = Child("jaeger", argv, {}, essential=False)
    jaeger.proc.wait(10)
    tend([jaeger], policy, 0)  # no CrashLoop
    tend([jaeger], policy, 1000)
    assert jaeger.proc.poll() == 1  # never started again
    said = capfd.readouterr().err
    assert "jaeger crashed 1 time within 10s (more than the 0 allowed" in said
    assert "  | port 4318 taken\ngiving up on jaeger; the rest runs on" in said
