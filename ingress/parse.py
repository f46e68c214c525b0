"""Turn a TradingView webhook body into an `Alert`, or into field-level reasons why not.

Users bring templates from other tools, so several field names mean the same
thing (`ticker`/`symbol`, `action`/`side`/`strategy.order_action`, ...). The
first name present in `ALIASES` wins; every field not consumed stays in `extras`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from contracts.messages import Alert
from ingress import formats
from ingress.redact import REDACTED

if TYPE_CHECKING:
    from collections.abc import Mapping

SECRET_KEYS: Final = ("secret", "passphrase", "key", "token")
_SECRET_KEY_SET: Final = frozenset(SECRET_KEYS)

# canonical field -> names accepted, in priority order; "a.b" reads nested objects.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "id": ("id",),
    "account": ("account",),
    "symbol": ("symbol", "ticker"),
    "side": ("side", "action", "order_action", "strategy.order_action"),
    "quantity": ("quantity", "qty", "contracts", "order_contracts", "strategy.order_contracts"),
    "order_type": ("order_type", "type"),
    "price": ("price", "order_price", "strategy.order_price", "close"),
    "limit_price": ("limit_price", "limit"),
    "stop_price": ("stop_price", "stop"),
    "take_profit": ("take_profit", "tp"),
    "stop_loss": ("stop_loss", "sl"),
    "tag": ("tag", "order_id", "strategy.order_id"),
    "comment": ("comment", "order_comment", "strategy.order_comment"),
    "time": ("time",),
    "timenow": ("timenow",),
}
REQUIRED: Final = ("symbol", "side")  # under any of their names

SIDES: Final = {
    "buy": "buy", "long": "buy",
    "sell": "sell", "short": "sell",
    "close": "close", "exit": "close", "flat": "close",
}  # fmt: skip
ORDER_TYPES: Final = {"market": "market", "limit": "limit", "stop": "stop"}

# No control characters: ids travel in a header, names in subjects and logs.
_PRINTABLE: Final = r"\A[^\x00-\x1f\x7f]+\Z"  # \Z: `$` would let a final newline in
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_PRINTABLE)]
Text = Annotated[str, msgspec.Meta(max_length=256)]
AlertId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_PRINTABLE)]
# Positive and finite: JSON has no NaN, but numeric strings such as "inf" do.
Amount = Annotated[float, msgspec.Meta(gt=0, lt=1e15)]

FIELD_TYPES: Final[dict[str, Any]] = {
    "id": AlertId | int,
    "account": Name,
    "symbol": Name,
    "quantity": Amount,
    "price": Amount,
    "limit_price": Amount,
    "stop_price": Amount,
    "take_profit": Amount,
    "stop_loss": Amount,
    "tag": Text,
    "comment": Text,
}


class FieldError(msgspec.Struct, frozen=True):
    """Why one field was refused."""

    field: str
    reason: str


class InvalidAlertError(Exception):
    """The body cannot become an alert; `errors` says why, field by field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


# The shape of a body, beyond its size (ALERTBRIDGE_MAX_BODY_BYTES): TradingView's
# richest bodies nest 2 levels and hold about 30 values. Everything kept in `extras`
# is stored on the stream, so it is bounded too.
MAX_DEPTH: Final = 8
MAX_VALUES: Final = 256
MAX_STRING: Final = 4096  # a key or a value

_JSON_TYPES: Final = {bool: "boolean", int: "number", float: "number", dict: "object",
                       list: "array", type(None): "null"}  # fmt: skip
