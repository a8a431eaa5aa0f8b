"""Turn decoded JSON into a typed bus value (what `vwos bus pub` and `vwos bus call` send), with cattrs.

One strict cattrs converter with hooks of ours: nothing is coerced (no string becomes a number, no ``true``
an integer; an integer widens to ``float``); ``bytes`` come from a hex string; an enum from a member's name
or its value; an attrs class from an object with its field names (an unknown or missing field is named);
``list``/``tuple``/``set``/``frozenset``/``dict``, ``Literal``, unions (the first member that takes the
value, in the order written) and ``None``. cattrs' detailed validation notes each failing item's index or
key: the first problem is raised as `JsonValueError` with its path (``[1]``, ``.lat``) and what was expected.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any, Literal

import attrs
import cattrs
import cattrs.cols
import cattrs.gen

from vwos._structure import MAX_DEPTH, _as_is, _is_any, _is_attrs, _is_literal, _is_union

__all__ = ["JsonValueError", "structure_json"]


class JsonValueError(ValueError):
    """``data`` does not make a value of the type: the ``path`` to the problem (``""``: the value itself)
    and the ``message`` saying what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _Problem(ValueError):
    """What is wrong with one value (at the path cattrs' notes give it)."""


def _type_name(tp: Any) -> str:
    """``list[Position]``, ``int | None``: the type as a user wrote it, without module names."""
    if tp is None or tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None and args:
        return f"{_type_name(origin)}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__qualname__
    return str(tp).replace("typing.", "")


def _expected(expected: str, value: object) -> typing.NoReturn:
    raise _Problem(f"expected {expected}, got {json.dumps(value)}")


def _scalar(value: object, tp: Any) -> Any:
    if tp is bool:
        return value if isinstance(value, bool) else _expected("true or false", value)
    if tp is int:
        return (
            value
            if isinstance(value, int) and not isinstance(value, bool)
            else _expected("an integer", value)
        )
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        _expected("a number", value)
    if tp is str:
        return value if isinstance(value, str) else _expected("a string", value)
    if tp is bytes:
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
        _expected("a hex string (bytes)", value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, str) and value in tp.__members__:
            return tp.__members__[value]
        for member in tp:
            if member.value == value and type(member.value) is type(value):
                return member
        _expected(f"one of {list(tp.__members__)!r} ({tp.__qualname__})", value)
    return _unsupported(tp)(value, tp)


def _unsupported(tp: Any) -> Any:
    def refuse(value: object, _: Any) -> typing.NoReturn:
        name = tp.__qualname__ if isinstance(tp, type) else repr(tp)
        raise _Problem(f"values of type {name} cannot be made from JSON")

    return refuse


def _none(value: object, _: Any) -> None:
    if value is not None:
        _expected("null", value)


def _literal_hook(tp: Any) -> Any:
    choices = typing.get_args(tp)

    def structure_literal(value: object, _: Any) -> Any:
        for choice in choices:
            if type(choice) is type(value) and choice == value:
                return choice
        _expected(f"one of {list(choices)!r}", value)

    return structure_literal


def _union_hook(tp: Any) -> Any:
    members = typing.get_args(tp)

    def structure_union(value: object, _: Any) -> Any:
        for member in members:
            try:
                return _CONVERTER.structure(value, member)
            except Exception:
                continue
        _expected(" or ".join(_type_name(m) for m in members), value)  # "int or str"

    return structure_union


_ARRAYS = (list, tuple, set, frozenset)


def _array_hook(tp: Any) -> Any:
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        inner = _CONVERTER.gen_structure_hetero_tuple(tp)

        def structure_fixed(value: object, _: Any) -> Any:
            if not isinstance(value, list):
                _expected(f"a JSON array ({_type_name(tp)})", value)
            if len(value) != len(args):
                raise _Problem(f"expected an array of {len(args)} items, got {json.dumps(value)}")
            return inner(value, tp)

        return structure_fixed
    item = args[0] if args else Any
    inner = cattrs.cols.list_structure_factory(list[item], _CONVERTER)  # type: ignore[valid-type]

    def structure_array(value: object, _: Any) -> Any:
        if not isinstance(value, list):
            _expected(f"a JSON array ({_type_name(tp)})", value)
        items = inner(value, list)
        return items if origin is list else origin(items)

    return structure_array


