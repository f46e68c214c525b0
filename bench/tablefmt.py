"""The table's cells: how a figure, a ratio and a met/not met are written (bench.table and
bench.table_worker share them)."""

from __future__ import annotations

Row = tuple[str, str, str, str, str]
HEAD: Row = ("measurement", "reference (Express+Redis)", "alertbridge", "target", "met")
TIMES = "\N{MULTIPLICATION SIGN}"
NONE = "\N{EN DASH}"
MICRO = "\N{MICRO SIGN}"


def fmt(v: object, nd: int = 0) -> str:
    """A figure for people: thousands separated, `nd` decimals for a float, NONE for none."""
    if v is None:
        return NONE
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def yes(met: object) -> str:
    """`yes`, or `NO` in capitals so that it stands out."""
    return "yes" if met else "NO"


def le(a: float | None, b: float | None) -> bool:
    """a ≤ b, both known."""
    return a is not None and b is not None and a <= b
