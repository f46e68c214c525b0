"""The notifier's test rig: an HTTP receiver for Apprise's json:// target, the notifier
as a process, events recorded as the worker role, and the events themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext

from contracts.messages import (
    AttemptFailed,
    Event,
    Executed,
    Expired,
    Rejected,
    event_encoder,
    event_kind,
)
from contracts.subjects import EVENTS_STREAM, event_subject
from contracts.topology import NOTIFIER
from tests.secured import Secured
from tests.support import eventually, free_port, python_module

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
TOKEN = "tok3n-never-logged"  # in every target's path: must never reach a log line
CONFIG = """
[notify]
urls_env = ["ALERTBRIDGE_NOTIFY_URL"]
fold_interval = 3
broker_down_after = 1
dlq_depth_threshold = 2

[accounts.a]
notify_urls_env = ["ALERTBRIDGE_NOTIFY_A"]

[accounts.b]
"""


# --- an HTTP receiver that Apprise's json:// target posts to ------------------------


class Receiver:
    """Records every JSON body posted to it, by path; can be down (not listening)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}/{TOKEN}"

    def start(self) -> Receiver:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((self.path.split("/")[1], json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def at(self, target: str) -> list[dict[str, Any]]:
        """What target `target` (the path's first part) got, in order."""
        return [body for path, body in self.got if path == target]

    async def wait_for(self, target: str, text: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `target` got `count` messages whose body says `text`."""

        async def arrived() -> list[dict[str, Any]] | None:
            found = [b for b in self.at(target) if text in b["message"] or text in b["title"]]
            return found if len(found) >= count else None

        return await eventually(arrived, within=20)


# --- the notifier process -------------------------------------------------------------


class NotifierProcess:
    """`python -m notifier` as the notifier role, with its own store under `root`."""

    def __init__(self, secured: Secured, receiver: Receiver, root: Path) -> None:
        config = root / "alertbridge.toml"
        config.write_text(CONFIG, encoding="utf-8")
        self.log = root / "notifier.log"
        self.env = secured.env(
            "notifier",
            ALERTBRIDGE_CONFIG=str(config),
            ALERTBRIDGE_NOTIFIER_DB=str(root / "notifier.db"),
            ALERTBRIDGE_DLQ_POLL_INTERVAL="0.3",
            ALERTBRIDGE_NOTIFY_URL=receiver.url("everything"),
            ALERTBRIDGE_NOTIFY_A=receiver.url("a-only"),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NotifierProcess:
        self.proc = python_module("notifier", self.env, self.log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)

    def logged(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""


class Publisher:
    """Records events as the worker role does (its account, its permissions)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def __call__(self, event: Event) -> None:
        await self.js.publish(
            event_subject(event_kind(event), event.account, event.symbol),
            event_encoder.encode(event),
        )


def now(ago: float = 0.0) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=ago)


def rejected(alert_id: str, account: str = "a", **fields: Any) -> Rejected:
    return Rejected(
        alert_id=alert_id, account=account, symbol="NASDAQ:AAPL", at=now(),
        reason="insufficient buying power", attempts=1, stream_seq=3, side="buy", quantity=10.0,
        **fields,
    )  # fmt: skip


def expired(alert_id: str, account: str = "b", **fields: Any) -> Expired:
    return Expired(
        alert_id=alert_id, account=account, symbol="BINANCE:BTCUSDT", at=now(), age=75.2,
        max_age=60.0, attempts=4, stream_seq=9, side="sell", **fields,
    )  # fmt: skip


async def taken_in(as_ops: JetStreamContext) -> None:
    """Wait until the notifier has taken in (and acked) every event stored."""

    async def all_acked() -> bool | None:
        info = await as_ops.consumer_info(EVENTS_STREAM, NOTIFIER)
        return True if info.num_pending == 0 and info.num_ack_pending == 0 else None

    await eventually(all_acked, within=20)


def attempt_failed(at: datetime, error: str, attempts: int) -> AttemptFailed:
    return AttemptFailed(
        alert_id="x", account="a", symbol="NASDAQ:AAPL", at=at, error=error,
        attempts=attempts, stream_seq=1,
    )  # fmt: skip


def executed(at: datetime, attempts: int) -> Executed:
    return Executed(
        alert_id="x", account="a", symbol="NASDAQ:AAPL", at=at, side="buy", quantity=1.0,
        order_type="market", client_order_id="c", broker="paper", broker_order_id="o",
        status="filled", attempts=attempts, stream_seq=1,
    )  # fmt: skip


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ALERTBRIDGE, *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
