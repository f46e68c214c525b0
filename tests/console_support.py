"""`python -m console` as the console role on the secured nats-server, and a browser as an
attacker drives it over real HTTP, its cookies kept by hand."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import subprocess
from typing import TYPE_CHECKING

import httpx

from console.auth import COOKIE
from contracts.messages import EVENT_KINDS, event_encoder
from ops.platform.projection_schema import SCHEMA
from ops.platform.projections import micros
from tests.support import free_port, python_module, wait_for_port

if TYPE_CHECKING:
    from pathlib import Path

    from contracts.messages import Event
    from tests.secured import Secured

CSRF_COOKIE = "alertbridge_csrf"
CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


class ConsoleProcess:
    """The console on a free port, its token file, read models and log under `root`."""

    def __init__(self, secured: Secured, root: Path, token: str, **env: str) -> None:
        self.root = root
        self.token_file = root / "console.token"
        self.log = root / "console.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = secured.env(
            "console",
            ALERTBRIDGE_CONSOLE_PORT=str(self.port),
            ALERTBRIDGE_CONSOLE_TOKEN_FILE=str(self.token_file),
            ALERTBRIDGE_PROJECTIONS_DB=str(root / "projections.db"),
            ALERTBRIDGE_LOG_FORMAT="json",
            **env,
        )
        with sqlite3.connect(root / "projections.db") as made:
            made.executescript(SCHEMA)
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, token: str | None = None) -> ConsoleProcess:
        """Start it (with `token`, when given, written to its token file first)."""
        self.token = token or self.token
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.proc = python_module("console", self.env, self.log)
        wait_for_port(self.port, 30, self.proc)
        return self

    def exits(self, timeout: float = 30) -> int:
        """Start it and wait for it to exit by itself (a bad setting): its exit code."""
        self.proc = python_module("console", self.env, self.log)
        return self.proc.wait(timeout)

    def project(self, event: Event) -> None:
        """`event` in its read models, as the projector records it."""
        row = (event.account, event.alert_id, event.replay, EVENT_KINDS[type(event)],
               micros(event.at), event_encoder.encode(event))  # fmt: skip
        with contextlib.closing(sqlite3.connect(self.root / "projections.db")) as db, db:
            db.execute(
                "INSERT INTO events (account, alert_id, replay, kind, at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

    def stop(self) -> bool:
        """SIGTERM; whether it was running and stopped cleanly (uvicorn, once shut down,
        raises the signal again: -SIGTERM is its clean exit)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.terminate()
        return self.proc.wait(15) in (0, -signal.SIGTERM)

    def output(self) -> str:
        """What it wrote (stderr and stdout)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Visitor:
    """One browser: httpx keeps `Secure` cookies off plain http, so they are kept here."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.cookies: dict[str, str] = {}

    async def get(self, path: str) -> httpx.Response:
        """GET `path` with this browser's cookies."""
        return self._keep(await self.http.get(path, headers=self._headers()))

    async def post(self, path: str, form: dict[str, str]) -> httpx.Response:
        """POST a form to `path` with this browser's cookies."""
        return self._keep(await self.http.post(path, data=form, headers=self._headers()))

    async def csrf(self, path: str) -> str:
        """The CSRF field of the form on the page at `path`."""
        page = await self.get(path)
        found = CSRF_FIELD.search(page.text)
        assert found is not None, page.text
        return found[1]

    async def try_log_in(self, token: str) -> httpx.Response:
        """The login form, filled in with `token`."""
        return await self.post("/login", {"token": token, "_csrf_token": await self.csrf("/login")})

    async def log_in(self, token: str) -> str:
        """Log in with `token`; the session cookie's value."""
        answer = await self.try_log_in(token)
        assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
        return self.cookies[COOKIE]

    async def log_out(self) -> httpx.Response:
        """The logout button of the live feed's page."""
        return await self.post("/logout", {"_csrf_token": await self.csrf("/")})

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _keep(self, answer: httpx.Response) -> httpx.Response:
        for header in answer.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if value and "max-age=0" not in header.lower():
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return answer


async def page_status(http: httpx.AsyncClient, cookie: str, path: str = "/") -> str:
    """What a page answers to `cookie` alone: "page", "login" (the redirect) or the code."""
    answer = await http.get(path, headers={"Cookie": f"{COOKIE}={cookie}"})
    if answer.status_code == 200:
        return "page"
    if answer.status_code == 303 and answer.headers["location"] == "/login":
        return "login"
    return str(answer.status_code)


async def api_status(http: httpx.AsyncClient, cookie: str) -> int:
    """What an API read answers to `cookie` alone."""
    return (await http.get("/api/alerts", headers={"Cookie": f"{COOKIE}={cookie}"})).status_code


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` sent byte for byte (an HTTP client would normalize `..` away): the
    status code and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
