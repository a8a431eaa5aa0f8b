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
