"""What alertbridge holds of a spot asset: the amount a ccxt `close` may sell.

Spot has no position, only balances, and a balance mixes coins bought through
alertbridge with coins bought by hand, deposited or earned. The ledger is read from the
exchange itself, so every worker, and a worker after a restart, agrees on it with no
state of its own:

1. every order of the symbol (`fetchOrders`; else `fetchCanceledAndClosedOrders` or
   `fetchClosedOrders`, with `fetchOpenOrders`), kept when its `clientOrderId` has the
   shape `worker.execute.client_order_id` gives: "ab" and 30 hex digits;
2. every trade of the symbol (`fetchMyTrades`), joined to those orders by order id, for
   the fees: the sellable amount of a buy is what was received, net of a fee charged in
   the base asset (Binance charges a buy's fee in the bought asset);
3. held = Σ buys (filled - base fee) - Σ sells (filled + base fee), never below zero.

An order's amount is its `filled` (partial fills count, an open order's too); its fees
come from its trades, or from the order when the exchange has no trade list. Both lists
are walked back from the newest with ccxt's unified `until` (the oldest timestamp of the
page, inclusive; entries seen twice are dropped by id) until a page brings nothing new.
That assumes fewer than a page of entries share one millisecond. History the exchange no
longer serves (OKX keeps 90 days) is not in the ledger: such coins are closed by hand or
with the account's `close_whole_balance`.

The ledger is per exchange account: alertbridge accounts that share one API key share it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from worker.errors import TerminalError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Fetch = Callable[[str, int | None, int | None, dict[str, Any]], Awaitable[list[Any]]]

# The shape of `worker.execute.client_order_id`: alertbridge's own orders.
CLIENT_ORDER_ID: Final = re.compile(r"ab[0-9a-f]{30}")
# Pages of one list walked before giving up rather than sell on a partial history.
MAX_PAGES: Final = 500
# ccxt's method names (as `has` and `features` spell them) and the Python methods.
_SNAKE: Final = {
    "fetchOrders": "fetch_orders",
    "fetchCanceledAndClosedOrders": "fetch_canceled_and_closed_orders",
    "fetchClosedOrders": "fetch_closed_orders",
    "fetchMyTrades": "fetch_my_trades",
}


@dataclass(frozen=True, slots=True)
class Ledger:
    """alertbridge's holding of one symbol's base asset, and the orders it comes from."""

    held: Decimal
    client_order_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Fill:
    """One order of alertbridge's, as the ledger counts it."""

    order_id: str
    client_order_id: str
    side: str
    filled: Decimal
    base_fee: Decimal  # the fees of the order itself, for exchanges without trades


async def read(exchange: Any, symbol: str, base: str) -> Ledger:
    """The ledger of `symbol` at `exchange` (a ccxt async exchange, markets loaded)."""
    fills = [fill for raw in await _orders(exchange, symbol) if (fill := _fill(raw, base))]
    ours = {fill.order_id for fill in fills}
    fees: dict[str, Decimal] = defaultdict(Decimal)
    traded: set[str] = set()
    if ours and exchange.has.get("fetchMyTrades"):
        for trade in await _walk(exchange, "fetchMyTrades", symbol):
            order_id = str(trade.get("order"))
            if order_id in ours:
                traded.add(order_id)
                fees[order_id] += _base_fees(trade, base)
    held = Decimal(0)
    for fill in fills:
        fee = fees[fill.order_id] if fill.order_id in traded else fill.base_fee
        held += fill.filled - fee if fill.side == "buy" else -(fill.filled + fee)
    return Ledger(max(held, Decimal(0)), frozenset(fill.client_order_id for fill in fills))


def _fill(raw: dict[str, Any], base: str) -> _Fill | None:
    """The order as a fill of alertbridge's; None for anyone else's order."""
    client_id = str(raw.get("clientOrderId") or "")
    if CLIENT_ORDER_ID.fullmatch(client_id) is None or raw.get("side") not in ("buy", "sell"):
        return None
    return _Fill(
        order_id=str(raw.get("id")),
        client_order_id=client_id,
        side=str(raw["side"]),
        filled=_decimal(raw.get("filled")),
        base_fee=_base_fees(raw, base),
    )


def _decimal(value: Any) -> Decimal:
    """ccxt's float as the decimal it was written as (0.01 - 0.00001 is 0.00999)."""
    return Decimal(0) if value is None else Decimal(str(value))


def _base_fees(entry: dict[str, Any], base: str) -> Decimal:
    """The fees of an order or trade that were paid in `base`."""
    # ccxt gives `fees` (a list) and `fee` (one, or their sum): count one of them.
    fees = [fee for fee in entry.get("fees") or [entry.get("fee")] if fee]
    return sum(
        (_decimal(fee.get("cost")) for fee in fees if fee.get("currency") == base),
        Decimal(0),
    )


async def _orders(exchange: Any, symbol: str) -> list[dict[str, Any]]:
    """Every order of `symbol` the exchange still serves, open or not."""
    has = exchange.has
    if has.get("fetchOrders"):
        return await _walk(exchange, "fetchOrders", symbol)
    history = next(
        (m for m in ("fetchCanceledAndClosedOrders", "fetchClosedOrders") if has.get(m)), None
    )
    if history is None:
        raise TerminalError(
            f"ccxt:{exchange.id} has no order history in ccxt, so alertbridge cannot tell"
            " what it bought; set close_whole_balance or close by hand"
        )
    # Open ones first: an order that closes in between is then in the history, not lost.
    found = await exchange.fetch_open_orders(symbol) if has.get("fetchOpenOrders") else []
    by_id = {str(raw["id"]): raw for raw in [*found, *await _walk(exchange, history, symbol)]}
    return list(by_id.values())


async def _walk(exchange: Any, method: str, symbol: str) -> list[dict[str, Any]]:
    """Every entry a ccxt list method returns for `symbol`, newest page first."""
    fetch: Fetch = getattr(exchange, _SNAKE[method])
    limit = ((exchange.features.get("spot") or {}).get(method) or {}).get("limit")
    seen: dict[str, dict[str, Any]] = {}
    until: int | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(symbol, None, limit, {} if until is None else {"until": until})
        fresh = {str(e["id"]): e for e in page if str(e["id"]) not in seen}
        if not fresh:
            return list(seen.values())
        seen.update(fresh)
        stamps = [e["timestamp"] for e in page if e.get("timestamp") is not None]
        if not stamps:
            return list(seen.values())  # no time to page back by: this is all there is
        until = min(stamps)
    raise TerminalError(
        f"ccxt:{exchange.id}: more than {MAX_PAGES} pages of {symbol} history"
        f" ({method}); close by hand or set close_whole_balance"
    )
