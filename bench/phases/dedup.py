"""Phase `dedup`: nats-server's RSS after K publishes with unique Nats-Msg-Ids, and
without: the cost of the duplicate window per id."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench import tools
from bench.common import log
from bench.natsq import FillResult
from bench.results import Dedup, DedupRun
from bench.system import rss

if TYPE_CHECKING:
    from bench.harness import Harness

WINDOW_S = 3600  # nats-server's default duplicate window


def run(h: Harness) -> None:
    """K messages with ids, then K without, each into a fresh server (no ingress)."""
    k = h.opts.dedup_ids
    res = Dedup(k=k)
    h.results.dedup = res
    res.with_ids = one(h, with_ids=True)
    h.save()
    res.without_ids = one(h, with_ids=False)
    h.save()
    w, wo = res.with_ids, res.without_ids
    delta = (w.rss_kib_after - w.rss_kib_before) - (wo.rss_kib_after - wo.rss_kib_before)
    res.bytes_per_id = round(delta * 1024 / k)
    res.window_s = WINDOW_S
    res.mib_for_1h_at_1000_per_s = round(res.bytes_per_id * 3_600_000 / 2**20)


def one(h: Harness, *, with_ids: bool) -> DedupRun:
    """nats-server's RSS before and after `natsq.py fill K` (on CPU 1)."""
    label = "with_ids" if with_ids else "without_ids"
    with h.running(f"dedup-{label}", ingress=False) as started:
        time.sleep(2)
        base = rss(started.nats.pid).vm_rss
        args = ["fill", str(h.opts.dedup_ids), *([] if with_ids else ["--no-ids"])]
        fill = tools.natsq_cli(h.streams.url, 1, 500, args, FillResult)
        time.sleep(5)
        after = rss(started.nats.pid)
        out = DedupRun(
            rss_kib_before=base,
            rss_kib_after=after.vm_rss,
            hwm_kib=after.vm_hwm,
            fill=fill,
            stream_messages=h.streams.stored(),
        )
        log(f"dedup {label}: nats RSS {base} -> {after.vm_rss} KiB after {fill}")
    return out
