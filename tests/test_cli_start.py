"""The `alertbridge` command starts lazily: `--help` and the commands that read the
projections import neither the NATS client nor the HTTP, notification, telemetry or web
libraries (ops.tools.cli_support says why). Each check runs the CLI in a fresh
interpreter, as a user does, and reads what it imported (sys.modules) at the end.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.messages import Executed, event_encoder
from ops.tools import cli, stack
from projector.fold import Stored, Writer

HEAVY = ("nats", "httpx", "apprise", "opentelemetry", "litestar", "aiohttp", "uvicorn", "rich")
# Runs the CLI with the arguments given, then prints which HEAVY packages were imported.
PROBE = """
import json, sys
from ops.tools.cli import cli
try:
    cli(sys.argv[1:], prog_name="alertbridge")
except SystemExit as exc:
    code = exc.code
loaded = {m.split(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.read()))
print(json.dumps({"code": code, "loaded": sorted(loaded)}))
"""


def _run(args: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        input=json.dumps(HEAVY), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    report = json.loads(done.stdout.splitlines()[-1])
    return report["code"], report["loaded"], done.stdout


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A projections file with one order, and the CLI pointed at it."""
    db = tmp_path / "projections.db"
    event = Executed(
        alert_id="a-1", account="default", symbol="NASDAQ:AAPL", at=datetime.now(UTC),
        side="buy", quantity=1.0, order_type="market", client_order_id="ab-1", broker="paper",
        broker_order_id="p-1", status="filled", fill_price=10.0, attempts=1, stream_seq=1,
        latency=0.001,
    )  # fmt: skip
    writer = Writer(db)
    writer.apply("EVENTS", [Stored(1, None, event_encoder.encode(event))])
    writer.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALERTBRIDGE_", "OTEL_"))}
    return base | {"ALERTBRIDGE_PROJECTIONS_DB": str(db), "ALERTBRIDGE_VAR": str(tmp_path)}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["up", "--help"],
        ["orders", "--limit", "50"],
        ["orders", "--json"],
        ["alerts", "ls"],
        ["alerts", "show", "a-1"],
        ["positions"],
    ],
)
def test_reading_the_views_imports_nothing_heavy(args: list[str], env: dict[str, str]) -> None:
    code, loaded, out = _run(args, env)
    assert code in (0, None), out
    assert loaded == [], f"`alertbridge {' '.join(args)}` imported {loaded}"


def test_the_probe_sees_a_heavy_import(env: dict[str, str]) -> None:
    # `dlq ls` needs the NATS client (and fails here: no server): the probe must see it.
    code, loaded, out = _run(["dlq", "ls"], env | {"ALERTBRIDGE_NATS_URL": "nats://127.0.0.1:1"})
    assert code == 1, out
    assert "nats" in loaded


def test_orders_prints_the_order(env: dict[str, str]) -> None:
    _, _, out = _run(["orders", "--json"], env)
    assert json.loads(out.splitlines()[0])["client_order_id"] == "ab-1"


def test_up_help_states_the_stack_default() -> None:
    # --help shows it without importing the stack: the text must follow the constant.
    assert f"one per core, at most {stack.MAX_DEFAULT_INGRESSES}" == cli.UP_INGRESSES


@pytest.mark.parametrize("args", [["orders"], ["alerts", "ls"], ["positions"]])
def test_a_projections_file_without_tables_yet_is_a_plain_error(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    """The moment between a projector's creating its file and its tables."""
    empty = tmp_path / "new.db"
    sqlite3.connect(empty).close()
    command = "from ops.tools.cli import cli; cli(prog_name='alertbridge')"
    done = subprocess.run(
        [sys.executable, "-c", command, *args],
        capture_output=True, text=True, env=env | {"ALERTBRIDGE_PROJECTIONS_DB": str(empty)},
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "no projections yet" in done.stderr and "Traceback" not in done.stderr, done.stderr
