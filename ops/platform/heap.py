"""Start-up objects kept out of the garbage collector's full passes.

A full (generation 2) collection walks every tracked object. Once a process has
imported its libraries and built its app that is a few hundred thousand objects,
and each full pass stopped the event loop for tens of milliseconds in the middle of
traffic (figures: docs/performance.md). What exists when the process is up (modules, classes, the
app, settings) lives until it exits: `gc.freeze()` moves it to a permanent
generation that later passes skip, so they walk only what came after.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect start-up garbage once, then freeze everything that is left."""
    gc.collect()
    gc.freeze()
