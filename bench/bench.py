"""`just bench`: bench/run.sh runs this file; the bench itself is bench/cli.py (its
--help tells what it measures) and bench/phases/."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0], where this file would shadow the
    # `bench` package: the checkout's root goes there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from bench.cli import main

    sys.exit(main())
