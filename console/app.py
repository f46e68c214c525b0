"""The console's Litestar app: the API, the pages, the static files, one NATS connection.

Served by `python -m console` (console/__main__.py). Everything a page loads comes
from this process (`/static/...`); the Content-Security-Policy says so to the browser
too (`default-src 'self'`), so a page works offline and behind a firewall, and nothing
from elsewhere can run in it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from litestar import Litestar, Request, Response
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import ResponseHeader, State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from console.api import AlertsController, ControlController, ReadController
from console.auth import Access, LoginNeededError
from console.files import static_files
from console.pages import LoginController, PagesController
from console.runtime import Runtime
from ops.platform.natsconn import connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from console.settings import ConsoleSettings
    from ops.platform.settings import Secret

HERE: Final = Path(__file__).parent
NATS_NAME: Final = "alertbridge-console"  # replies on _INBOX.alertbridge-console.> only
HEADERS: Final = [
    ResponseHeader(
        name="Content-Security-Policy",
        value="default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]


def _login(_: Request[Any, Any, Any], __: LoginNeededError) -> Response[Any]:
    return Redirect(path="/login", status_code=303)


def _page_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """An error on a page is a page; on the API (and anything else) it stays JSON."""
    if request.url.path.startswith(("/api/", "/schema")):
        return Response(
            {"status_code": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    return Template(
        template_name="error.html",
        context={"status": exc.status_code, "detail": exc.detail},
        status_code=exc.status_code,
    )


def create_app(settings: ConsoleSettings, token: Secret, *, connect_nats: bool = True) -> Litestar:
    """The console app. `connect_nats=False`: no NATS (tests of what needs none)."""
    access = Access(
        token,
        lifetime=settings.console_session_hours * 3_600,
        idle=settings.console_session_idle_minutes * 60,
    )
    rt = Runtime(settings=settings, access=access)

    @contextlib.asynccontextmanager
    async def nats(app: Litestar) -> AsyncIterator[None]:
        if connect_nats:
            rt.nc = await connect(settings, name=NATS_NAME)
        rt.feed.start()
        try:
            yield
        finally:
            await rt.feed.stop()
            if rt.nc is not None:
                await rt.nc.drain()

    return Litestar(
        route_handlers=[
            AlertsController,
            ReadController,
            ControlController,
            LoginController,
            PagesController,
            static_files(HERE / "static"),
        ],
        state=State({"runtime": rt}),
        lifespan=[nats],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        csrf_config=CSRFConfig(
            secret=rt.access.csrf_secret,
            cookie_name="alertbridge_csrf",
            cookie_secure=True,
            cookie_httponly=True,
            cookie_samesite="strict",
            exclude=["^/api/"],
        ),
        openapi_config=OpenAPIConfig(
            title="alertbridge console",
            version="1",
            description="Read models, replays and the kill switch. Every /api route needs "
            "`Authorization: Bearer <token>` (var/console.token).",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],  # the document only: UIs load from CDNs
            use_handler_docstrings=True,
        ),
        exception_handlers={LoginNeededError: _login, HTTPException: _page_error},
        response_headers=HEADERS,
        logging_config=None,  # the process's own (ops.platform.logs); never the root's level
    )
