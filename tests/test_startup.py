"""What ``vwos run`` does not import at start-up: the trims measured by ``bench/footprint.py`` stay trimmed.

Each check runs a fresh interpreter (what is already imported in the test process says nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERSPEED = ROOT / "examples" / "overspeed" / "vwos.toml"

#: What importlib.metadata brings along (and nothing else vwos needs at start-up does).
METADATA = ("importlib.metadata", "email", "zipfile", "csv")


def imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` (or their submodules) a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m for m in sys.modules for p in {modules!r} "
        f"if m == p or m.startswith(p + '.')}})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    found: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return found


def test_the_probe_sees_imports() -> None:
    assert imported_after("import importlib.metadata", METADATA)[0] == "csv"


def test_the_cli_and_its_core_parser_do_not_read_package_metadata() -> None:
    code = "import vwos._cli\nvwos._cli._parser(extensions=False).parse_args(['run', 'x.toml'])"
    assert imported_after(code, METADATA) == []


def test_loading_a_config_of_module_class_plugins_does_not_read_package_metadata() -> None:
    code = f"from vwos._config import load_config\nload_config({str(OVERSPEED)!r})"
    assert imported_after(code, METADATA) == []


def test_a_plugin_named_by_its_entry_point_still_loads() -> None:
    code = "from vwos._plugins import load_plugin\nassert load_plugin('uplink').__name__ == 'Uplink'"
    assert "importlib.metadata" in imported_after(code, METADATA)


@pytest.mark.parametrize("module", ["services.uplink", "services.uplink._service"])
def test_the_uplink_loads_paho_only_for_the_mqtt_transport(module: str) -> None:
    assert imported_after(f"import {module}", ("paho",)) == []
    # A transport makes its paho client when it connects (tests/test_uplink_mqtt.py, against a broker).
    connects = (
        "from services.uplink import MqttConfig, MqttTransport\n"
        "MqttTransport(MqttConfig(host='broker.example'), 'V')._new_client(None, None)"
    )
    assert "paho.mqtt.client" in imported_after(f"import {module}\n{connects}", ("paho",))


#: The packages whose ``__init__`` re-exports its public names lazily (PEP 562).
LAZY_PACKAGES = ("bus", "vwos", "services.can", "services.uplink")

#: What a package import alone must not bring: its private modules, and the libraries they use.
HEAVY = (
    "trio",
    "structlog",
    "cattrs",
    "argparse",
    "sqlite3",
    "cantools",
    "can",
    "paho",
    "bus.",
    "vwos.",
    "services.can.",
    "services.uplink.",
)


def imported_by(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` (or their submodules) ``code`` imports in a fresh interpreter: those already
    imported when it starts (by a ``.pth`` hook such as coverage's, which brings sqlite3) are not counted."""
    probe = (
        "import sys\n_before = set(sys.modules)\n"
        f"{code}\nimport json\n"
        f"print(json.dumps(sorted({{m for m in set(sys.modules) - _before for p in {modules!r} "
        f"if m == p or m.startswith(p + '.')}})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    found: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return found


def test_the_new_module_probe_sees_imports_and_not_those_before() -> None:
    assert imported_by("import csv", ("csv", "sys")) == ["csv"]


def imported_of(code: str, names: tuple[str, ...]) -> list[str]:
    """`imported_by`, where a name ending in ``.`` stands for the package's submodules only."""
    whole = tuple(name for name in names if not name.endswith("."))
    found = imported_by(code, whole) if whole else []
    for package in (name.rstrip(".") for name in names if name.endswith(".")):
        found += [m for m in imported_by(code, (package,)) if m != package]
    return sorted(found)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_importing_a_package_loads_none_of_its_modules(package: str) -> None:
    assert imported_of(f"import {package}", HEAVY) == []


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_is_lazy_and_comes_from_its_module(package: str) -> None:
    code = (
        f"import importlib, {package} as p\n"
        "assert set(p._LAZY) == set(p.__all__), set(p._LAZY) ^ set(p.__all__)\n"
        "for name, module in p._LAZY.items():\n"
        "    assert getattr(p, name) is getattr(importlib.import_module(p.__name__ + '.' + module), name)\n"
        "assert set(p.__all__) <= set(dir(p))\n"
        "try:\n"
        "    p.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')"
    )
    imported_by(code, ())


def test_a_service_module_does_not_load_the_supervisor() -> None:
    code = "from vwos import Service, ServiceContext"
    assert imported_of(code, ("argparse", "cattrs", "sqlite3", "cantools", "can", "paho", "services")) == []
    loaded = imported_by(code, ("vwos", "bus"))
    for module in ("vwos._supervisor", "vwos._config", "vwos._control", "vwos._cli", "bus._broker"):
        assert module not in loaded


def test_the_cli_loads_no_service_and_no_can_or_mqtt_library() -> None:
    assert imported_of("import vwos._cli", ("services", "cantools", "can", "paho", "sqlite3")) == []


def test_the_can_gateway_loads_neither_the_can_tools_nor_the_uplink() -> None:
    found = imported_by("from services.can import CanGateway, CanSimulator", ("services", "paho"))
    assert "services.can._gateway" in found
    for module in ("services.can._cli", "services.can._logtools", "services.can._gen", "services.uplink"):
        assert module not in found
    assert not [m for m in found if m.startswith("paho")]


def test_the_file_uplink_loads_neither_the_mqtt_transport_nor_can() -> None:
    code = "from services.uplink import Uplink, UplinkConfig, FileTransport"
    found = imported_by(code, ("services", "paho", "cantools", "can"))
    assert "services.uplink._service" in found
    for module in ("services.uplink._mqtt", "services.uplink._paho", "services.uplink._cli", "services.can"):
        assert module not in found
    assert not [m for m in found if m.startswith(("paho", "cantools", "can."))]
    assert "can" not in found


def test_an_isolated_services_process_loads_neither_the_supervisor_nor_the_broker() -> None:
    found = imported_by("import vwos._child", ("vwos", "bus", "cattrs", "argparse", "sqlite3"))
    assert "vwos._child" in found
    assert "bus._remote" in found
    for module in ("vwos._supervisor", "vwos._config", "vwos._control", "vwos._cli", "bus._broker"):
        assert module not in found
    for library in ("cattrs", "argparse", "sqlite3"):
        assert library not in found
