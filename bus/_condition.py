"""Conditions over topics' latest values, and triggers that fire on them. Pure logic (no trio).

A `Condition` is a small expression such as ``Vehicle.Speed > 130 and Vehicle.ADAS.ABS.IsEngaged``. Its
syntax is a safe subset of Python's expressions, parsed by the standard library's own parser (``ast``,
``mode="eval"``) and checked node by node against what is allowed, then compiled into closures: it is never
``eval``-ed, and an error points at its column. Why not a library: CEL (cel-python) would bring a grammar
engine and a slower evaluator for what is here a few dozen lines over a parser the standard library already
has and tests; and neither knows "not available".

Allowed:

- topic names as dotted names (``Vehicle.Speed``), or in backquotes for names that are not Python
  identifiers (```Vehicle.OBD.O2.1stSensor```, a segment starting with a digit; checked as the bus checks
  topic names); a record's field or a list's item by subscript
  (``Vehicle.Door["locked"]``, ``Vehicle.Tyres[0]``);
- numbers, texts, ``True``/``False`` (also ``true``/``false``);
- ``+ - * / %``, unary ``-`` and ``+``, ``abs(x)``;
- comparisons ``== != < <= > >=`` (chained as in Python: ``0 < x < 10``);
- ``and``, ``or``, ``not``;
- ``available(TOPIC)``: true when the topic has a value and it is not ``bus.NotAvailable``.

Logic is three-valued, like SQL's: a topic without a value, a ``NotAvailable`` one, NaN, a field a record
lacks, or a type that does not fit the operation (a text compared with a number, a number used as a truth
value) is *unknown*; ``not`` of unknown is unknown, ``False and`` unknown is false, ``True or`` unknown is
true. A condition holds only when it is definitely true.

A `Trigger` turns a condition into events, FleetWise's way: ``rising_edge`` fires when the condition
becomes true (after being false or unknown), ``always`` on each evaluation where it is true; either at most
once per ``min_interval`` seconds (an edge inside the interval is not remembered).
"""

from __future__ import annotations

import ast
import enum
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs

from bus._errors import TopicError, shown
from bus._pattern import check_name
from bus._sample import NotAvailable
from bus._schema import EnumMember, Record

__all__ = ["Condition", "ConditionError", "Trigger", "TriggerMode"]

TriggerMode = Literal["rising_edge", "always"]

#: Longer conditions are refused: a condition is a line in a config, not a program.
MAX_LENGTH: Final = 4096
#: And so are deeper ones (ast's own recursion stays far from Python's limit).
MAX_DEPTH: Final = 64

_UNKNOWN: Final = object()  # the third truth value, and a value that could not be had
_BACKQUOTED = re.compile(r"`([^`]*)`")

Values = Mapping[str, Any]
_Eval = Callable[[Values], Any]


class ConditionError(ValueError):
    """A condition that cannot be parsed or uses what is not allowed. ``column`` is 1-based (0: none)."""

    def __init__(self, message: str, text: str, column: int = 0) -> None:
        self.message = message
        self.text = text
        self.column = column
        where = f"at column {column}: " if column else ""
        super().__init__(f"{where}{message} (in condition {shown(text)})")


_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_SYMBOL: Final[dict[type[ast.AST], str]] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _known(value: Any) -> bool:
    if value is _UNKNOWN or value is None or isinstance(value, NotAvailable):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """An enum member as its name (``Vehicle.Gear == "DRIVE"``), any other value as it is."""
    if isinstance(value, enum.Enum | EnumMember):
        return value.name
    return value


def _truth(value: Any) -> Any:
    """True, False, or unknown (a value that is not a boolean is no truth value)."""
    return value if isinstance(value, bool) else _UNKNOWN


def _comparable(left: Any, right: Any) -> bool:
    if _number(left) and _number(right):
        return True
    if isinstance(left, bool) and isinstance(right, bool):
        return True
    return isinstance(left, str) and isinstance(right, str)