_json_decoder: Final = msgspec.json.Decoder()
_canonical: Final = msgspec.json.Encoder(order="sorted")


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode the raw body as a JSON object (whatever the Content-Type said), within limits."""
    # >>> other services' formats (ingress.formats): a PineConnector text line
    if body[:1] != b"{" and (line := formats.text_line(body)) is not None:
        return line
    # <<<
    try:
        value = _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidAlertError([FieldError("body", f"a JSON object is required: {exc}")]) from None
    except UnicodeDecodeError:  # msgspec raises it, not DecodeError, inside strings
        raise _shape_error("a JSON object is required: a string is not valid UTF-8") from None
    except RecursionError:  # msgspec has no depth limit of its own: the interpreter's stops it
        raise _shape_error(f"nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise InvalidAlertError([FieldError("body", "a JSON object is required, not a JSON value")])
    if _may_exceed_limits(body):
        _check_shape(value)
    return value


def _may_exceed_limits(body: bytes) -> bool:
    """False when the bytes alone prove the body within the limits (the usual case: cheap).

    Depth <= number of `{` and `[`; values <= containers + commas + 1; no string is
    longer than the body.
    """
    containers = body.count(b"{") + body.count(b"[")
    return (
        containers > MAX_DEPTH
        or containers + body.count(b",") + 1 > MAX_VALUES
        or len(body) > MAX_STRING
    )


def _check_shape(root: dict[str, Any]) -> None:
    """Depth, number of values and string lengths, walked without recursion."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    values = 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise _shape_error(f"more than {MAX_VALUES} values")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _shape_error(f"a string longer than {MAX_STRING} characters")
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            raise _shape_error(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            if any(len(key) > MAX_STRING for key in value):
                raise _shape_error(f"a key longer than {MAX_STRING} characters")
            stack += [(item, depth + 1) for item in value.values()]
        elif isinstance(value, list):
            stack += [(item, depth + 1) for item in value]


def _shape_error(reason: str) -> InvalidAlertError:
    return InvalidAlertError([FieldError("body", reason)])


def pop_secret(payload: dict[str, Any]) -> str | None:
    """Remove every top-level secret-bearing key, whatever its case; return the candidate.

    The candidate is the first string among the keys' values, looked at in a fixed
    order: the lower-case keys in `SECRET_KEYS` order, then the other casings
    (`Secret`, `TOKEN`, ...) in the body's order.
    """
    found: str | None = None
    for key in SECRET_KEYS:
        value = payload.pop(key, None)
        if found is None and isinstance(value, str):
            found = value
    for key in [key for key in payload if key.lower() in _SECRET_KEY_SET]:
        value = payload.pop(key)
        if found is None and isinstance(value, str):
            found = value
    return found


def alert_id(payload: Mapping[str, Any], signed_at: str = "") -> str:
    """A stable id for a body without `id`: TradingView's resends carry the same fields.

    It names the body, not one firing of it: the ingress keeps it for a resend window
    only (ingress.publisher). A signed request's id also covers its `X-Timestamp`, so a
    replay of it is the same id and a new signing is a new alert."""
    digest = hashlib.sha256(signed_at.encode())
    digest.update(_canonical.encode(payload))
    return digest.hexdigest()[:32]


def to_alert(payload: dict[str, Any], *, received_at: datetime) -> Alert:
    """Normalize a decoded body (secret already removed) into an `Alert`."""
    # >>> other services' formats (ingress.formats): their names become ours
    try:
        payload = formats.ours(payload)
    except formats.FormatError as exc:
        raise InvalidAlertError([FieldError(exc.field, exc.reason)]) from None
    # <<<
    extras = dict(payload)
    raw = _take(extras)
    errors: list[FieldError] = []
    values = _typed(raw, errors)
    errors += _check_names(values)
    for field in _CHOICES:
        if field in raw:
            try:
                values[field] = _convert(field, raw[field])
            except ValueError as exc:
                errors.append(FieldError(field, str(exc)))
    errors.sort(key=_by_field)  # in the order of ALIASES, whichever way they were found
    for field in REQUIRED:
        if field not in values and not any(e.field == field for e in errors):
            alternatives = " / ".join(ALIASES[field])
            errors.append(FieldError(field, f"required (as one of: {alternatives})"))
    errors += _check_order_type(values)
    if errors:
        raise InvalidAlertError(errors)
    if _flat_after(payload) and values["side"] in ("buy", "sell"):
        values["side"] = "close"  # an exit to flat closes the whole position, whatever its size
    values["id"] = str(values["id"]) if "id" in values else alert_id(payload)
    return Alert(**values, received_at=received_at, extras=extras)


# Where each field is looked for: name -> (field, rank among the field's names), for
# top-level names; (field, rank, nested name) for those under `strategy`.
_TOP: Final = {
    name: (field, rank)
    for field, names in ALIASES.items()
    for rank, name in enumerate(names)
    if "." not in name
}
_NESTED: Final = tuple(
    (field, rank, name.partition(".")[2])
    for field, names in ALIASES.items()
    for rank, name in enumerate(names)
    if name.startswith("strategy.")
)
_NESTED_NAME: Final = {(field, rank): name for field, rank, name in _NESTED}
_CHOICES: Final = tuple(field for field in ALIASES if field not in FIELD_TYPES)
_FIELD_ORDER: Final = {field: i for i, field in enumerate(ALIASES)}


def _by_field(error: FieldError) -> int:
    return _FIELD_ORDER[error.field]


# Every typed field at once: one msgspec conversion per alert instead of one per field.
# UNSET, not None, marks a field not sent: with `T | None` lax conversion would turn
# the string "null" into None (an absent quantity or limit price) instead of a 422.
_Typed = msgspec.defstruct(
    "_Typed", [(f, t | msgspec.UnsetType, msgspec.UNSET) for f, t in FIELD_TYPES.items()]
)


def _typed(raw: dict[str, Any], errors: list[FieldError]) -> dict[str, Any]:
    """The typed fields of `raw`, converted; a refused one goes to `errors` instead."""
    present = {field: value for field, value in raw.items() if field in FIELD_TYPES}
    try:
        typed = msgspec.convert(present, _Typed, strict=False)
    except msgspec.ValidationError:  # find every field at fault, one by one
        values = {}
        for field, value in present.items():
            try:
                values[field] = _convert(field, value)
            except ValueError as exc:
                errors.append(FieldError(field, str(exc)))
        return values
    return {field: getattr(typed, field) for field in present}


def _flat_after(payload: dict[str, Any]) -> bool:
    """TradingView's `{{strategy.market_position}}` after the order: "flat" means an exit."""
    position = payload.get("market_position")
    strategy = payload.get("strategy")
    if position is None and isinstance(strategy, dict):
        position = strategy.get("market_position")
    return isinstance(position, str) and position.strip().lower() == "flat"


def _take(extras: dict[str, Any]) -> dict[str, Any]:
    """Each field's value under its first present alias (None counts as absent). The
    top-level keys taken are removed from `extras`; nested objects stay whole there,
    for the audit trail."""
    found: dict[str, tuple[int, str | None]] = {}  # field -> (rank, top-level key or None)
    for key, value in extras.items():
        hit = _TOP.get(key)
        if hit is not None and value is not None:
            field, rank = hit
            if field not in found or rank < found[field][0]:
                found[field] = (rank, key)
    strategy = extras.get("strategy")
    nested: dict[str, Any] = strategy if isinstance(strategy, dict) else {}
    if nested:
        for field, rank, name in _NESTED:
            if nested.get(name) is not None and (field not in found or rank < found[field][0]):
                found[field] = (rank, None)
    raw = {}
    for field, (rank, top) in found.items():
        raw[field] = extras.pop(top) if top is not None else nested[_NESTED_NAME[field, rank]]
    return raw


def _convert(field: str, value: Any) -> Any:
    if field == "side":
        return _choice(value, SIDES)
    if field == "order_type":
        return _choice(value, ORDER_TYPES)
    if field in ("time", "timenow"):
        return _timestamp(value)
    try:
        return msgspec.convert(value, FIELD_TYPES[field], strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc).replace(" - at `$`", "")) from None


