"""Positions from fills: the average-cost method, as one pure function.

A buy adds to a long position at the weighted average price; a sell reduces it and
realizes (price - average) on what it closes. Past zero the position turns short at the
fill's price (and the other way round). `close` closes what is open, up to its quantity.
A fill without a price (a broker that did not say) moves the quantity, not the average
or the P&L, and is counted as unpriced so a view can say its P&L is incomplete.
"""

from __future__ import annotations

from typing import Final, NamedTuple

EPSILON: Final = 1e-9  # below this a position is flat (float residue of partial closes)


class Position(NamedTuple):
    """Net quantity (negative: short), average price, realized P&L, fill counts."""

    quantity: float
    avg_price: float
    realized_pnl: float
    fills: int
    unpriced: int


def fill(before: Position, side: str, quantity: float, price: float | None) -> Position:
    """The position after one fill."""
    held = before.quantity
    if side == "buy":
        delta = quantity
    elif side == "sell":
        delta = -quantity
    else:  # close: towards flat, never past it
        delta = -min(abs(quantity), abs(held)) if held > 0 else min(abs(quantity), abs(held))
    after = held + delta
    if abs(after) < EPSILON:
        after = 0.0
    fills, unpriced = before.fills + 1, before.unpriced + (price is None)
    if price is None:
        avg = before.avg_price if after else 0.0
        return Position(after, avg, before.realized_pnl, fills, unpriced)
    if held == 0 or (held > 0) == (delta > 0):  # opening or adding
        avg = (abs(held) * before.avg_price + abs(delta) * price) / abs(after) if after else 0.0
        return Position(after, avg, before.realized_pnl, fills, unpriced)
    closed = min(abs(delta), abs(held))
    direction = 1.0 if held > 0 else -1.0
    realized = before.realized_pnl + closed * (price - before.avg_price) * direction
    if after == 0:
        avg = 0.0
    elif (after > 0) != (held > 0):  # turned through flat: the rest opened at this price
        avg = price
    else:
        avg = before.avg_price
    return Position(after, avg, realized, fills, unpriced)
