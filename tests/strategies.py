"""Hypothesis strategies shared by the whole test suite: grow this module rather than scattering strategies.

Values
    `cbor_scalars`, `cbor_values` (what the bus codec round-trips exactly), `cbor_values_with_tuples` (also
    encodable; tuples come back as lists), `wide_integers`.
Typed values
    `values_of_type` draws values matching an annotation (``int``, ``tuple[Point, ...]``, ``Gear | None``,
    ``Literal[...]``, ...); `instances_of` draws instances of an attrs class from its fields' annotations.
Bytes
    `mutated_bytes` damages a valid encoding (flips, overwrites, insertions, deletions, truncation, garbage).
CAN
    `can_payloads` (random data bytes and the init/error patterns), `can_frames` (frames of a database's
    messages, some with the wrong length, the other kind of id, or an unknown id).
Bus
    `topic_names`, `patterns` (with ``*`` and ``**``), `topic_values` for a topic's rules;
    `extreme_patterns` (at and beyond the bounds) and `hostile_sessions` (a hostile socket client's
    requests, `HostileOp`).
Conditions
    `conditions` (a random condition over a few topics as text, with a reference three-valued evaluator),
    `condition_values` (values a condition may meet: numbers, NaN, texts, booleans, not available).
Restart policy
    `backoff_policies`, `supervisor_policies`, `child_specs`; `supervision_trees` (a `Tree` of nested groups,
    services, ``after`` edges, critical flags, budgets and revivals); and `steps` of a simulated supervisor
    driver (`Step`, `DriverAction`).
Recordings
    `mcap_messages`: the arguments of MCAP messages to write (channels, times in any order, odd data).
Config
    `service_names`; `dependency_graphs` (acyclic ``after`` graphs), `cyclic_dependency_graphs`;
    `toml_scalars`, `toml_values` (anything a TOML document can hold); `toml_strings` (each of the four
    kinds, brackets and quotes inside), `nested_toml_documents` (valid TOML nested to a drawn depth).
Azure IoT Hub
    `iothub_property_bags` (names and values with IoT Hub's separators in them), `iothub_topics` (real
    prefixes with hostile remainders).
"""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any, Literal

import attrs
from hypothesis import strategies as st

from bus import NotAvailable
from vwos._policy import BackoffPolicy, ChildSpec, Exit, GroupSpec, Restart, Strategy, SupervisorPolicy

__all__ = [
    "DriverAction",
    "Step",
    "Tree",
    "backoff_policies",
    "can_frames",
    "can_payloads",
    "cbor_scalars",
    "cbor_values",
    "cbor_values_with_tuples",
    "child_specs",
    "condition_values",
    "conditions",
    "cyclic_dependency_graphs",
    "dependency_graphs",
    "instances_of",
    "iothub_property_bags",
    "iothub_topics",
    "mutated_bytes",
    "nested_toml_documents",
    "patterns",
    "service_names",
    "steps",
    "supervision_trees",
    "supervisor_policies",
    "toml_scalars",
    "toml_strings",
    "toml_values",
    "topic_names",
    "values_of_type",
    "wide_integers",
]


def wide_integers() -> st.SearchStrategy[int]:
    """Integers of every size: small ones, 64-bit edges and bignums well past 64 bits."""
    return st.one_of(
        st.integers(),
        st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**64), -(2**64) - 1]),
        st.integers(min_value=-(2**200), max_value=2**200),
    )


def cbor_scalars() -> st.SearchStrategy[object]:
    """``None``, bools, ints of any size, floats (nan, infinities and -0.0 included), text and bytes."""
    return st.one_of(
        st.none(),
        st.booleans(),
        wide_integers(),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
    )


