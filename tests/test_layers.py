"""The shape of the code that import-linter cannot check: the public names are the ones we mean.

The import graph itself (the layers bus <- vwos <- services, can and uplink independent, no import of
another package's private modules, no cycles) is import-linter's: the contracts are in pyproject.toml
(``[tool.importlinter]``) and ``./dev test`` runs ``lint-imports``.
"""

from __future__ import annotations

import inspect
import pkgutil
from types import ModuleType

import pytest

import bus
import services.can
import services.record
import services.uplink
import vwos
import vwos.testing

#: The public submodules of each package. The contracts protect ``PACKAGE.*`` from every importer outside
#: the package, so a public submodule must be named here (and be meant for use from outside).
PUBLIC_SUBMODULES = {
    "bus": set(),
    "vwos": {"testing", "__main__"},
    "vwos.testing": set(),
    "services.can": set(),
    "services.uplink": set(),
    "services.record": set(),
}


@pytest.mark.parametrize(
    "package",
    [bus, vwos, vwos.testing, services.can, services.uplink, services.record],
    ids=lambda m: m.__name__,
)
def test_every_submodule_is_private_or_known(package: ModuleType) -> None:
    names = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert names, f"{package.__name__} has no submodules"
    public = {name for name in names if not name.startswith("_") or name == "__main__"}
    assert public == PUBLIC_SUBMODULES[package.__name__]


@pytest.mark.parametrize(
    "module",
    [bus, vwos, vwos.testing, services.can, services.uplink, services.record],
    ids=lambda m: m.__name__,
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
