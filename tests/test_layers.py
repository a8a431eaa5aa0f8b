"""The shape of the code: imports flow one way, and the public names are the ones we mean."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import bus
import services.can
import services.uplink
import vwos
import vwos.testing

ROOT = Path(__file__).parent.parent

#: What each layer may import from the project (DESIGN.md: services -> vwos -> bus).
ALLOWED = {"bus": {"bus"}, "vwos": {"bus", "vwos"}, "services": {"bus", "vwos", "services"}}
#: Libraries a layer must not know about (bus and vwos know nothing of CAN or MQTT).
FORBIDDEN = {"bus": {"can", "cantools", "paho"}, "vwos": {"can", "cantools", "paho"}, "services": set()}
PROJECT = {"bus", "vwos", "services"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_flow_one_way(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files or layer == "services"
    for path in files:
        imported = _imports(path)
        wrong = (imported & PROJECT) - ALLOWED[layer]
        assert not wrong, (
            f"{path.relative_to(ROOT)} imports {sorted(wrong)}: {layer} may only import {ALLOWED[layer]}"
        )
        banned = imported & FORBIDDEN[layer]
        assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)}, which {layer} must not know"


@pytest.mark.parametrize(
    "module", [bus, vwos, vwos.testing, services.can, services.uplink], ids=lambda m: m.__name__
)
def test_public_names_are_exported_and_documented(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # a constant or a type alias
        assert obj.__doc__, f"{name} has no docstring"
        # Defined in a private module of the package (trio's habit), never in a public submodule.
        owner = obj.__module__.split(".")
        assert owner[0] == module.__name__.split(".")[0]  # type: ignore[attr-defined]
        assert owner[-1].startswith("_"), f"{name} is defined in the public module {obj.__module__}"


def test_bus_public_api() -> None:
    assert {
        "Bus",
        "BusClient",
        "Topic",
        "Method",
        "Sample",
        "Subscription",
        "Permissions",
        "Overflow",
        "QoS",
    } <= set(bus.__all__)


def test_vwos_public_api() -> None:
    assert {"Service", "ServiceContext", "Supervisor", "ServiceSpec", "Restart", "Strategy"} <= set(
        vwos.__all__
    )
