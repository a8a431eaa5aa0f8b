"""The supervisor's config: one TOML file, loaded into typed frozen attrs objects, every problem reported.

The file
========

Keys are snake_case. Everything but ``plugin`` has a default; a file may be as short as
``[services.demo]`` with ``plugin = "..."``. Relative paths anywhere in the file -- ``state_dir``,
``python_path``, and ``pathlib.Path`` fields of services' configs -- are relative to the directory of the
config file, not to the working directory::

    [supervisor]
    strategy = "one_for_one"   # one_for_one | one_for_all | rest_for_one
    intensity = 3              # at most this many restarts ...
    period = 5.0               # ... within this many seconds, else the supervisor gives up
    state_dir = "state"        # services' state directories live below it
    python_path = ["."]        # prepended to sys.path before plugins are loaded
    start_timeout = 30.0       # defaults for every service
    stop_timeout = 5.0
    log_level = "info"         # debug | info | warning | error | critical

    [services.overspeed]
    plugin = "overspeed:OverspeedWarning"    # "module:Class", or the name of a `vwos.services` entry point
    enabled = true                           # false: not run (still checked)
    restart = "permanent"                    # permanent | transient | temporary
    after = ["gateway"]                      # start after these are ready; stop before them
    start_timeout = 10.0                     # optional, falls back to [supervisor]
    stop_timeout = 2.0                       # optional, falls back to [supervisor]
    watchdog = 2.0                           # optional: seconds without a heartbeat before a restart
    isolated = false                         # true: run in a child process of its own
    memory_limit_mb = 256                    # optional, only with isolated = true: enforced by the OS
    backoff = { initial = 0.1, multiplier = 2.0, max_delay = 30.0, jitter = 0.1, reset_after = 60.0 }
    permissions = { publish = ["Vehicle.Warning.**"], subscribe = ["Vehicle.Speed"], call = [], serve = [] }

    [services.overspeed.config]              # built into the plugin's config_class (an attrs class)
    limit = 130.0

``[supervisor]``
    ``strategy``, ``intensity`` and ``period`` are the OTP restart strategy and intensity (see
    `vwos._policy`): more than ``intensity`` restarts within ``period`` seconds and the supervisor stops
    everything and gives up. ``state_dir`` holds one directory per service. ``python_path`` entries must be
    existing directories. ``start_timeout``/``stop_timeout`` (seconds, > 0) are the defaults of services
    that do not set their own. ``log_level`` is the supervisor's logging threshold.

``[services.NAME]``
    ``NAME`` is letters, digits, ``_`` and ``-`` (it also names the service's state directory and is
    bound to its log lines). ``plugin`` names the service class (see `vwos._plugins`). ``restart``: a
    ``permanent`` service is always restarted, a ``transient`` one only after a failure, a ``temporary``
    one never. ``after`` lists services that must be ready before this one starts (and that are stopped
    after it); the services are started in that order, a service whose ``after`` services are ready
    starting as early as its place in the file allows. Cycles are refused, and so is an enabled service
    that is ``after`` a disabled one. ``watchdog``: if set, the service must call ``ctx.heartbeat()`` at
    least that often or it is restarted. ``backoff``: the delay before the n-th consecutive restart is
    ``min(max_delay, initial * multiplier ** (n - 1))``, jittered by up to ``±jitter`` of itself, the count
    starting over once the service has been up for ``reset_after`` seconds. ``permissions``: if absent,
    the service may publish, subscribe, serve and call anything; if present, only what it lists (patterns,
    ``*`` for one segment, ``**`` for any depth) -- a kind not listed is denied altogether.
    ``isolated``: run the service in a process of its own, joined to the bus over the supervisor's Unix
    socket; ``memory_limit_mb`` (only with ``isolated = true``) is that process's memory limit, enforced by
    the OS (see ``docs/supervisor.md``, "Isolated services").

``[services.NAME.config]``
    The plugin's own settings, built strictly into its ``config_class``: no string is taken for a number,
    no integer for a boolean (an integer is fine for a float); unknown and missing keys are errors; the
    class's validators run and their messages are reported at the key they are about.

Errors
======

`load_config` and `parse_config` check the whole file and raise one `ConfigError` listing every
`Problem` found -- each names the file, the key path and what was expected::

    vwos.toml: services.overspeed.config.limit: expected a number, got the string 'fast'
    vwos.toml: services.overspeed.restat: unknown key; did you mean 'restart'?
    vwos.toml: services.gateway.after[0]: dependency cycle: gateway -> overspeed -> gateway

Loading a config imports the plugins it names (their module-level code runs) after putting
``python_path`` on ``sys.path``. Disabled services are checked like enabled ones, plugin and config
included.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bus import Permissions
from vwos._logging import LogLevel
from vwos._plugins import PluginError, load_plugin, prepend_sys_path
from vwos._policy import BackoffPolicy, Restart, Strategy, SupervisorPolicy
from vwos._service import Service
from vwos._structure import INVALID, KeyPath, Structurer, describe_value, format_path, suggest
from vwos._structure import unknown_key_message as _unknown_key_message
from vwos._supervisor import ServiceSpec

__all__ = [
    "ConfigError",
    "ConfiguredService",
    "LogLevel",
    "Problem",
    "ServiceTable",
    "SupervisorConfig",
    "SupervisorTable",
    "load_config",
    "parse_config",
]


_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")


# -- problems ------------------------------------------------------------------------------------------


@attrs.frozen
class Problem:
    """One thing wrong with a config file: ``vwos.toml: services.x.restart: expected one of ...``."""

    #: The config file, as it was named to the loader.
    file: Path
    #: Where in the file, as a TOML key path (``services.overspeed.config.limit``, ``...after[0]``); empty
    #: for a problem with the file as a whole.
    key_path: str
    message: str
    #: Line and column (1-based), where known: TOML syntax errors, undecodable bytes.
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return ": ".join(part for part in (where, self.key_path, self.message) if part)


class ConfigError(Exception):
    """A config file has problems; ``problems`` lists all of them, and ``str()`` shows one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- the file's tables, as attrs classes (also the source of the generated TOML reference) ---------------


