"""The HTTP client the REST brokers share: aiohttp, one keep-alive pool per broker.

aiohttp parses in C and needs no extra task per request: a broker call costs the worker
a fraction of the CPU httpx (over anyio) cost, which capped a worker's orders per second
against a slow broker (figures: docs/performance.md). Revisit if httpx's cost changes.

Each request is a CLIENT span (method, host, URL without credentials or query,
status) under the broker call's span when that one is recorded, and carries the trace
context in its headers; a timeout or a transport failure is a `RetryableError` saying
which request failed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts import tracing
from worker.brokers._text import clip
from worker.errors import RetryableError

if TYPE_CHECKING:
    from collections.abc import Mapping

_spans = tracing.Spans("alertbridge.worker.http")


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A whole HTTP answer: status, reason phrase and body."""

    status: int
    reason: str
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")


class HttpClient:
    """Requests to one broker; `label` names it in errors ("alpaca", "forward").

    Redirects are not followed: a broker's URL that redirects is a wrong URL (the
    adapters say so), and following one would turn a POST into a bodiless GET and send
    the API key headers to another host. With `private_urls` (a user's webhook URL may
    carry a token in its path or query) errors name the method only and spans the
    host only; else they name the path (and spans the URL without its query).
    """

    def __init__(
        self,
        label: str,
        timeout: float,
        *,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        private_urls: bool = False,
    ) -> None:
        self._label = label
        self._timeout = timeout
        self._private = private_urls
        self._base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": "alertbridge", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """Send one request and read the whole answer; RetryableError when none came."""
        target = self._base_url + url if self._base_url else url
        what = f"{self._label} {method}" if self._private else f"{self._label} {method} {url}"
        with _spans.child(
            method, kind=SpanKind.CLIENT, attributes=lambda: self._attributes(method, target)
        ) as span:
            answer = await self._send(method, target, what, content, headers, params)
            if span.is_recording():
                span.set_attribute("http.response.status_code", answer.status)
                if answer.status >= 400:
                    span.set_status(Status(StatusCode.ERROR))
            return answer

    def _attributes(self, method: str, target: str) -> dict[str, str | int]:
        """The request's span attributes: never credentials, a query, or a private path."""
        parts = urlsplit(target)
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": parts.hostname or "",
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        if not self._private:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port is not None else host
            attributes["url.full"] = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return attributes

    async def _send(
        self,
        method: str,
        target: str,
        what: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
    ) -> HttpAnswer:
        try:
            async with self._open().request(
                method,
                target,
                data=content,
                headers=tracing.inject(dict(headers or {})),
                params=params,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return HttpAnswer(response.status, response.reason or "", body)
        except TimeoutError as exc:
            raise RetryableError(
                f"{what}: no answer within {self._timeout:g}s ({type(exc).__name__})"
            ) from exc
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{what} failed: {type(exc).__name__}: {clip(str(exc))}") from exc

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that runs it.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0)  # let the transports close before the loop does
