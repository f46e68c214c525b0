"""Summarise a py-spy `--format raw --full-filenames` profile of the ingress: where the
CPU time goes, by frame (self time) and by layer (self and inclusive).

    pyspy_summary.py PROFILE.txt [--top 20] [--json OUT.json]

A layer's *self* share counts samples whose innermost Python frame is in it (C code
called from Python, e.g. msgspec's decoder, counts in the calling frame). Its
*inclusive* share counts samples with any frame of it on the stack. *By owner*
charges generic frames (stdlib, asyncio helpers) to the nearest named caller.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import msgspec

# (layer, regex on "function (path:line)"), first match wins; order matters.
LAYERS: list[tuple[str, str]] = [
    (
        "OTel instrumentation (ASGI middleware; httpx)",
        r"opentelemetry/instrumentation/|"
        r"litestar/plugins/opentelemetry|litestar/contrib/opentelemetry",
    ),
    (
        "OTel SDK: spans/context (tracing)",
        r"opentelemetry/(sdk/trace|trace|context|propagat|"
        r"baggage|util|attributes|sdk/util)",
    ),
    ("OTel SDK: metrics (counters/histograms)", r"opentelemetry/(sdk/metrics|metrics)"),
    ("logging (stdlib + JSON formatter)", r"/logging/|pythonjsonlogger|ops/logs\.py"),
    ("nats-py (publish, PubAck, parser)", r"site-packages/nats/"),
    ("sqlite3 (paper broker)", r"sqlite3|worker/brokers/paper\.py"),
    (
        "msgspec / alertbridge handler code",
        r"/(ingress/(app|auth|parse|publisher|telemetry)|worker/(?!__main__)[a-z_/]+|"
        r"contracts/[a-z_]+|ops/(telemetry|settings|accounts))\.py|msgspec",
    ),
    ("Litestar routing (ASGI router, route match)", r"litestar/(_asgi|routes|router)"),
    (
        "Litestar kwargs/params/signature",
        r"litestar/(_kwargs|_signature|params|datastructures|"
        r"_parsers|utils)",
    ),
    (
        "Litestar request/response objects",
        r"litestar/(connection|response|_multipart|enums|"
        r"serialization|status_codes|background_tasks)",
    ),
    ("Litestar middleware/handlers (other)", r"litestar/"),
    ("httpx / httpcore (HTTP client)", r"site-packages/(httpx|httpcore)/"),
    ("uvicorn h11 protocol + h11", r"uvicorn/protocols/http/h11|site-packages/h11/"),
    ("uvicorn httptools protocol", r"uvicorn/protocols/http/httptools|httptools"),
    ("uvicorn (other)", r"site-packages/uvicorn/"),
    ("anyio / sniffio", r"site-packages/(anyio|sniffio)/"),
    ("asyncio / uvloop event loop", r"asyncio/|uvloop"),
]


# Frames every sample starts with (process bootstrap, the event loop's run loop): left
# out of the inclusive shares, which would otherwise all read 100 %.
BOOTSTRAP = re.compile(
    r"runpy|(ingress|worker)/__main__|uvicorn/(main|server)\.py|asyncio/(runners|base_events|events)\.py"
    r"|uvloop|<module>"
)


def layer_of(frame: str) -> str:
    for name, pattern in LAYERS:
        if re.search(pattern, frame):
            return name
    return "other (stdlib, typing, functools, …)"


EVENT_LOOP = "event loop itself (uvloop in C: epoll, socket I/O, callbacks)"
GENERIC = ("other", "asyncio")


def owner_of(frames: list[str]) -> str:
    """Who a sample's time belongs to: the innermost frame of a named layer.

    Generic leaf frames (stdlib, typing, contextlib, asyncio helpers such as wait_for)
    are charged to the nearest caller that belongs to a named layer, so e.g. the
    `contextlib` work done for an OTel span counts as OTel. Samples with no such
    frame (the run loop waiting in C) count as the event loop.
    """
    for frame in reversed(frames):
        if BOOTSTRAP.search(frame):
            break
        layer = layer_of(frame)
        if not layer.startswith(GENERIC):
            return layer
    return EVENT_LOOP


def short(frame: str) -> str:
    """`func (…/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    return re.sub(r"\((?:.*/site-packages/|.*/lib/python3\.\d+/|.*/main/)", "(", frame)


Shares = list[tuple[str, float]]  # (frame or layer, % of samples), largest first


class Summary(msgspec.Struct, kw_only=True):
    """Where a profile's samples went."""

    samples: int
    top_self_frames: Shares
    owners: Shares
    layers_self: Shares
    layers_inclusive: Shares
    top_other_frames: Shares


def summarise(path: Path, top: int) -> Summary:
    """The summary of a py-spy raw profile; `top` frames by self time."""
    leaf: Counter[str] = Counter()
    other: Counter[str] = Counter()
    self_layer: Counter[str] = Counter()
    incl_layer: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and "(" in f]
        if not frames:
            continue
        total += n
        leaf[short(frames[-1])] += n
        self_layer[layer_of(frames[-1])] += n
        i = 0
        while i < len(frames) - 1 and BOOTSTRAP.search(frames[i]):
            i += 1
        for layer in {layer_of(f) for f in frames[i:]}:
            incl_layer[layer] += n
        if layer_of(frames[-1]).startswith("other"):
            other[short(frames[-1])] += n
        owner[owner_of(frames)] += n

    def shares(counts: list[tuple[str, int]]) -> Shares:
        return [(k, round(100 * n / total, 1) if total else 0.0) for k, n in counts]

    return Summary(
        samples=total,
        top_self_frames=shares(leaf.most_common(top)),
        owners=shares(owner.most_common()),
        layers_self=shares(self_layer.most_common()),
        layers_inclusive=shares(incl_layer.most_common()),
        top_other_frames=shares(other.most_common(8)),
    )


def render(s: Summary) -> str:
    """The summary as text, for people."""
    out = [
        f"py-spy samples (active, all threads): {s.samples}",
        "",
        "by layer                                        self %   inclusive %",
    ]
    out.insert(2, "by owner (generic frames charged to their caller)  %")
    at = 3
    for name, p in s.owners:
        out.insert(at, f"  {name:<60}{p:>5.1f}")
        at += 1
    out.insert(at, "")
    incl = dict(s.layers_inclusive)
    for name, p in s.layers_self:
        out.append(f"  {name:<46}{p:>6.1f}   {incl.get(name, 0.0):>8.1f}")
    out += ["", "top frames by self time"]
    out += [f"  {p:>5.1f}%  {f}" for f, p in s.top_self_frames]
    out += ["", "top frames of the 'other' layer (self time)"]
    out += [f"  {p:>5.1f}%  {f}" for f, p in s.top_other_frames]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    s = summarise(args.profile, args.top)
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(s), indent=1))
    print(render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
