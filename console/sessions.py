"""The console's login sessions, kept in the console process's memory.

A login makes a random session id (`secrets.token_urlsafe(32)`); the browser's cookie
holds it, and the store holds only its HMAC under a key derived from the console token:
the store never holds a usable cookie, and an id made under one token means nothing
under another. What the browser sends is looked up by its HMAC, so how long a lookup
takes says nothing about a live id.

A session ends at logout (deleted here, so a copy of the cookie taken before is refused),
`lifetime` seconds after the login whatever happens, after `idle` seconds without a
request, and when the process stops: a restart logs everyone out. At most `limit`
sessions live at once; a login beyond that evicts the oldest login (in use or not), so
no number of logins grows the memory. Sessions past their time are dropped first, at
each login, so the dead never hold a place a live one needs. The clock is
`time.monotonic` unless a test gives another, so the edges are tested without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

ID_BYTES: Final = 32  # of randomness: 43 characters in the cookie
LONGEST_ID: Final = 64  # characters; a longer cookie is refused before any work
LIMIT: Final = 1_000


@dataclass(slots=True)
class _Session:
    born: float  # the clock at the login
    seen: float  # ... at its last request


class Sessions:
    """The live sessions: open one at login, check one per request, close one at logout."""

    def __init__(
        self,
        key: bytes,
        *,
        lifetime: float,
        idle: float,
        limit: int = LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lifetime`, `idle`: seconds (on `clock`) a session lives at most, and unused."""
        self._key = key
        self._clock = clock
        self._lifetime = lifetime
        self._idle = idle
        self._limit = limit
        self._live: dict[bytes, _Session] = {}  # oldest login first (insertion order)

    def __len__(self) -> int:
        return len(self._live)

    @property
    def lifetime(self) -> float:
        """Seconds a session lives at most (the cookie's Max-Age)."""
        return self._lifetime

    def open(self) -> str:
        """A new session; its id, for the cookie (the store keeps only its HMAC)."""
        now = self._clock()
        for digest in [d for d, s in self._live.items() if self._over(s, now)]:
            del self._live[digest]
        while len(self._live) >= self._limit:
            del self._live[next(iter(self._live))]
        sid = secrets.token_urlsafe(ID_BYTES)
        self._live[self._digest(sid)] = _Session(born=now, seen=now)
        return sid

    def check(self, sid: str | None) -> bool:
        """Whether `sid` is a live session's id; a live one counts as used now."""
        if not sid or len(sid) > LONGEST_ID:
            return False
        digest = self._digest(sid)
        found = self._live.get(digest)
        if found is None:
            return False
        now = self._clock()
        if self._over(found, now):
            del self._live[digest]
            return False
        found.seen = now
        return True

    def close(self, sid: str | None) -> None:
        """End the session `sid` (nothing when there is none)."""
        if sid and len(sid) <= LONGEST_ID:
            self._live.pop(self._digest(sid), None)

    def _digest(self, sid: str) -> bytes:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).digest()

    def _over(self, session: _Session, now: float) -> bool:
        return now - session.born >= self._lifetime or now - session.seen >= self._idle