def _choice(value: Any, table: Mapping[str, str]) -> str:
    if isinstance(value, str) and value.strip().lower() in table:
        return table[value.strip().lower()]
    # Reasons name what was expected, never the value sent: it might be the secret.
    raise ValueError(f"must be one of {', '.join(sorted(table))}; got {_kind(value)}")


def _timestamp(value: Any) -> datetime:
    """An RFC 3339 string, or epoch seconds or milliseconds."""
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 time or epoch seconds/milliseconds")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("epoch time out of range") from None
    try:
        moment = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        raise ValueError(
            f"must be an RFC 3339 time such as 2025-01-15T14:30:01Z; got {_kind(value)}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _kind(value: Any) -> str:
    """What a refused value was, without repeating it."""
    if isinstance(value, str):
        return "a string that is not one (not repeated here)"
    return f"a JSON {_JSON_TYPES.get(type(value), 'value')}"


def _check_names(values: dict[str, Any]) -> list[FieldError]:
    """What the patterns let through that is still no name: blank, padded, or a secret.

    Names travel in NATS subjects, logs and broker calls; " AAPL" and "AAPL" would be
    two symbols to the book and one to the broker. Inner spaces stay allowed.
    """
    errors = []
    for field in ("id", "account", "symbol"):
        value = values.get(field)
        if not isinstance(value, str):  # absent, or a numeric id
            continue
        if value == REDACTED:  # it held a configured secret (ingress.redact)
            errors.append(FieldError(field, "must not hold a secret"))
        elif field == "id":
            continue
        elif not value.strip():
            errors.append(FieldError(field, "must not be blank"))
        elif value != value.strip():
            errors.append(FieldError(field, "must not begin or end with whitespace"))
    return errors


def _check_order_type(values: dict[str, Any]) -> list[FieldError]:
    kind = values.setdefault(
        "order_type",
        "limit" if "limit_price" in values else ("stop" if "stop_price" in values else "market"),
    )
    if kind == "limit" and "limit_price" not in values:
        return [FieldError("limit_price", "required for a limit order")]
    if kind == "stop" and "stop_price" not in values:
        return [FieldError("stop_price", "required for a stop order")]
    return []
