"""The image compose builds (deploy/Dockerfile, .dockerignore), read as instructions,
and the environment compose gives, run for real: the nats-server binary on
deploy/nats-server.conf with the `nats` service's variables, the `provision` service's
command as a process, and a connection as each role with exactly its service's
variables, doing its work."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ops.platform.settings import PREFIX
from tests.compose_support import (
    APP_SERVICES,
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    SETTINGS_OF,
    _arguments,
    _as_run_here,
    _bind_mounts,
    _exec_form,
    _final_stage,
    _flag,
    _host_ports,
    _instructions,
    _module_main_exists,
    _python_module,
    _recipe_env,
    _resolved,
    _roles_after_provisioning,
    _services,
    _volume_paths,
)
from tests.support import NatsServer, eventually, free_port
from worker.settings import WorkerSettings

# --- the image ----------------------------------------------------------------


def test_services_that_build_use_the_dockerfile(compose: dict[str, Any]) -> None:
    building = {name: s for name, s in _services(compose).items() if "build" in s}
    assert set(building) == set(SETTINGS_OF)
    for name, service in building.items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context == ROOT, name
        assert dockerfile == DOCKERFILE, name
        assert dockerfile.is_file(), name
        if name not in APP_SERVICES:
            continue  # the provisioning: test_provisioning_is_a_one_shot_of_the_same_image
        module = _python_module([str(arg) for arg in service["command"]])
        assert module == name
        assert _module_main_exists(module), f"{module}/__main__.py"
        assert module.split(".")[0] in _wheel_packages(), f"the image has no {module}"


def _wheel_packages() -> list[str]:
    """The packages the project's wheel is built from (pyproject.toml, hatchling)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert isinstance(packages, list)
    return [str(package) for package in packages]


def test_the_image_is_built_with_every_package_of_the_wheel() -> None:
    """The build stage copies each package before `uv sync` builds the wheel: hatchling
    leaves a package the build context lacks out of the wheel without a word, and the
    image then has no `python -m` for it."""
    copied: set[str] = set()
    for arguments in _arguments("COPY", _instructions()):
        words = [word for word in arguments.split() if not word.startswith("--")]
        copied |= {Path(source).as_posix().rstrip("/") for source in words[:-1]}
    missing = [package for package in _wheel_packages() if package not in copied]
    assert not missing, f"deploy/Dockerfile copies no {missing}: add `COPY <name> ./<name>`"


def test_the_image_has_the_alertbridge_script_on_its_path() -> None:
    """`alertbridge provision` runs the venv's console script."""
    env = " ".join(_arguments("ENV", _final_stage(_instructions())))
    path = re.search(r"PATH=\"?(?P<path>[^\"\s]+)", env)
    assert path is not None and "/app/.venv/bin" in path["path"].split(":")


def test_the_image_runs_an_existing_module_as_a_non_root_user() -> None:
    instructions = _instructions()
    final = _final_stage(instructions)
    assert not _arguments("ENTRYPOINT", final), "compose overrides the command only"
    cmd = _exec_form(_arguments("CMD", final)[-1])
    assert _module_main_exists(_python_module(cmd))
    users = _arguments("USER", final)
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_the_image_is_built_from_the_lock_file() -> None:
    instructions = _instructions()
    froms = [arguments.split()[0] for arguments in _arguments("FROM", instructions)]
    args = dict(
        arguments.split("=", 1) for arguments in _arguments("ARG", instructions) if "=" in arguments
    )
    images = {args.get(image.strip("${}"), image) for image in froms}
    assert images == {"python:3.11-slim"}, images
    syncs = [arguments for arguments in _arguments("RUN", instructions) if "uv sync" in arguments]
    assert syncs, "the image installs with `uv sync`"
    for sync in syncs:
        assert "--locked" in sync.split() and "--no-dev" in sync.split(), sync


def test_the_paper_db_default_is_on_the_image_volume() -> None:
    final = _final_stage(_instructions())
    workdir = Path(_arguments("WORKDIR", final)[-1])
    volumes = {
        Path(v) for arguments in _arguments("VOLUME", final) for v in _volume_paths(arguments)
    }
    default_db = workdir / WorkerSettings().paper_db
    assert default_db.parent in volumes, (default_db, volumes)


def test_the_build_context_leaves_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", ".env"} <= patterns
    assert patterns & {"**/__pycache__", "__pycache__"}
    for needed in ("pyproject.toml", "uv.lock", "README.md", "contracts", "ops"):
        assert needed not in patterns, f"the image build needs {needed}"


# --- the environment compose gives, run for real ---------------------------------


def _server_args(compose: dict[str, Any], store: Path, monitor_port: int) -> tuple[str, ...]:
    """The `nats` service's command, its container paths mapped to this host."""
    nats = _services(compose)["nats"]
    command = [str(arg) for arg in nats["command"]]
    binds = {target: str(source) for target, (source, _) in _bind_mounts(compose, "nats").items()}
    data = next(str(v).split(":")[1] for v in nats["volumes"] if str(v).endswith(":/data"))
    monitor = _flag(command, "-m", "--http_port")
    args = []
    for before, arg in zip(["", *command], command, strict=False):
        if before in {"-m", "--http_port"}:
            args.append(str(monitor_port))
        elif arg == data:
            args.append(str(store))
        else:
            args.append(binds.get(arg, arg))
    assert monitor in {str(p) for p in _host_ports(nats)}, "monitoring is the published port"
    return tuple(args)


async def test_the_stack_runs_with_exactly_the_environment_compose_gives(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-server (the `nats` service's command and variables, from the header's .env
    recipe) is healthy; each role connects with its service's variables; the workers
    must wait until the `provision` command, run as compose runs it, has made the
    topology; then the ingress stores an alert and the worker reads it."""
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)  # the server and the processes see compose's values only
    host = _recipe_env() | {PREFIX + "PARTITIONS": "3"}
    monitor_port = free_port()
    args = _server_args(compose, tmp_path / "store", monitor_port)
    server = NatsServer(
        tmp_path / "store", args=args, config=Path(_flag(list(args), "-c", "--config")),
        log=tmp_path / "nats.log",
    )  # fmt: skip
    server.env = _resolved(compose, "nats", host)  # exactly: not the helper's own fsync default
    server.start()
    try:
        check = next(a for a in _services(compose)["nats"]["healthcheck"]["test"] if "://" in a)
        health = f"http://127.0.0.1:{monitor_port}{urlsplit(str(check)).path}"
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool | None:
                return True if (await http.get(health)).status_code == 200 else None

            await eventually(healthy, within=10)  # what `service_healthy` waits for
        envs = {s: _as_run_here(_resolved(compose, s, host), server.url) for s in SETTINGS_OF}
        command = [str(arg) for arg in _services(compose)["provision"]["command"]]
        await _roles_after_provisioning(envs, command, tmp_path)
    finally:
        server.stop()
