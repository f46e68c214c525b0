"""What the compose.prod.yaml tests share (tests/test_compose_prod_exposure.py,
tests/test_compose_prod_wiring.py): the file, who each service is to NATS and the
secrets and settings that go with it, the fixtures `prod`, `made` (a project folder after
docs/deploy.md's secrets recipe has run in it) and the autouse `_secret_files`, and the
file's values as the services see them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from console.settings import ConsoleSettings
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform.settings import PREFIX, Common
from ops.tools.paths import NATS_ROLES
from projector.settings import ProjectorSettings
from tests.compose_support import _environment as environment
from tests.compose_support import _interpolate as interpolate
from tests.compose_support import read_compose
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
PROD_FILE = ROOT / "compose.prod.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RECIPE_MARKER = "<!-- compose.prod.yaml: the secrets -->"
SECRETS_DIR = "/run/secrets/"
PUBLIC_PORTS = {80, 443}
# Who each service is to NATS, the secrets it may mount, the settings it loads.
ROLE_OF = {
    "provision": "ops",
    "ingress": "ingress",
    "worker": "worker",
    "notifier": "notifier",
    "projector": "projector",
    "console": "console",
}
SECRETS_OF = {
    "nats": {f"nats_{role}_password" for role in NATS_ROLES},  # the server: every role's
    **{service: {f"nats_{role}_password"} for service, role in ROLE_OF.items()},
    "ingress": {"nats_ingress_password", "webhook_secrets"},
    "console": {"nats_console_password", "console_token"},
}
SETTINGS_OF: dict[str, type[Common]] = {
    "provision": Common,
    "ingress": IngressSettings,
    "worker": WorkerSettings,
    "notifier": NotifierSettings,
    "projector": ProjectorSettings,
    "console": ConsoleSettings,
}
HOST = {PREFIX + "DOMAIN": "alerts.example.com"}
CONF_PASSWORD = re.compile(r"\$(ALERTBRIDGE_NATS_[A-Z]+_PASSWORD)\b")
EXPORT = re.compile(r"^\s*secret (?P<var>\w+) (?P<file>/run/secrets/\w+)$", re.MULTILINE)


@pytest.fixture(name="prod", scope="module")
def prod_fixture() -> dict[str, Any]:
    return read_compose(PROD_FILE)


@pytest.fixture(name="made", scope="module")
def made_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after docs/deploy.md's secrets recipe has run in it."""
    folder = tmp_path_factory.mktemp("project")
    subprocess.run(["/bin/sh", "-euc", recipe()], cwd=folder, check=True, timeout=60)
    return folder


def recipe() -> str:
    """The shell block after the marker in docs/deploy.md."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    after = text.split(RECIPE_MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(?P<body>.*?)```", after, re.DOTALL)
    assert match is not None, f"no ```sh block after {RECIPE_MARKER}"
    return match["body"]


def services(prod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = prod["services"]
    assert isinstance(found, dict)
    return found


def resolved(prod: dict[str, Any], service: str, host: dict[str, str] = HOST) -> dict[str, str]:
    env = environment(services(prod)[service])
    return {name: interpolate(value, host) for name, value in env.items()}


def names(entries: list[Any], key: str = "source") -> set[str]:
    """The names in a short- or long-syntax list (`secrets`, `configs`, `networks`)."""
    return {entry if isinstance(entry, str) else entry[key] for entry in entries}


def published(service: dict[str, Any]) -> dict[int, str]:
    """Published port → host address ('' for every interface)."""
    found: dict[int, str] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        found[int(parts[-2])] = parts[0] if len(parts) == 3 else ""
    return found


_made_files: dict[str, Path] = {}


def made_files() -> dict[str, Path]:
    """/run/secrets/<name> → a file with a value like the recipe's (for `load`)."""
    return _made_files


@pytest.fixture(name="_secret_files", autouse=True, scope="module")
def secret_files_fixture(made: Path) -> None:
    _made_files.update({SECRETS_DIR + p.name: p for p in (made / "secrets").iterdir()})


def with_files(env: dict[str, str], files: dict[str, Path]) -> dict[str, str]:
    """`env` with each /run/secrets/ path replaced by the file it stands for here."""
    return {name: str(files.get(value, value)) for name, value in env.items()}
