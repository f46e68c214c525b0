"""The folders are the architecture: an AST scan keeps the dependency direction.

contracts     ← stdlib, msgspec, opentelemetry only
ops.platform  ← contracts (never the operator tools, ingress or worker)
ops.tools     ← contracts, ops.platform (never ingress, worker or notifier: it starts them as
                processes)
ingress       ← contracts, ops.platform (never worker, never the operator tools)
worker        ← contracts, ops.platform (never ingress, never the operator tools)
notifier      ← contracts, ops.platform (a process of its own: no other role, no operator tools)
projector     ← contracts, ops.platform (the read models' only writer; readers use ops.platform)
console       ← contracts, ops.platform (the web console: no other role, no operator tools)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contracts", "ops", "ingress", "worker", "notifier", "projector", "console")
CONTRACTS_THIRD_PARTY = frozenset({"msgspec", "opentelemetry"})
FORBIDDEN: dict[str, frozenset[str]] = {
    "ops.platform": frozenset(
        {"ingress", "worker", "notifier", "projector", "console", "ops.tools"}
    ),
    "ops.tools": frozenset({"ingress", "worker", "notifier", "projector", "console"}),
    "ops": frozenset({"ingress", "worker", "notifier", "projector", "console"}),
    "ingress": frozenset({"worker", "notifier", "projector", "console", "ops.tools"}),
    "worker": frozenset({"ingress", "notifier", "projector", "console", "ops.tools"}),
    "notifier": frozenset({"ingress", "worker", "projector", "console", "ops.tools"}),
    "projector": frozenset({"ingress", "worker", "notifier", "console", "ops.tools"}),
    "console": frozenset({"ingress", "worker", "notifier", "projector", "ops.tools"}),
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Every module `path` imports, absolute, including TYPE_CHECKING and local imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
            # `from pkg import sub` may import a submodule: count it under pkg too.
            found += [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]
    return found


def _top(module: str) -> str:
    return module.partition(".")[0]


def _layer(module: str) -> str:
    """The layer of a module: its top package, or `ops.platform` / `ops.tools`."""
    parts = module.split(".")
    if parts[0] == "ops" and len(parts) > 1 and parts[1] in ("platform", "tools"):
        return ".".join(parts[:2])
    return parts[0]


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _all_sources() -> list[Path]:
    return [p for package in PACKAGES for p in _sources(package)]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_package_has_sources() -> None:
    for package in PACKAGES:
        assert len(_sources(package)) >= 2, package


@pytest.mark.parametrize("path", _sources("contracts"), ids=_id)
def test_contracts_imports_only_stdlib_msgspec_and_otel(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | CONTRACTS_THIRD_PARTY | {"contracts"}
    bad = sorted({m for m in imported_modules(path) if _top(m) not in allowed})
    assert not bad, f"{_id(path)} imports {bad}"


@pytest.mark.parametrize(
    "path", [p for p in _all_sources() if _top(_module_name(p)) != "contracts"], ids=_id
)
def test_no_package_imports_a_layer_it_must_not(path: Path) -> None:
    layer = _layer(_module_name(path))
    bad = sorted({m for m in imported_modules(path) if _layer(m) in FORBIDDEN[layer]})
    assert not bad, f"{_id(path)} ({layer}) imports {bad}"


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The scan must catch what the layer tests rely on, or they prove nothing."""
    package = tmp_path / "ops"
    package.mkdir()
    source = package / "thing.py"
    source.write_text(
        "import worker.consumer\n"
        "from ingress import app\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from worker.execute import execute\n"
        "def f() -> None:\n"
        "    import ingress.parse\n"
        "from . import settings\n"
        "from .events import read_events\n",
        encoding="utf-8",
    )
    found = imported_modules(source, tmp_path)
    assert {"worker.consumer", "ingress", "worker.execute", "ingress.parse"} <= set(found)
    assert {"ops", "ops.settings", "ops.events"} <= set(found)
    assert {_top(m) for m in found} & FORBIDDEN["ops"] == {"ingress", "worker"}


def test_the_layers_of_ops_are_told_apart() -> None:
    """`ops.platform` may not lean on `ops.tools`: the scan must see the difference."""
    assert _layer("ops.platform.settings") == "ops.platform"
    assert _layer("ops.tools.stack") == "ops.tools"
    assert "ops.tools" in FORBIDDEN[_layer("ops.platform.natsconn")]
    assert "ops.tools" in FORBIDDEN["ingress"] and "ops.tools" in FORBIDDEN["worker"]
