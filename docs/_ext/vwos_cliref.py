"""Sphinx extension: the CLI reference, generated from the ``vwos`` argparse parser.

In a MyST page::

    ```{vwos-cli}
    ```

renders the parser ``vwos`` builds for itself (`vwos._cli._parser`), with the commands that installed
extensions add through the ``vwos.commands`` entry-point group (``vwos can``, ``vwos uplink``): a section
per command and subcommand, recursively, each with its help, its usage line and a table of its arguments
and options. An extension that fails to load is a warning (an error under ``-W``), not a silently shorter
page. The page is rebuilt when the source of the parser or of an extension changes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata
from vwos_configref import entry, inline, labelled_section, table_node

logger = logging.getLogger(__name__)

#: The width usage lines are wrapped at (not the terminal's: the page must not depend on it).
WIDTH = 100


def build_parser() -> tuple[argparse.ArgumentParser, str]:
    """The ``vwos`` parser with every extension's commands, and what loading them wrote to stderr."""
    from vwos._cli import _parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        parser = _parser(extensions=True)
    return parser, err.getvalue()


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of each subcommand of ``parser``, in the order they were added."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias
                continue
            seen.add(id(sub))
            yield name, helps.get(name, ""), sub


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def arguments(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """``(invocation, help)`` of each documented argument: ``("-n N, --lines N", "how many lines (20)")``."""
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    documented = [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]
    documented.sort(key=lambda action: bool(action.option_strings))  # positionals first, else in order
    for action in documented:
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        yield invocation, help_text


def command_id(prog: str) -> str:
    """The anchor (and label) of a command's section: ``vwos bus echo`` -> ``vwos-bus-echo``."""
    return nodes.make_id(prog)


class CliDirective(SphinxDirective):
    """``{vwos-cli}``: the whole ``vwos`` command."""

    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {}

    def run(self) -> list[nodes.Node]:
        try:
            parser, stderr = build_parser()
        except Exception as exc:
            logger.warning(
                f"vwos-cli: cannot build the vwos parser: {type(exc).__name__}: {exc}",
                location=self.get_location(),
                type="vwos",
                subtype="cli",
            )
            return []
        for line in stderr.splitlines():
            logger.warning(f"vwos-cli: {line}", location=self.get_location(), type="vwos", subtype="cli")
        self._note_sources()
        return [self._command(parser, parser.description or "", top=True)]

    def _note_sources(self) -> None:
        modules = ["vwos._cli", "vwos._cli_common", "vwos._control_cli"]
        modules += [ep.module for ep in importlib.metadata.entry_points(group="vwos.commands")]
        for name in modules:
            module = sys.modules.get(name)
            source = inspect.getsourcefile(module) if module is not None else None
            if source:
                self.env.note_dependency(source)

    def _command(
        self, parser: argparse.ArgumentParser, help_text: str, *, top: bool = False
    ) -> nodes.section:
        section = labelled_section(self, command_id(parser.prog), nodes.literal(parser.prog, parser.prog))
        description = parser.description or help_text
        if description:
            section += nodes.paragraph("", "", *inline(description))
        text = usage(parser)
        section += nodes.literal_block(text, text, language="text")
        if top:
            section += nodes.paragraph(
                "", "", *inline("Every command also takes `-h`/`--help`, which prints its usage and options.")
            )
        rows = []
        for invocation, arg_help in arguments(parser):
            if not arg_help:
                logger.warning(
                    f"vwos-cli: {parser.prog} {invocation}: an argument without help text",
                    location=self.get_location(),
                    type="vwos",
                    subtype="cli",
                )
            row = nodes.row()
            row += entry(nodes.literal(invocation, invocation))
            row += entry(*inline(arg_help))
            rows.append(row)
        if rows:
            section += table_node(("Argument", "Description"), (30, 70), rows)
        children = list(subcommands(parser))
        if children:
            rows = []
            for _name, child_help, child in children:
                link = nodes.reference("", "", internal=True, refid=command_id(child.prog))
                link += nodes.literal(child.prog, child.prog)
                row = nodes.row()
                row += entry(link)
                row += entry(*inline(child_help))
                rows.append(row)
            section += table_node(("Command", "What it does"), (30, 70), rows)
            for _name, child_help, child in children:
                section += self._command(child, child_help)
        return section


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_directive("vwos-cli", CliDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
