"""The usual body in one msgspec pass: decoded and type-checked straight into a struct
whose fields are TradingView's names, instead of a dict walked in Python (ingress.parse).

A body takes this path when every key in it is one of `parse.ALIASES`' top-level names
(at most one per field) or a lower-case secret key, and every value passes the checks
the general path makes. Anything else (another key, which `extras` would keep; a second
name for a field; `strategy`, `market_position` or another service's format; a value
the general path would refuse or convert otherwise) makes `fast_alert` return None, and
the webhook takes the general path, which gives every answer and every reason. So this
path only ever accepts, and accepts exactly what the general path accepts, as the same
`Alert` (tests/test_parse_onepass.py compares the two on generated bodies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple

import msgspec

from contracts.messages import Alert
from ingress import formats
from ingress.parse import (
    ALIASES,
    FIELD_TYPES,
    MAX_STRING,
    ORDER_TYPES,
    SECRET_KEYS,
    SIDES,
    _timestamp,
    alert_id,
    decode_body,
    pop_secret,
)
from ingress.redact import REDACTED

if TYPE_CHECKING:
    from datetime import datetime

    from ingress.redact import Redactor

_Raw = Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
# Fields the general path converts in Python (choices, times) arrive as JSON scalars.
_LOOSE: Final[dict[str, Any]] = {
    "side": _Raw,
    "order_type": _Raw,
    "time": _Raw | int | float,
    "timenow": _Raw | int | float,
}
# Names that mark another service's body (ingress.formats) never take this path.
_FOREIGN: Final = formats.THREE_COMMAS | formats.TRADERSPOST | {formats.LINE}
# (name, field), by the field's order and then the name's rank: top-level names only.
_NAMES: Final = tuple(
    (name, field)
    for field, names in ALIASES.items()
    for name in names
    if "." not in name and name not in _FOREIGN
)
_Body = msgspec.defstruct(
    "_Body",
    [(name, FIELD_TYPES.get(field, _LOOSE.get(field)) | msgspec.UnsetType, msgspec.UNSET)
     for name, field in _NAMES]
    + [(key, _Raw | msgspec.UnsetType, msgspec.UNSET) for key in SECRET_KEYS],
    forbid_unknown_fields=True,
)  # fmt: skip
_SECRET_AT: Final = range(len(_NAMES), len(_NAMES) + len(SECRET_KEYS))
_decoder: Final = msgspec.json.Decoder(_Body, strict=False)
_payload_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_UNSET: Final = msgspec.UNSET


class FastAlert(msgspec.Struct, frozen=True):
    """A body that became an alert in one pass, the secret it carried, and, when it
    named no id, the body without its secret keys (to name it: ingress.app)."""

    alert: Alert
    secret: str | None
    payload: dict[str, Any] | None = None


def fast_alert(body: bytes, *, received_at: datetime) -> FastAlert | None:
    """`body` as an alert when it is the usual kind (module docstring); else None."""
    try:
        values = msgspec.structs.astuple(_decoder.decode(body))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # the general path says why
        return None
    fields: dict[str, Any] = {}
    for (_, field), value in zip(_NAMES, values, strict=False):
        if value is not _UNSET:
            if field in fields:  # two names for one field: the other stays in extras
                return None
            fields[field] = value
    if not _settle(fields):
        return None
    payload = None
    if "id" in fields:
        fields["id"] = str(fields["id"])
    else:  # named by its body, secret keys removed (ingress.parse.alert_id)
        payload = _payload_decoder.decode(body)
        for key in SECRET_KEYS:
            payload.pop(key, None)
        fields["id"] = alert_id(payload)
    secret = next((values[i] for i in _SECRET_AT if values[i] is not _UNSET), None)
    return FastAlert(Alert(**fields, received_at=received_at), secret, payload)


def _settle(fields: dict[str, Any]) -> bool:
    """Convert and check in place what the struct's types do not; False: a refusal."""
    side = fields.get("side")
    if side is None or "symbol" not in fields:
        return False
    fields["side"] = side = SIDES.get(side.strip().lower())
    kind = fields.get("order_type")
    if kind is not None:
        kind = fields["order_type"] = ORDER_TYPES.get(kind.strip().lower())
    else:
        kind = fields["order_type"] = (
            "limit" if "limit_price" in fields else "stop" if "stop_price" in fields else "market"
        )
    if side is None or kind is None:
        return False
    if (kind == "limit" and "limit_price" not in fields) or (
        kind == "stop" and "stop_price" not in fields
    ):
        return False
    for name in ("id", "account", "symbol"):
        value = fields.get(name)
        if isinstance(value, str) and (
            value == REDACTED or (name != "id" and (not value.strip() or value != value.strip()))
        ):
            return False
    for name in ("time", "timenow"):
        if name in fields:
            try:
                fields[name] = _timestamp(fields[name])
            except ValueError:
                return False
    return True


class Read(NamedTuple):
    """What a body says before its sender is checked (ingress.app)."""

    payload: dict[str, Any] | None  # None: a one-pass body that named its id
    secret: str | None
    account: str
    alert: Alert | None  # None: the general path normalizes `payload` once checked


def read_body(body: bytes, *, received_at: datetime, redactor: Redactor) -> Read:
    """The body's secret and account, and its alert when one pass made it (the usual
    body, holding no configured secret but its own); else the decoded payload for the
    general path. InvalidAlertError: not a JSON object within the limits."""
    fast = fast_alert(body, received_at=received_at)
    if fast is not None and not redactor.may_hold(body, fast.secret):
        return Read(fast.payload, fast.secret, fast.alert.account, fast.alert)
    payload = decode_body(body)
    secret = pop_secret(payload)
    account = payload.get("account", "default")
    return Read(payload, secret, account if isinstance(account, str) else "", None)
