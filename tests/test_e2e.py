"""The stack as `just up` runs it (processes, real HTTP), fed TradingView's own bodies."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, free_stack_port
from tests.upstack import (
    ALERTBRIDGE,
    paper_orders,
    post_sample,
    start,
    wait_for_json,
    wait_for_orders,
)

# sample → (status, what the paper book must hold for it: symbol, side, quantity)
EXPECTED = {
    "strategy-order-fill.json": (200, ("DOGEUSDT", "buy", 10000.0)),
    "futures-short-entry.json": (200, ("ES1!", "sell", 2.0)),
    "pine-alert-message-limit.json": (200, ("NASDAQ:AAPL", "buy", 10.0)),
    "indicator-alert.json": (200, ("ETHUSD", "buy", 1.0)),  # no quantity: the default (1)
    "broken-json.txt": (422, None),
    "plain-text.txt": (422, None),
}


@pytest.fixture
def ports() -> Iterator[tuple[int, int, int]]:
    yield free_stack_port(), free_port(), free_port()


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

        # The read side: the projector (started by `up`) folds the streams in a moment
        # later; `orders` and `alerts show` read its views, newest first.
        as_json = wait_for_json(up, 5, "orders", "--json")
        assert [o["seq"] for o in as_json] == sorted((o["seq"] for o in as_json), reverse=True)
        assert sorted((o["symbol"], o["side"], o["quantity"]) for o in as_json) == held
        assert {o["alert_id"] for o in as_json} >= {
            send_id,
            "ES1!-Short Entry-2025-01-15T14:30:01Z",
        }
        listed = up.cli("orders", "--symbol", "BRK.B")
        assert listed.returncode == 0 and send_id in listed.stdout, listed.stderr
        assert "ES1!-Short Entry-2025-01-15T14:30:01Z" not in listed.stdout
        (story,) = wait_for_json(up, 1, "alerts", "show", send_id, "--json")
        assert (story["alert"]["status"], story["alert"]["symbol"]) == ("executed", "BRK.B")
        assert [e["kind"] for e in story["timeline"]] == ["executed"]
        shown = up.cli("alerts", "show", send_id)
        assert shown.returncode == 0 and "status   executed after 1 attempt(s)" in shown.stdout
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
