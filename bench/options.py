"""The bench's options, typed: one field per command-line option (bench/cli.py parses
them), which results.json keeps as `settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import msgspec

# The phases in the order they run (`--phases` picks some); bench/phases/ has one
# module for each.
PHASES: Final = (
    "throughput", "burst", "worker", "projections", "scaling", "memory", "dedup", "profile",
)  # fmt: skip


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """The command line, parsed; `ab_env_extra` and `variants` are `--ab-env` and
    `--variant` as mappings. The fields mirror the flags one to one."""

    ref_dir: Path
    out: Path
    phases: str
    reps: int
    duration: int
    warmup: int
    conns: int
    ref_mode: Literal["durable", "volatile"]
    quiet_wait: int
    quiet_pct: int
    burst_n: int
    burst_over: float
    burst_ingresses: int
    durability: Literal["both", "1s", "always"]
    e2e_rate: int
    e2e_seconds: int
    e2e_runs: int
    e2e_sweep: list[int]
    e2e_sweep_seconds: int
    drain_n: int
    drain_n_single: int
    drain_max_seconds: int
    scaling_n: int
    broker_delay: float
    mem_alerts: int
    mem_max_seconds: int
    mem_drain_seconds: int
    dedup_ids: int
    profile_seconds: int
    proj_events: int
    proj_max_seconds: int
    pyspy: str
    ab_env: list[str]
    variant: list[str]
    ab_port: int
    broker_port: int
    ref_port: int
    redis_port: int
    ab_env_extra: dict[str, str]
    variants: dict[str, dict[str, str]]

    def levels(self) -> list[str]:
        """nats-server fsync policies to compare at (`--durability`), one-second first."""
        return ["1s", "always"] if self.durability == "both" else [self.durability]

    def phase_list(self) -> list[str]:
        """`--phases` as a list, in the order given."""
        return [p.strip() for p in self.phases.split(",") if p.strip()]
