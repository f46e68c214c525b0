"""Who may use the console: whoever holds its token.

Scripts send `Authorization: Bearer <token>`. People type the token once into the login
form, which opens a session (console/sessions.py): the cookie holds a random session id,
never the token nor anything derived from it, and the session ends at logout, after its
lifetime or idle time, or when the console restarts (so rotating the token, which needs
a restart, logs everyone out). The token is compared in constant time
(`hmac.compare_digest`); a session id is looked up by its HMAC.

What each kind of request needs:

  GET /api/...                 the bearer token, or the session cookie (the pages' script)
  POST /api/...                the bearer token only: a browser never sends that header
                               by itself, so no other site can make a browser post there
  pages, and their form POSTs  the session cookie; the form POSTs also carry a CSRF token
                               (Litestar's CSRF middleware, app.py)

Anything else is 401 (the API) or a redirect to the login form (the pages). `api_guard`
records how it let a request in (`admitted`): what depends on it (a live feed ends with
its session, not with the token) reads that decision instead of making its own.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from litestar.exceptions import NotAuthorizedException

from console.sessions import Sessions

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from ops.platform.settings import Secret

COOKIE: Final = "alertbridge_console"
_SESSION: Final = b"alertbridge console session v2"
_CSRF: Final = b"alertbridge console csrf v1"
_BEARER: Final = "bearer "
_ADMITTED: Final = "alertbridge_console_admitted"  # its key in the request's scope state


class Access:
    """The token, and what is derived from it."""

    def __init__(self, token: Secret, *, lifetime: float, idle: float) -> None:
        """`lifetime`, `idle`: seconds a session lives at most, and without a request."""
        self._token = token
        key = token.reveal().encode()
        self.csrf_secret = hmac.new(key, _CSRF, hashlib.sha256).hexdigest()
        # Keyed by the token: a session id opened under another token is no session here.
        session_key = hmac.new(key, _SESSION, hashlib.sha256).digest()
        self.sessions = Sessions(session_key, lifetime=lifetime, idle=idle)

    @property
    def lifetime(self) -> float:
        """Seconds a session lives at most."""
        return self.sessions.lifetime

    def token_matches(self, candidate: str) -> bool:
        """The token itself (the login form, the bearer header), in constant time."""
        return self._token.matches(candidate.strip().encode())

    def bearer(self, header: str | None) -> bool:
        """`Authorization: Bearer <token>` with the right token."""
        if header is None or header[: len(_BEARER)].lower() != _BEARER:
            return False
        return self.token_matches(header[len(_BEARER) :])

    def cookie(self, value: str | None) -> bool:
        """The cookie of a live session (one the login form opened, not ended since)."""
        return self.sessions.check(value)


def access_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Access:
    """The app's Access (in its Runtime)."""
    found: Access = connection.app.state.runtime.access
    return found


@dataclass(frozen=True, slots=True)
class Admitted:
    """How `api_guard` let a request in: the bearer token, or a live session."""

    session: str | None  # the session's id (its cookie); None: the bearer token


def admitted(connection: ASGIConnection[Any, Any, Any, Any]) -> Admitted:
    """What `api_guard` decided for this request (LookupError: it did not run)."""
    found = connection.scope.get("state", {}).get(_ADMITTED)
    if not isinstance(found, Admitted):
        raise LookupError("api_guard has not admitted this request")
    return found


def api_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The API: bearer always; the session cookie for reads only. Records which (`admitted`)."""
    access = access_of(connection)
    state = connection.scope.setdefault("state", {})
    if access.bearer(connection.headers.get("authorization")):
        state[_ADMITTED] = Admitted(session=None)
        return
    sid = connection.cookies.get(COOKIE)
    if connection.scope.get("method", "GET") == "GET" and access.cookie(sid):
        state[_ADMITTED] = Admitted(session=sid)
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
