"""Files that hold secrets or orders: private to their owner."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and any missing parents) with the last folder open to its owner only
    (0700: it holds secrets or the paper book). An existing folder is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
