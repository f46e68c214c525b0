"""Settings: one frozen Struct per process, read from the environment in one place.

`Common` is what every process shares; each role extends it in its own package
(`ingress.settings`, `worker.settings`) and `load` reads any of them.

Every variable is `ALERTBRIDGE_<FIELD>`; lists are comma-separated. A bad value
stops the process with a `SettingsError` naming the variable.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import msgspec

from contracts.topology import DAY, Topology, topology

if TYPE_CHECKING:
    from collections.abc import Mapping

PREFIX: Final = "ALERTBRIDGE_"
# Webhook secrets: 8 stays the floor, as TradingView users' existing passphrases are often
# that short and a refused start would take a running deployment down on upgrade; the
# ingress warns below RECOMMENDED_SECRET_LENGTH. HMAC keys are new: they start at 32.
MIN_SECRET_LENGTH: Final = 8
RECOMMENDED_SECRET_LENGTH: Final = 16
MIN_HMAC_KEY_LENGTH: Final = 32

Positive = Annotated[float, msgspec.Meta(gt=0)]
# nats-server's `sync_interval`: `always` (fsync before every PubAck) or a duration.
SYNC_PATTERN: Final = r"\A(always|[1-9][0-9]*(ms|s|m|h))\Z"
# The JetStream API prefix of an account that reaches the streams through imports
# (deploy/nats-server.conf: the ingress and worker accounts).
DEFAULT_JS_API: Final = "$JS.API"
ROLE_JS_API: Final = "$JS.alertbridge.API"
Port = Annotated[int, msgspec.Meta(ge=0, le=65_535)]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Secret:
    """A secret value that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.encode()

    def __repr__(self) -> str:
        return "Secret('***')"

    def matches(self, candidate: bytes) -> bool:
        """Constant-time comparison."""
        return hmac.compare_digest(self._value, candidate)

    def reveal(self) -> str:
        """The value itself, for the one call that must send it (e.g. the NATS CONNECT)."""
        return self._value.decode()


class Common(msgspec.Struct, frozen=True, kw_only=True):
    """What every process shares: where NATS is and what the topology looks like."""

    nats_url: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = ("nats://127.0.0.1:4222",)
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    alerts_max_age: Positive = 30 * DAY
    duplicate_window: Annotated[float, msgspec.Meta(ge=0.1)] = 3_600.0
    # How long a body without an `id` (its id is the body's hash) counts as a resend of
    # the same alert: TradingView resends a 5xx within ~15 s. The same body fired later
    # is a new alert. Alerts with an explicit `id` are deduplicated for DUPLICATE_WINDOW.
    resend_window: Annotated[float, msgspec.Meta(ge=1, le=3_600)] = 60.0
    # When nats-server fsyncs (README "What a 200 means"); read by whoever starts it.
    nats_sync: Annotated[str, msgspec.Meta(pattern=SYNC_PATTERN)] = "always"
    # `$JS.<x>.API` where the server maps the streams' API into this role's account.
    nats_js_api: Annotated[str, msgspec.Meta(pattern=r"\A\$JS(\.[A-Za-z0-9_-]+)?\.API\Z")] = (
        DEFAULT_JS_API
    )
    # A hard cap on deliveries: retries otherwise last while the alert is fresh
    # (worker.outcomes), so this bounds only alerts with no max age, and stale lookups.
    max_deliver: Annotated[int, msgspec.Meta(ge=1)] = 20
    # How long a delivery may go without an ack or an in-progress beat (the worker beats
    # every third of it while it works): a dead worker's alert comes back after this.
    ack_wait: Annotated[float, msgspec.Meta(ge=1)] = 3.0
    # Who this process is to NATS (ops/natsconn.py): a user and password (the password
    # also from ALERTBRIDGE_NATS_PASSWORD_FILE), or a .creds file, or an nkey seed file.
    nats_user: str | None = None
    nats_password: Secret | None = None
    nats_creds: str | None = None
    nats_nkey: str | None = None
    # TLS to NATS (tls:// URLs, or a server that requires TLS): the CA that signed the
    # server's certificate; the client certificate and key when the server verifies them.
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None

    def check(self) -> None:
        """The rules between this role's own fields (`load` calls it; a role adds its own)."""

    def topology(self) -> Topology:
        """The streams and consumers these settings describe."""
        return topology(
            partitions=self.partitions,
            replicas=self.replicas,
            alerts_max_age=self.alerts_max_age,
            duplicate_window=self.duplicate_window,
            resend_window=self.resend_window,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait,
        )


S = TypeVar("S", bound=Common)