def cbor_values(*, max_leaves: int = 20) -> st.SearchStrategy[object]:
    """Plain values the codec round-trips exactly: scalars, lists and str-keyed dicts, nested."""
    return st.recursive(
        cbor_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.text(max_size=8), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def cbor_values_with_tuples(*, max_leaves: int = 20) -> st.SearchStrategy[object]:
    """Like `cbor_values`, with tuples too: encodable, but a tuple outside a typed field decodes as a list."""
    return st.recursive(
        cbor_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=5).map(tuple),
            st.dictionaries(st.text(max_size=8), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


_SCALAR_STRATEGIES: dict[object, st.SearchStrategy[Any]] = {
    type(None): st.none(),
    None: st.none(),
    bool: st.booleans(),
    int: wide_integers(),
    float: st.floats(),
    str: st.text(max_size=20),
    bytes: st.binary(max_size=20),
}

_instance_strategies: dict[tuple[type, int], st.SearchStrategy[Any]] = {}


def values_of_type(tp: Any, *, depth: int = 3) -> st.SearchStrategy[Any]:
    """Values matching the (resolved) annotation ``tp``, as the bus codec understands annotations.

    ``depth`` bounds how many attrs instances may nest inside each other (see `instances_of`); containers
    are kept small so that nested and self-referential attrs classes stay cheap to draw.
    """
    try:
        scalar = _SCALAR_STRATEGIES.get(tp)
    except TypeError:  # unhashable annotation
        scalar = None
    if scalar is not None:
        return scalar
    if tp is Any or tp is object:
        return cbor_values(max_leaves=5)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and attrs.has(tp):
        return instances_of(tp, depth=depth)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([values_of_type(a, depth=depth) for a in args])
    if origin is Literal:
        return st.sampled_from(args)
    item = values_of_type(args[0], depth=depth) if args else cbor_values(max_leaves=3)
    size = _max_size(item)
    if tp is list or origin is list:
        return st.lists(item, max_size=size)
    if tp is frozenset or origin is frozenset:
        return st.frozensets(item, max_size=size)
    if tp is set or origin is set:
        return st.sets(item, max_size=size)
    if tp is tuple or origin is tuple:
        if origin is None:  # a bare ``tuple``
            return st.lists(cbor_values(max_leaves=3), max_size=3).map(tuple)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(item, max_size=size).map(tuple)
        if not args or args == ((),):  # ``tuple[()]``
            return st.just(())
        return st.tuples(*(values_of_type(a, depth=depth) for a in args))
    if tp is dict or origin is dict:
        values = values_of_type(args[1], depth=depth) if args else cbor_values(max_leaves=3)
        return st.dictionaries(st.text(max_size=8), values, max_size=_max_size(values))
    raise TypeError(f"values_of_type: no strategy for the annotation {tp!r}")


def _max_size(items: st.SearchStrategy[Any]) -> int:
    """Containers stay small, and empty where the depth bound leaves nothing to put in them."""
    return 0 if items.is_empty else 3


def instances_of(cls: type, *, depth: int = 3) -> st.SearchStrategy[Any]:
    """Instances of the attrs class ``cls``, each init field drawn from `values_of_type` of its annotation.

    At most ``depth`` attrs instances nest inside each other: deeper, a self-referential class's optional
    fields are ``None`` and its containers empty (an explicit bound draws far faster than `st.deferred`).
    """
    if depth <= 0:
        return st.nothing()
    cached = _instance_strategies.get((cls, depth))
    if cached is None:
        hints = typing.get_type_hints(cls)
        fields = {
            f.alias: values_of_type(hints.get(f.name, Any), depth=depth - 1)
            for f in attrs.fields(cls)
            if f.init
        }
        cached = _instance_strategies[(cls, depth)] = st.builds(cls, **fields)
    return cached


_MUTATIONS = ("flip", "overwrite", "insert", "delete", "truncate", "append")


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` damaged by one to four random edits: bit flips, overwrites, insertions, deletions,
    truncation or appended garbage."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(_MUTATIONS))
        if kind == "append":
            out += draw(st.binary(min_size=1, max_size=8))
        elif kind == "insert":
            at = draw(st.integers(min_value=0, max_value=len(out)))
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not out:
            continue
        elif kind == "truncate":
            del out[draw(st.integers(min_value=0, max_value=len(out) - 1)) :]
        else:
            at = draw(st.integers(min_value=0, max_value=len(out) - 1))
            if kind == "flip":
                out[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
            elif kind == "overwrite":
                out[at] = draw(st.integers(min_value=0, max_value=255))
            else:
                del out[at]
    return bytes(out)


# -- CAN: frames of a database's messages (tests/test_can_databases.py) -------------------------------------


def can_payloads(length: int) -> st.SearchStrategy[bytes]:
    """``length`` data bytes: random ones, and the patterns ECUs send for init and error values (all bits
    set, all clear, all set but the lowest) that land on a signal's edges and its SNA values."""
    edges = [b"\xff" * length, bytes(length), b"\xfe" + b"\xff" * (length - 1) if length else b""]
    return st.one_of(st.binary(min_size=length, max_size=length), st.sampled_from(edges))


@st.composite
def can_frames(draw: st.DrawFn, messages: typing.Sequence[Any]) -> tuple[int, bytes, bool]:
    """A received frame, ``(frame id, data, extended)``, for ``messages`` (cantools ``Message`` objects):
    mostly one of them with a random payload (`can_payloads`), sometimes the wrong length, the other kind
    of id (standard for extended and back), or an id of neither."""
    message = draw(st.sampled_from(list(messages)))
    frame_id, extended, length = message.frame_id, bool(message.is_extended_frame), message.length
    fault = draw(st.sampled_from(["none"] * 6 + ["length", "kind", "id"]))
    if fault == "length":
        length = draw(st.integers(min_value=0, max_value=64).filter(lambda n: n != message.length))
    elif fault == "kind":
        extended = not extended
        if not extended:
            frame_id &= 0x7FF
    elif fault == "id":
        extended = draw(st.booleans())
        frame_id = draw(st.integers(min_value=0, max_value=0x1FFFFFFF if extended else 0x7FF))
    data = draw(can_payloads(length))
    return frame_id, data, extended


# -- config: service dependency graphs and TOML values (tests/test_config.py) -------------------------------


def not_available_reasons() -> st.SearchStrategy[str]:
    """`bus.NotAvailable` reasons: the CAN gateway's codes, and any short printable text."""
    return st.one_of(
        st.sampled_from(["out_of_range", "not_available", "e2e", "init", "error"]),
        st.text(st.characters(codec="utf-8").filter(str.isprintable), min_size=1, max_size=64),
    )


def service_names() -> st.SearchStrategy[str]:
    """Valid service names: letters, digits, ``_`` and ``-``, not starting with ``-``."""
    return st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_-]{0,11}\Z")


@st.composite
def dependency_graphs(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 8) -> dict[str, list[str]]:
    """An acyclic ``after`` graph: service name -> the names it starts after, keys in file order.

    Edges follow a hidden topological order that is independent of the file order, so services often
    depend on ones written after them. An ``after`` list may repeat a name.
    """
    names = draw(st.lists(service_names(), min_size=min_size, max_size=max_size, unique=True))
    hidden = draw(st.permutations(names))  # a service may only depend on services before it here
    graph: dict[str, list[str]] = {}
    for name in names:
        earlier = hidden[: hidden.index(name)]
        graph[name] = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
    return graph


@st.composite
def cyclic_dependency_graphs(draw: st.DrawFn, *, max_size: int = 8) -> tuple[dict[str, list[str]], list[str]]:
    """A dependency graph with at least one cycle, and one cycle in it (``[a, b, ..., a]``: a after b ...)."""
    graph = draw(dependency_graphs(min_size=1, max_size=max_size))
    names = list(graph)
    members = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    for name, nxt in zip(members, [*members[1:], members[0]], strict=True):
        graph[name] = [*graph[name], nxt]
    return graph, [*members, members[0]]


def toml_scalars() -> st.SearchStrategy[object]:
    """What TOML has for scalars: 64-bit integers, floats (nan and infinities too), booleans, strings."""
    return st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
        st.booleans(),
        st.text(max_size=10),
    )


def toml_values(*, max_leaves: int = 10) -> st.SearchStrategy[object]:
    """Any value a TOML document can hold: scalars, arrays and tables, nested."""
    return st.recursive(
        toml_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


_TOML_TEXT = st.text(alphabet="[]{}\"'#\\=,. ab\n", max_size=12)


def _without(text: str, run: str) -> str:
    while run in text:
        text = text.replace(run, run[:-1])
    return text


@st.composite
def toml_strings(draw: st.DrawFn) -> str:
    """A TOML string of any of the four kinds, its content full of brackets, quotes, escapes and ``#``."""
    content = draw(_TOML_TEXT)
    kind = draw(st.sampled_from(["basic", "literal", "multi-line basic", "multi-line literal"]))
    line = content.replace("\n", " ")
    if kind == "basic":
        return '"' + line.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == "literal":
        return "'" + line.replace("'", "") + "'"
    if kind == "multi-line basic":
        return '"""' + _without(content.replace("\\", "\\\\"), '"""') + '"""'
    return "'''" + _without(content, "'''") + "'''"


@st.composite
def nested_toml_documents(draw: st.DrawFn, *, max_depth: int = 56) -> tuple[str, int]:
    """A valid TOML document, and how deep its arrays and inline tables nest (0 to ``max_depth``): strings of
    every kind everywhere, comments, headers and dotted keys, one value nested along a spine of ``[`` and
    ``{``, with siblings at every level."""
    depth = draw(st.integers(min_value=0, max_value=max_depth))
    strings = toml_strings()
    value = draw(strings)
    for is_array in reversed(draw(st.lists(st.booleans(), min_size=depth, max_size=depth))):
        sibling = draw(strings)
        if is_array:
            gap = draw(st.sampled_from([" ", "\n", " # a [ comment { \n"]))
            value = f"[{sibling},{gap}{value}]" if draw(st.booleans()) else f"[{value}, {sibling}]"
        else:
            key = draw(st.sampled_from(["k", '"k.[{"', "'k]'", "a.b"]))
            value = f"{{ s = {sibling}, {key} = {value} }}"
    lines = [
        f"a = {draw(strings)}  # {draw(_TOML_TEXT).replace(chr(10), ' ')}",
        f"deep = {value}",
        f'[t."x.[y"]\nb.c = {draw(strings)}',
    ]
    order = draw(st.permutations(range(2)))
    return "\n".join([lines[i] for i in order] + [lines[2]]) + "\n", depth


# -- bus: names and patterns (tests/test_pattern.py) --------------------------------------------------------

_SEGMENTS = st.sampled_from(["Vehicle", "Cabin", "Door", "Row1", "Left", "Speed", "IsLocked", "A", "b_2"])


def topic_names(*, max_depth: int = 5) -> st.SearchStrategy[str]:
    """Dot-path topic names over a small alphabet of segments, so that patterns hit them often."""
    return st.lists(_SEGMENTS, min_size=1, max_size=max_depth).map(".".join)


def patterns(*, max_depth: int = 5) -> st.SearchStrategy[str]:
    """Subscription patterns: names whose segments may also be ``*`` or ``**``."""
    segment = st.one_of(_SEGMENTS, st.just("*"), st.just("**"))
    return st.lists(segment, min_size=1, max_size=max_depth).map(".".join)


# -- conditions (tests/test_condition.py) ------------------------------------------------------------------

CONDITION_TOPICS = ("Vehicle.Speed", "Vehicle.ABS.IsEngaged", "Vehicle.Gear", "`Up.1st.State`")


def condition_values() -> st.SearchStrategy[object]:
    """What a topic a condition reads may hold (a missing topic is left out of the mapping)."""
    return st.one_of(
        st.integers(-200, 200),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.sampled_from(["D", "R", "P", ""]),
        st.builds(NotAvailable, not_available_reasons()),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )


Truth = bool | None  # None: unknown


def _ref_truth(value: object) -> Truth:
    return value if isinstance(value, bool) else None


@st.composite
def conditions(
    draw: st.DrawFn, *, max_leaves: int = 6
) -> tuple[str, typing.Callable[[typing.Mapping[str, object]], Truth]]:
    """A random condition's text and a reference evaluator of its three-valued truth, written apart from
    `bus.Condition` (Kleene logic; comparisons of numbers, of booleans, of texts; the rest unknown)."""

    def known(value: object) -> bool:
        if value is None or isinstance(value, NotAvailable):
            return False
        return not (isinstance(value, float) and math.isnan(value))

    def kind(value: object) -> str:
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int | float):
            return "number"
        return "text" if isinstance(value, str) else "other"

    def leaf(d: st.DrawFn) -> tuple[str, typing.Callable[[typing.Mapping[str, object]], Truth]]:
        topic = d(st.sampled_from(CONDITION_TOPICS))
        key = topic.strip("`")
        if d(st.booleans()):
            return topic, lambda values: _ref_truth(values.get(key))
        if d(st.integers(0, 4)) == 0:
            return f"available({topic})", lambda values: known(values.get(key))
        op = d(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
        constant = d(st.one_of(st.integers(-150, 150), st.booleans(), st.sampled_from(["D", "R"])))
        compare: typing.Callable[[Any, Any], bool] = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]

        def evaluate(values: typing.Mapping[str, object]) -> Truth:
            value = values.get(key)
            if not known(value) or kind(value) != kind(constant) or kind(value) == "other":
                return None
            return bool(compare(value, constant))

        return f"{topic} {op} {constant!r}", evaluate

    def tree(d: st.DrawFn, leaves: int) -> tuple[str, typing.Callable[[typing.Mapping[str, object]], Truth]]:
        if leaves <= 1 or d(st.integers(0, 2)) == 0:
            return leaf(d)
        shape = d(st.sampled_from(["and", "or", "not"]))
        if shape == "not":
            text, inner = tree(d, leaves - 1)

            def negated(values: typing.Mapping[str, object]) -> Truth:
                truth = inner(values)
                return None if truth is None else not truth

            return f"not ({text})", negated
        (ltext, left), (rtext, right) = tree(d, leaves // 2), tree(d, leaves - leaves // 2)

        def combined(values: typing.Mapping[str, object]) -> Truth:
            a, b = left(values), right(values)
            if shape == "and":
                return False if False in (a, b) else (None if None in (a, b) else True)
            return True if True in (a, b) else (None if None in (a, b) else False)

        return f"({ltext}) {shape} ({rtext})", combined

    return tree(draw, draw(st.integers(1, max_leaves)))


# -- restart policy (tests/test_policy.py) ------------------------------------------------------------------


def _seconds(max_value: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=max_value, allow_nan=False, allow_infinity=False)


def backoff_policies(*, max_seconds: float = 100.0) -> st.SearchStrategy[BackoffPolicy]:
    """Any valid backoff policy with delays up to ``max_seconds``, including the edges (zero delays, no
    jitter, full jitter)."""
    return st.builds(
        BackoffPolicy,
        initial=_seconds(max_seconds / 10),
        multiplier=st.floats(min_value=1.0, max_value=10.0),
        max_delay=_seconds(max_seconds),
        jitter=st.floats(min_value=0.0, max_value=1.0),
        reset_after=_seconds(max_seconds),
    )


def supervisor_policies() -> st.SearchStrategy[SupervisorPolicy]:
    """Any strategy, with small intensities so that escalation is reached often."""
    return st.builds(
        SupervisorPolicy,
        strategy=st.sampled_from(Strategy),
        intensity=st.integers(min_value=0, max_value=5),
        period=st.floats(min_value=0.1, max_value=60.0),
    )


@st.composite
def child_specs(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 5, max_seconds: float = 10.0
) -> list[ChildSpec]:
    """A start-ordered list of children with unique names ``c0``, ``c1``, ..., backoffs up to
    ``max_seconds`` (short, so that simulated runs get through many restarts)."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    return [
        ChildSpec(
            f"c{i}",
            restart=draw(st.sampled_from(Restart)),
            backoff=draw(backoff_policies(max_seconds=max_seconds)),
        )
        for i in range(size)
    ]


@attrs.frozen
class Tree:
    """A supervision tree for `RestartEngine`: the root's policy, the groups (any order) and the services
    (in start order: each after everything it starts after, groups expanded)."""

    policy: SupervisorPolicy
    groups: tuple[GroupSpec, ...]
    children: tuple[ChildSpec, ...]

    @property
    def units(self) -> tuple[ChildSpec | GroupSpec, ...]:
        """Every service, then every group."""
        return (*self.children, *self.groups)

    def unit(self, name: str) -> ChildSpec | GroupSpec:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)

    def parent(self, name: str) -> str | None:
        """The group a unit belongs to (None: the root)."""
        return self.unit(name).group

    def ancestors(self, name: str) -> list[str]:
        """The groups around a unit, innermost first."""
        out = []
        parent = self.parent(name)
        while parent is not None:
            out.append(parent)
            parent = self.parent(parent)
        return out

    def services_of(self, name: str) -> set[str]:
        """A service itself; a group's services, nested ones included."""
        if any(c.name == name for c in self.children):
            return {name}
        return {c.name for c in self.children if name in self.ancestors(c.name)}

    def deps(self) -> dict[str, frozenset[str]]:
        """Every service's dependencies as services: its own ``after`` and its groups', groups expanded."""
        after = {u.name: u.after for u in self.units}
        return {
            c.name: frozenset(
                leaf
                for unit in (c.name, *self.ancestors(c.name))
                for dep in after[unit]
                for leaf in self.services_of(dep)
            )
            for c in self.children
        }


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def supervision_trees(
    draw: st.DrawFn,
    *,
    max_groups: int = 4,
    max_services: int = 6,
    max_seconds: float = 5.0,
    max_intensity: int = 3,
    critical_in: int = 3,
) -> Tree:
    """A random supervision tree: up to ``max_groups`` groups ``g0``, ``g1``, ... nested at random, up to
    ``max_services`` services ``c0``, ``c1``, ... in start order, each in a group or at the root, ``after``
    edges to earlier services and to groups (never between a unit and a group around it), critical flags
    (one unit in ``critical_in``; 1: all), own or inherited budgets (up to ``max_intensity`` restarts) and
    revivals, short backoffs."""
    seconds = st.floats(min_value=0.1, max_value=max_seconds * 4)
    policy = SupervisorPolicy(
        strategy=draw(st.sampled_from(Strategy)),
        intensity=draw(st.integers(min_value=0, max_value=max_intensity)),
        period=draw(seconds),
        revive_after=draw(_maybe(seconds)),
    )
    n_groups = draw(st.integers(min_value=0, max_value=max_groups))
    group_parent: list[int | None] = [
        draw(st.sampled_from([None, *range(i)])) for i in range(n_groups)
    ]  # a group nests only in an earlier one: a tree
    n = draw(st.integers(min_value=1, max_value=max_services))
    service_group: list[int | None] = [draw(st.sampled_from([None, *range(n_groups)])) for _ in range(n)]

    def around(group: int | None) -> list[int]:
        out = []
        while group is not None:
            out.append(group)
            group = group_parent[group]
        return out

    members = {k: [i for i in range(n) if k in around(service_group[i])] for k in range(n_groups)}
    critical = st.integers(min_value=1, max_value=critical_in).map(lambda n: n == 1)

    def after_of_service(i: int) -> tuple[str, ...]:
        mine = around(service_group[i])
        options = [f"c{j}" for j in range(i)]
        options += [f"g{k}" for k in range(n_groups) if k not in mine and all(j < i for j in members[k])]
        return tuple(draw(st.lists(st.sampled_from(options), max_size=2))) if options else ()

    def after_of_group(k: int) -> tuple[str, ...]:
        if not members[k]:
            return ()
        first = min(members[k])
        related = {k, *around(k)} | {m for m in range(n_groups) if k in around(m)}
        options = [f"c{j}" for j in range(first)]
        options += [
            f"g{m}" for m in range(n_groups) if m not in related and all(j < first for j in members[m])
        ]
        return tuple(draw(st.lists(st.sampled_from(options), max_size=2))) if options else ()

    groups = tuple(
        GroupSpec(
            f"g{k}",
            strategy=draw(st.sampled_from(Strategy)),
            intensity=draw(_maybe(st.integers(min_value=0, max_value=max_intensity))),
            period=draw(_maybe(seconds)),
            backoff=draw(backoff_policies(max_seconds=max_seconds)),
            group=None if group_parent[k] is None else f"g{group_parent[k]}",
            critical=draw(critical),
            after=after_of_group(k),
            revive_after=draw(_maybe(seconds)),
        )
        for k in range(n_groups)
    )
    children = tuple(
        ChildSpec(
            f"c{i}",
            restart=draw(st.sampled_from(Restart)),
            backoff=draw(backoff_policies(max_seconds=max_seconds)),
            after=after_of_service(i),
            group=None if service_group[i] is None else f"g{service_group[i]}",
            critical=draw(critical),
            intensity=draw(_maybe(st.integers(min_value=0, max_value=max_intensity))),
            period=draw(_maybe(seconds)),
            revive_after=draw(_maybe(seconds)),
        )
        for i in range(n)
    )
    return Tree(policy, groups, children)


class DriverAction(enum.Enum):
    """What a simulated driver does in one step."""

    TICK = "tick"  # let time pass
    READY = "ready"  # a starting service becomes ready
    EXIT = "exit"  # an active service (starting, running or stopping) ends on its own
    STOPPED = "stopped"  # a service being stopped finishes stopping
    OPERATOR_STOP = "operator_stop"  # of a unit: a service or a group
    OPERATOR_START = "operator_start"


@attrs.frozen
class Step:
    """One step of a simulated driver: after ``dt`` seconds, do ``action`` to the ``pick``-th candidate."""

    action: DriverAction
    pick: int
    exit: Exit
    dt: float


def steps(
    *, operator: bool = True, min_size: int = 20, max_size: int = 100, max_dt: float = 10.0
) -> st.SearchStrategy[list[Step]]:
    """Sequences of driver steps; ``operator=False`` leaves out operator stops and starts.

    Long by default (hypothesis draws short lists otherwise), so that runs get to restarts and escalation.
    """
    actions = [action for action in DriverAction if operator or not action.name.startswith("OPERATOR")]
    # Bias towards exits and readiness, so that runs reach restarts and escalation.
    weighted = st.one_of(
        st.sampled_from([DriverAction.EXIT, DriverAction.READY, DriverAction.STOPPED, DriverAction.TICK]),
        st.sampled_from(actions),
    )
    step = st.builds(
        Step,
        action=weighted,
        pick=st.integers(min_value=0, max_value=10),
        exit=st.sampled_from(Exit),
        dt=st.one_of(st.just(0.0), _seconds(max_dt)),
    )
    return st.lists(step, min_size=min_size, max_size=max_size)


# -- cloud uplink: campaigns, batch samples, outbox rows (tests/test_uplink_core.py) -------------------------
#
# `uplink_campaigns` (valid `Campaign`s), `uplink_keeps`, `uplink_values` (what a batch's values column
# carries: raw CBOR scalars, and containers that travel as embedded bus-codec CBOR), `uplink_timestamps_us`,
# `uplink_samples` (``(topic, timestamp_us, value)`` triples for the batch codec).

from services.uplink import Campaign, Keep  # noqa: E402 - this section's own imports

__all__ += [
    "uplink_campaigns",
    "uplink_keeps",
    "uplink_samples",
    "uplink_timestamps_us",
    "uplink_values",
]


def uplink_campaigns(*, names: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Campaign]:
    """Valid uplink campaigns: any mode (with a period for ``period``), priorities and ttls included."""
    mode = st.sampled_from(["every", "period", "change"])
    seconds = st.floats(min_value=0.001, max_value=3600.0)

    @st.composite
    def build(draw: st.DrawFn) -> Campaign:
        chosen = draw(mode)
        return Campaign(
            name=draw(names if names is not None else st.from_regex(r"\A[a-z][a-z0-9_-]{0,7}\Z")),
            topics=tuple(draw(st.lists(patterns(max_depth=3), min_size=1, max_size=3))),
            mode=chosen,  # type: ignore[arg-type]
            period=draw(seconds) if chosen == "period" else None,
            priority=draw(st.integers(min_value=-5, max_value=5)),
            ttl=draw(st.none() | seconds),
        )

    return build()


def uplink_keeps() -> st.SearchStrategy[Keep]:
    """`Keep`s over a few campaign names, priorities and ttls (in seconds, with no ttl often)."""
    return st.builds(
        Keep,
        campaigns=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True).map(tuple),
        priority=st.integers(min_value=-2, max_value=2),
        ttl=st.none() | st.sampled_from([0.5, 1.0, 10.0, 3600.0]),
    )


def uplink_values() -> st.SearchStrategy[object]:
    """Values for a batch: CBOR scalars (bignums, nan and -0.0 included) travel raw; lists and dicts, and
    "not available", travel as embedded CBOR (tag 24) made by the bus codec."""
    return st.one_of(cbor_scalars(), cbor_values(max_leaves=6), not_available_reasons().map(NotAvailable))


def uplink_timestamps_us() -> st.SearchStrategy[int]:
    """Sample timestamps in integer microseconds: around now mostly, and far from it (1970, negative)."""
    now = 1_700_000_000_000_000
    return st.one_of(
        st.integers(min_value=now, max_value=now + 3_600_000_000),
        st.integers(min_value=-(2**53), max_value=2**53),
    )


def uplink_samples(
    *, min_size: int = 1, max_size: int = 30
) -> st.SearchStrategy[list[tuple[str, int, object]]]:
    """``(topic, timestamp_us, value)`` triples over a few topics, in any time order."""
    sample = st.tuples(topic_names(max_depth=3), uplink_timestamps_us(), uplink_values())
    return st.lists(sample, min_size=min_size, max_size=max_size)


# -- bus socket protocol: every message kind (tests/test_wire.py) -------------------------------------------
#
# `wire_messages` draws any message of the socket protocol (bus/_wire.py) with the role that sends it.

from bus import Permissions, Sample  # noqa: E402 - this section's own imports
from bus import _messages as wire  # noqa: E402

__all__ += ["topics_and_runs", "wire_messages", "wire_sample_runs"]


def _wire_permissions() -> st.SearchStrategy[Permissions]:
    grants = st.lists(patterns(max_depth=3), max_size=3)
    return st.builds(Permissions, publish=grants, subscribe=grants, serve=grants, call=grants)


def _ids() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**63 - 1)


def _numbers() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False)


