"""Rebuilding the read models from the streams, and swapping the new file in.

Asked for with `alertbridge projections rebuild`, which drops a request file beside the
projections file (`<file>.rebuild`) and waits for it to go. The running projector is the
one that rebuilds, between two batches: it is the only writer, and only it knows how far
its consumers have delivered. It folds each stream from sequence 1 up to exactly what
its current file has applied (batched direct gets: the projector holds no consumer it
could rewind), so its consumers carry on where they were with nothing missed or doubled.

The swap: the path readers open (`ALERTBRIDGE_PROJECTIONS_DB`) is a symbolic link to a
generation file beside it (`projections-<n>.db`). A new generation is written whole,
then the link is replaced with `rename` (atomic). SQLite resolves the link, so each
generation has its own `-wal` and `-shm` files: a reader still on the old generation
finishes on it undisturbed, the next one opens the new file. (Replacing a WAL database
file under open connections would hand them the other file's WAL.)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ops.platform import directget
from ops.platform.projections import STREAMS
from projector.fold import Stored, Writer

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("projector")

BATCH: Final = 1000
READ_TIMEOUT: Final = 10.0


class RebuildError(Exception):
    """A stream could not be read back; the current file stays in place."""


def request_file(path: Path) -> Path:
    """The file whose presence asks the projector for a rebuild."""
    return path.with_name(path.name + ".rebuild")


def current(path: Path) -> Path:
    """The generation the link points at; made (with its link) when there is none yet.
    A plain file left at `path` by hand is taken as it is until the first rebuild."""
    if path.is_symlink() or path.exists():
        return path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    generation = _new_generation(path)
    _link(path, generation)
    return generation


def swap(path: Path, generation: Path) -> Path | None:
    """Point the link at `generation`; return the generation it pointed at before."""
    before = path.resolve() if path.is_symlink() else None
    _link(path, generation)
    return before


def discard(generation: Path) -> None:
    """Delete an old generation (readers still on it keep their open file)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{generation}{suffix}").unlink(missing_ok=True)


def _new_generation(path: Path) -> Path:
    return path.with_name(f"{path.stem}-{time.time_ns()}{path.suffix}")


def _link(path: Path, target: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)  # relative: the folder may be mounted elsewhere
    temporary.replace(path)


async def read_range(nc: Client, js_api: str, stream: str, first: int, last: int) -> list[Stored]:
    """The messages of `stream` from `first` up to `last` that are still stored, in order:
    at most BATCH of them (call again after the last one returned)."""
    body = json.dumps({"seq": first, "batch": min(BATCH, last - first + 1)}).encode()
    try:
        msgs = await directget.batch(nc, f"{js_api}.DIRECT.GET.{stream}", body, READ_TIMEOUT)
    except directget.DirectGetError as exc:
        if exc.status is None:
            raise RebuildError(f"{stream}: no answer reading from seq {first}") from None
        raise RebuildError(f"{stream}: direct get from {first}: status {exc.status}") from None
    found: list[Stored] = []
    for msg in msgs:
        headers = msg.headers or {}
        seq = int(headers.get("Nats-Sequence", "0"))
        if seq > last:
            break
        found.append(Stored(seq, headers, msg.data))
    return found


async def rebuild(nc: Client, js_api: str, path: Path, up_to: dict[str, int]) -> Path:
    """A new generation beside `path` with each stream folded in up to `up_to[stream]`."""
    generation = _new_generation(path)
    writer = Writer(generation)
    try:
        for stream in STREAMS:
            target, seq = up_to[stream], 1
            while seq <= target:
                batch = await read_range(nc, js_api, stream, seq, target)
                if not batch:
                    break
                writer.apply(stream, batch)
                seq = batch[-1].seq + 1
            writer.apply(stream, [], up_to=target)
            log.info("rebuild: %s folded in up to seq %d", stream, target)
    except BaseException:
        writer.close()
        discard(generation)
        raise
    writer.close()
    return generation
