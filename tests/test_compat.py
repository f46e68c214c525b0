"""Every reach into a library's private API goes through one module per library, which
names the version it was checked against; pyproject.toml pins that minor version. An
upgrade must fail here, not in production."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from ingress import uvicorn_compat
from ops.platform import nats_compat, otel_compat

ROOT = Path(__file__).resolve().parent.parent
CHECKED = {
    "nats-py": nats_compat.CHECKED,
    "uvicorn": uvicorn_compat.CHECKED,
    "opentelemetry-sdk": otel_compat.CHECKED,
}


@pytest.mark.parametrize("package", sorted(CHECKED))
def test_the_installed_version_is_the_one_checked(package: str) -> None:
    installed = version(package)
    assert installed.split(".")[:2] == CHECKED[package].split("."), (
        f"{package} {installed} is installed; its compatibility module was checked against "
        f"{CHECKED[package]}: re-check what it uses, then update it and the pin"
    )


@pytest.mark.parametrize("package", sorted(CHECKED))
def test_pyproject_pins_the_minor_version_checked(package: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    spec = next(d for d in project["project"]["dependencies"] if d.startswith(package))
    major, minor = (int(part) for part in CHECKED[package].split("."))
    assert f">={major}.{minor}" in spec and f"<{major}.{minor + 1}" in spec, spec


def test_no_private_attribute_is_reached_outside_the_compat_modules() -> None:
    """`x._name` on anything but `self`/`cls` (ours) is a library's private API."""
    private = re.compile(r"(?<![\w.])(?!self\b|cls\b)([a-z_][\w]*)\._[a-z]\w*")
    compat = {
        ROOT / "ops/platform/nats_compat.py",
        ROOT / "ops/platform/otel_compat.py",
        ROOT / "ingress/uvicorn_compat.py",
    }
    found = []
    for package in ("contracts", "ops", "ingress", "worker", "notifier", "console", "projector"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in compat:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                for match in private.finditer(code):
                    if not match.group(0).startswith(("self.", "cls.")):
                        found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not found, "private API outside a compat module:\n" + "\n".join(found)


def test_what_the_nats_compat_module_reads_is_there() -> None:
    client = Client()
    js = client.jetstream(prefix="$JS.x.API")
    assert nats_compat.client_of(js) is client
    assert nats_compat.api_prefix(js) == "$JS.x.API"
    msg = Msg(client, subject="s", reply="r", data=b"")
    assert nats_compat.client_of_msg(msg) is client


def test_what_the_uvicorn_compat_module_reads_is_there() -> None:
    hooks: tuple[str, ...] = ("on_message_begin", "on_url", "on_header", "on_headers_complete")
    hooks += ("on_body",)
    hooks += ("on_message_complete", "data_received", "connection_made", "connection_lost")
    for name in hooks:
        assert callable(getattr(uvicorn_compat.HttpToolsProtocol, name, None)), name
