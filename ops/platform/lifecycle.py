"""How a long-running role process starts and stops: its telemetry around one event-loop
run, exit 2 on a bad setting (also one found only once connected, e.g. refused NATS
credentials), and SIGTERM/SIGINT as the request to stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any, Final

from ops.platform import telemetry
from ops.platform.settings import SettingsError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from ops.platform.telemetry import Telemetry

EXIT_SETTINGS: Final = 2  # a bad setting, or one that does not match the server's


def stop_on_signals(stop: Callable[[], object]) -> None:
    """Call `stop` on SIGTERM or SIGINT (in the running event loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def stopping_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT: what the process's loops wait for."""
    stopping = asyncio.Event()
    stop_on_signals(stopping.set)
    return stopping


def run_role(
    role: str,
    serve: Callable[[Telemetry], Coroutine[Any, Any, int | None]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run `serve` with the process's telemetry set up as `alertbridge-<role>`; its exit
    status (None: 0), or EXIT_SETTINGS, said on stderr, when a setting turns out bad."""
    providers = telemetry.setup(f"alertbridge-{role}")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(providers)) or 0
    except SettingsError as exc:  # e.g. NATS refused the credentials
        print(f"{role}: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    finally:
        providers.shutdown()
