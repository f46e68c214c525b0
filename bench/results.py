"""The bench's results, typed: what each phase measured.

results.json keeps the layout it always had (the table and any reader rely on it):
`Results.to_builtins` lays the typed parts out under the same keys. Optional fields
are left out of the JSON while unknown (`omit_defaults`), as the old dicts left out
keys a phase had not reached yet.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import msgspec

from bench.natsq import FillResult
from bench.options import Options
from bench.results_worker import DrainResult, LoadSummary, WorkerPhase


class Rss(msgspec.Struct, kw_only=True):
    """/proc/PID/status memory, KiB."""

    vm_rss: int = msgspec.field(name="VmRSS")
    vm_hwm: int = msgspec.field(name="VmHWM")


class RssSet(msgspec.Struct, kw_only=True):
    ingress: Rss
    worker: Rss
    nats: Rss


class Machine(msgspec.Struct, kw_only=True, omit_defaults=True):
    git_head: str
    git_dirty_product_files: list[str]
    nproc: int | None
    cpu: str
    ram_gib: float
    kernel: str
    python: str
    loadavg_at_start: str
    date_utc: str
    loadavg_at_end: str | None = None


# ----------------------------------------------------------------- throughput
class RefRound(msgspec.Struct, kw_only=True):
    """One run-seed-ref.sh round: its results.tsv row as text (`na` where it has no
    number), llen_alerts and redis_cpu_pct renamed to alertbridge's words."""

    rep: str
    rps: str
    p50_ms: str
    p90_ms: str
    p99_ms: str
    max_ms: str
    non2xx: str
    sock_errors: str
    requests: str
    fresh_acks: str
    dupe_acks: str
    sent_unique: str
    stored: str
    seen_keys: str
    inflight_at_cutoff: str
    check: str
    app_cpu_pct: str
    store_cpu_pct: str
    aof_delayed_fsync: str
    aof_rewrites: str
    cpu0_busy_pct: str
    cpu1_busy_pct: str
    steal_pct: str
    wrk_cpu_pct: str
    other_cpu_pct: str
    pre_run_busy_pct: str
    calib_ms: str
    srv_cpu_us_per_req: str
    noise: str
    rc: int | None = None
    run_dir: str = ""


class AbRound(msgspec.Struct, kw_only=True):
    """One alertbridge round under wrk, with the stream counted and its ids checked."""

    rep: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    requests: int
    fresh_acks: int
    dupe_acks: int
    sent_unique: int
    stored: int
    stream_messages: int
    stream_unique_ids: int
    doubled: int
    inflight_at_cutoff: int
    check: str
    app_cpu_pct: int
    store_cpu_pct: int
    wrk_cpu_pct: int
    other_cpu_pct: int
    cpu0_busy_pct: int
    cpu1_busy_pct: int
    steal_pct: float
    pre_run_busy_pct: int
    calib_ms: int
    srv_cpu_us_per_req: int | None
    noise: str
    loadavg: str


def number(value: str | float | None) -> float | None:
    """A figure as results.json may hold it (a string from the reference's TSV), or None."""
    if value is None or value in ("", "na"):
        return None
    return float(value)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


class Medians(msgspec.Struct, kw_only=True):
    """The median of each figure over one side's rounds (None: no round had it)."""

    rps: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    srv_cpu_us_per_req: float | None
    app_cpu_pct: float | None
    store_cpu_pct: float | None
    other_cpu_pct: float | None
    calib_ms: float | None

    @classmethod
    def of(cls, rounds: list[RefRound] | list[AbRound]) -> Medians:
        """Over `rounds`, each figure's median."""
        names = [f.name for f in msgspec.structs.fields(cls)]
        return cls(**{k: _median([number(getattr(r, k)) for r in rounds]) for k in names})


