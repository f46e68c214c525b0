"""What `alertbridge up` gives its children and the operator, as the README says it.

OpenTelemetry: its own Jaeger gets traces and never metrics (Jaeger takes none), and an
endpoint of the caller's is used as is, Jaeger skipped, saying so. The `nats` CLI context
it writes holds the ops password, readable by its owner only.

The children's environment is checked where it matters: a real process that sets up
telemetry from it (ops.platform.telemetry) and exports to a local OTLP/HTTP receiver,
which records the paths it is sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.tools.paths import ensure_nats_passwords, nats_context_file, write_nats_context
from ops.tools.stack import Stack, _jaeger

OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER")

# One span and one counter, then shutdown(): it flushes both exporters that are on.
_EXPORT_ONCE = """
from opentelemetry import metrics, trace
from ops.platform.telemetry import setup
telemetry = setup("alertbridge-test")
with trace.get_tracer("test").start_as_current_span("one"):
    metrics.get_meter("test").create_counter("alertbridge_test_total").add(1)
telemetry.shutdown()
"""


class PathsReceiver:
    """An OTLP/HTTP endpoint on a free loopback port that records each POST's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PathsReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[PathsReceiver]:
    with PathsReceiver() as r:
        yield r


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OTEL, "JAEGER_BIN"):
        monkeypatch.delenv(name, raising=False)


def _export_once(env: dict[str, str]) -> None:
    """Run a process that sets up telemetry from `env`, records once and flushes."""
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_ONCE], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.usefixtures("clean_env")
def test_children_of_our_own_jaeger_send_it_traces_and_no_metrics(
    tmp_path: Path, receiver: PathsReceiver
) -> None:
    stack = Stack(var=tmp_path, otel_endpoint=receiver.endpoint)  # as _jaeger leaves it
    env = stack.env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint
    assert env["OTEL_METRICS_EXPORTER"] == "none"
    _export_once(env)
    # shutdown() returned only after each exporter's POST was answered.
    assert set(receiver.paths) == {"/v1/traces"}


@pytest.mark.usefixtures("clean_env")
def test_the_callers_endpoint_gets_both_and_no_jaeger_is_started(
    tmp_path: Path,
    receiver: PathsReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("JAEGER_BIN", str(shutil.which("true")))  # one is at hand
    stack = Stack(var=tmp_path)
    _jaeger(stack)
    assert stack.children == []
    assert stack.otel_endpoint is None
    said = capsys.readouterr().err
    assert "Jaeger not started" in said
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set" in said
    assert receiver.endpoint not in said  # the value may carry credentials: not echoed
    env = stack.env()
    assert "OTEL_METRICS_EXPORTER" not in env  # the caller's collector takes metrics
    _export_once(env)
    assert set(receiver.paths) == {"/v1/traces", "/v1/metrics"}


@pytest.mark.usefixtures("clean_env")
def test_up_points_its_children_at_the_jaeger_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JAEGER_BIN", str(shutil.which("true")))  # a stand-in that exits
    stack = Stack(var=tmp_path)
    _jaeger(stack)
    try:
        assert [child.name for child in stack.children] == ["jaeger"]
    finally:
        stack.stop(grace=10)
    assert "Jaeger UI on" in capsys.readouterr().err
    env = stack.env()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["OTEL_METRICS_EXPORTER"] == "none"


@pytest.mark.usefixtures("clean_env")
def test_no_endpoint_no_jaeger_no_otel_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `jaeger` on it
    stack = Stack(var=tmp_path)
    _jaeger(stack)
    assert stack.children == []
    assert "traces: off" in capsys.readouterr().err
    assert not set(OTEL) & set(stack.env())


def test_the_nats_context_holds_the_ops_password_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the README says of it: the ops password, in plain text, in a 0600 file."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    var = tmp_path / "var"
    password = ensure_nats_passwords(var)["ops"].read_text().strip()
    old = nats_context_file()
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    old.chmod(0o644)  # an older context, world-readable
    path = write_nats_context("nats://127.0.0.1:4999", var)
    assert path == old
    assert path.stat().st_mode & 0o777 == 0o600
    context = json.loads(path.read_text())
    assert context == {
        "description": "alertbridge local stack",
        "url": "nats://127.0.0.1:4999",
        "user": "ops",
        "password": password,
    }
