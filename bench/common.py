"""What every part of the bench shares: paths, the secrets it sends, logging, its error."""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
# Throwaway secrets for local servers that live for one run.
AB_SECRET = "s3cret-bench-0123"  # noqa: S105 (alertbridge wants >= 8 characters)
REF_SECRET = "s3cret"  # noqa: S105 (the reference design's own load/alerts.lua uses it)


class BenchError(Exception):
    """A phase could not run or its checks could not be made."""


def log(msg: str) -> None:
    """One timestamped progress line on stdout (the table follows at the end)."""
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def symbols(n: int) -> str:
    """The loadgen's `--symbols`: SYM00, SYM01, ... (as `natsq.py publish --symbols n`)."""
    return ",".join(f"SYM{i:02d}" for i in range(n))


SYMBOLS_64 = symbols(64)