def _positive_seconds(_inst: object, _attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:  # also refuses NaN
        raise ValueError(f"expected a number of seconds > 0, got {describe_value(value)}")


def _period(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"expected a finite number of seconds > 0, got {describe_value(value)}")


def _non_negative(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {describe_value(value)}")


def _positive_mib(_inst: object, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"expected a number of MiB >= 1, got {describe_value(value)}")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen
class SupervisorTable:
    """The ``[supervisor]`` table, as written (paths not yet anchored)."""

    strategy: Strategy = attrs.field(
        default=Strategy.ONE_FOR_ONE,
        metadata=_help("Which services a restart takes along: the one that failed, all, or it and the rest."),
    )
    intensity: int = attrs.field(
        default=3,
        validator=_non_negative,
        metadata=_help("At most this many restarts within `period` seconds, else the supervisor gives up."),
    )
    period: float = attrs.field(
        default=5.0, validator=_period, metadata=_help("The window of `intensity`, in seconds.")
    )
    state_dir: Path = attrs.field(
        default=Path("state"),
        metadata=_help("Services' state directories live below it; relative to the config file."),
    )
    python_path: tuple[Path, ...] = attrs.field(
        default=(),
        metadata=_help(
            "Directories prepended to sys.path before plugins are loaded; relative to the config file."
        ),
    )
    start_timeout: float = attrs.field(
        default=30.0,
        validator=_positive_seconds,
        metadata=_help("Seconds a service may take to become ready, unless it sets its own."),
    )
    stop_timeout: float = attrs.field(
        default=5.0,
        validator=_positive_seconds,
        metadata=_help("Seconds a service may take to stop, unless it sets its own."),
    )
    log_level: LogLevel = attrs.field(default="info", metadata=_help("The logging threshold."))


@attrs.frozen
class ServiceTable:
    """A ``[services.NAME]`` table, as written (``config`` not yet built)."""

    plugin: str = attrs.field(
        metadata=_help('The service class: "module:Class", or the name of a `vwos.services` entry point.')
    )
    enabled: bool = attrs.field(
        default=True, metadata=_help("false: the service is not run (still checked).")
    )
    restart: Restart = attrs.field(
        default=Restart.PERMANENT,
        metadata=_help("permanent: always restarted; transient: only after a failure; temporary: never."),
    )
    after: tuple[str, ...] = attrs.field(
        default=(), metadata=_help("Services that must be ready before this one starts; stopped after it.")
    )
    start_timeout: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help("Seconds to become ready; default: [supervisor] start_timeout."),
    )
    stop_timeout: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help("Seconds to stop; default: [supervisor] stop_timeout."),
    )
    watchdog: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help("Seconds without a heartbeat before the service is restarted; default: no watchdog."),
    )
    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy,
        metadata=_help(
            "The delay before a restart: min(max_delay, initial * multiplier ** (n - 1)), ±jitter."
        ),
    )
    permissions: Permissions | None = attrs.field(
        default=None,
        metadata={
            "help": "Bus name patterns the service may publish, subscribe, serve and call; absent: "
            "everything, present: only what is listed.",
            # bus.Permissions knows nothing of config files: the help of its keys lives here.
            "field_help": {
                "publish": "Topic names or patterns (`*` one segment, `**` any depth) it may publish.",
                "subscribe": "Patterns it may subscribe to (and `get`): each must lie within one of these.",
                "serve": "Method names or patterns it may serve.",
                "call": "Method names or patterns it may call.",
                "block": 'Patterns it may subscribe to with overflow = "block" (making publishers that '
                "wait, wait for it); each subscription's pattern must lie within one of these.",
            },
        },
    )
    isolated: bool = attrs.field(
        default=False,
        metadata=_help("true: the service runs in a process of its own, joining the bus over a socket."),
    )
    memory_limit_mb: int | None = attrs.field(
        default=None,
        validator=_positive_mib,
        metadata=_help(
            "An isolated service's memory (address space) limit in MiB, enforced by the OS; "
            "only with isolated = true."
        ),
    )
    config: dict[str, Any] = attrs.field(
        factory=dict, metadata=_help("The plugin's own settings, built into its config_class.")
    )


