"""Connecting to NATS the way a process that must run unattended needs to.

Who the process is comes from its settings: `ALERTBRIDGE_NATS_USER` with a password
(`…_PASSWORD` or `…_PASSWORD_FILE`), or a `.creds` file (`…_CREDS`), or an nkey seed
file (`…_NKEY`); TLS from `ALERTBRIDGE_NATS_TLS_CA` / `…_CERT` / `…_KEY` (and
`tls://` URLs). Replies come to `_INBOX.<connection name>.>`: deploy/nats-server.conf
lets each role subscribe to its own replies only.

A server that refuses the credentials, or a certificate that does not verify, at
first contact is a configuration error (`NatsAuthError`, a `SettingsError`):
retrying would not fix it. Anything else, then and later, is retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Final

from nats.aio.client import Client
from nats.errors import Error as NatsError

from ops.platform.settings import PREFIX, SettingsError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from ops.platform.settings import Common

log = logging.getLogger(__name__)


class NatsAuthError(SettingsError):
    """The server refused who we are, or we refused its certificate, at first contact."""


class NatsUnreachableError(ConnectionError):
    """No server answered a command that does not wait for one (`connect(fail_fast=True)`)."""


def inbox_prefix(name: str) -> str:
    """Where a connection named `name` gets its replies (the server config allows it)."""
    return f"_INBOX.{name}"


def tls_context(settings: Common) -> ssl.SSLContext | None:
    """The client TLS context the settings ask for; None for plain connections."""
    wants_tls = any(url.startswith("tls://") for url in settings.nats_url)
    if not (wants_tls or settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    try:
        # With a CA file only that CA is trusted; without one, the system's CAs.
        context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"{PREFIX}NATS_TLS_CA={settings.nats_tls_ca!r}: {exc}") from None
    if settings.nats_tls_cert:
        try:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"{PREFIX}NATS_TLS_CERT={settings.nats_tls_cert!r} / {PREFIX}NATS_TLS_KEY="
                f"{settings.nats_tls_key!r}: not a certificate and its key ({exc})"
            ) from None
    return context


def _identity(settings: Common) -> str:
    """Who we try to be, naming the variables that say so (never the secret)."""
    if settings.nats_user is not None:
        return (
            f"user {settings.nats_user!r} ({PREFIX}NATS_USER, {PREFIX}NATS_PASSWORD"
            f" or {PREFIX}NATS_PASSWORD_FILE)"
        )
    if settings.nats_creds is not None:
        return f"the credentials in {PREFIX}NATS_CREDS={settings.nats_creds!r}"
    if settings.nats_nkey is not None:
        return f"the nkey in {PREFIX}NATS_NKEY={settings.nats_nkey!r}"
    return f"an anonymous client (set {PREFIX}NATS_USER and a password, or a creds/nkey file)"


def _refusal(exc: BaseException, settings: Common) -> str | None:
    """What to tell the operator when `exc`, at first contact, will not go away by retrying."""
    servers = ", ".join(settings.nats_url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS to NATS at {servers} failed: the server's certificate does not verify "
            f"({exc.verify_message}); check {PREFIX}NATS_TLS_CA"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS to NATS at {servers} failed ({exc.reason}); check {PREFIX}NATS_TLS_CERT, "
            f"{PREFIX}NATS_TLS_KEY and {PREFIX}NATS_TLS_CA"
        )
    if isinstance(exc, NatsError) and "authorization violation" in str(exc).lower():
        return (
            f"NATS at {servers} refused {_identity(settings)}: Authorization Violation "
            "(wrong user or password, or no such user)"
        )
    return None


def jetstream(client: Client, settings: Common, **options: int) -> JetStreamContext:
    """The JetStream context of a role: the API under `ALERTBRIDGE_NATS_JS_API`, where
    deploy/nats-server.conf maps the streams' account into the ingress's and worker's."""
    return client.jetstream(prefix=settings.nats_js_api, **options)


# A command a person waits for tries each server twice, a second at most each time.
_FAIL_FAST: Final = {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.2, "connect_timeout": 1}
_UNATTENDED: Final = {"max_reconnect_attempts": -1, "reconnect_time_wait": 1, "connect_timeout": 2}


async def connect(settings: Common, *, name: str, fail_fast: bool = False) -> Client:
    """Connect, and keep reconnecting forever (the default gives up after two minutes).

    `fail_fast` is for the operators' commands: no server answering within about two
    seconds is `NatsUnreachableError`, said once, and a dropped connection is tried once
    more, not forever. The long-running processes never pass it: they wait for NATS.
    """
    client = Client()
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if not client.is_connected and not refused.done() and (why := _refusal(exc, settings)):
            refused.set_result(why)  # raised as NatsAuthError below
            return
        if fail_fast and not client.is_connected:
            return  # said once, by the caller, as NatsUnreachableError
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.info("nats disconnected (reconnecting unless closing)")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    password = settings.nats_password
    connecting = asyncio.ensure_future(
        client.connect(
            servers=list(settings.nats_url),
            name=name,
            inbox_prefix=inbox_prefix(name),
            user=settings.nats_user,
            password=password.reveal() if password is not None else None,
            user_credentials=settings.nats_creds,
            nkeys_seed=settings.nats_nkey,
            tls=tls_context(settings),
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            **(_FAIL_FAST if fail_fast else _UNATTENDED),
        )
    )
    try:
        await _first_contact(client, connecting, refused)
    except (OSError, NatsError, TimeoutError) as exc:
        if fail_fast and not isinstance(exc, SettingsError):
            servers = ", ".join(settings.nats_url)
            raise NatsUnreachableError(
                f"cannot reach NATS at {servers} — is the stack running? `just up`"
            ) from None
        raise
    return client


async def _first_contact(
    client: Client, connecting: asyncio.Future[None], refused: asyncio.Future[str]
) -> None:
    """Wait for the first connection, or for the reason it will never come."""
    try:
        await asyncio.wait((connecting, refused), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():  # refused, or our caller gave up waiting
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await client.close()
    if refused.done() and not client.is_connected:
        raise NatsAuthError(refused.result())
    if not connecting.cancelled() and connecting.exception() is not None:
        with contextlib.suppress(Exception):  # its sockets, not left to the collector
            await client.close()
    connecting.result()  # any other failure of the first connect
