"""The documentation site builds with warnings as errors, and its generated references are complete.

The same build as ``./dev test`` runs (``sphinx-build -W --keep-going -n``), into a temporary directory, so
that the guard holds when ``./dev test`` is given pytest arguments too. Another, minimal build proves that
the TOML reference refuses a config field without help text and a service plugin left out of it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT = 120  # seconds; a build takes a few

pytestmark = pytest.mark.docs


@pytest.fixture(autouse=True)
def _needs_sphinx() -> None:
    missing = [m for m in ("sphinx", "myst_parser", "furo") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def sphinx_build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html"]
    command += ["-d", str(out / ".doctrees"), str(source), str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, check=False)


def text_of(html: Path) -> str:
    """The page's text, roughly: tags dropped, so that ``<code>`` spans do not split words."""
    import re

    return " ".join(re.sub(r"<[^>]+>", " ", html.read_text()).split())


def test_the_site_builds_without_warnings_and_generates_its_references(tmp_path: Path) -> None:
    result = sphinx_build(DOCS, tmp_path)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr}{result.stdout}"

    toml = text_of(tmp_path / "toml-reference.html")
    for expected in ("[supervisor]", "[services.NAME]", "[[services.NAME.config.signals]]", "bitrate"):
        assert expected in toml
    assert "for interfaces that set it" in toml  # GatewayConfig.bitrate's help
    assert "[services.NAME.config.mqtt]" in toml  # the uplink's

    cli = text_of(tmp_path / "cli-reference.html")
    for command in ("vwos run", "vwos bus echo", "vwos can replay", "vwos uplink inspect"):
        assert command in cli
    assert "--count N" in cli


HELPLESS = '''
import attrs


@attrs.frozen
class HelplessConfig:
    """A config whose second key has no help."""

    limit: float = attrs.field(default=1.0, metadata={"help": "km/h"})
    hysteresis: float = 5.0
'''


def test_a_field_without_help_and_an_undocumented_plugin_fail_the_build(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "helpless.py").write_text(HELPLESS)
    (source / "conf.py").write_text(
        textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(DOCS / "_ext")!r})
            extensions = ["myst_parser", "vwos_configref"]
            vwos_config_python_path = [{str(source)!r}]
        """)
    )
    (source / "index.md").write_text(
        "# Reference\n\n```{vwos-config} helpless:HelplessConfig\n:table: services.x.config\n```\n"
    )
    result = sphinx_build(source, tmp_path / "out")
    assert result.returncode != 0
    problem = "HelplessConfig.hysteresis (key 'hysteresis' of [services.x.config]) has no help text"
    assert problem in result.stderr
    assert "HelplessConfig.limit" not in result.stderr
    # This site documents none of vwos's own plugins: each is named.
    assert "the config of the service plugin 'can_gateway'" in result.stderr
    assert "the config of the service plugin 'uplink'" in result.stderr
