"""Sphinx extension: the TOML reference, generated from the attrs config classes.

In a MyST page::

    ```{vwos-config} services.can:GatewayConfig
    :table: services.NAME.config
    :anchor: can-gateway
    ```

documents the table that the attrs class ``GatewayConfig`` is built from: one section per table -- the class
itself, then every nested table (a field whose type is an attrs class) and array of tables (a tuple or list
of an attrs class), recursively -- each with a row per key: its type in TOML words, its default and its
help text. Types and defaults are written by `vwos._structure`, the code that reads the file, so the
reference says what the loader does.

Help comes from ``attrs.field(metadata={"help": "..."})``. A class in a layer whose fields cannot carry it
(`bus.Permissions`: the bus knows nothing of config files) is documented by the field that holds it:
``metadata={"help": "...", "field_help": {"publish": "...", ...}}``. A key without help text is a warning
(an error under ``-W``), and so is a service plugin of the distribution ``vwos_config_distribution``
(``"vwos"``; entry-point group ``vwos.services``) whose config class no ``vwos-config`` directive documents:
the reference cannot go incomplete. It cannot go stale either: it is generated at every build, and a page
is rebuilt when the source of a class it documents changes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata

logger = logging.getLogger(__name__)

#: ``attrs.Factory`` is a class at run time, though its stubs make it a function.
_FACTORY: type[Any] = typing.cast("type[Any]", attrs.Factory)

#: The default of a field whose factory takes the instance: computed from the other fields.
_COMPUTED = object()
#: Defaults shown as words, not as TOML.
WORDS = ("required", "not set", "computed", "see the table")

PLUGIN_GROUP = "vwos.services"


# -- the model: tables and keys, independent of Sphinx -----------------------------------------------


@attrs.frozen
class Key:
    """One key of a table, as the reference shows it."""

    name: str
    type_text: str
    #: ``required``, ``not set``, or the default written as TOML.
    default_text: str
    #: Empty when the field has none (a problem, reported by the directive).
    help: str
    #: ``Class.field``, for messages.
    owner: str
    #: The table this key holds (a nested table or an array of tables), if any.
    table: Table | None = None


@attrs.frozen
class Table:
    """A TOML table (``[path]``) or array of tables (``[[path]]``) and its keys, from one attrs class."""

    path: str
    array: bool
    cls: type
    keys: tuple[Key, ...]
    #: What the table is: the help of the key that holds it, or the class's docstring for the top table.
    intro: str

    @property
    def header(self) -> str:
        return f"[[{self.path}]]" if self.array else f"[{self.path}]"

    def walk(self) -> Iterable[Table]:
        """This table, then every table below it, depth first, in key order."""
        yield self
        for key in self.keys:
            if key.table is not None:
                yield from key.table.walk()


def describe_table(
    cls: type,
    path: str,
    *,
    array: bool = False,
    intro: str | None = None,
    defaults: object = None,
    extra_help: Mapping[str, str] | None = None,
) -> Table:
    """Document the attrs class ``cls`` as the table at ``path``.

    ``defaults``, an instance of ``cls``, gives the nested keys' defaults when the field that holds the table
    has a default of its own (``UplinkConfig.reconnect``); otherwise the class's defaults apply.
    ``extra_help`` is help for keys whose fields carry none (from the holding field's ``field_help``).
    ``intro`` says what the table is; by default the first paragraph of the class's docstring.
    """
    from vwos._structure import toml_literal, type_text

    hints = typing.get_type_hints(cls)
    keys = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        tp = hints.get(field.name, Any)
        default: object = field.default
        if isinstance(defaults, cls):
            default = getattr(defaults, field.name)
        elif isinstance(default, _FACTORY):
            default = _COMPUTED if default.takes_self else default.factory()
        if default is attrs.NOTHING:
            default_text = "required"
        elif default is None:
            default_text = "not set"
        elif default is _COMPUTED:
            default_text = "computed"
        else:
            default_text = toml_literal(default)
        help_text = str(field.metadata.get("help", "")) or (extra_help or {}).get(field.name, "")
        name = field.alias or field.name
        key_path = f"{path}.{name}"
        inner = _strip_optional(tp)
        table = None
        item = _array_item(inner)
        if _is_attrs_class(inner):
            table = describe_table(
                inner,
                key_path,
                intro=help_text,
                defaults=default,
                extra_help=field.metadata.get("field_help"),
            )
            if default is not attrs.NOTHING and default is not None:
                default_text = "see the table"
        elif item is not None:
            table = describe_table(
                item, key_path, array=True, intro=help_text, extra_help=field.metadata.get("field_help")
            )
        keys.append(
            Key(
                name=name,
                type_text=type_text(tp),
                default_text=default_text,
                help=help_text,
                owner=f"{cls.__qualname__}.{field.name}",
                table=table,
            )
        )
    if intro is None:
        intro = first_paragraph(cls.__doc__)
    return Table(path=path, array=array, cls=cls, keys=tuple(keys), intro=intro)


def _is_attrs_class(tp: object) -> typing.TypeGuard[type]:
    return isinstance(tp, type) and attrs.has(tp)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _array_item(tp: Any) -> type | None:
    """``C`` for ``tuple[C, ...]``, ``list[C]`` or ``Sequence[C]`` of an attrs class ``C``, else None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    homogeneous_tuple = origin is tuple and len(args) == 2 and args[1] is Ellipsis
    if not (homogeneous_tuple or (origin in (list, Sequence) and len(args) == 1)):
        return None
    item = args[0]
    return item if _is_attrs_class(item) else None


def import_object(ref: str) -> Any:
    """``module:Qual.Name`` -> the object."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# -- rendering -------------------------------------------------------------------------------------------

_INLINE_CODE = re.compile(r"``(.+?)``|`([^`]+)`")


def inline(text: str) -> list[nodes.Node]:
    """``text`` as inline nodes: what is between backticks (single or double) becomes code."""
    out: list[nodes.Node] = []
    position = 0
    for match in _INLINE_CODE.finditer(text):
        if match.start() > position:
            out.append(nodes.Text(text[position : match.start()]))
        code = match[1] or match[2]
        out.append(nodes.literal(code, code))
        position = match.end()
    if position < len(text):
        out.append(nodes.Text(text[position:]))
    return out


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(paragraph.split())


def _sentence(text: str) -> str:
    """``text`` with a capital first letter and a full stop (help texts are often lower-case phrases)."""
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def table_node(header: Sequence[str], widths: Sequence[int], rows: Iterable[nodes.row]) -> nodes.table:
    table = nodes.table(classes=["vwos-reference"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head_row = nodes.row()
    for title in header:
        head_row += nodes.entry("", nodes.paragraph("", title))
    head += head_row
    body = nodes.tbody()
    body.extend(rows)
    group += body
    return table


def labelled_section(directive: SphinxDirective, label: str, title: nodes.Node) -> nodes.section:
    """A section whose id is also a label, so that ``[text](page.md#label)`` and ``{ref}`label``` reach it."""
    section = nodes.section(ids=[label], names=[label])
    directive.state.document.note_explicit_target(section, section)
    heading = nodes.title()
    heading += title
    section += heading
    return section


def entry(*children: nodes.Node) -> nodes.entry:
    paragraph = nodes.paragraph()
    paragraph.extend(children)
    return nodes.entry("", paragraph)


# -- the directive ----------------------------------------------------------------------------------------


class ConfigDirective(SphinxDirective):
    """``{vwos-config} module:Class`` with ``:table: toml.path`` and an optional ``:anchor:`` prefix.

    The directive's content, if any, introduces the top table instead of the class's docstring.
    """

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "table": directives.unchanged_required,
        "anchor": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        ref = self.arguments[0]
        path = self.options.get("table")
        if not path:
            return self._fail(f"vwos-config {ref}: the :table: option (a TOML key path) is required")
        _extend_sys_path(self.config.vwos_config_python_path)
        try:
            cls = import_object(ref)
        except Exception as exc:
            return self._fail(f"vwos-config: cannot import {ref}: {type(exc).__name__}: {exc}")
        if not _is_attrs_class(cls):
            return self._fail(f"vwos-config: {ref} is not an attrs class")
        try:
            root = describe_table(cls, path)
        except Exception as exc:
            return self._fail(f"vwos-config: cannot document {ref}: {type(exc).__name__}: {exc}")
        anchor = self.options.get("anchor", "")
        documented = _documented(self.env)
        result: list[nodes.Node] = []
        for table in root.walk():
            documented.setdefault(self.env.docname, set()).add(_qualified(table.cls))
            source = inspect.getsourcefile(table.cls)
            if source:
                self.env.note_dependency(source)
            if table is root and self.content:
                intro = self.parse_content_to_nodes()
            elif table.intro:
                intro = [nodes.paragraph("", "", *inline(_sentence(table.intro)))]
            else:
                intro = []
            result.append(self._section(table, anchor, intro))
        return result

    def _fail(self, message: str) -> list[nodes.Node]:
        logger.warning(message, location=self.get_location(), type="vwos", subtype="config")
        return []

    def _id(self, anchor: str, path: str) -> str:
        return nodes.make_id(f"{anchor} {path}" if anchor else path)

    def _section(self, table: Table, anchor: str, intro: list[nodes.Node]) -> nodes.section:
        section = labelled_section(
            self, self._id(anchor, table.path), nodes.literal(table.header, table.header)
        )
        section.extend(intro)
        rows = []
        for key in table.keys:
            if not key.help:
                source = inspect.getsourcefile(table.cls) or table.cls.__module__
                logger.warning(
                    f"vwos-config: {key.owner} (key {key.name!r} of {table.header}) has no help text: "
                    f"give the field metadata={{'help': '...'}} in {source}",
                    location=self.get_location(),
                    type="vwos",
                    subtype="config_help",
                )
            type_cell: list[nodes.Node] = [nodes.literal(key.type_text, key.type_text)]
            if key.table is not None:
                target = self._id(anchor, key.table.path)
                link = nodes.reference("", "", internal=True, refid=target)
                link += nodes.literal(key.table.header, key.table.header)
                type_cell += [nodes.Text(", see "), link]
            default = key.default_text
            default_cell: nodes.Node = (
                nodes.emphasis(default, default) if default in WORDS else nodes.literal(default, default)
            )
            # An anchor per key, apart from the sections' (a key holding a table shares its path).
            row = nodes.row(ids=["key-" + self._id(anchor, f"{table.path}.{key.name}")])
            row += entry(nodes.literal(key.name, key.name))
            row += entry(*type_cell)
            row += entry(default_cell)
            row += entry(*inline(key.help))
            rows.append(row)
        section += table_node(("Key", "Type", "Default", "Description"), (14, 22, 14, 50), rows)
        return section


# -- completeness: every service plugin of the distribution is documented --------------------------------


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _documented(env: BuildEnvironment) -> dict[str, set[str]]:
    """docname -> the classes its ``vwos-config`` directives document (kept in the environment)."""
    if not hasattr(env, "vwos_config_documented"):
        env.vwos_config_documented = {}  # type: ignore[attr-defined]
    found: dict[str, set[str]] = env.vwos_config_documented  # type: ignore[attr-defined]
    return found


def _extend_sys_path(paths: Iterable[str]) -> None:
    for entry_path in reversed(list(paths)):
        if entry_path not in sys.path:
            sys.path.insert(0, entry_path)


def purge_doc(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    _documented(env).pop(docname, None)


def merge_info(app: Sphinx, env: BuildEnvironment, docnames: Iterable[str], other: BuildEnvironment) -> None:
    mine = _documented(env)
    for docname, classes in _documented(other).items():
        if docname in docnames:
            mine[docname] = classes


def check_plugins_documented(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about each service plugin of the distribution ``vwos_config_distribution`` (``"vwos"``) whose
    config class no ``vwos-config`` directive documents."""
    distribution = app.config.vwos_config_distribution
    if not distribution:
        return
    documented = set().union(*_documented(env).values())
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        if ep.dist is None or ep.dist.name != distribution:
            continue
        try:
            config_class = ep.load().config_class
        except Exception as exc:
            logger.warning(
                f"vwos-config: the service plugin {ep.name!r} ({ep.value}) cannot be loaded: {exc}",
                type="vwos",
                subtype="config",
            )
            continue
        if not attrs.has(config_class) or not any(f.init for f in attrs.fields(config_class)):
            continue  # takes no config
        if _qualified(config_class) not in documented:
            logger.warning(
                f"vwos-config: the config of the service plugin {ep.name!r} ({ep.value}), "
                f"{_qualified(config_class)}, is in no vwos-config directive: add it to the TOML reference",
                type="vwos",
                subtype="config",
            )


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_config_value("vwos_config_python_path", [], "env", types=[list])
    app.add_config_value("vwos_config_distribution", "vwos", "env", types=[str])
    app.add_directive("vwos-config", ConfigDirective)
    app.connect("env-purge-doc", purge_doc)
    app.connect("env-merge-info", merge_info)
    app.connect("env-check-consistency", check_plugins_documented)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
