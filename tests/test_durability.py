"""What a 200 means: the server's fsync policy, read back from the running server.

nats-server acknowledges a publish once the message is in its memory unless told
otherwise (its default `sync_interval` is two minutes): a power cut could lose alerts
already answered 200. Every configuration shipped sets the policy through one setting,
ALERTBRIDGE_NATS_SYNC (`always` by default); these tests read it back from the server's
monitoring endpoint (`/varz`, its JetStream configuration).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.platform.settings import Common, SettingsError, load
from ops.tools.paths import nats_config_file, nats_server_binary
from tests.secured import role_passwords, server_env
from tests.support import NatsServer

TWO_MINUTES_NS = 120 * 10**9  # nats-server's own default, the one never to ship


def _jetstream_config(server: NatsServer) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=5)
    config: dict[str, Any] = response.json()["jetstream"]["config"]
    return config


@pytest.mark.parametrize(
    ("sync", "always", "interval_ns"),
    [("always", True, None), ("1s", False, 10**9), ("250ms", False, 250 * 10**6)],
)
def test_the_shipped_config_sets_the_fsync_policy(
    tmp_path: Path, sync: str, always: bool, interval_ns: int | None
) -> None:
    env = {**server_env(role_passwords()), "ALERTBRIDGE_NATS_SYNC": sync}
    server = NatsServer(tmp_path / "store", config=nats_config_file(), env=env, monitor=True)
    server.start()
    try:
        config = _jetstream_config(server)
    finally:
        server.stop()
    assert config.get("sync_always", False) is always
    if interval_ns is not None:
        assert config["sync_interval"] == interval_ns


def test_the_shipped_config_will_not_start_without_a_policy(tmp_path: Path) -> None:
    """No silent fallback to the server's two minutes: an unset variable stops it."""
    env = {k: v for k, v in os.environ.items() if k != "ALERTBRIDGE_NATS_SYNC"}
    env.update({k: v for k, v in server_env(role_passwords()).items() if "SYNC" not in k})
    result = subprocess.run(
        [nats_server_binary(), "--config", str(nats_config_file()), "-sd", str(tmp_path), "-p",
         "-1", "-m", "-1"],
        env=env, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "ALERTBRIDGE_NATS_SYNC" in result.stdout + result.stderr


def test_the_test_servers_fsync_before_they_ack(tmp_path: Path) -> None:
    """The fixtures that stand for the product's durability run as it ships."""
    server = NatsServer(tmp_path / "store", monitor=True).start()
    try:
        config = _jetstream_config(server)
    finally:
        server.stop()
    assert config["sync_always"] is True
    assert config.get("sync_interval") != TWO_MINUTES_NS or config["sync_always"]


@pytest.mark.parametrize("value", ["always", "1s", "500ms", "2m", "1h"])
def test_a_policy_is_a_setting(value: str) -> None:
    assert load(Common, {"ALERTBRIDGE_NATS_SYNC": value}).nats_sync == value


@pytest.mark.parametrize("value", ["sometimes", "0s", "1", "1 s", "-1s", "1d", "ALWAYS"])
def test_a_bad_policy_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="ALERTBRIDGE_NATS_SYNC"):
        load(Common, {"ALERTBRIDGE_NATS_SYNC": value})
