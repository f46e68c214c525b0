"""Other services' alert bodies in our names: 3Commas signal bots, TradersPost, PineConnector.

Traders move here with their TradingView alerts already written for one of these
services; the ingress reads the bodies their documentation shows, so switching is a
change of URL (README "Coming from another service", with the mapping table; samples
in tests/samples/). Each JSON body is recognised by names only its service uses and
rewritten into the names `ingress.parse` reads; everything not consumed stays in the
alert's `extras`. What has no counterpart here (a take-profit in percent of a fill not
yet known, a size in dollars, a trailing stop) is refused with the reason, never
dropped: a stop-loss silently ignored is a different trade.

Secrets stay where the ingress already looks for them, and are checked the same way:
3Commas's `secret` is one of `parse.SECRET_KEYS`; TradersPost's password is in its URL,
as ours is (`/webhook/{secret}`); a PineConnector line's `secret=`, or without one its
license id, becomes the body's secret candidate (keys `secret` and `key`, which
`parse.pop_secret` takes out before anything is stored or logged), and its `account=`
the body's `account`: the account the secret is checked for is the one the alert is for.

Two steps, on either side of authentication (ingress.app): `text_line` only splits a
PineConnector line into a JSON-like object (before the secret is checked: it never
refuses, and reads nothing but the fields' places); `ours` maps and refuses (after the
secret is checked, as `parse.to_alert` does for our own names). Refusals name fields
and parameters by names from this module, never by the text sent.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ingress.redact import REDACTED

# The key a PineConnector line's fields travel under, between `text_line` and `ours`.
LINE: Final = "pineconnector"
# A line is short (TradingView's alert message); longer bodies are not read as one.
MAX_LINE_BYTES: Final = 4096
MAX_LINE_FIELDS: Final = 64
_LICENSE: Final = re.compile(r"[0-9]{1,32}")

THREE_COMMAS: Final = frozenset(("bot_uuid", "tv_instrument"))
TRADERSPOST: Final = frozenset(
    ("sentiment", "orderType", "limitPrice", "stopPrice", "takeProfit", "stopLoss",
     "signalPrice", "quantityType")
)  # fmt: skip


class FormatError(Exception):
    """A body in another service's format that cannot become our alert: (field, reason)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def text_line(body: bytes) -> dict[str, Any] | None:
    """A PineConnector line (`LicenseID,command,symbol,name=value,...`) as an object whose
    secret keys hold its `secret=` and license id, and whose `account` its first
    `account=` (the account the secret is checked for); None when `body` is not such a line."""
    if len(body) > MAX_LINE_BYTES:
        return None
    try:
        text = body.decode().strip()
    except UnicodeDecodeError:
        return None
    fields = [field.strip() for field in text.split(",")]
    if "\n" in text or not 2 <= len(fields) <= MAX_LINE_FIELDS:
        return None
    if not _LICENSE.fullmatch(fields[0]):
        return None
    line: dict[str, Any] = {"key": fields[0]}
    rest = []
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if sep and name.strip().lower() == "secret":
            line.setdefault("secret", value.strip())
        elif sep and name.strip().lower() == "account" and "account" not in line:
            line["account"] = value.strip()  # read before the secret: whose secret it needs
        else:
            rest.append(field)
    line[LINE] = rest
    return line