class _Compiler:
    def __init__(self, text: str, names: Mapping[str, str]) -> None:
        self.text = text
        self.names = names  # placeholder identifier -> backquoted topic name
        self.topics: set[str] = set()

    def fail(self, node: ast.AST, message: str) -> ConditionError:
        return ConditionError(message, self.text, getattr(node, "col_offset", -1) + 1)

    def compile(self, node: ast.AST, depth: int = 0) -> _Eval:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels")
        depth += 1
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name | ast.Attribute):
            name = self._dotted(node)
            if name in ("true", "false"):
                constant = name == "true"
                return lambda values: constant
            self.topics.add(name)
            return lambda values: _plain(values.get(name, _UNKNOWN))
        if isinstance(node, ast.Subscript):
            return self._subscript(node, depth)
        if isinstance(node, ast.BoolOp):
            return self._bool(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self._binary(node, depth)
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        what = {
            ast.IfExp: "'x if c else y'",
            ast.Lambda: "lambda",
            ast.List: "a list",
            ast.Tuple: "a tuple",
            ast.Dict: "a dict",
            ast.Set: "a set",
            ast.JoinedStr: "an f-string",
            ast.NamedExpr: "':='",
        }.get(type(node), type(node).__name__)
        raise self.fail(node, f"{what} is not allowed in a condition")

    def _constant(self, node: ast.Constant) -> _Eval:
        value = node.value
        if not isinstance(value, bool | int | float | str):
            raise self.fail(node, f"{value!r} is not allowed: use numbers, texts, True or False")
        return lambda values: value

    def _dotted(self, node: ast.AST) -> str:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise self.fail(node, "a topic name is a dotted name (Vehicle.Speed) or in backquotes")
        head = self.names.get(node.id, node.id)
        name = ".".join([head, *reversed(parts)])
        problem = _topic_problem(name)
        if problem is not None:
            raise self.fail(node, f"{shown(name)} is not a topic name: {problem}")
        return name

    def _subscript(self, node: ast.Subscript, depth: int) -> _Eval:
        target = self.compile(node.value, depth)
        key = node.slice
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str | int)) or isinstance(
            key.value, bool
        ):
            raise self.fail(key, "a subscript is a field name in quotes or an item number")
        index = key.value

        def item(values: Values) -> Any:
            container = target(values)
            if not _known(container):
                return _UNKNOWN
            try:
                if isinstance(index, str):
                    if isinstance(container, Record):
                        return _plain(container.fields.get(index, _UNKNOWN))
                    if isinstance(container, Mapping):
                        return _plain(container.get(index, _UNKNOWN))
                    if attrs.has(type(container)) and index in attrs.fields_dict(type(container)):
                        return _plain(getattr(container, index))
                    return _UNKNOWN
                if isinstance(container, list | tuple):
                    return _plain(container[index])
            except (IndexError, TypeError):
                pass
            return _UNKNOWN

        return item

    def _bool(self, node: ast.BoolOp, depth: int) -> _Eval:
        parts = [self.compile(value, depth) for value in node.values]
        if isinstance(node.op, ast.And):

            def all_of(values: Values) -> Any:
                result: Any = True
                for part in parts:
                    truth = _truth(part(values))
                    if truth is False:
                        return False
                    if truth is _UNKNOWN:
                        result = _UNKNOWN
                return result

            return all_of

        def any_of(values: Values) -> Any:
            result: Any = False
            for part in parts:
                truth = _truth(part(values))
                if truth is True:
                    return True
                if truth is _UNKNOWN:
                    result = _UNKNOWN
            return result

        return any_of

    def _unary(self, node: ast.UnaryOp, depth: int) -> _Eval:
        operand = self.compile(node.operand, depth)
        if isinstance(node.op, ast.Not):

            def negation(values: Values) -> Any:
                truth = _truth(operand(values))
                return truth if truth is _UNKNOWN else not truth

            return negation
        if isinstance(node.op, ast.Invert):
            raise self.fail(node, "'~' is not allowed in a condition (use 'not')")
        sign = -1 if isinstance(node.op, ast.USub) else 1

        def signed(values: Values) -> Any:
            value = operand(values)
            return value * sign if _number(value) else _UNKNOWN

        return signed

    def _binary(self, node: ast.BinOp, depth: int) -> _Eval:
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            symbol = _SYMBOL.get(type(node.op), type(node.op).__name__)
            raise self.fail(node, f"{symbol!r} is not allowed in a condition (use + - * / %)")
        left, right = self.compile(node.left, depth), self.compile(node.right, depth)

        def arithmetic(values: Values) -> Any:
            a, b = left(values), right(values)
            if not (_number(a) and _number(b) and _known(a) and _known(b)):
                return _UNKNOWN
            try:
                return op(a, b)
            except (ZeroDivisionError, OverflowError):
                return _UNKNOWN

        return arithmetic

    def _compare(self, node: ast.Compare, depth: int) -> _Eval:
        for cmp in node.ops:
            if type(cmp) not in _COMPARE:
                raise self.fail(node, f"{_SYMBOL.get(type(cmp), '?')!r} is not allowed (use == != < <= > >=)")
        ops = [_COMPARE[type(cmp)] for cmp in node.ops]
        operands = [self.compile(node.left, depth), *(self.compile(c, depth) for c in node.comparators)]

        def comparison(values: Values) -> Any:
            result: Any = True
            left = operands[0](values)
            for op, right_of in zip(ops, operands[1:], strict=True):
                right = right_of(values)
                if not (_known(left) and _known(right) and _comparable(left, right)):
                    result = _UNKNOWN
                elif not op(left, right):
                    return False
                left = right
            return result

        return comparison

    def _call(self, node: ast.Call, depth: int) -> _Eval:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in ("available", "abs") or node.keywords or len(node.args) != 1:
            raise self.fail(node, "the only functions are available(TOPIC) and abs(x), of one argument")
        if name == "available":
            argument = node.args[0]
            if not isinstance(argument, ast.Name | ast.Attribute):
                raise self.fail(argument, "available() takes a topic name")
            topic = self._dotted(argument)
            self.topics.add(topic)
            return lambda values: _known(values.get(topic, _UNKNOWN))
        operand = self.compile(node.args[0], depth)

        def absolute(values: Values) -> Any:
            value = operand(values)
            return abs(value) if _number(value) else _UNKNOWN

        return absolute