class Ceiling(msgspec.Struct, kw_only=True):
    """nats-server alone, fsync `always`: alert-sized publishes with a Nats-Msg-Id, 64
    in flight (as many as wrk's connections), straight from one client."""

    published: int
    seconds: float
    per_s: float
    store_cpu_pct: int


class Throughput(msgspec.Struct, kw_only=True):
    """Rounds by side: `reference` and `alertbridge` at the one-second level (Redis
    `everysec`, nats-server `sync_interval: 1s`), `reference_fsync` and
    `alertbridge_fsync` with every write fsynced before its answer (`always` on both),
    `stripped` (bench.stripped: the floor under the ingress, at the one-second level),
    and each `--variant` by its label; medians and checks by side once every round has
    run. `ceiling`: nats-server's fsynced publishes per second, once per round (the
    client on the other CPU); `ceiling_shared`: the same with the client on nats-server's
    CPU, as the ingress is placed."""

    reference: list[RefRound] = []
    alertbridge: list[AbRound] = []
    reference_fsync: list[RefRound] = []
    alertbridge_fsync: list[AbRound] = []
    stripped: list[AbRound] = []
    variants: dict[str, list[AbRound]] = {}
    ceiling: list[Ceiling] = []
    ceiling_shared: list[Ceiling] = []
    medians: dict[str, Medians] = {}
    checks: dict[str, list[str]] = {}

    def sides(self) -> dict[str, list[RefRound] | list[AbRound]]:
        """Rounds by side as results.json names them (`alertbridge[LABEL]`)."""
        out: dict[str, list[RefRound] | list[AbRound]] = {
            "reference": self.reference,
            "alertbridge": self.alertbridge,
        }
        more: dict[str, list[RefRound] | list[AbRound]] = {
            "reference_fsync": self.reference_fsync,
            "alertbridge_fsync": self.alertbridge_fsync,
            "stripped": self.stripped,
        }
        out.update({side: rounds for side, rounds in more.items() if rounds})
        out.update({f"alertbridge[{k}]": v for k, v in self.variants.items()})
        return out

    def finish(self) -> None:
        """Medians and checks of every side."""
        for side, rounds in self.sides().items():
            if not rounds:
                continue
            self.medians[side] = Medians.of(rounds)
            self.checks[side] = [r.check for r in rounds]


# ----------------------------------------------------------------- burst
class BurstResult(LoadSummary, kw_only=True, omit_defaults=True):
    """A burst's load, what the store kept, and the verdict (see burst.verdict)."""

    stored: int
    stored_unique_ids: int
    doubled: int
    pre_busy_pct: int
    ingresses: int | None = None
    rss_kib_node_redis_before: int | None = None
    rss_kib_node_redis_after: int | None = None
    rss_kib_ingress_after: int | None = None
    max_under_3s: bool = False
    stored_equals_accepted: bool = False
    verdict: str = ""