def _wire_publishes(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """PUBLISH runs: 1-8 values (sometimes all floats, which travel packed) with their timestamps."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        n = draw(st.integers(min_value=1, max_value=8))
        run_values = draw(st.lists(values | _numbers(), min_size=n, max_size=n))
        timestamps = draw(st.lists(_numbers(), min_size=n, max_size=n))
        return wire.Publish(draw(topic_names()), run_values, timestamps)

    return build()


@st.composite
def wire_sample_runs(draw: st.DrawFn) -> list[Sample[Any]]:
    """Samples as a busy topic's subscription hands them over: one topic and publisher, consecutive seqs,
    often one bus time, the values all floats or all of another kind (the forms SAMPLES compresses)."""
    n = draw(st.integers(min_value=1, max_value=20))
    topic, publisher = draw(topic_names()), draw(st.text(max_size=8))
    first = draw(st.integers(min_value=0, max_value=2**62))
    kind = draw(st.sampled_from([_numbers(), st.integers(), st.text(max_size=4), cbor_values(max_leaves=3)]))
    run_values = draw(st.lists(kind, min_size=n, max_size=n))
    shared = draw(st.none() | _numbers())
    return [
        Sample(
            topic,
            value,
            draw(_numbers()),
            shared if shared is not None else draw(_numbers()),
            publisher,
            first + i,
        )
        for i, value in enumerate(run_values)
    ]


def wire_messages(*, role: wire.Role) -> st.SearchStrategy[Any]:
    """Any message a ``role`` end may send once the handshake is over (values: plain CBOR values)."""
    values = cbor_values(max_leaves=6)
    both = [
        st.builds(wire.Call, _ids(), topic_names(), values, st.none() | _numbers()),
        st.builds(wire.Cancel, _ids()),
        st.builds(wire.Reply, _ids(), values),
        st.builds(
            wire.Error,
            st.none() | _ids(),
            st.sampled_from(["remote", "value_refused", "protocol", "bus", "some_future_kind"]),
            st.text(max_size=10),
            st.text(max_size=20),
            st.lists(values, max_size=3),
        ),
    ]
    if role is wire.Role.SERVER:
        sample = st.builds(Sample, topic_names(), values, _numbers(), _numbers(), st.text(max_size=8), _ids())
        return st.one_of(
            *both,
            st.builds(wire.Deliver, _ids(), st.lists(sample, min_size=1, max_size=5)),
            st.builds(wire.Deliver, _ids(), wire_sample_runs()),
        )
    overflow = st.none() | st.sampled_from(["drop_oldest", "latest", "block"])
    queue = st.none() | st.integers(min_value=1, max_value=2**20)
    return st.one_of(
        *both,
        _wire_publishes(values),
        st.builds(
            wire.Declare,
            topic_names(),
            st.sampled_from(["bool", "int", "float", "str", "bytes"]),
            st.none() | st.text(max_size=5),
            st.none() | st.integers(-100, 0),
            st.none() | st.integers(1, 100),
            st.none() | st.lists(st.integers(), max_size=3),
            st.text(max_size=10),
            st.none() | st.floats(min_value=0.001, max_value=100),
            st.integers(min_value=1, max_value=1000),
            st.sampled_from(["drop_oldest", "latest", "block"]),
        ),
        st.builds(
            wire.Subscribe,
            _ids(),
            patterns(max_depth=3) | st.lists(patterns(max_depth=3), min_size=1, max_size=4),
            queue,
            overflow,
            st.booleans(),
        ),
        st.builds(wire.Unsubscribe, _ids()),
        st.builds(wire.Get, _ids(), topic_names(), st.booleans()),
        st.builds(wire.IsStale, _ids(), topic_names()),
        st.builds(wire.Sync, _ids()),
        st.builds(wire.Serve, _ids(), topic_names()),
        st.builds(wire.Unserve, topic_names()),
    )


def wire_handshakes() -> st.SearchStrategy[tuple[Any, Any]]:
    """A HELLO and the WELCOME answering it."""
    return st.tuples(
        st.builds(
            wire.Hello,
            st.text(max_size=10),
            st.none() | _wire_permissions(),
            st.integers(min_value=wire.MIN_MAX_FRAME, max_value=2**32 - 1),
        ),
        st.builds(
            wire.Welcome, _wire_permissions(), st.integers(min_value=wire.MIN_MAX_FRAME, max_value=2**24)
        ),
    )


__all__ += ["wire_handshakes"]


@st.composite
def topics_and_runs(draw: st.DrawFn) -> tuple[Any, list[Any]]:
    """A scalar topic with or without a range, and a run of values for it: mostly of its type and often
    within range, sometimes with ints for floats, NaN, infinities, bools or other types mixed in."""
    from bus import Topic

    vtype = draw(st.sampled_from([float, int, bool, str, bytes]))
    lo = hi = None
    allowed = None
    if vtype in (int, float) and draw(st.booleans()):
        lo = draw(st.none() | st.integers(-100, 0))
        hi = draw(st.none() | st.integers(1, 100))
    elif vtype is str and draw(st.booleans()):
        allowed = ("P", "D")
    topic: Topic[Any] = Topic("Test.Run", vtype, min=lo, max=hi, allowed=allowed)
    own: st.SearchStrategy[Any] = {
        float: st.floats(-150, 150),
        int: st.integers(-150, 150),
        bool: st.booleans(),
        str: st.sampled_from(["P", "D", "X"]),
        bytes: st.binary(max_size=3),
    }[vtype]
    odd = st.one_of(st.integers(-5, 5), st.floats(), st.booleans(), st.text(max_size=2), st.none())
    values = draw(st.lists(own | odd if draw(st.booleans()) else own, min_size=1, max_size=30))
    return topic, values


@st.composite
def column_batches(draw: st.DrawFn) -> list[Any]:
    """What a socket subscriber's queue hands the broker's writer (`SampleColumns` entries): runs
    (`SampleRun`) and single samples. Often the form sent straight as columns (runs of one topic from one
    publisher with consecutive seqs, floats marked as such, one bus time or several); otherwise anything:
    other topics or publishers, gaps in the seqs, single samples between the runs."""
    from bus._sample import SampleRun
    from bus._topic import FloatList

    def values(n: int) -> Any:
        if draw(st.booleans()):
            return FloatList(draw(st.lists(_numbers(), min_size=n, max_size=n)))
        kind = draw(
            st.sampled_from([_numbers(), st.integers(), st.text(max_size=4), cbor_values(max_leaves=3)])
        )
        return draw(st.lists(kind, min_size=n, max_size=n))

    columnar = draw(st.booleans())
    topic, publisher = draw(topic_names()), draw(st.text(max_size=8))
    seq = draw(st.integers(min_value=1, max_value=2**40))
    shared_time = draw(_numbers() | st.integers(min_value=0, max_value=10**9))  # a clock may give ints
    entries: list[Any] = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        n = draw(st.integers(min_value=1, max_value=8))
        bus_time = shared_time if draw(st.booleans()) else draw(_numbers())
        if not columnar:
            if draw(st.booleans()):
                topic = draw(topic_names())
            seq += draw(st.integers(min_value=0, max_value=2))
            if draw(st.booleans()):
                entries.append(
                    Sample(topic, draw(cbor_values(max_leaves=3)), draw(_numbers()), bus_time, publisher, seq)
                )
                seq += 1
                continue
        timestamps = draw(st.lists(_numbers(), min_size=n, max_size=n))
        entries.append(SampleRun(topic, values(n), timestamps, bus_time, publisher, seq))
        seq += n
    return entries


#: A socket subscriber's queue at work: push one sample, push a run of n, take at most n (None: all).
QueueOp = tuple[Literal["one", "run", "take"], int | None]


def queue_operations() -> st.SearchStrategy[list[QueueOp]]:
    op: st.SearchStrategy[QueueOp] = st.one_of(
        st.tuples(st.just("one"), st.none()),
        st.tuples(st.just("run"), st.integers(min_value=1, max_value=12)),
        st.tuples(st.just("take"), st.none() | st.integers(min_value=1, max_value=12)),
    )
    return st.lists(op, max_size=40)


__all__ += ["QueueOp", "column_batches", "queue_operations"]


# -- hostile clients of the bus socket (tests/test_hostile.py) -------------------------------------------

#: One request (or a flood of one kind of request in one frame) a hostile client sends the broker:
#: ("subscribe", (pattern, queue_size, overflow, latest, copies)), ("unsubscribe", how_many_of_the_last),
#: ("declare", (name, type_name)), ("publish", (name, values)), ("serve", method),
#: ("call", (method, arg, copies)).
HostileOp = tuple[str, Any]

_HOSTILE_SEGMENTS = st.sampled_from(["Vehicle", "Speed", "Cabin", "*", "**", "A", "x" * 128])


def extreme_patterns() -> st.SearchStrategy[str]:
    """Patterns at and beyond the bus's bounds: up to 64 segments and 1024 characters with ``*`` and
    ``**`` anywhere (the worst for matching), thousands of ``**``, megabyte-long names, bad syntax."""
    within = (
        st.lists(_HOSTILE_SEGMENTS, min_size=1, max_size=64).map(".".join).filter(lambda p: len(p) <= 1024)
    )
    beyond = st.one_of(
        st.integers(min_value=65, max_value=3000).map(lambda n: ".".join(["**"] * n)),
        st.integers(min_value=1025, max_value=60_000).map(lambda n: "A" * n),
        st.sampled_from(["A." + "x" * 129, "Bad..Name", "", "A.*b", "Vehicle.***", ".", "9"]),
    )
    common = st.sampled_from(["Vehicle.Speed", "Vehicle.**", "**", "*", "Test.Ping", "Vehicle.Nobody"])
    return st.one_of(common, within, beyond)


def hostile_sessions() -> st.SearchStrategy[list[HostileOp]]:
    """What one hostile (or just extreme) client does: floods of subscriptions with every QoS (``block``
    readers that never read, huge queues), declarations that conflict or squat, runs of good and bad
    values, many methods served and many calls pending."""
    names = st.one_of(extreme_patterns(), st.sampled_from(["Vehicle.Speed", "Squat.X", "Vehicle.Other"]))
    subscribe = st.tuples(
        st.just("subscribe"),
        st.tuples(
            extreme_patterns(),
            st.none() | st.integers(min_value=1, max_value=2**40),
            st.sampled_from([None, "drop_oldest", "latest", "block"]),
            st.booleans(),
            st.integers(min_value=1, max_value=400),
        ),
    )
    unsubscribe = st.tuples(st.just("unsubscribe"), st.integers(min_value=1, max_value=50))
    declare = st.tuples(
        st.just("declare"), st.tuples(names, st.sampled_from(["float", "str", "int", "bytes", "NoSuchType"]))
    )
    value = st.one_of(st.floats(), st.just(1e300), st.just(-1.0), st.just("x"), st.integers(0, 400))
    publish = st.tuples(st.just("publish"), st.tuples(names, st.lists(value, min_size=1, max_size=2000)))
    serve = st.tuples(st.just("serve"), st.sampled_from(["Test.Ping", "Hostile.A", "Hostile.B", "Bad..M"]))
    call = st.tuples(
        st.just("call"),
        st.tuples(
            st.sampled_from(["Test.Ping", "Hostile.A", "Nobody.Serves", "x" * 2000]),
            st.one_of(st.integers(), st.none(), st.text(max_size=5)),
            st.integers(min_value=1, max_value=100),
        ),
    )
    op: st.SearchStrategy[HostileOp] = st.one_of(subscribe, unsubscribe, declare, publish, serve, call)
    return st.lists(op, min_size=1, max_size=12)


__all__ += ["HostileOp", "extreme_patterns", "hostile_sessions"]


# -- CAN gateway configs ---------------------------------------------------------------------------------


def _can_values() -> st.SearchStrategy[float]:
    """Signal values a config may give: mostly small ones most signals take, sometimes out of range, the
    edges of scaling, nan or inf."""
    return st.one_of(
        st.integers(0, 1).map(float),
        st.floats(0.0, 1.0),
        st.integers(-5, 1100).map(float),
        st.sampled_from([655.32, 655.34, math.nan, math.inf, -math.inf]),
    )


@st.composite
def can_gateway_tables(
    draw: st.DrawFn, layout: dict[str, list[str]], *, database: str, network: str, faults: bool = True
) -> dict[str, Any]:
    """A CAN gateway's ``[services.NAME.config]`` table over a database whose messages and signals are
    ``layout`` (message -> signal names): cyclic messages with start values, actuators, ``transmit`` and
    ``fd``. With ``faults``, mostly names the database has, sometimes one it has not, values in and out of
    range, periods too short; without, only the database's names, values 0 and 1, sane periods, and
    every message in ``transmit``."""
    messages = sorted(layout)
    # one time in six, a name the database has not
    wrong = st.integers(0, 5).map(lambda n: n == 0) if faults else st.just(False)
    message = st.builds(lambda w, m: "NoSuchMessage" if w else m, wrong, st.sampled_from(messages))

    def signal_of(name: str) -> st.SearchStrategy[str]:
        signals = st.sampled_from(layout.get(name) or ["NoSuchSignal"])
        return st.builds(lambda w, s: "NoSuchSignal" if w else s, wrong, signals)

    table: dict[str, Any] = {"database": database, "network": network, "fd": draw(st.booleans())}
    transmit = st.lists(st.one_of(message, st.just("*")), max_size=3) if faults else st.just(["*"])
    table["transmit"] = draw(transmit)
    cyclic = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(message)
        values = draw(
            st.dictionaries(
                signal_of(name), _can_values() if faults else st.sampled_from([0.0, 1.0]), max_size=2
            )
        )
        period = draw(st.sampled_from([0.01, 0.1, 0.5, 0.0001] if faults else [0.01, 0.1, 0.5]))
        cyclic.append({"message": name, "period": period, "signals": values})
    table["cyclic"] = cyclic
    actuators = []
    for i in range(draw(st.integers(0, 2))):
        name = draw(message)
        actuators.append({"topic": f"Test.Actuator{i}", "message": name, "signal": draw(signal_of(name))})
    table["actuators"] = actuators
    return table


__all__ += ["can_gateway_tables"]


# -- CAN payloads (tests/test_can_e2e.py) -------------------------------------------------------------------


def any_can_payloads(*, max_size: int = 72) -> st.SearchStrategy[bytes]:
    """Payloads a CAN link could hand over, and worse: empty, classic (0..8 bytes), FD lengths up to 64, and
    beyond; random bytes, all zeros and all ones."""
    sizes = st.sampled_from([0, 1, 2, 4, 7, 8, 12, 16, 20, 24, 32, 48, 64, max_size]) | st.integers(
        0, max_size
    )
    return st.one_of(
        st.binary(max_size=max_size),
        sizes.map(bytes),
        sizes.map(lambda n: b"\xff" * n),
    )


__all__ += ["any_can_payloads"]


# -- CAN: payloads that reach every page of a message (tests/test_can_compiled.py) -------------------------


@st.composite
def can_message_payloads(draw: st.DrawFn, message: Any) -> bytes:
    """A payload of ``message`` (a cantools ``Message``): `can_payloads`, or, for a multiplexed message,
    often one whose multiplexer selects one of its pages (the page's signals random raw values)."""
    pages = sorted({i for s in message.signals for i in (s.multiplexer_ids or ())})
    if not pages or draw(st.booleans()):
        return draw(can_payloads(message.length))
    page = draw(st.sampled_from(pages))
    raw: dict[str, Any] = {}
    for signal in message.signals:
        if signal.is_float:
            raw[signal.name] = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
        elif signal.is_signed:
            raw[signal.name] = draw(st.integers(-(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1))
        else:
            raw[signal.name] = draw(st.integers(0, (1 << signal.length) - 1))
        if signal.is_multiplexer:
            raw[signal.name] = page
    try:
        return bytes(message.encode(raw, scaling=False, strict=False))
    except Exception:  # a page of a nested multiplexer this page does not select: any payload
        return draw(can_payloads(message.length))


__all__ += ["can_message_payloads"]


# ==================================================================================== schemas that travel
# Schemas as a peer may send them: well-formed ones (`bus.TypeSchema.to_wire` of registered classes, in
# the tests) and junk shaped like them, for `TypeSchema.from_wire`, which must refuse junk with a
# `bus.CodecError` and nothing else.

_SCHEMA_WORDS = st.sampled_from(
    [
        "name",
        "fingerprint",
        "fields",
        "members",
        "type",
        "member",
        "list",
        "tuple",
        "dict",
        "union",
        "literal",
        "set",
        "frozenset",
        "float",
        "int",
        "str",
        "none",
        "any",
        "bytes",
        "bool",
        "x",
    ]
)


def schema_junk(*, max_leaves: int = 30) -> st.SearchStrategy[object]:
    """Nested maps, arrays and texts built from a schema's own words: mostly wrong, sometimes right."""
    leaves = st.one_of(_SCHEMA_WORDS, cbor_scalars())
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_SCHEMA_WORDS, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# -- Azure IoT Hub (services/uplink/_azure.py) ------------------------------------------------------------

#: Characters that mean something in an IoT Hub topic or property bag, and others that must be escaped.
_IOTHUB_SPECIALS = "$?&=%/+#. \0\n~é😀"


def iothub_property_bags() -> st.SearchStrategy[dict[str, str]]:
    """Property bags (name -> value) with every kind of character, IoT Hub's separators included."""
    chars = st.one_of(st.sampled_from(_IOTHUB_SPECIALS), st.characters(codec="utf-8"))
    text = st.text(alphabet=chars, max_size=12)
    return st.dictionaries(text.filter(bool), text, max_size=6)


@st.composite
def iothub_topics(draw: st.DrawFn) -> str:
    """Topics an IoT Hub device may be sent: real prefixes with hostile remainders, and plain junk."""
    prefix = draw(
        st.sampled_from(
            [
                "$iothub/methods/POST/",
                "$iothub/twin/res/",
                "$iothub/twin/PATCH/properties/desired",
                "$iothub/twin/PATCH/properties/desired/?",
                "devices/car-1/messages/devicebound/",
                "devices/other/messages/devicebound/",
                "devices/car-1/messages/",
                "",
            ]
        )
    )
    tail = st.text(alphabet=st.one_of(st.sampled_from(_IOTHUB_SPECIALS + "0123456789rid"), st.characters()))
    return prefix + draw(tail)


# ==================================================================================== recordings (MCAP)


def mcap_messages(
    *, channels: int = 3, max_size: int = 200
) -> st.SearchStrategy[list[tuple[int, int, bytes, int, int]]]:
    """Arguments of ``mcap.writer.Writer.add_message`` (channel id from 1 to ``channels``, log time, data,
    publish time, sequence): times in any order and at the ends of their range, empty and long data."""
    u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))
    return st.lists(
        st.tuples(
            st.integers(1, channels),
            u64,
            st.one_of(st.binary(max_size=64), st.binary(min_size=500, max_size=3000)),
            u64,
            st.integers(0, 2**32 - 1),
        ),
        max_size=max_size,
    )