def _mapping_hook(tp: Any) -> Any:
    args = typing.get_args(tp)
    value_type = args[1] if len(args) == 2 else Any
    inner = cattrs.gen.mapping_structure_factory(
        dict[str, value_type],  # type: ignore[valid-type]
        _CONVERTER,
        dict,
        detailed_validation=True,
    )

    def structure_object(value: object, _: Any) -> Any:
        if not isinstance(value, dict):
            _expected("a JSON object", value)
        return inner(value, dict)

    return structure_object


def _attrs_hook(cls: type) -> Any:
    fields = {f.alias: f for f in attrs.fields(cls) if f.init}
    names = ", ".join(fields)
    required = [alias for alias, f in fields.items() if f.default is attrs.NOTHING]
    inner: Any = cattrs.gen.make_dict_structure_fn(cls, _CONVERTER, _cattrs_detailed_validation=True)

    def structure_record(value: object, _: Any) -> Any:
        if not isinstance(value, dict):
            _expected(f"a JSON object with the fields of {cls.__qualname__}", value)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise _Problem(f"{cls.__qualname__} has no field {unknown[0]!r} (fields: {names})")
        missing = [alias for alias in required if alias not in value]
        if missing:
            raise _Problem(f"{cls.__qualname__} needs the field {missing[0]!r}")
        try:
            return inner(value, cls)
        except cattrs.BaseValidationError as exc:
            for member in exc.exceptions:  # one without a field's note: the class refused the fields
                if not any(
                    isinstance(n, cattrs.AttributeValidationNote) for n in getattr(member, "__notes__", ())
                ):
                    raise _Problem(f"{cls.__qualname__} refused the fields: {member}") from exc
            raise
        except Exception as exc:  # a validator or converter of the class
            raise _Problem(f"{cls.__qualname__} refused the fields: {exc}") from exc

    return structure_record


def _is_none(tp: Any) -> bool:
    return tp is None or tp is type(None)


def _is_array(tp: Any) -> bool:
    return typing.get_origin(tp) in _ARRAYS or tp in _ARRAYS


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    # First, so that every later hook wins over it: a type with no hook of ours is not supported.
    converter.register_structure_hook_factory(lambda _: True, _unsupported)
    for scalar in (bool, int, float, str, bytes, enum.Enum):
        converter.register_structure_hook(scalar, _scalar)
    converter.register_structure_hook_func(_is_any, _as_is)
    converter.register_structure_hook_func(_is_none, _none)
    converter.register_structure_hook_factory(_is_literal, _literal_hook)
    converter.register_structure_hook_factory(_is_union, _union_hook)
    converter.register_structure_hook_factory(_is_array, _array_hook)
    converter.register_structure_hook_factory(_is_mapping, _mapping_hook)
    converter.register_structure_hook_factory(_is_attrs, _attrs_hook)
    return converter


_CONVERTER = _make_converter()


def _first_problem(exc: BaseException, path: str = "") -> tuple[str, str]:
    """The first problem in cattrs' error (an ExceptionGroup of errors noted with their index or key)."""
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        member = exc.exceptions[0]
        step = ""
        for note in getattr(member, "__notes__", ()):
            if isinstance(note, cattrs.IterableValidationNote):
                step = f"[{note.index}]" if isinstance(note.index, int) else f".{note.index}"
            elif isinstance(note, cattrs.AttributeValidationNote):
                step = f".{note.name}"
        return _first_problem(member, path + step)
    if isinstance(exc, RecursionError):
        return path, "nested too deeply to be made (Python's recursion limit)"
    return path, str(exc)


def _depth(data: Any) -> int:
    """How deeply ``data``'s arrays and objects nest (without recursion, so any depth is measured)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def structure_json(tp: Any, data: Any) -> Any:
    """``data`` (as `json.loads` returns it) as a value of type ``tp``; raises `JsonValueError`. Values
    nest at most `MAX_DEPTH` levels: deeper is refused at once, never a ``RecursionError``."""
    if _depth(data) > MAX_DEPTH:
        raise JsonValueError("", f"nested more than {MAX_DEPTH} levels deep")
    try:
        return _CONVERTER.structure(data, tp)
    except Exception as exc:
        raise JsonValueError(*_first_problem(exc)) from exc
