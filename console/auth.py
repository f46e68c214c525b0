"""Who may use the console: whoever holds its token.

Scripts send `Authorization: Bearer <token>`. People type the token once into the login
form, which sets a cookie holding not the token but a value derived from it (HMAC), so
the cookie never reveals the token, and rotating the token logs everyone out. Every
comparison is constant-time (`hmac.compare_digest`).

What each kind of request needs:

  GET /api/...                 the bearer token, or the session cookie (the pages' script)
  POST /api/...                the bearer token only: a browser never sends that header
                               by itself, so no other site can make a browser post there
  pages, and their form POSTs  the session cookie; the form POSTs also carry a CSRF token
                               (Litestar's CSRF middleware, app.py)

Anything else is 401 (the API) or a redirect to the login form (the pages).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Final

from litestar.exceptions import NotAuthorizedException

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from ops.platform.settings import Secret

COOKIE: Final = "alertbridge_console"
_SESSION: Final = b"alertbridge console session v1"
_CSRF: Final = b"alertbridge console csrf v1"
_BEARER: Final = "bearer "


class Access:
    """The token, and what is derived from it."""

    def __init__(self, token: Secret) -> None:
        self._token = token
        key = token.reveal().encode()
        self.session = hmac.new(key, _SESSION, hashlib.sha256).hexdigest()
        self.csrf_secret = hmac.new(key, _CSRF, hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        """The token itself (the login form, the bearer header), in constant time."""
        return self._token.matches(candidate.strip().encode())

    def bearer(self, header: str | None) -> bool:
        """`Authorization: Bearer <token>` with the right token."""
        if header is None or header[: len(_BEARER)].lower() != _BEARER:
            return False
        return self.token_matches(header[len(_BEARER) :])

    def cookie(self, value: str | None) -> bool:
        """The session cookie the login form set."""
        return value is not None and hmac.compare_digest(value.encode(), self.session.encode())


def access_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Access:
    """The app's Access (in its Runtime)."""
    found: Access = connection.app.state.runtime.access
    return found


def api_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The API: bearer always; the session cookie for reads only."""
    access = access_of(connection)
    if access.bearer(connection.headers.get("authorization")):
        return
    if connection.scope.get("method", "GET") == "GET" and access.cookie(
        connection.cookies.get(COOKIE)
    ):
        return
    raise NotAuthorizedException(
        "a console token is needed: Authorization: Bearer <token> (var/console.token)",
        headers={"WWW-Authenticate": 'Bearer realm="alertbridge console"'},
    )


class LoginNeededError(NotAuthorizedException):
    """A page was asked for without the session cookie: app.py redirects to the login form."""


def page_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The pages: the session cookie."""
    if not access_of(connection).cookie(connection.cookies.get(COOKIE)):
        raise LoginNeededError("log in first")
