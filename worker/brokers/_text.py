"""Text that leaves an adapter in an exception: short, and without credentials."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

# A signed query string (Binance and many others) carries `signature=<hex>` in the URL
# that ccxt puts into its error messages: a replayable request, so never shown.
_SIGNATURE: Final = re.compile(r"(signature=)[^&\s\"']+", re.IGNORECASE)


def clip(text: str, limit: int = 300) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret and every request signature replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SIGNATURE.sub(r"\1***", text)
