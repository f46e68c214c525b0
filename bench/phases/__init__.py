"""The bench's phases, one module each; REGISTRY maps each name in PHASES to its `run`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bench.phases import (
    burst,
    dedup,
    memory,
    profile,
    projections,
    scaling,
    throughput,
    worker,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.harness import Harness

REGISTRY: Final[dict[str, Callable[[Harness], None]]] = {
    "throughput": throughput.run,
    "burst": burst.run,
    "worker": worker.run,
    "projections": projections.run_phase,
    "scaling": scaling.run,
    "memory": memory.run,
    "dedup": dedup.run,
    "profile": profile.run,
}