def load(cls: type[S], env: Mapping[str, str]) -> S:
    """Read `cls` from `env`; raise SettingsError naming the first bad variable."""
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        var = PREFIX + field.name.upper()
        if field.name == "secrets":
            values["secrets"] = _secrets(env)
            continue
        if field.name == "hmac_secrets":
            values["hmac_secrets"] = _secrets(env, "HMAC_SECRETS", MIN_HMAC_KEY_LENGTH)
            continue
        if field.name == "nats_password":
            values["nats_password"] = _nats_password(env)
            continue
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        value: Any = raw.strip()
        if _is_sequence(field.type):
            value = [item.strip() for item in value.split(",") if item.strip()]
        try:
            values[field.name] = msgspec.convert(value, field.type, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"{var}={raw!r} is invalid: {exc}") from None
    settings = cls(**values)
    _check_windows(settings)
    _check_nats_auth(settings)
    settings.check()  # the role's own rules (ingress.settings: and with the accounts)
    return settings


def _is_sequence(tp: Any) -> bool:
    if getattr(tp, "__metadata__", None) is not None:  # Annotated[tuple[...], Meta(...)]
        tp = tp.__origin__
    return getattr(tp, "__origin__", None) is tuple


def _secrets(
    env: Mapping[str, str], name: str = "SECRETS", minimum: int = MIN_SECRET_LENGTH
) -> tuple[Secret, ...]:
    """`ALERTBRIDGE_<name>` (comma-separated) plus `ALERTBRIDGE_<name>_FILE` (one a line)."""
    var, file_var = PREFIX + name, PREFIX + name + "_FILE"
    values = [s.strip() for s in env.get(var, "").split(",") if s.strip()]
    if path := env.get(file_var, "").strip():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"{file_var}={path!r} cannot be read: {exc}") from None
        values += [line.strip() for line in text.splitlines() if line.strip()]
    kind = "webhook secret" if name == "SECRETS" else "HMAC key"
    for i, value in enumerate(values):
        if len(value) < minimum:
            raise SettingsError(
                f"{kind} #{i + 1} (from {var} or {file_var}) is shorter than {minimum} characters"
            )
    return tuple(Secret(v) for v in values)


def _nats_password(env: Mapping[str, str]) -> Secret | None:
    value = env.get(PREFIX + "NATS_PASSWORD", "").strip()
    path = env.get(PREFIX + "NATS_PASSWORD_FILE", "").strip()
    if value and path:
        raise SettingsError(
            f"{PREFIX}NATS_PASSWORD and {PREFIX}NATS_PASSWORD_FILE are both set: give one"
        )
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(
                f"{PREFIX}NATS_PASSWORD_FILE={path!r} cannot be read: {exc}"
            ) from None
        value = next((line.strip() for line in lines if line.strip()), "")
        if not value:
            raise SettingsError(f"{PREFIX}NATS_PASSWORD_FILE={path!r} holds no password")
    return Secret(value) if value else None


def _check_windows(settings: Common) -> None:
    """A resend reuses its first sending's id: JetStream must still remember that id."""
    if settings.resend_window > settings.duplicate_window:
        raise SettingsError(
            f"{PREFIX}RESEND_WINDOW must not exceed {PREFIX}DUPLICATE_WINDOW: a resend "
            "inside the resend window must still be recognised as a duplicate"
        )


def _check_nats_auth(settings: Common) -> None:
    """One way to authenticate, and a complete one; the files it names exist."""
    ways = [
        PREFIX + name
        for name, given in (
            ("NATS_USER", settings.nats_user is not None),
            ("NATS_CREDS", settings.nats_creds is not None),
            ("NATS_NKEY", settings.nats_nkey is not None),
        )
        if given
    ]
    if len(ways) > 1:
        raise SettingsError(f"give one of {' / '.join(ways)}, not several")
    if settings.nats_user is not None and settings.nats_password is None:
        raise SettingsError(
            f"{PREFIX}NATS_USER needs {PREFIX}NATS_PASSWORD or {PREFIX}NATS_PASSWORD_FILE"
        )
    if settings.nats_password is not None and settings.nats_user is None:
        raise SettingsError(f"a NATS password needs {PREFIX}NATS_USER")
    if settings.nats_tls_key is not None and settings.nats_tls_cert is None:
        raise SettingsError(f"{PREFIX}NATS_TLS_KEY needs {PREFIX}NATS_TLS_CERT")
    for name in ("nats_creds", "nats_nkey", "nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            raise SettingsError(f"{PREFIX}{name.upper()}={path!r} is not a readable file")
