"""The worker and scaling phases' results (results.json's `worker` and `scaling`), and
what the load generator reports (`LoadSummary`, the burst's too)."""

from __future__ import annotations

import msgspec

from bench.natsq import ExecutedStats, Pending, PublishResult


class LoadSummary(msgspec.Struct, kw_only=True):
    """What bench/loadgen.py prints (one JSON object)."""

    mode: str
    sent: int
    sent_dup_ids: int
    answered: int
    status: dict[str, int]
    fresh_2xx: int
    duplicate_2xx: int
    accepted_unique_ids: int
    errors: dict[str, int]
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    over_3s: int
    send_span_s: float
    elapsed_s: float
    achieved_rps: float | None
    peak_concurrency: int
    id_prefix: str
    wall_s: float


class E2E(ExecutedStats, kw_only=True, omit_defaults=True):
    """End-to-end latency at a steady rate, offered through the ingress (`load`) or
    published straight into ALERTS (`publish`)."""

    rate: int
    seconds: int
    backlog_at_end_of_load: Pending
    all_executed: bool
    worker_cpu_pct: int
    pre_busy_pct: int
    load: LoadSummary | None = None
    publish: PublishResult | None = None


class DrainResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A backlog filled with the workers stopped, then drained by `workers` of them."""

    label: str
    workers: int
    alerts: int
    fill_rps: float | None
    all_executed: bool
    wall_s: float
    pre_busy_pct: int
    other_cpu_pct: int
    noise: str
    worker_cpu_pct_sum: int
    executed: int | None
    rate_per_s: float | None
    rate_mid80_per_s: float | None
    partitions: int | None = None
    symbols: int | None = None
    # nats-server's CPU per executed alert while the workers drained (scaling phase).
    server_cpu_us_per_alert: int | None = None
    # CPU per executed alert over the middle 80 % of the completions: the workers', and
    # nats-server's (`server_cpu_us_per_alert` is over the whole drain, start-up included)
    worker_cpu_us_per_alert: int | None = None
    server_steady_cpu_us_per_alert: int | None = None


class WorkerLevel(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The worker phase at one nats-server fsync policy (`sync`): consecutive end-to-end
    runs through the ingress, the drain rates with the paper broker, and the floor's."""

    sync: str
    e2e_runs: list[E2E] = []
    paper_64_symbols: DrainResult | None = None
    paper_1_symbol: DrainResult | None = None
    # the same backlog drained by bench.stripped_worker: the floor under the worker
    stripped_64_symbols: DrainResult | None = None


class WorkerPhase(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`levels` by fsync policy, one-second first; the worker alone (`e2e_sweep`,
    `e2e_direct`) at the first level only."""

    levels: dict[str, WorkerLevel] = {}
    e2e_sweep: list[E2E] | None = None
    e2e_direct: E2E | None = None

    @property
    def paper_64_symbols(self) -> DrainResult | None:
        """The drain over 64 symbols at the first level (what the projector must keep up with)."""
        first = next(iter(self.levels.values()), None)
        return first.paper_64_symbols if first else None