def ours(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` in our names when it is in another service's format, else itself."""
    keys = payload.keys()
    found = [
        name
        for name, present in (
            ("PineConnector", LINE in keys),
            ("3Commas", not keys.isdisjoint(THREE_COMMAS)),
            ("TradersPost", not keys.isdisjoint(TRADERSPOST)),
        )
        if present
    ]
    if not found:
        return payload
    if len(found) > 1:
        raise FormatError("body", f"mixes the formats of {' and '.join(found)}")
    mapped = dict(payload)
    if found[0] == "PineConnector":
        _pineconnector(mapped)
    elif found[0] == "3Commas":
        _three_commas(mapped)
    else:
        _traderspost(mapped)
    return mapped


def _put(out: dict[str, Any], field: str, value: Any, source: str) -> None:
    """Set our `field` from the service's `source` name, once."""
    if field in out:
        raise FormatError(field, f"given twice: as {field} and as {source}")
    out[field] = value


# --- PineConnector: docs.pineconnector.com/syntax ------------------------------------

# command -> (side, order type, where `price=` goes)
_COMMANDS: Final[dict[str, tuple[str, str, str | None]]] = {
    **dict.fromkeys(("buy", "long", "bull", "bullish"), ("buy", "market", None)),
    **dict.fromkeys(("sell", "short", "bear", "bearish"), ("sell", "market", None)),
    "buylimit": ("buy", "limit", "limit_price"),
    "selllimit": ("sell", "limit", "limit_price"),
    "buystop": ("buy", "stop", "stop_price"),
    "sellstop": ("sell", "stop", "stop_price"),
    **dict.fromkeys(("closelong", "closeshort", "closelongshort"), ("close", "market", None)),
}
# Read as the EA's "Lots" volume type and "Price" target type: the values as written.
_PARAMETERS: Final = {
    "risk": "quantity",
    "vol_lots": "quantity",
    "sl": "stop_loss",
    "sl_price": "stop_loss",
    "tp": "take_profit",
    "tp_price": "take_profit",
    "comment": "comment",
}
# Relative to the fill, the balance or the market: nothing here knows those.
_RELATIVE: Final = re.compile(r"(vol|sl|tp)_[a-z]+|risk_[a-z]+|trail[a-z_]*|be[a-z_]*|atr[a-z_]*")


def _pineconnector(out: dict[str, Any]) -> None:
    fields = out.pop(LINE)
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise FormatError(LINE, "must be the line's fields, as text")
    if not fields:
        raise FormatError("command", "required: the line's second field")
    command = fields[0].strip().lower()
    if command not in _COMMANDS:
        supported = ", ".join(sorted(_COMMANDS))
        raise FormatError("command", f"must be one of {supported}; got another")
    if len(fields) < 2 or "=" in fields[1]:
        raise FormatError("symbol", "required: the line's third field")
    side, order_type, price_field = _COMMANDS[command]
    _put(out, "symbol", fields[1].strip(), "symbol")
    _put(out, "side", side, "command")
    _put(out, "order_type", order_type, "command")
    for field in fields[2:]:
        _parameter(out, field, price_field)


def _parameter(out: dict[str, Any], field: str, price_field: str | None) -> None:
    """One `name=value` after the symbol, into `out`."""
    if field == REDACTED:  # it held a configured secret (ingress.redact): which one is gone
        raise FormatError(LINE, "a parameter must not hold a secret")
    name, sep, value = (part.strip() for part in field.partition("="))
    name = name.lower()
    if not sep or not name:
        raise FormatError(LINE, "after the symbol, every field is name=value")
    if name == "account":  # `text_line` took the first: the one the secret was checked for
        raise FormatError("account", "given twice: only the line's first account= names it")
    if name == "price":
        if price_field is None:
            raise FormatError("price", "only with buylimit, selllimit, buystop, sellstop")
        _put(out, price_field, value, "price")
    elif name in _PARAMETERS:
        target = _PARAMETERS[name]
        _put(out, target, value.strip('"') if target == "comment" else value, name)
    elif _RELATIVE.fullmatch(name):
        raise FormatError(
            LINE,
            "a size or target relative to the fill, balance or market has no counterpart"
            " here: send risk= or vol_lots= (lots), sl= / tp= (prices)",
        )
    else:
        raise FormatError(LINE, f"a parameter other than {', '.join(_PARAMETERS)}, account, price")


# --- 3Commas signal bot: help.3commas.io articles 9374557 (strategy), 8894481 (custom) --

_3C_ACTIONS: Final = {
    "buy": "buy",
    "sell": "sell",
    "enter_long": "buy",
    "enter_short": "sell",
    "exit_long": "close",
    "exit_short": "close",
}


def _three_commas(out: dict[str, Any]) -> None:
    if "tv_instrument" in out:
        _put(out, "symbol", out.pop("tv_instrument"), "tv_instrument")
    if "action" in out:
        action = out.pop("action")
        side = _3C_ACTIONS.get(action.strip().lower()) if isinstance(action, str) else None
        if side is None:
            raise FormatError("action", f"must be one of {', '.join(_3C_ACTIONS)}")
        info = out.get("strategy_info")
        position = info.get("market_position") if isinstance(info, dict) else None
        if side != "close" and isinstance(position, str) and position.strip().lower() == "flat":
            side = "close"  # a strategy's exit: {{strategy.market_position}} is flat after it
        _put(out, "side", side, "action")
    if "trigger_price" in out:
        _put(out, "price", out.pop("trigger_price"), "trigger_price")
    if "timestamp" in out:
        _put(out, "timenow", out.pop("timestamp"), "timestamp")
    order = out.get("order")
    if isinstance(order, dict) and "amount" in order:
        currency = order.get("currency_type")
        if not (isinstance(currency, str) and currency.strip().lower() == "base"):
            raise FormatError(
                "order.currency_type", "must be base: only an amount of the asset is a quantity"
            )
        rest = {k: v for k, v in order.items() if k not in ("amount", "currency_type")}
        _put(out, "quantity", order["amount"], "order.amount")
        if rest:
            out["order"] = rest
        else:
            del out["order"]


# --- TradersPost: docs.traderspost.io (Signal Message Reference, Webhook Reference) ---

_TP_ORDER_TYPES: Final = ("market", "limit", "stop")


def _traderspost(out: dict[str, Any]) -> None:
    action = out.get("action")
    action = action.strip().lower() if isinstance(action, str) else None
    if action in ("add", "cancel", "breakeven"):
        raise FormatError("action", "add, cancel and breakeven have no counterpart here")
    kind = out.pop("quantityType", None)
    if kind is not None and kind != "fixed_quantity":
        raise FormatError("quantityType", "must be fixed_quantity: a quantity of units")
    _traderspost_prices(out)
    sentiment = out.get("sentiment")
    flat = isinstance(sentiment, str) and sentiment.strip().lower() == "flat"
    if flat and action in ("buy", "sell"):
        out["action"] = "close"  # TradersPost: buy or sell to flat is an exit


def _traderspost_prices(out: dict[str, Any]) -> None:
    if "orderType" in out:
        order_type = out.pop("orderType")
        if order_type not in _TP_ORDER_TYPES:
            raise FormatError("orderType", f"must be one of {', '.join(_TP_ORDER_TYPES)}")
        _put(out, "order_type", order_type, "orderType")
    for source, field in (
        ("limitPrice", "limit_price"),
        ("stopPrice", "stop_price"),
        ("signalPrice", "price"),
    ):
        if source in out:
            _put(out, field, out.pop(source), source)
    if "takeProfit" in out:
        _put(out, "take_profit", _absolute(out.pop("takeProfit"), "takeProfit"), "takeProfit")
    if "stopLoss" in out:
        _put(out, "stop_loss", _absolute(out.pop("stopLoss"), "stopLoss"), "stopLoss")


def _absolute(target: Any, name: str) -> Any:
    """The price of a take-profit (`limitPrice`) or stop-loss (`stopPrice`) object."""
    price_key = "limitPrice" if name == "takeProfit" else "stopPrice"
    if not isinstance(target, dict):
        raise FormatError(name, f"must be an object with {price_key}")
    if name == "stopLoss" and target.get("type", "stop") != "stop":
        raise FormatError(name, "type must be stop: stop_limit and trailing_stop are not here")
    if set(target) - {price_key, "type"} or price_key not in target:
        raise FormatError(
            name, f"only {price_key} (a price): amounts and percents are relative to a fill"
        )
    return target[price_key]