def _topic_problem(name: str) -> str | None:
    """Why ``name`` is not a topic name the bus would take (its own check), or None."""
    try:
        check_name(name)
    except TopicError as exc:
        return str(exc)
    return None


def _replace_backquotes(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with each backquoted name replaced by a placeholder identifier of the same length (so
    columns stay right), and the names the placeholders stand for."""
    names: dict[str, str] = {}

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        problem = _topic_problem(name)
        if problem is not None:
            quoted = f"`{name}`" if len(name) <= 80 else shown(name)
            raise ConditionError(f"{quoted} is not a topic name: {problem}", text, match.start() + 1)
        ident = f"_q{len(names)}_"
        ident = ident + "_" * (len(match.group(0)) - len(ident))
        names[ident] = name
        return ident

    replaced = _BACKQUOTED.sub(placeholder, text)
    if "`" in replaced:
        raise ConditionError("a backquote is not closed", text, replaced.index("`") + 1)
    return replaced, names


@attrs.frozen(eq=False)
class Condition:
    """A parsed condition: `parse` one, call it with the latest values (``{topic: value}``)."""

    #: The text it was parsed from.
    text: str
    #: The topics it reads: subscribe to these and keep their latest values.
    topics: frozenset[str]
    _evaluate: _Eval = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse and check ``text``; raises `ConditionError` with the column of the problem."""
        if not isinstance(text, str):
            raise ConditionError(f"expected a text, got {type(text).__name__}", repr(text))
        if not text.strip():
            raise ConditionError("the condition is empty", text)
        if len(text) > MAX_LENGTH:
            raise ConditionError(f"longer than {MAX_LENGTH} characters", text[:40] + "...")
        if "\n" in text or "\r" in text:
            raise ConditionError(
                "a condition is one line", text, min(text.find(c) for c in "\n\r" if c in text) + 1
            )
        if "\0" in text:
            raise ConditionError("a NUL character is not allowed", text, text.index("\0") + 1)
        source, names = _replace_backquotes(text)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            leading = len(source) - len(source.lstrip())
            if not exc.offset:  # the parser ran out of text
                raise ConditionError(f"{exc.msg}: it ends too early", text, len(text.rstrip()) + 1) from None
            raise ConditionError(exc.msg, text, exc.offset + leading) from None
        except ValueError as exc:  # a NUL character, on some Python versions
            raise ConditionError(str(exc), text) from None
        except (RecursionError, MemoryError):
            raise ConditionError("too deeply nested", text) from None
        compiler = _Compiler(text, names)
        leading = len(source) - len(source.lstrip())
        if leading:
            for node in ast.walk(tree):
                if hasattr(node, "col_offset"):
                    node.col_offset += leading
        evaluate = compiler.compile(tree.body)
        if not compiler.topics:
            raise ConditionError("the condition reads no topic", text)
        return cls(text, frozenset(compiler.topics), evaluate)

    def __call__(self, values: Values) -> bool:
        """Whether the condition holds for ``values`` (topic -> its latest value): definitely true."""
        return self._evaluate(values) is True

    def truth(self, values: Values) -> bool | None:
        """True, False, or None when the values do not decide it (a topic without a value, ...)."""
        result = _truth(self._evaluate(values))
        return None if result is _UNKNOWN else bool(result)


def _interval(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, not {value}")


def _trigger_mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("rising_edge", "always"):
        raise ValueError(f"{attribute.name} must be 'rising_edge' or 'always', not {value!r}")


@attrs.define
class Trigger:
    """When a `Condition` fires: feed it each change of the values with `update`."""

    condition: Condition
    mode: TriggerMode = attrs.field(default="rising_edge", validator=_trigger_mode)
    min_interval: float = attrs.field(default=0.0, validator=_interval)
    _was_true: bool = attrs.field(default=False, init=False)
    _last_fired: float | None = attrs.field(default=None, init=False)
    #: How many times it fired.
    fired: int = attrs.field(default=0, init=False)

    def update(self, values: Values, now: float) -> bool:
        """Evaluate at time ``now`` (seconds, any monotonic clock); true when the trigger fires."""
        holds = self.condition(values)
        edge = holds and not self._was_true
        self._was_true = holds
        if not (edge if self.mode == "rising_edge" else holds):
            return False
        if self._last_fired is not None and now - self._last_fired < self.min_interval:
            return False
        self._last_fired = now
        self.fired += 1
        return True
