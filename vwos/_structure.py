"""Build typed attrs objects from parsed TOML, strictly, reporting every problem with its exact key path.

This is what turns a service's ``[services.NAME.config]`` table into its ``config_class``, and the config
loader's own tables into their classes. It is deliberately strict -- TOML has real types, so nothing is
coerced: no string becomes a number, no integer becomes a boolean. The one widening is integer -> float
(``limit = 130`` for a ``float`` field).

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``pathlib.Path`` (from a string; a relative
path is taken relative to ``base_dir`` when one is given), ``datetime``/``date``/``time`` (TOML's own),
``enum.Enum`` subclasses (by value), ``typing.Literal``, ``X | None`` (TOML has no null: the key is simply
left out to get the default), unions of the above, ``list[T]``, ``tuple[T, ...]``, fixed ``tuple[A, B]``,
``Sequence[T]`` (built as a tuple), ``dict[K, T]`` / ``Mapping[K, T]`` (a table; ``K`` is ``str``, an enum
or a ``Literal``), nested attrs classes (nested tables), and ``Any``.

Every problem is collected, not just the first: a `Structurer` walks the whole value and records a
`FieldProblem` (a key path and a message) for each thing that is wrong. The walking is done by one cattrs
converter with strict hooks of ours (see "the converter" below): its detailed validation collects every bad
item of an array or table, and its notes give each one's index or key. What cattrs does not do is ours:
attrs classes are built key by key (unknown keys with a did-you-mean, every missing key), their converters
and validators run per field, and the depth bound. Validators and converters of attrs
fields run per field, so a failing validator is reported at the key it is about, with its own message.
Every bad item of an array is reported at its index (``key[i]``) where the structurer can tell the items
apart: the member validator of ``attrs.validators.deep_iterable`` runs on each item (also as a part of a
list of validators); a converter of an array that stops at its first bad item (``tuple(check(v) for v
in values)``, as `bus.Permissions` does) is run again on each item alone when it fails, and if the items
that fail alone are exactly what makes the whole fail (the rest passes), each is reported at its index,
else the whole at ``key``. Any other validator is reported at its key with its own message; one that has
several things to say raises `StructureError` with paths relative to its key (``FieldProblem((3,
"signal"), ...)`` of a ``mappings`` field is reported at ``mappings[3].signal``). When some items of an
array cannot be built, the array's validator (not its converter) still runs on the items that were: what
it reports at an item is reported at that item's index, what it says of the array as a whole is left out
until every item is there.

Values nest at most `MAX_DEPTH` levels (a key path that long): deeper is a problem at that key, never a
``RecursionError``.

`describe_fields` documents an attrs class the same way (type, default, help text from
``attrs.field(metadata={"help": ...})``), for generated TOML references.
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import datetime
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, overload

import attrs
import cattrs
import cattrs.cols
import cattrs.gen

__all__ = [
    "MAX_DEPTH",
    "FieldDoc",
    "FieldProblem",
    "StructureError",
    "Structurer",
    "describe_fields",
    "describe_value",
    "expected_text",
    "format_path",
    "structure",
    "suggest",
    "toml_literal",
    "type_text",
    "unknown_key_message",
]

T = TypeVar("T")

#: A key path: table keys (str) and array indices (int).
KeyPath = tuple[str | int, ...]

#: How deep a value may nest (the length of a key path) before it is a problem: far deeper than any config
#: needs, far shallower than Python's recursion limit (a level costs a few frames).
MAX_DEPTH = 100


@attrs.frozen
class FieldProblem:
    """One thing wrong with a value: where (a key path) and what."""

    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{where}: {self.message}" if where else self.message


class StructureError(ValueError):
    """A value could not be built into the requested type; ``problems`` lists everything that was wrong.

    A validator of an attrs field that has several things to say raises one with paths relative to its
    field, and may name the field as ``key`` (``attribute.alias``): then the message of the exception,
    seen when the class is built in Python rather than from TOML, shows the paths from the field on
    (``cyclic[2].signals.Speed: ...``). The structurer reads ``problems`` only.
    """

    def __init__(self, problems: Sequence[FieldProblem], *, key: str | None = None) -> None:
        self.problems = list(problems)
        prefix: KeyPath = () if key is None else (key,)
        super().__init__("\n".join(str(FieldProblem((*prefix, *p.path), p.message)) for p in self.problems))


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


#: Returned by `Structurer.structure` for a value that could not be built (its problems are recorded).
INVALID: Any = _Invalid()

#: ``attrs.Factory`` is a class at runtime, though its stubs make it a function.
_FACTORY: type[Any] = typing.cast("type[Any]", attrs.Factory)

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def format_path(path: Iterable[str | int]) -> str:
    """A key path as text, TOML style: ``services.overspeed.config.zones[2].name``.

    Keys that are not bare TOML keys are quoted: ``labels."Vehicle.Speed"``.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if _BARE_KEY.match(part) else _quote(part)
        out = f"{out}.{key}" if out else key
    return out


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ch.isprintable() else _escape(ch) for ch in escaped)
    return f'"{escaped}"'


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` if one is close enough to be a likely typo, else None."""
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:  # a difference in case only
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.7)
    return lowered[matches[0]] if matches else None


def describe_value(value: object) -> str:
    """A value as the error messages show it, naming its TOML type: ``the string 'fast'``."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {_float_text(value)}"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "an empty array" if not value else "an array"
    if isinstance(value, dict):
        return "an empty table" if not value else "a table"
    if isinstance(value, datetime.datetime):
        return f"the date-time {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, datetime.time):
        return f"the time {value.isoformat()}"
    if value is None:
        return "nothing (None)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def toml_literal(value: object) -> str:
    """``value`` written as TOML (for defaults in generated references): ``30.0``, ``"info"``, ``[1, 2]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, PurePath):
        return _quote(str(value))
    if isinstance(value, enum.Enum):
        return toml_literal(value.value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, collections.abc.Mapping):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{format_path([str(k)])} = {toml_literal(v)}" for k, v in value.items()) + " }"
        )
    cls = type(value)
    if attrs.has(cls):
        items = {f.alias: getattr(value, f.name) for f in attrs.fields(cls) if f.init}
        return toml_literal(items)
    return repr(value)


# -- type descriptions ---------------------------------------------------------------------------------

_NOUNS: dict[object, tuple[str, str, str]] = {
    # type: (with article, bare, plural)
    int: ("an integer", "integer", "integers"),
    float: ("a number", "number", "numbers"),
    bool: ("a boolean (true or false)", "boolean", "booleans"),
    str: ("a string", "string", "strings"),
    datetime.datetime: ("a date-time", "date-time", "date-times"),
    datetime.date: ("a date", "date", "dates"),
    datetime.time: ("a time", "time", "times"),
}


def _choices(values: Iterable[object]) -> str:
    return ", ".join(repr(v) if isinstance(v, str) else toml_literal(v) for v in values)


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        if len(args) < len(typing.get_args(tp)):
            return Union[tuple(args)]  # noqa: UP007 -- built from a runtime tuple
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _noun(tp: Any, form: int) -> str:
    """``form``: 0 with an article ("a number"), 1 bare ("number"), 2 plural ("numbers")."""
    tp = _strip_optional(tp)
    for known, nouns in _NOUNS.items():
        if tp is known:
            return nouns[form]
    if tp is Any or tp is object:
        return ("any value", "any", "values")[form]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _noun(args[0], form)
    if _is_union(tp):
        return " or ".join(_noun(a, form) for a in args)
    if origin is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        values = args if origin is Literal else [m.value for m in tp]
        listed = _choices(values)
        return (f"one of {listed}", listed.replace(", ", " | "), f"values, each one of {listed}")[form]
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return ("a path (a string)", "path", "paths")[form]
    if isinstance(tp, type) and attrs.has(tp):
        return ("a table", "table", "tables")[form]
    if origin in _SEQUENCES or tp in _SEQUENCES:
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            items = "nothing" if args == ((),) else ", ".join(_noun(a, 0) for a in args)
            return (f"an array of exactly: {items}", f"array [{items}]", f"arrays [{items}]")[form]
        item = _noun(args[0], 2) if args else "values"
        return (f"an array of {item}", f"array of {item}", f"arrays of {item}")[form]
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if len(args) != 2 or args[1] is Any or args[1] is object:
            return ("a table", "table", "tables")[form]
        item = _noun(args[1], 2)
        return (f"a table of {item}", f"table of {item}", f"tables of {item}")[form]
    name = getattr(tp, "__qualname__", None) or repr(tp)
    return (f"a {name}", name, f"{name} values")[form]


def expected_text(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for "expected ..." messages: ``an array of strings``."""
    return _noun(tp, 0)


def type_text(tp: Any) -> str:
    """The type ``tp`` as a TOML reference shows it: ``number``, ``array of strings``, ``'a' | 'b'``."""
    return _noun(tp, 1)


_SEQUENCES: tuple[object, ...] = (
    list,
    tuple,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    typing.List,  # noqa: UP006 -- the bare typing alias may be used unsubscripted
    typing.Tuple,  # noqa: UP006
    typing.Sequence,
)
_MAPPINGS: tuple[object, ...] = (
    dict,
    collections.abc.Mapping,
    collections.abc.MutableMapping,
    typing.Dict,  # noqa: UP006
    typing.Mapping,
)


# -- structuring ---------------------------------------------------------------------------------------


def _exception_message(exc: BaseException) -> str:
    """The message of an exception raised by a validator or converter (attrs' own put extra args after it)."""
    if exc.args and isinstance(exc.args[0], str) and exc.args[0]:
        return exc.args[0]
    return str(exc) or type(exc).__name__


def _call_converter(converter: Any, value: object, instance: object, field: attrs.Attribute[Any]) -> object:
    if isinstance(converter, attrs.Converter):
        args: list[object] = [value]
        if getattr(converter, "takes_self", False):
            args.append(instance)
        if getattr(converter, "takes_field", False):
            args.append(field)
        function: Any = getattr(converter, "converter")  # noqa: B009 -- not in attrs' stubs
        return function(*args)
    return converter(value)


class Structurer:
    """Builds values of given types from parsed TOML, recording every problem in ``problems``.

    `structure` returns the built value, or `INVALID` after recording why not; use the module-level
    `structure` function to get an exception instead. ``base_dir`` anchors relative paths.
    """

    def __init__(self, *, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self.problems: list[FieldProblem] = []
        self._hints: dict[type, dict[str, Any]] = {}
        #: Arrays with items that could not be built, by key path: the items that were, and their indices.
        self._partial: dict[KeyPath, tuple[Any, list[int]]] = {}

    def problem(self, path: KeyPath, message: str) -> None:
        """Record a problem at ``path``."""
        self.problems.append(FieldProblem(tuple(path), message))

    def _wrong_type(self, value: object, tp: Any, path: KeyPath) -> Any:
        self.problem(path, f"expected {expected_text(tp)}, got {describe_value(value)}")
        return INVALID

    def structure(self, value: object, tp: Any, path: KeyPath = (), *, field: bool = False) -> Any:
        """``value`` built into ``tp``, or `INVALID` (with the problems recorded).

        The walking is cattrs' (`_CONVERTER`); its errors are read back into key paths below ``path``.
        ``field``: the value of a field of a table, whose validator may check the items of an array that
        were built when others were not (see `_check_partial`)."""
        if len(path) > MAX_DEPTH:
            self.problem(path, f"nested more than {MAX_DEPTH} levels deep")
            return INVALID
        depth = _DEPTH.set(len(path)) if _DEPTH.get() is None else None  # the outermost call: its depth
        base = _BASE_DIR.set(self.base_dir)
        try:
            return _CONVERTER.structure(value, tp)
        except Exception as exc:
            found = _problems_of(exc)
            for problem in found:
                self.problem((*path, *problem.path), problem.message)
            if field:
                self._remember_partial(value, tp, found, path)
            return INVALID
        finally:
            _BASE_DIR.reset(base)
            if depth is not None:
                _DEPTH.reset(depth)

    def _remember_partial(self, value: object, tp: Any, found: list[FieldProblem], path: KeyPath) -> None:
        """For an array (not a fixed tuple) some of whose items could not be built: the items that could,
        and their indices, for the validator of its field (see `_check_partial`)."""
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp) or tp
        args = typing.get_args(tp)
        if not isinstance(value, list) or origin not in _SEQUENCES or _is_fixed_tuple(origin, args):
            return
        failing = {p.path[0] for p in found if p.path and isinstance(p.path[0], int)}
        if not failing or any(not p.path for p in found):
            return
        item_type = args[0] if args else Any
        kept = [i for i in range(len(value)) if i not in failing]
        try:
            built = [_CONVERTER.structure(value[i], item_type) for i in kept]
        except Exception:  # an item that was built in the array is not built alone: leave it to the array
            return
        self._partial[path] = (built if origin in _LISTS else tuple(built), kept)

    # -- attrs classes -------------------------------------------------------------------------------

    def field_types(self, cls: type, path: KeyPath = ()) -> dict[str, Any] | None:
        """The resolved types of the fields of the attrs class ``cls``, or None (with a problem) if they do
        not resolve."""
        if cls in self._hints:
            return self._hints[cls]
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            self.problem(
                path,
                f"cannot be built from TOML: the type annotations of {cls.__module__}.{cls.__qualname__} do "
                f"not resolve ({type(exc).__name__}: {exc})",
            )
            return None
        types_ = {}
        for field in attrs.fields(cls):
            if field.name in hints:
                types_[field.name] = hints[field.name]
            elif field.type is not None and not isinstance(field.type, str):
                types_[field.name] = field.type
            else:
                types_[field.name] = Any
        self._hints[cls] = types_
        return types_

    def table(self, value: object, cls: type, path: KeyPath = ()) -> dict[str, Any] | None:
        """Check the table ``value`` against the attrs class ``cls`` key by key.

        Returns the keys whose values are valid (built, converted and validated on their own, by their
        ``__init__`` name; defaults are not filled in), recording problems for the others: unknown keys,
        missing required keys, wrong types, converters and validators that raise. None if ``value`` is not
        a table at all. ``cls(**result)`` builds the object when no problem was recorded.
        """
        if not isinstance(value, dict):
            self._wrong_type(value, cls, path)
            return None
        types_ = self.field_types(cls, path)
        if types_ is None:
            return None
        fields = [f for f in attrs.fields(cls) if f.init]
        by_key = {f.alias: f for f in fields}
        built: dict[str, Any] = {}  # by key, in the table's order
        failed: set[str] = set()
        for key, item in value.items():
            field = by_key.get(key)
            if field is None:
                self.problem((*path, key), unknown_key_message(key, list(by_key)))
                continue
            result = self.structure(item, types_[field.name], (*path, key), field=True)
            if result is INVALID:
                failed.add(field.name)
            else:
                built[key] = result
        for field in fields:
            if field.alias not in value and field.default is attrs.NOTHING:
                self.problem(
                    (*path, field.alias),
                    f"required key is missing (expected {expected_text(types_[field.name])})",
                )
        return self._check_fields(cls, fields, built, failed, path)

    def _check_fields(
        self,
        cls: type,
        fields: list[attrs.Attribute[Any]],
        built: dict[str, Any],
        failed: set[str],
        path: KeyPath,
    ) -> dict[str, Any]:
        """Run the converters, then the validators, of the fields in ``built`` as ``__init__`` would (in
        field order), each on its own: a field whose converter or validator raises is left out."""
        bare = self._bare_instance(cls)
        for field in fields:  # a value that failed is not there, rather than its default
            if field.name in failed and bare is not None:
                with contextlib.suppress(AttributeError):
                    object.__delattr__(bare, field.name)
        good: dict[str, Any] = {}
        for field in fields:
            if field.alias not in built:
                continue
            value = built[field.alias]
            try:
                converted = (
                    value if field.converter is None else _call_converter(field.converter, value, bare, field)
                )
            except Exception as exc:
                converter = field.converter

                def convert(
                    items: object, field: attrs.Attribute[Any] = field, converter: Any = converter
                ) -> None:
                    _call_converter(converter, items, bare, field)

                self._failed(exc, value, convert, (*path, field.alias))
                if bare is not None:
                    with contextlib.suppress(AttributeError):
                        object.__delattr__(bare, field.name)
                continue
            if bare is not None:
                object.__setattr__(bare, field.name, converted)
            good[field.alias] = value
        if bare is None:
            return good
        for field in fields:
            if field.alias not in good or field.validator is None:
                continue
            if not self._validate(
                field.validator, bare, field, getattr(bare, field.name), (*path, field.alias)
            ):
                del good[field.alias]
        for field in fields:
            key: KeyPath = (*path, field.alias or field.name)
            partial = self._partial.pop(key, None)
            checkable = field.name in failed and field.validator is not None and field.converter is None
            if partial is not None and checkable:
                self._check_partial(bare, field, *partial, key)
        return {key: good[key] for key in built if key in good}  # the table's order

    def _check_partial(
        self, instance: object, field: attrs.Attribute[Any], items: Any, kept: list[int], path: KeyPath
    ) -> None:
        """Run the validator of an array field some of whose items could not be built on the items that
        were (``kept`` are their indices), so that what it finds wrong with them is reported now, not after
        the other items are fixed. Only what it reports at an item is kept, at the item's own index: what
        it says of the array as a whole may not hold once every item is there. The instance has the partial
        array only while its own validator runs: for the validators of other fields the field is missing."""
        saved, self.problems = self.problems, []
        object.__setattr__(instance, field.name, items)
        try:
            assert field.validator is not None
            self._validate(field.validator, instance, field, items, path)
        finally:
            with contextlib.suppress(AttributeError):
                object.__delattr__(instance, field.name)
            found, self.problems = self.problems, saved
        depth = len(path)
        for problem in found:
            where = problem.path
            if len(where) > depth and where[:depth] == path:
                index = where[depth]
                if isinstance(index, int) and 0 <= index < len(kept):
                    self.problem((*path, kept[index], *where[depth + 1 :]), problem.message)

    def _validate(
        self, validator: Any, instance: object, field: attrs.Attribute[Any], value: Any, path: KeyPath
    ) -> bool:
        """Run a field's validator, recording its problems; whether it passed. The parts of a list of
        validators run in turn; the member validator of ``attrs.validators.deep_iterable`` runs on each
        item, so every bad item is reported at its index."""
        parts = (
            getattr(validator, "_validators", None) if type(validator).__name__ == "_AndValidator" else None
        )
        if parts is not None:  # in order, up to the first that fails (a later one may rely on an earlier)
            return all(self._validate(part, instance, field, value, path) for part in parts)
        member = getattr(validator, "member_validator", None)
        if (
            member is not None
            and hasattr(validator, "iterable_validator")
            and isinstance(value, list | tuple)
        ):
            ok = True
            if validator.iterable_validator is not None:
                ok = self._validate(validator.iterable_validator, instance, field, value, path)
            items = [
                self._validate(member, instance, field, item, (*path, i)) for i, item in enumerate(value)
            ]
            return ok and all(items)
        try:
            validator(instance, field, value)
        except AttributeError:
            return True  # it reads a field that is missing or wrong, already reported
        except StructureError as exc:
            for problem in exc.problems:
                self.problem((*path, *problem.path), problem.message)
            return False
        except Exception as exc:
            self.problem(path, _exception_message(exc))
            return False
        return True

    def _failed(self, exc: Exception, value: object, check: Any, path: KeyPath) -> None:
        """Record why ``check(value)`` (a field's converter) raised ``exc``: the problems of a
        `StructureError` at their paths below ``path``; for an array, each item that fails alone (see the
        module's docstring); else the message at ``path``."""
        if isinstance(exc, StructureError):
            for problem in exc.problems:
                self.problem((*path, *problem.path), problem.message)
            return
        items = _failing_items(value, check)
        if items is None:
            self.problem(path, _exception_message(exc))
            return
        for index, message in items:
            self.problem((*path, index), message)

    def _bare_instance(self, cls: type) -> object | None:
        """An instance of ``cls`` bypassing ``__init__``, defaults set, for running validators one by one."""
        try:
            instance: object = object.__new__(cls)
            for field in attrs.fields(cls):
                default = field.default
                if default is attrs.NOTHING:
                    continue
                if isinstance(default, _FACTORY):
                    if default.takes_self:
                        continue
                    default = default.factory()
                object.__setattr__(instance, field.name, default)
        except Exception:
            return None
        return instance

    def build(self, cls: type[T], values: dict[str, Any], path: KeyPath = ()) -> T | Any:
        """``cls(**values)``, or `INVALID` with the exception's message recorded at ``path`` (the problems
        of a `StructureError` at their paths below it)."""
        try:
            return cls(**values)
        except StructureError as exc:
            for problem in exc.problems:
                self.problem((*path, *problem.path), problem.message)
            return INVALID
        except Exception as exc:
            self.problem(path, _exception_message(exc))
            return INVALID

    def _attrs(self, value: object, cls: type, path: KeyPath) -> Any:
        before = len(self.problems)
        good = self.table(value, cls, path)
        if good is None or len(self.problems) > before:
            return INVALID
        return self.build(cls, good, path)


# -- the converter -------------------------------------------------------------------------------------
#
# One cattrs Converter does the walking: dispatch by type, arrays, fixed tuples and tables item by item with
# every bad item collected (its detailed validation: an ExceptionGroup whose members carry the index or key
# in a note). Its hooks are ours where TOML needs strictness cattrs does not have (no str -> int, no
# int -> bool; only int -> float widens), and for what it does not do: an attrs class is built key by key
# by `Structurer.table` (unknown keys with a did-you-mean, every missing key, converters and validators run
# per field), unions try their members in order, choices suggest the closest value, paths are anchored at
# ``base_dir``, and nesting is bounded by `MAX_DEPTH`. Any type with no hook here is a problem, not a
# guess: cattrs' own lenient defaults (``int("1")``, a set from an array) are never reached.

#: The directory relative paths are anchored at, for the structuring under way.
_BASE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("vwos_structure_base", default=None)
#: The length of the key path of the value being structured (None: no structuring under way).
_DEPTH: contextvars.ContextVar[int | None] = contextvars.ContextVar("vwos_structure_depth", default=None)

_LISTS: tuple[object, ...] = (list, collections.abc.MutableSequence, typing.List)  # noqa: UP006
#: The builtin generics, for parametrizing with types known only at run time.
_LIST: Any = list
_TUPLE: Any = tuple
_DICT: Any = dict


class _Problem(ValueError):
    """What is wrong with one value (at the key path cattrs' notes give it)."""


def _wrong_type(value: object, tp: Any) -> typing.NoReturn:
    raise _Problem(f"expected {expected_text(tp)}, got {describe_value(value)}")


def _enter() -> contextvars.Token[int | None]:
    """One level deeper, or a problem if that is more than `MAX_DEPTH`; reset the token on the way out."""
    depth = _DEPTH.get() or 0
    if depth > MAX_DEPTH:
        raise _Problem(f"nested more than {MAX_DEPTH} levels deep")
    return _DEPTH.set(depth + 1)


def _is_fixed_tuple(origin: Any, args: tuple[Any, ...]) -> bool:
    return origin is tuple and bool(args) and (len(args) != 2 or args[1] is not Ellipsis)


def _unsupported(tp: Any) -> Any:
    name = f"{tp.__module__}.{tp.__qualname__}" if isinstance(tp, type) else repr(tp)

    def refuse(value: object, _: Any) -> typing.NoReturn:
        raise _Problem(f"cannot be built from TOML: its type, {name}, is not supported")

    return refuse


def _leaf(value: object, tp: Any) -> Any:
    """The scalar types (cattrs finds this for them and their subclasses): strictly, no coercion."""
    if (_DEPTH.get() or 0) > MAX_DEPTH:
        raise _Problem(f"nested more than {MAX_DEPTH} levels deep")
    if tp is bool:
        return value if isinstance(value, bool) else _wrong_type(value, tp)
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _wrong_type(value, tp)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        _wrong_type(value, tp)
    if tp is str:
        return value if isinstance(value, str) else _wrong_type(value, tp)
    if tp is datetime.datetime or tp is datetime.time:
        return value if isinstance(value, tp) else _wrong_type(value, tp)
    if tp is datetime.date:
        ok = isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)
        return value if ok else _wrong_type(value, tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _choice(value, tp, list(tp))
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if not isinstance(value, str):
            _wrong_type(value, tp)
        if not value:
            raise _Problem("expected a path, got an empty string")
        result = tp(value)
        base_dir = _BASE_DIR.get()
        if base_dir is not None and issubclass(tp, Path) and not result.is_absolute():
            result = tp(base_dir, result)
        return result
    return _unsupported(tp)(value, tp)


def _choice(value: object, tp: Any, choices: list[Any]) -> Any:
    """One of ``choices`` (enum members by value, or Literal values), of the same type; else did-you-mean."""
    for choice in choices:
        wanted = choice.value if isinstance(choice, enum.Enum) else choice
        if type(wanted) is type(value) and wanted == value:
            return choice
    message = f"expected {expected_text(tp)}, got {describe_value(value)}"
    if isinstance(value, str):
        names = [c.value if isinstance(c, enum.Enum) else c for c in choices]
        close = suggest(value, [n for n in names if isinstance(n, str)])
        if close is not None:
            message += f"; did you mean {close!r}?"
    raise _Problem(message)


def _literal_hook(tp: Any) -> Any:
    choices = list(typing.get_args(tp))
    return lambda value, _: _choice(value, tp, choices)


def _union_hook(tp: Any) -> Any:
    args = typing.get_args(tp)
    takes_none = type(None) in args
    alternatives = [a for a in args if a is not type(None)]

    def structure_union(value: object, _: Any) -> Any:
        if value is None and takes_none:
            return None
        if len(alternatives) == 1:  # X | None: X's own problems, at their own paths
            return _CONVERTER.structure(value, alternatives[0])
        for alternative in alternatives:  # the first that takes it, in the order written
            try:
                return _CONVERTER.structure(value, alternative)
            except Exception:
                continue
        _wrong_type(value, tp)

    return structure_union


def _sequence_hook(tp: Any) -> Any:
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    inner: Any
    if _is_fixed_tuple(origin, args):
        types_ = [] if args == ((),) else list(args)
        inner = _CONVERTER.gen_structure_hetero_tuple(_TUPLE[tuple(types_)]) if types_ else None

        def structure_fixed(value: object, _: Any) -> Any:
            if not isinstance(value, list):
                _wrong_type(value, tp)
            if len(value) != len(types_):
                items = "item" if len(types_) == 1 else "items"
                raise _Problem(f"expected an array of exactly {len(types_)} {items}, got {len(value)}")
            if inner is None:
                return ()
            token = _enter()
            try:
                return inner(value, tp)
            finally:
                _DEPTH.reset(token)

        return structure_fixed
    item = args[0] if args else Any
    if origin in _LISTS:
        inner = cattrs.cols.list_structure_factory(_LIST[item], _CONVERTER)
    else:
        inner = cattrs.cols.homogenous_tuple_structure_factory(_TUPLE[item, ...], _CONVERTER)

    def structure_array(value: object, _: Any) -> Any:
        if not isinstance(value, list):
            _wrong_type(value, tp)
        token = _enter()
        try:
            return inner(value, tp)
        finally:
            _DEPTH.reset(token)

    return structure_array


def _mapping_hook(tp: Any) -> Any:
    args = typing.get_args(tp)
    key_type, item_type = args if len(args) == 2 else (Any, Any)
    inner = cattrs.gen.mapping_structure_factory(
        _DICT[key_type, item_type], _CONVERTER, dict, detailed_validation=True
    )

    def structure_table(value: object, _: Any) -> Any:
        if not isinstance(value, dict):
            _wrong_type(value, tp)
        token = _enter()
        try:
            return inner(value, tp)
        finally:
            _DEPTH.reset(token)

    return structure_table


def _structure_attrs(value: object, cls: type) -> Any:
    """An attrs class, key by key (`Structurer.table`): every problem, raised as one `StructureError`."""
    token = _enter()
    try:
        structurer = Structurer(base_dir=_BASE_DIR.get())
        result = structurer._attrs(value, cls, ())
    finally:
        _DEPTH.reset(token)
    if structurer.problems:
        raise StructureError(structurer.problems)
    return result


def _problems_of(exc: BaseException, path: KeyPath = ()) -> list[FieldProblem]:
    """cattrs' error (an ExceptionGroup of errors noted with their index or key), ours, or a converter's or
    validator's, as problems at key paths below ``path``."""
    if isinstance(exc, StructureError):
        return [FieldProblem((*path, *p.path), p.message) for p in exc.problems]
    if isinstance(exc, cattrs.BaseValidationError):
        found = []
        for member in exc.exceptions:
            step: KeyPath = ()
            for note in getattr(member, "__notes__", ()):
                if isinstance(note, cattrs.IterableValidationNote):
                    step = (note.index,)
                elif isinstance(note, cattrs.AttributeValidationNote):
                    step = (note.name,)
            found.extend(_problems_of(member, (*path, *step)))
        return found
    if isinstance(
        exc, RecursionError
    ):  # a type or validator that recurses on its own: a problem, not a crash
        return [FieldProblem(path, "nested too deeply to be built (Python's recursion limit)")]
    return [FieldProblem(path, _exception_message(exc))]


def _is_any(tp: Any) -> bool:
    return tp is Any or tp is object


def _as_is(value: object, _: Any) -> object:
    return value


def _is_annotated(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Annotated


def _annotated_hook(tp: Any) -> Any:
    return _CONVERTER.get_structure_hook(typing.get_args(tp)[0])


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(tp) in _SEQUENCES or tp in _SEQUENCES


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in _MAPPINGS or tp in _MAPPINGS


def _is_attrs(tp: Any) -> bool:
    return isinstance(tp, type) and attrs.has(tp)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    # First, so that every later hook wins over it: a type with no hook of ours is not supported.
    converter.register_structure_hook_factory(lambda _: True, _unsupported)
    # cattrs finds hooks for classes by their MRO first: ours for the scalars, subclasses included.
    for leaf in (bool, int, float, str, bytes, datetime.date, datetime.time, PurePath, Path, enum.Enum):
        converter.register_structure_hook(leaf, _leaf)
    converter.register_structure_hook_func(_is_any, _as_is)
    converter.register_structure_hook_factory(_is_annotated, _annotated_hook)
    converter.register_structure_hook_factory(_is_literal, _literal_hook)
    converter.register_structure_hook_factory(_is_union, _union_hook)
    converter.register_structure_hook_factory(_is_sequence, _sequence_hook)
    converter.register_structure_hook_factory(_is_mapping, _mapping_hook)
    converter.register_structure_hook_func(_is_attrs, _structure_attrs)
    return converter


_CONVERTER = _make_converter()


def _failing_items(value: object, check: Any) -> list[tuple[int, str]] | None:
    """The items of the array ``value`` that ``check`` refuses alone, with their messages, if the rest passes
    together (so they are what is wrong with the whole); else None (the whole is wrong, or not an array)."""
    if not isinstance(value, list | tuple) or not value:
        return None
    rebuild: Any = list if isinstance(value, list) else tuple
    failing: list[tuple[int, str]] = []
    for index, item in enumerate(value):
        try:
            check(rebuild([item]))
        except StructureError:
            return None  # it reports its own paths, relative to the whole
        except Exception as exc:
            failing.append((index, _exception_message(exc)))
    if not failing:
        return None
    bad = {index for index, _ in failing}
    try:
        check(rebuild(item for index, item in enumerate(value) if index not in bad))
    except Exception:
        return None
    return failing


def unknown_key_message(key: str, valid: Sequence[str]) -> str:
    """The message for an unknown ``key`` in a table whose keys are ``valid``: a suggestion, or the list."""
    if not valid:
        return "unknown key (this table takes no keys)"
    close = suggest(key, valid)
    if close is not None:
        return f"unknown key; did you mean {close!r}?"
    return f"unknown key (valid keys: {', '.join(valid)})"


@overload
def structure(value: object, tp: type[T], *, base_dir: Path | None = None) -> T: ...
@overload
def structure(value: object, tp: object, *, base_dir: Path | None = None) -> Any: ...
def structure(value: object, tp: Any, *, base_dir: Path | None = None) -> Any:
    """``value`` (parsed TOML) built into ``tp``; raises `StructureError` listing every problem."""
    structurer = Structurer(base_dir=base_dir)
    result = structurer.structure(value, tp)
    if structurer.problems:
        raise StructureError(structurer.problems)
    return result


# -- documentation -------------------------------------------------------------------------------------


@attrs.frozen
class FieldDoc:
    """One key of a table, as a generated TOML reference shows it."""

    #: The TOML key (the field's ``__init__`` name).
    name: str
    #: The expected type, in TOML words: ``number``, ``array of strings``, ``'a' | 'b'``.
    type_text: str
    #: The default written as TOML (``30.0``, ``"info"``), or None for a required key.
    default_text: str | None
    required: bool
    #: From ``attrs.field(metadata={"help": ...})``; empty if none was given.
    help: str
    #: The keys of a nested table (a field whose type is an attrs class), else empty.
    fields: tuple[FieldDoc, ...] = ()


def describe_fields(cls: type) -> list[FieldDoc]:
    """Document the keys of the attrs class ``cls``, in field order."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    docs = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        tp = hints.get(field.name, field.type if not isinstance(field.type, str | None) else Any)
        default = field.default
        default_text: str | None
        if default is attrs.NOTHING:
            default_text = None
        elif isinstance(default, _FACTORY):
            default_text = "(computed)" if default.takes_self else _default_text(default.factory())
        else:
            default_text = _default_text(default)
        inner = _strip_optional(tp)
        nested = tuple(describe_fields(inner)) if isinstance(inner, type) and attrs.has(inner) else ()
        docs.append(
            FieldDoc(
                name=field.alias,
                type_text=type_text(tp),
                default_text=default_text,
                required=default is attrs.NOTHING,
                help=str(field.metadata.get("help", "")),
                fields=nested,
            )
        )
    return docs


def _default_text(value: object) -> str:
    return "(not set)" if value is None else toml_literal(value)
