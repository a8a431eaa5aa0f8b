"""Plugin discovery: find a service class from a config's ``plugin = "..."``.

A plugin reference is either

``module:Class``
    a module to import and an attribute path in it (``pkg.cars:Overspeed``, ``pkg.cars:Fleet.Overspeed``);
    the module is found on ``sys.path``, to which the config's ``[supervisor] python_path`` is prepended;

``name``
    the name of an entry point in the ``vwos.services`` group, as an installed distribution declares it::

        [project.entry-points."vwos.services"]
        overspeed = "vwos_overspeed:OverspeedWarning"

Either way the result must be a subclass of `vwos.Service`. Every failure is a `PluginError` whose message
starts with the reference and says what went wrong.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
import types
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from vwos._service import Service
from vwos._structure import suggest

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginInfo",
    "installed_plugins",
    "load_plugin",
    "prepend_sys_path",
]

#: The entry-point group plugins are registered in.
ENTRY_POINT_GROUP = "vwos.services"

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class PluginError(Exception):
    """A plugin reference could not be loaded; the message names the reference and the reason."""

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(message)
        self.ref = ref


@attrs.frozen
class PluginInfo:
    """An installed plugin (an entry point in the ``vwos.services`` group), for ``vwos plugins``."""

    #: The entry point's name: what a config's ``plugin = "..."`` says.
    name: str
    #: What it points to, ``module:Class``.
    ref: str
    #: The distribution that declares it, ``name version``, if known.
    distribution: str | None
    #: The service class, or None if it failed to load ...
    service_class: type[Service[Any]] | None
    #: ... and then why.
    error: str | None = None


def load_plugin(ref: str) -> type[Service[Any]]:
    """The service class ``ref`` names: ``module:Class`` or the name of a ``vwos.services`` entry point.

    Raises `PluginError`.
    """
    if ":" in ref:
        return _load_reference(ref, label=ref)
    if not ref or not _DOTTED.match(ref.replace("-", "_")):
        raise PluginError(
            ref,
            f"{ref!r} is not a plugin reference: expected 'module:Class' or the name of an installed plugin",
        )
    found = [ep for ep in _entry_points() if ep.name == ref]
    if not found:
        installed = sorted({ep.name for ep in _entry_points()})
        message = f"{ref}: no installed plugin has this name (entry point group {ENTRY_POINT_GROUP!r}"
        message += f"; installed: {', '.join(installed)})" if installed else "; none are installed)"
        close = suggest(ref, installed)
        if close is not None:
            message += f"; did you mean {close!r}?"
        message += "; to name a class directly, write 'module:Class'"
        raise PluginError(ref, message)
    if len({ep.value for ep in found}) > 1:
        raise PluginError(
            ref,
            f"{ref}: more than one installed plugin has this name: "
            + ", ".join(
                f"{ep.value} (from {_distribution(ep) or 'an unknown distribution'})" for ep in found
            ),
        )
    return _load_entry_point(found[0])


def installed_plugins() -> list[PluginInfo]:
    """Every entry point in the ``vwos.services`` group, loaded, sorted by name.

    One that fails to load is listed with its error rather than raised.
    """
    entry_points = sorted(_entry_points(), key=lambda ep: (ep.name, ep.value))
    names = [ep.name for ep in entry_points]
    infos = []
    for ep in entry_points:
        service_class: type[Service[Any]] | None = None
        error: str | None = None
        try:
            if names.count(ep.name) > 1:
                load_plugin(ep.name)  # raises: the name is ambiguous
            service_class = _load_entry_point(ep)
        except PluginError as exc:
            error = str(exc)
        infos.append(PluginInfo(ep.name, ep.value, _distribution(ep), service_class, error))
    return infos


def prepend_sys_path(paths: Iterable[Path | str]) -> None:
    """Put ``paths`` at the front of ``sys.path``, in order, each once.

    Idempotent: an entry already on ``sys.path`` is moved, not duplicated, so calling this again (a config
    loaded twice) leaves ``sys.path`` as it was.
    """
    entries = [str(p) for p in paths]
    for entry in reversed(entries):
        while entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    importlib.invalidate_caches()  # so modules written since the last import are found


def _entry_points() -> list[EntryPoint]:
    # Imported here, not at the top: ~7 ms of start-up (it brings email, zipfile, csv) that `vwos run` only
    # spends when the config names a plugin by its entry point rather than as 'module:Class'.
    import importlib.metadata

    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _distribution(ep: EntryPoint) -> str | None:
    dist = ep.dist
    if dist is None:
        return None
    return f"{dist.name} {dist.version}"


def _load_entry_point(ep: EntryPoint) -> type[Service[Any]]:
    value = re.sub(r"\s*\[.*\]\s*\Z", "", ep.value).strip()  # drop "[extras]"
    label = f"{ep.name} (entry point {value!r})"
    if ":" not in value:
        module = _import(value, label=label, ref=ep.name)
        raise PluginError(ep.name, f"{label} is not a vwos Service subclass (it is {_what(module)})")
    return _load_reference(value, label=label, ref=ep.name)


def _load_reference(reference: str, *, label: str, ref: str | None = None) -> type[Service[Any]]:
    ref = reference if ref is None else ref
    module_name, _, attribute = reference.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attribute):
        raise PluginError(
            ref,
            f"{label}: not a valid plugin reference: expected 'module:Class' (dotted Python names, like "
            "'my_pkg.cars:Overspeed') or the name of an installed plugin",
        )
    obj: object = _import(module_name, label=label, ref=ref)
    done: list[str] = []
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = repr(f"{module_name}:{'.'.join(done)}") if done else f"module {module_name!r}"
            raise PluginError(ref, f"{label}: {where} has no attribute {part!r}") from None
        done.append(part)
    if not (isinstance(obj, type) and issubclass(obj, Service)):
        raise PluginError(ref, f"{label} is not a vwos Service subclass (it is {_what(obj)})")
    if obj is Service:
        raise PluginError(ref, f"{label} is the Service base class itself, not a service")
    return obj


def _import(module_name: str, *, label: str, ref: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name
        if missing is not None and (module_name == missing or module_name.startswith(missing + ".")):
            raise PluginError(ref, f"{label}: no module named {missing!r}") from None
        raise PluginError(ref, f"{label}: importing module {module_name!r} failed: {_describe(exc)}") from exc
    except Exception as exc:
        raise PluginError(ref, f"{label}: importing module {module_name!r} failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        return text  # its message already names the file and line
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
    if frames:
        text += f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return text


def _what(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return f"the module {obj.__name__!r}"
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType):
        return f"the function {obj.__module__}.{obj.__qualname__}"
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__name__} {text}"
