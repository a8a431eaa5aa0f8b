"""Sphinx configuration of the vwos documentation site.

Build it (warnings are errors, as in ``./dev test``)::

    .venv/bin/sphinx-build -W --keep-going -n -E -q -b html docs docs/_build/html

The pages stay Markdown (MyST). Two local extensions in ``_ext/`` generate the references from the code, so
that they cannot go stale: ``vwos_configref`` the TOML reference (from the attrs config classes) and
``vwos_cliref`` the CLI reference (from the ``vwos`` argparse parser, extensions included).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # the project itself, also when it is not installed

project = "vwos"
author = "the vwos authors"
copyright = "the vwos authors"
try:
    from importlib.metadata import version as _version

    release = _version("vwos")
except Exception:  # pragma: no cover - a source tree without install
    release = "unknown"

extensions = ["myst_parser", "vwos_configref", "vwos_cliref"]

root_doc = "index"
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
highlight_language = "text"  # unlabelled blocks are program output and diagrams

# Markdown: GitHub-style anchors for headings down to ###, so that links such as `cli.md#extensions`, which
# work on GitHub, work on the site too.
myst_heading_anchors = 3

# The example services' config classes are documented too; their modules are not in a package.
vwos_config_python_path = [str(ROOT / "examples" / "overspeed"), str(ROOT / "examples" / "demo")]

html_theme = "furo"
html_title = f"vwos {release}"
html_show_sourcelink = False
html_copy_source = False