class Burst(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`reference` (Redis everysec) and `alertbridge` (one ingress) at the one-second
    level; `alertbridge_scaled`: as many ingress processes as `alertbridge up` starts by
    default, at the one-second level (issue 19's target), `alertbridge_fsync` the same
    with every write fsynced (`always`)."""

    reference: BurstResult | None = None
    alertbridge: BurstResult | None = None
    alertbridge_scaled: BurstResult | None = None
    alertbridge_fsync: BurstResult | None = None


# ----------------------------------------------------------------- memory, dedup, profile
class MemSample(msgspec.Struct, kw_only=True):
    sent: int
    t: float
    ingress_rss_kib: int
    worker_rss_kib: int
    executed: int


class Memory(msgspec.Struct, kw_only=True, omit_defaults=True):
    at_rest: RssSet
    alerts_sent: int | None = None
    alerts_stored: int | None = None
    load_seconds: float | None = None
    all_executed: bool | None = None
    executed: int | None = None
    samples: list[MemSample] | None = None
    after: RssSet | None = None


class DedupRun(msgspec.Struct, kw_only=True):
    rss_kib_before: int
    rss_kib_after: int
    hwm_kib: int
    fill: FillResult
    stream_messages: int


class Dedup(msgspec.Struct, kw_only=True, omit_defaults=True):
    k: int
    with_ids: DedupRun | None = None
    without_ids: DedupRun | None = None
    bytes_per_id: int | None = None
    window_s: int | None = None
    mib_for_1h_at_1000_per_s: int | None = None


class Profile(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A py-spy profile's summary (bench/pyspy_summary.py) and the rate meanwhile, or
    why there is none (`skipped`)."""

    skipped: str | None = None
    rps_while_profiled: float | None = None
    worker_cpu_pct: int | None = None
    executed_per_s_while_profiled: float | None = None
    samples: int | None = None
    top_self_frames: list[tuple[str, float]] | None = None
    owners: list[tuple[str, float]] | None = None
    layers_self: list[tuple[str, float]] | None = None
    layers_inclusive: list[tuple[str, float]] | None = None
    top_other_frames: list[tuple[str, float]] | None = None


# ----------------------------------------------------------------- all of it
class Timing(msgspec.Struct, kw_only=True):
    """Repeated runs of one thing: median and slowest, in milliseconds."""

    runs: int
    median_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        """From each run's seconds."""
        return cls(
            runs=len(seconds),
            median_ms=round(statistics.median(seconds) * 1000, 2),
            max_ms=round(max(seconds) * 1000, 2),
        )


class ProjectionsPhase(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The read side over `events` stored executed events (bench/phases/projections.py)."""

    events: int
    fill_s: float | None = None
    fold_s: float | None = None
    fold_per_s: int | None = None
    fold_mid80_per_s: int | None = None
    worker_drain_per_s: float | None = None  # the worker phase's, same run (64 symbols)
    db_mib: int | None = None
    cli_orders_50: Timing | None = None
    cli_orders_50_json: Timing | None = None
    cli_help: Timing | None = None  # the CLI's start alone, for comparison
    list_alerts_50: Timing | None = None
    list_alerts_50_filtered: Timing | None = None
    list_alerts_50_page_10: Timing | None = None


class Results(msgspec.Struct, kw_only=True):
    """Everything one `just bench` measured; each phase fills its own field."""

    machine: Machine
    settings: Options
    throughput: Throughput | None = None
    burst: Burst | None = None
    worker: WorkerPhase | None = None
    scaling: list[DrainResult] | None = None
    memory: Memory | None = None
    dedup: Dedup | None = None
    profile: Profile | None = None
    profile_worker: Profile | None = None
    projections: ProjectionsPhase | None = None
    errors: dict[str, str] = {}

    def to_builtins(self) -> object:
        """results.json's layout: throughput's sides, medians and checks at the top level
        under `throughput`, `throughput_<side>_median` and `throughput_<side>_checks`;
        nats-server's fsync ceilings under `throughput_ceiling` and
        `throughput_ceiling_shared`."""
        out: dict[str, object] = {"machine": self.machine, "settings": self.settings}
        if self.throughput is not None:
            out["throughput"] = self.throughput.sides()
            for side, medians in self.throughput.medians.items():
                out[f"throughput_{side}_median"] = medians
                out[f"throughput_{side}_checks"] = self.throughput.checks[side]
            out["throughput_ceiling"] = self.throughput.ceiling
            out["throughput_ceiling_shared"] = self.throughput.ceiling_shared
        phases = {
            "burst": self.burst,
            "worker": self.worker,
            "scaling": self.scaling,
            "memory": self.memory,
            "dedup": self.dedup,
            "profile": self.profile,
            "profile_worker": self.profile_worker,
            "projections": self.projections,
        }
        out.update({k: v for k, v in phases.items() if v is not None})
        if self.errors:
            out["errors"] = self.errors
        return msgspec.to_builtins(out, enc_hook=_encode_path)


def _encode_path(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")
