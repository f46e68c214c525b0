"""The stack as `just up` runs it (processes, real HTTP), fed TradingView's own bodies."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, SAMPLES, free_port

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")

# sample → (status, what the paper book must hold for it: symbol, side, quantity)
EXPECTED = {
    "strategy-order-fill.json": (200, ("DOGEUSDT", "buy", 10000.0)),
    "futures-short-entry.json": (200, ("ES1!", "sell", 2.0)),
    "pine-alert-message-limit.json": (200, ("NASDAQ:AAPL", "buy", 10.0)),
    "indicator-alert.json": (200, ("ETHUSD", "buy", 1.0)),  # no quantity: the default (1)
    "broken-json.txt": (422, None),
    "plain-text.txt": (422, None),
}


@dataclass
class Up:
    """A running `alertbridge up`."""

    proc: subprocess.Popen[str]
    var: Path
    http: int
    nats: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ALERTBRIDGE_VAR": str(self.var),
               "ALERTBRIDGE_NATS_URL": f"nats://127.0.0.1:{self.nats}"}  # fmt: skip
        return subprocess.run(
            [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )

    def stop(self) -> int:
        """Ctrl-C, as a user would."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(45)


def start(var: Path, http: int, nats: int, monitor: int) -> Up:
    log = var.parent / f"up-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "ALERTBRIDGE_VAR": str(var),
        "ALERTBRIDGE_SECRETS": "7f3c9a1e,abcdefgh",  # the samples' own, plus var/secret
        # The samples carry their 2025 `timenow`: the stale-alert guard (tested in
        # test_worker.py) would rightly expire them.
        "ALERTBRIDGE_MAX_ALERT_AGE": "0",
        "XDG_CONFIG_HOME": str(var.parent / "config"),  # the nats CLI context goes here
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [ALERTBRIDGE, "up", "--port", str(http), "--nats-port", str(nats),
             "--monitor-port", str(monitor)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    up = Up(proc, var, http, nats, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{up.url}/readyz", timeout=1).status_code == 200:
                return up
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(log.read_text())


Row = tuple[str, str, float, str, float | None, float | None]


def paper_orders(var: Path) -> list[Row]:
    with sqlite3.connect(var / "paper.db") as db:
        return db.execute(
            "SELECT symbol, side, quantity, order_type, take_profit, stop_loss FROM orders"
            " ORDER BY seq"
        ).fetchall()


def wait_for_orders(var: Path, n: int, timeout: float = 30) -> list[Row]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (var / "paper.db").exists() and len(rows := paper_orders(var)) >= n:
            return rows
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} paper orders after {timeout}s")


def post_sample(url: str, name: str) -> httpx.Response:
    raw = (SAMPLES / name).read_bytes()
    kind = "application/json" if name.endswith(".json") else "text/plain; charset=utf-8"
    return httpx.post(f"{url}/webhook", content=raw, headers={"Content-Type": kind}, timeout=5)


@pytest.fixture
def ports() -> Iterator[tuple[int, int, int]]:
    yield free_port(), free_port(), free_port()


def test_samples_become_paper_orders_and_survive_a_restart(
    tmp_path: Path, ports: tuple[int, int, int]
) -> None:
    var = tmp_path / "var"
    up = start(var, *ports)
    try:
        varz = httpx.get(f"http://127.0.0.1:{ports[2]}/varz", timeout=5).json()
        assert varz["jetstream"]["config"]["sync_always"] is True  # a 200 is on disk
        secret_file = var / "secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        context = json.loads((tmp_path / "config/nats/context/alertbridge.json").read_text())
        assert context["url"] == f"nats://127.0.0.1:{up.nats}"
        answers = {name: post_sample(up.url, name) for name in EXPECTED}
        for name, (status, _) in EXPECTED.items():
            assert answers[name].status_code == status, (name, answers[name].text)
        assert "byte 35" in answers["broken-json.txt"].text
        assert "JSON object is required" in answers["plain-text.txt"].text

        sent = up.cli("send", "--url", f"{up.url}/webhook", "--symbol", "BRK.B", "--qty", "5")
        assert sent.returncode == 0, sent.stderr
        code, answer = sent.stdout.split(" ", 1)
        send_id = json.loads(answer)["id"]
        assert code == "200"

        rows = wait_for_orders(var, 5)
        held = sorted((r[0], r[1], r[2]) for r in rows)
        wanted = [exp for _, exp in EXPECTED.values() if exp is not None] + [("BRK.B", "buy", 5.0)]
        assert held == sorted(wanted)
        limit = next(r for r in rows if r[0] == "NASDAQ:AAPL")
        assert limit[3:] == ("limit", 195.5, 185.2)  # limit order with its TP/SL reached the broker

        listed = up.cli("orders")
        assert listed.returncode == 0 and send_id in listed.stdout
        assert "ES1!-Short Entry-2025-01-15T14:30:01Z" in listed.stdout
        as_json = [json.loads(line) for line in up.cli("orders", "--json").stdout.splitlines()]
        assert len(as_json) == 5
        assert {o["alert_id"] for o in as_json} >= {
            send_id,
            "ES1!-Short Entry-2025-01-15T14:30:01Z",
        }
    finally:
        exit_code = up.stop()
    assert exit_code == 0, up.log.read_text()
    assert "alertbridge stopped" in up.log.read_text()

    # Everything stopped: the ports are free again, so a second `up` can bind them.
    again = start(var, *ports)
    try:
        resend = post_sample(again.url, "futures-short-entry.json")
        assert resend.status_code == 200
        assert resend.json()["duplicate"] is True  # dedup held across the restart
        assert len(paper_orders(var)) == 5
        assert "read from" in again.log.read_text()  # the secret was kept, not regenerated
    finally:
        assert again.stop() == 0


def test_send_without_a_running_stack_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "ALERTBRIDGE_VAR": str(tmp_path / "nothing")}
    result = subprocess.run(
        [ALERTBRIDGE, "send"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "just up" in result.stderr