# -- the result ------------------------------------------------------------------------------------------


@attrs.frozen
class ConfiguredService(ServiceSpec):
    """A service as the config file describes it: a `ServiceSpec` for the supervisor, plus its plugin."""

    #: The ``plugin = "..."`` reference the service class was loaded from.
    plugin: str = attrs.field(default="", kw_only=True)


@attrs.frozen
class SupervisorConfig:
    """A loaded config file: everything checked, paths absolute, services in start order."""

    #: The config file (absolute).
    path: Path
    policy: SupervisorPolicy
    #: Absolute; each service's state directory is ``state_dir / name``.
    state_dir: Path
    #: Absolute; already prepended to ``sys.path``.
    python_path: tuple[Path, ...]
    #: The defaults, already applied to every service that sets none.
    start_timeout: float
    stop_timeout: float
    log_level: LogLevel
    #: Every service, disabled ones included, in a valid start order: each after all of its ``after``
    #: services, and otherwise in file order.
    services: tuple[ConfiguredService, ...]

    def service(self, name: str) -> ConfiguredService:
        """The service called ``name``; KeyError if there is none."""
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)


# -- loading ---------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> SupervisorConfig:
    """Read, parse and check the config file at ``path``; raises `ConfigError` listing every problem."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(file, "", "cannot read the config file: no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(file, "", "cannot read the config file: it is a directory")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(file, "", f"cannot read the config file: {reason}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        message = f"not UTF-8 text (TOML must be UTF-8): byte 0x{data[exc.start]:02x} cannot be decoded"
        raise ConfigError([Problem(file, "", message, line, column)]) from None
    return parse_config(text, path=file)


def parse_config(text: str, *, path: str | os.PathLike[str]) -> SupervisorConfig:
    """Parse and check a config given as text; ``path`` names it in problems and anchors relative paths.

    Raises `ConfigError` listing every problem.
    """
    file = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(file, exc)]) from None
    return _Loader(file).load(data)


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\Z")


def _syntax_problem(file: Path, exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    match = _AT.search(message)
    if match is None:
        return Problem(file, "", f"invalid TOML: {message}")
    line, column = int(match[1]), int(match[2])
    return Problem(file, "", f"invalid TOML: {message[: match.start()]}", line, column)


@attrs.define
class _Entry:
    """A service while the file is being checked."""

    name: str
    index: int
    path: KeyPath
    #: The keys of its table that are valid on their own (see `Structurer.table`).
    values: dict[str, Any]
    service_class: type[Service[Any]] | None = None
    config: Any = INVALID
    #: ``after``, known services only, without repeats.
    deps: list[str] = attrs.Factory(list)

    @property
    def enabled(self) -> bool:
        return bool(self.values.get("enabled", True))


class _Loader:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.absolute().parent
        self.structurer = Structurer(base_dir=self.base)

    def problem(self, path: KeyPath, message: str) -> None:
        self.structurer.problem(path, message)

    def load(self, data: dict[str, Any]) -> SupervisorConfig:
        s = self.structurer
        for key in data:
            if key not in ("supervisor", "services"):
                self.problem((key,), _unknown_key_message(key, ["supervisor", "services"]))
        supervisor = s.table(data.get("supervisor", {}), SupervisorTable, ("supervisor",)) or {}
        settings = SupervisorTable(**supervisor)
        python_path = tuple(self.base / p for p in settings.python_path)
        for i, directory in enumerate(python_path):
            if not directory.is_dir():
                self.problem(("supervisor", "python_path", i), f"no such directory: {directory}")
        prepend_sys_path(python_path)

        services = data.get("services", {})
        if not isinstance(services, dict):
            self.problem(("services",), f"expected a table of services, got {describe_value(services)}")
            services = {}
        entries = [self._service(name, table, i) for i, (name, table) in enumerate(services.items())]
        self._check_after(entries)
        order = self._start_order(entries)

        if s.problems:
            raise ConfigError(
                [Problem(self.file, format_path(p.path), p.message) for p in s.problems],
            )
        by_name = {e.name: e for e in entries}
        return SupervisorConfig(
            path=self.file.absolute(),
            policy=SupervisorPolicy(settings.strategy, settings.intensity, settings.period),
            state_dir=self.base / settings.state_dir,
            python_path=python_path,
            start_timeout=settings.start_timeout,
            stop_timeout=settings.stop_timeout,
            log_level=settings.log_level,
            services=tuple(self._spec(by_name[name], settings) for name in order),
        )

    def _service(self, name: str, table: object, index: int) -> _Entry:
        path: KeyPath = ("services", name)
        if not _SERVICE_NAME.match(name):
            self.problem(
                path,
                "invalid service name: use letters, digits, '_' and '-', not starting with '-' (the name is "
                "also the service's state directory)",
            )
        values = self.structurer.table(table, ServiceTable, path)
        entry = _Entry(name, index, path, values or {})
        if entry.values.get("memory_limit_mb") is not None and not entry.values.get("isolated", False):
            self.problem(
                (*path, "memory_limit_mb"),
                "a memory limit needs a process of its own: set isolated = true, or drop memory_limit_mb",
            )
        ref = entry.values.get("plugin")
        if ref is None:
            return entry
        try:
            entry.service_class = load_plugin(ref)
        except PluginError as exc:
            self.problem((*path, "plugin"), str(exc))
            return entry
        config_class = entry.service_class.config_class
        config = entry.values.get("config", {})
        if attrs.has(config_class) and not any(f.init for f in attrs.fields(config_class)):
            for key in config:
                self.problem((*path, "config", key), f"unknown key: {ref} takes no config")
            entry.config = config_class()
            return entry
        entry.config = self.structurer.structure(config, config_class, (*path, "config"))
        return entry

    def _check_after(self, entries: list[_Entry]) -> None:
        by_name = {e.name: e for e in entries}
        for entry in entries:
            for i, dep in enumerate(entry.values.get("after", ())):
                where = (*entry.path, "after", i)
                other = by_name.get(dep)
                if other is None:
                    message = f"unknown service {dep!r}"
                    close = suggest(dep, by_name)
                    if close is not None:
                        message += f"; did you mean {close!r}?"
                    elif by_name:
                        message += f" (services: {', '.join(by_name)})"
                    self.problem(where, message)
                    continue
                if entry.enabled and not other.enabled:
                    self.problem(
                        where,
                        f"{dep!r} is disabled (enabled = false), so {entry.name!r}, which starts after it, "
                        f"cannot start: enable {dep!r} or disable {entry.name!r}",
                    )
                if dep not in entry.deps:
                    entry.deps.append(dep)

    def _start_order(self, entries: list[_Entry]) -> list[str]:
        """Topological order by ``after``, ties going to the service earlier in the file; cycles reported."""
        order, cycles = start_order({e.name: e.deps for e in entries})
        by_name = {e.name: e for e in entries}
        for cycle in cycles:
            first = by_name[cycle[0]]
            index = list(first.values.get("after", ())).index(cycle[1])
            self.problem((*first.path, "after", index), f"dependency cycle: {' -> '.join(cycle)}")
        return order

    def _spec(self, entry: _Entry, settings: SupervisorTable) -> ConfiguredService:
        table = ServiceTable(**entry.values)
        assert entry.service_class is not None  # else there was a problem
        return ConfiguredService(
            name=entry.name,
            plugin=table.plugin,
            service_class=entry.service_class,
            config=entry.config,
            enabled=table.enabled,
            restart=table.restart,
            after=tuple(entry.deps),
            start_timeout=settings.start_timeout if table.start_timeout is None else table.start_timeout,
            stop_timeout=settings.stop_timeout if table.stop_timeout is None else table.stop_timeout,
            watchdog=table.watchdog,
            backoff=table.backoff,
            permissions=Permissions.ALL if table.permissions is None else table.permissions,
            isolated=table.isolated,
            memory_limit_mb=table.memory_limit_mb,
        )


def start_order(after: Mapping[str, Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Order names so that each comes after all the names it lists, ties going to the earlier key.

    ``after`` maps each name (in file order) to the names it starts after; names it lists that are not keys
    are ignored. Returns the order of every name not caught in or behind a cycle, and the cycles, each as
    ``[a, b, ..., a]`` (``a`` starts after ``b`` ...), starting at its earliest name, earliest first.
    """
    index = {name: i for i, name in enumerate(after)}
    deps = {name: [d for d in dict.fromkeys(after[name]) if d in index] for name in after}
    waiting = {name: len(deps[name]) for name in after}
    dependents: dict[str, list[str]] = {name: [] for name in after}
    for name in after:
        for dep in deps[name]:
            dependents[dep].append(name)
    ready = [(index[name], name) for name in after if not deps[name]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (index[dependent], dependent))
    placed = set(order)
    left = {name: [d for d in deps[name] if d not in placed] for name in after if name not in placed}
    cycles = [_cycle_through(component[0], left, set(component)) for component in _cyclic_components(left)]
    cycles.sort(key=lambda cycle: index[cycle[0]])
    return order, cycles


def _cyclic_components(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` that contain a cycle, members in key order (Tarjan)."""
    position = {name: i for i, name in enumerate(graph)}
    number: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in number:
            continue
        # Iterative DFS: (node, index of the next edge to follow).
        work: list[tuple[str, int]] = [(root, 0)]
        number[root] = low[root] = len(number)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edge = work[-1]
            edges = graph[node]
            if edge < len(edges):
                work[-1] = (node, edge + 1)
                nxt = edges[edge]
                if nxt not in number:
                    number[nxt] = low[nxt] = len(number)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], number[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == number[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(sorted(component, key=position.__getitem__))
    return components


def _cycle_through(start: str, graph: dict[str, list[str]], members: set[str]) -> list[str]:
    """A shortest cycle from ``start`` back to it, within ``members`` (breadth first, edges in list order)."""
    parent: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for nxt in graph[node]:
            if nxt not in members:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start!r}")  # pragma: no cover -- members is a cyclic component
