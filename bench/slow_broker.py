"""A stand-in broker for `just bench`: an HTTP/1.1 server on 127.0.0.1 that answers
every request with 200 {"status":"accepted"} after --delay seconds (default 20 ms),
without blocking other requests. The worker's signed HTTP forwarder
(worker/brokers/http_forward.py) posts orders to it. Keep-alive, Content-Length
bodies; the signature is not checked (the bench measures throughput, not auth).

    slow_broker.py --port 18400 [--delay 0.020]

Prints `listening` once bound; on SIGTERM/SIGINT prints one JSON line with the
number of requests answered and the peak number in flight, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import cast

HDR_END = b"\r\n\r\n"
ANSWER = b'{"status":"accepted"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)


class Stats:
    answered = 0
    inflight = 0
    peak = 0


class Slow(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream connection's

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(HDR_END)
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buf) < total:
                return
            del self.buf[:total]
            Stats.inflight += 1
            Stats.peak = max(Stats.peak, Stats.inflight)
            loop.call_later(self.delay, self.answer)

    def answer(self) -> None:
        Stats.inflight -= 1
        Stats.answered += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Slow(delay), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()
    print(json.dumps({"answered": Stats.answered, "peak_inflight": Stats.peak}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.020)
    args = ap.parse_args()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
