"""The console's HTTP surface in-process (Litestar's AsyncTestClient, no NATS): who gets
in, what a page's form needs, what every answer carries, and the OpenAPI document.
The whole console against a real stack, in a browser: tests/test_console_browser.py; its
NATS role: tests/test_console_security.py."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from litestar import Litestar, Request
from litestar.exceptions import NotAuthorizedException
from litestar.testing import AsyncTestClient

from console.app import create_app
from console.auth import COOKIE, Admitted, admitted, api_guard
from console.settings import ConsoleSettings, read_token
from ops.platform.projection_schema import SCHEMA
from ops.platform.settings import Secret, SettingsError

if TYPE_CHECKING:
    from httpx import Response
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types.asgi_types import HTTPScope

TOKEN = "t0ken-for-the-console-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
API_GETS = ("/api/alerts", "/api/orders", "/api/positions", "/api/dlq", "/api/status",
            "/api/halts", "/api/events", "/api/alerts/default/a1")  # fmt: skip
API_POSTS = ("/api/dlq/1/replay", "/api/halt", "/api/resume")
PAGES = ("/", "/dlq", "/positions", "/health", "/alerts/default/a1", "/dlq/1/replay")

Client = AsyncTestClient[Litestar]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    db = tmp_path / "projections.db"
    with sqlite3.connect(db) as made:
        made.executescript(SCHEMA)
    settings = ConsoleSettings(projections_db=str(db))
    app = create_app(settings, Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as found:
        found.follow_redirects = False  # a redirect to the login form is what is tested
        yield found


async def _log_in(client: Client) -> None:
    form = await client.get("/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = await client.post("/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


@pytest.mark.parametrize("path", API_GETS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_every_api_read_without_the_token_is_401(
    client: Client, path: str, headers: dict[str, str]
) -> None:
    answer = await client.get(path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in answer.text


@pytest.mark.parametrize("path", API_POSTS)
async def test_the_session_cookie_never_authorizes_an_api_write(client: Client, path: str) -> None:
    """A browser sends the cookie by itself, so another site could make it post: only
    the bearer header, which no browser adds on its own, may write."""
    await _log_in(client)
    answer = await client.post(path, json={"reason": "x"})
    assert answer.status_code == 401
    assert (await client.get("/api/alerts")).status_code == 200  # reads: yes


async def test_the_token_reads_the_api(client: Client) -> None:
    answer = await client.get("/api/alerts", headers=BEARER)
    assert answer.status_code == 200 and answer.json() == {"items": [], "next_cursor": None}
    assert (
        await client.get("/api/alerts", headers={"authorization": f"bearer {TOKEN}"})
    ).is_success


@pytest.mark.parametrize(
    ("query", "status"),
    [("cursor=bm90LWEtY3Vyc29y", 400), ("limit=0", 400), ("limit=1001", 400),
     ("since=yesterday", 400), ("limit=1000", 200), ("since=2025-01-01T00:00:00Z", 200)],
)  # fmt: skip
async def test_bad_list_parameters_are_400(client: Client, query: str, status: int) -> None:
    assert (await client.get(f"/api/alerts?{query}", headers=BEARER)).status_code == status


async def test_an_unknown_alert_is_404(client: Client) -> None:
    answer = await client.get("/api/alerts/default/nope", headers=BEARER)
    assert answer.status_code == 404 and "nope" in answer.json()["detail"]


async def test_no_projections_yet_is_503(tmp_path: Path) -> None:
    settings = ConsoleSettings(projections_db=str(tmp_path / "none.db"))
    app = create_app(settings, Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as found:
        answer = await found.get("/api/alerts", headers=BEARER)
    assert answer.status_code == 503 and "projector" in answer.json()["detail"]


@pytest.mark.parametrize("wal", [False, True], ids=["empty file", "header only"])
@pytest.mark.parametrize(
    "path", ["/api/alerts", "/api/orders", "/api/positions", "/api/alerts/default/a1"]
)
async def test_projections_without_tables_yet_are_503(tmp_path: Path, wal: bool, path: str) -> None:
    """A projector's first start creates the file, then its tables: a request between
    the two is told to come back, not given a 500 ("no such table")."""
    file = tmp_path / "new.db"
    db = sqlite3.connect(file)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.close()
    settings = ConsoleSettings(projections_db=str(file))
    app = create_app(settings, Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as found:
        answer = await found.get(path, headers=BEARER)
    assert answer.status_code == 503 and "projector" in answer.json()["detail"]


@pytest.mark.parametrize("path", PAGES)
async def test_a_page_without_the_cookie_is_the_login_form(client: Client, path: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    client.cookies.set(COOKIE, "forged")
    assert (await client.get(path)).headers["location"] == "/login"


async def test_a_wrong_token_at_the_login_form_is_refused(client: Client) -> None:
    form = await client.get("/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = await client.post("/login", data={"token": TOKEN[:-1], "_csrf_token": csrf[1]})
    assert answer.status_code == 401 and "wrong token" in answer.text
    assert COOKIE not in answer.cookies


async def test_the_session_cookie_is_secure_httponly_strict_and_not_the_token(
    client: Client,
) -> None:
    form = await client.get("/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = await client.post("/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict"):
        assert flag.lower() in cookie.lower(), cookie
    assert TOKEN not in cookie


async def test_a_page_form_without_the_csrf_token_is_refused(client: Client) -> None:
    await _log_in(client)
    for path, form in (("/halt", {"reason": "x"}), ("/resume", {}), ("/dlq/1/replay", {})):
        answer = await client.post(path, data=form)
        assert answer.status_code == 403, (path, answer.text)
    assert (await client.post("/login", data={"token": TOKEN})).status_code == 403


async def test_pages_load_nothing_from_elsewhere(client: Client) -> None:
    await _log_in(client)
    for path in ("/", "/dlq", "/positions", "/login"):
        answer = await client.get(path)
        assert answer.status_code == 200, path
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        for url in re.findall(r'(?:src|href)="([^"]+)"', answer.text):
            assert url.startswith(("/", "#")), (path, url)
    for asset in ("/static/console.css", "/static/console.js"):
        assert (await client.get(asset)).status_code == 200


def test_the_openapi_document_describes_every_api_route() -> None:
    app = create_app(ConsoleSettings(), Secret(TOKEN), connect_nats=False)
    document = app.openapi_schema.to_schema()
    paths = set(document["paths"])
    for path in (*API_GETS[:-1], *API_POSTS):
        template = re.sub(r"/1/", "/{dlq_seq}/", path)
        assert template in paths, template
    assert "/api/alerts/{account}/{alert_id}" in paths
    assert not [p for p in paths if not p.startswith("/api/")]  # no page is in the API
    replay = document["paths"]["/api/dlq/{dlq_seq}/replay"]["post"]
    assert "age clock restarts" in replay["description"]


def test_the_token_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "console.token"
    settings = ConsoleSettings(console_token_file=str(path))
    with pytest.raises(SettingsError, match=r"ALERTBRIDGE_CONSOLE_TOKEN_FILE=.* cannot be read"):
        read_token(settings)
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SettingsError, match="no token of at least 24"):
        read_token(settings)
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="readable by others"):
        read_token(settings)
    path.chmod(0o600)
    assert read_token(settings).matches(TOKEN.encode())
    assert TOKEN not in repr(read_token(settings))


async def test_a_logout_without_the_csrf_token_is_refused(client: Client) -> None:
    """Like every form: another site cannot log a browser out."""
    await _log_in(client)
    answer = await client.post("/logout", data={})
    assert answer.status_code == 403, answer.text
    assert "set-cookie" not in answer.headers or COOKIE not in answer.headers["set-cookie"]
    assert (await client.get("/")).status_code == 200  # still logged in


def _dropped(answer: Response) -> bool:
    """Whether `answer` tells the browser to drop the session cookie."""
    return any(
        header.startswith(f"{COOKIE}=") and "max-age=0" in header.lower()
        for header in answer.headers.get_list("set-cookie")
    )


async def test_a_logout_of_a_session_already_ended_drops_its_cookie(client: Client) -> None:
    """Another tab logged it out (or it timed out): this one's logout still ends at the
    login form with the cookie gone, not back at a redirect that keeps it."""
    await _log_in(client)
    ended = client.cookies[COOKIE]
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', (await client.get("/")).text)
    assert csrf is not None
    first = await client.post("/logout", data={"_csrf_token": csrf[1]})
    assert first.status_code == 303 and _dropped(first)
    client.cookies.set(COOKIE, ended)  # a tab that still holds it
    again = await client.post("/logout", data={"_csrf_token": csrf[1]})
    assert again.status_code == 303 and again.headers["location"] == "/login"
    assert _dropped(again), again.headers.get_list("set-cookie")
    assert (await client.get("/")).headers["location"] == "/login"


@pytest.mark.parametrize(("hours", "max_age"), [(12.0, 43_200), (0.0001, 1)])
async def test_the_session_cookie_lasts_as_long_as_the_session(
    tmp_path: Path, hours: float, max_age: int
) -> None:
    """Max-Age is the lifetime, rounded up: the browser forgets the cookie once it is dead."""
    settings = ConsoleSettings(
        projections_db=str(tmp_path / "none.db"), console_session_hours=hours
    )
    app = create_app(settings, Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as found:
        found.follow_redirects = False
        form = await found.get("/login")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        answer = await found.post("/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE)]
    assert f"max-age={max_age};" in cookie.lower() + ";", cookie


NO_HANDLER = cast("BaseRouteHandler", None)  # api_guard does not look at it


def _request(app: Litestar, headers: dict[str, str], method: str = "GET") -> Request[Any, Any, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": method, "path": "/api/events", "headers": raw,
             "query_string": b"", "litestar_app": app, "state": {}}  # fmt: skip
    return Request(cast("HTTPScope", scope))


async def test_the_api_guard_records_how_it_let_a_request_in(client: Client) -> None:
    """The live feed reads this decision (how long it may go on) rather than making its own."""
    await _log_in(client)
    sid = client.cookies[COOKIE]
    cookie = {"Cookie": f"{COOKIE}={sid}"}
    for headers, found in (
        (BEARER, Admitted(session=None)),
        ({**BEARER, **cookie}, Admitted(session=None)),  # the token: it goes on
        (cookie, Admitted(session=sid)),  # the session: it ends with it
    ):
        request = _request(client.app, headers)
        api_guard(request, NO_HANDLER)
        assert admitted(request) == found, headers
    for headers, method in ((cookie, "POST"), ({}, "GET")):
        refused = _request(client.app, headers, method)
        with pytest.raises(NotAuthorizedException):
            api_guard(refused, NO_HANDLER)
        with pytest.raises(LookupError):
            admitted(refused)
