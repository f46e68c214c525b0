"""The console's settings: `ConsoleSettings`, read by `ops.platform.settings.load`.

Who may use the console is one token (`ALERTBRIDGE_CONSOLE_TOKEN_FILE`, generated under
var/ by `alertbridge up`); what it shows comes from the projector's file
(`ALERTBRIDGE_PROJECTIONS_DB`) and from NATS, as the `console` role.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Final

import msgspec

from ops.platform.projections import DEFAULT_DB
from ops.platform.settings import PREFIX, Common, Port, Positive, Secret, SettingsError

MIN_TOKEN_LENGTH: Final = 24
DEFAULT_PORT: Final = 8090


class ConsoleSettings(Common, frozen=True, kw_only=True):
    """The console process."""

    # Loopback by default: the console can halt trading and replay alerts. Put it
    # behind HTTPS (docs/console.md) before binding anything else.
    console_host: str = "127.0.0.1"
    console_port: Port = DEFAULT_PORT
    console_token_file: str = "var/console.token"  # noqa: S105 - a path
    projections_db: str = DEFAULT_DB
    # The Jaeger UI, for a link from an alert to its trace (None: no link).
    jaeger_url: Annotated[str, msgspec.Meta(pattern=r"\Ahttps?://")] | None = None
    # A login lasts this long at most, and ends sooner after this long without a request
    # (console/sessions.py).
    console_session_hours: Positive = 12.0
    console_session_idle_minutes: Positive = 60.0

    def check(self) -> None:
        """Port 0 would bind a port nobody is told about; a session that never ends is no
        limit (and no cookie Max-Age)."""
        if self.console_port == 0:
            raise SettingsError(f"{PREFIX}CONSOLE_PORT must be a port, not 0")
        for var, value in (
            ("CONSOLE_SESSION_HOURS", self.console_session_hours),
            ("CONSOLE_SESSION_IDLE_MINUTES", self.console_session_idle_minutes),
        ):
            if not math.isfinite(value):
                raise SettingsError(f"{PREFIX}{var} must be a finite number, not {value}")


def read_token(settings: ConsoleSettings) -> Secret:
    """The console's access token; SettingsError naming the variable when it is unusable."""
    var = f"{PREFIX}CONSOLE_TOKEN_FILE"
    path = Path(settings.console_token_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"{var}={str(path)!r} cannot be read: {exc}") from None
    token = next((line.strip() for line in lines if line.strip()), "")
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(
            f"{var}={str(path)!r} holds no token of at least {MIN_TOKEN_LENGTH} characters"
        )
    if path.stat().st_mode & 0o077:
        raise SettingsError(f"{var}={str(path)!r} is readable by others: chmod 600 it")
    return Secret(token)
