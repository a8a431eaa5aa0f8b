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
    everything and gives up. ``state_dir`` holds one directory per service; it must be (or be creatable
    as) a directory the user can create directories in, which the check probes (`state_dir_problems`).
    ``python_path`` entries must be existing directories. ``start_timeout``/``stop_timeout`` are the
    defaults of services that do not set their own. ``log_level`` is the supervisor's logging threshold.
    Every duration in the file is seconds, > 0 and at most `MAX_SECONDS` (so finite).

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
    the OS (see ``docs/supervisor.md``, "Isolated services"), and at most what the OS takes
    (`max_memory_limit_mb`). ``NAME`` has at most `MAX_SERVICE_NAME` characters.

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

The file is at most `MAX_FILE_BYTES`; arrays and inline tables nest at most `MAX_NESTING` levels and keys
have at most `MAX_KEY_PARTS` dotted parts, checked before tomllib parses it (tomllib recurses per level, and
its work grows with the square of a key's length).

Loading a config imports the plugins it names (their module-level code runs) after putting
``python_path`` on ``sys.path``. Disabled services are checked like enabled ones, plugin and config
included.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from bus import Action, ConnectionLimits, Permissions
from vwos._logging import LogLevel
from vwos._plugins import PluginError, load_plugin, prepend_sys_path
from vwos._policy import (
    BackoffPolicy,
    GroupSpec,
    Restart,
    Strategy,
    SupervisorPolicy,
    service_dependencies,
    start_order,
)
from vwos._service import Service
from vwos._spec import ServiceSpec
from vwos._structure import (
    INVALID,
    FieldProblem,
    KeyPath,
    StructureError,
    Structurer,
    describe_value,
    format_path,
    suggest,
)
from vwos._structure import unknown_key_message as _unknown_key_message

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

#: The longest service name. The name is a directory (NAME_MAX is 255 bytes), a bus client name, a log
#: field, and part of the names services derive from it (``Uplink.<name>.Status``): 64 is plenty.
MAX_SERVICE_NAME: Final = 64

#: Room left below a service's state directory for the names of its own files (PATH_MAX less this is the
#: longest ``state_dir/NAME``).
_STATE_ROOM: Final = 256

#: The largest config file read (``vwos check /dev/zero`` must not read forever).
MAX_FILE_BYTES: Final = 4 * 1024 * 1024

#: TOML nesting bounds, checked before the file is parsed (Python's tomllib recurses once per level of arrays
#: and inline tables, and its work grows with the square of a dotted key's length).
MAX_NESTING: Final = 50
MAX_KEY_PARTS: Final = 50


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
        """One line (a message of several lines, such as a plugin's validator may raise, is joined with
        `` | ``), so that each problem ``vwos check`` prints is one line."""
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        message = " | ".join(line.strip() for line in self.message.splitlines() if line.strip())
        return ": ".join(part for part in (where, self.key_path, message) if part)


class ConfigError(Exception):
    """A config file has problems; ``problems`` lists all of them, and ``str()`` shows one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- the file's tables, as attrs classes (also the source of the generated TOML reference) ---------------


#: The longest duration any setting may be, in seconds (about 31.7 years). Longer never comes in a car's life,
#: and beyond ~9.2e9 s some of the OS's timers (a thread's wait, a socket's timeout) overflow.
MAX_SECONDS: Final = 1_000_000_000.0

_MIB: Final = 1024 * 1024


def _check_seconds(value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"expected a number of seconds > 0, got {describe_value(value)}")
    if not value <= MAX_SECONDS:
        raise ValueError(
            f"expected at most {MAX_SECONDS:.0f} seconds (about 31 years), got {describe_value(value)}"
        )


def _positive_seconds(_inst: object, _attribute: attrs.Attribute[Any], value: float | None) -> None:
    """A duration in seconds: > 0 and at most `MAX_SECONDS` (so finite); None passes."""
    if value is not None:
        _check_seconds(value)


def _period(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    _check_seconds(value)


def _non_negative(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {describe_value(value)}")


#: The shortest `loop_block_limit` (other than 0, off): shorter, ordinary steps (a JSON decode, a garbage
#: collection) would count as blocks and restart healthy services.
MIN_LOOP_BLOCK_LIMIT: Final = 0.5


def _non_negative_seconds(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= MAX_SECONDS:  # also refuses NaN
        raise ValueError(
            f"expected a number of seconds >= 0 and at most {MAX_SECONDS:.0f}, got {describe_value(value)}"
        )


def _loop_block_limit(_inst: object, _attribute: attrs.Attribute[float], value: float) -> None:
    if value == 0:
        return
    if not MIN_LOOP_BLOCK_LIMIT <= value <= MAX_SECONDS:  # also refuses NaN
        raise ValueError(
            f"expected 0 (off) or a number of seconds from {MIN_LOOP_BLOCK_LIMIT:g} to {MAX_SECONDS:.0f}, "
            f"got {describe_value(value)}"
        )


def max_memory_limit_mb() -> tuple[int, str]:
    """The largest ``memory_limit_mb`` an isolated service's process can be given here, and why.

    The child sets it as ``RLIMIT_AS`` in bytes: ``setrlimit`` takes at most ``sys.maxsize`` (2**63 - 1 on a
    64-bit system), and a process that is not root cannot raise its hard limit (``ulimit -Hv``).
    """
    most, why = sys.maxsize // _MIB, "the largest address-space limit (RLIMIT_AS) the OS takes"
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return most, why
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY and hard // _MIB < most and os.geteuid() != 0:
        return hard // _MIB, "this process's hard address-space limit (ulimit -Hv), which only root may raise"
    return most, why


def _positive_mib(_inst: object, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if value < 1:
        raise ValueError(f"expected a number of MiB >= 1, got {describe_value(value)}")
    most, why = max_memory_limit_mb()
    if value > most:
        raise ValueError(f"expected at most {most} MiB ({why}), got {describe_value(value)}")


def _backoff_bounds(_inst: object, _attribute: attrs.Attribute[BackoffPolicy], value: BackoffPolicy) -> None:
    """The delays of a backoff must be finite (`BackoffPolicy` itself takes any number >= 0)."""
    problems = []
    for name in ("initial", "max_delay", "reset_after"):
        seconds = getattr(value, name)
        if not seconds <= MAX_SECONDS:
            message = (
                f"expected at most {MAX_SECONDS:.0f} seconds (about 31 years), got {describe_value(seconds)}"
            )
            problems.append(FieldProblem((name,), message))
    if problems:
        raise StructureError(problems)


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
    revive_after: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help(
            "Seconds after a unit failed (exhausted its restart budget) that it is started again on its "
            "own, with a fresh budget; default: only `vwos restart` revives it. Groups and services may "
            "set their own."
        ),
    )
    loop_block_limit: float = attrs.field(
        default=5.0,
        validator=_loop_block_limit,
        metadata=_help(
            "Seconds one step of a service's task may block the event loop before that service (only it) "
            "is restarted; 0 turns the check off."
        ),
    )
    undeclared_grace: float = attrs.field(
        default=10.0,
        validator=_non_negative_seconds,
        metadata=_help(
            "Seconds after which a subscription to an exact topic name nobody has declared is logged (once, "
            "with the closest declared names: most often a typo); 0 turns the report off."
        ),
    )
    connection_limits: ConnectionLimits = attrs.field(
        factory=ConnectionLimits,
        metadata=_help(
            "What one client of the bus socket may hold at once (isolated services and tools alike); "
            "beyond, a request is refused with a clear error and the connection stays up."
        ),
    )


def _budget_help(unit: str) -> dict[str, dict[str, str]]:
    return {
        "intensity": _help(
            f"At most this many restarts of the {unit} within `period` seconds; default: its group's."
        ),
        "period": _help("The window of `intensity`, in seconds; default: its group's."),
    }


@attrs.frozen
class GroupTable:
    """A ``[groups.NAME]`` table: a supervision group (a nested supervisor)."""

    strategy: Strategy = attrs.field(
        default=Strategy.ONE_FOR_ONE,
        metadata=_help(
            "Which of the group's units a restart takes along: the one that failed, all, or it and the rest."
        ),
    )
    group: str | None = attrs.field(
        default=None, metadata=_help("The group this group belongs to; default: the supervisor itself.")
    )
    critical: bool = attrs.field(
        default=False,
        metadata=_help(
            "true: when the group exhausts its restart budget, its own group is failed (restarted whole, or "
            "the supervisor gives up at the top); false: the group alone fails and stays down."
        ),
    )
    after: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_help("Services or groups that must be ready before any service of this group starts."),
    )
    intensity: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_non_negative),
        metadata=_help(
            "At most this many restarts of the group as a whole within `period` seconds; also the default "
            "budget of its units. Default: its group's."
        ),
    )
    period: float | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_period),
        metadata=_help("The window of `intensity`, in seconds."),
    )
    backoff: BackoffPolicy = attrs.field(
        factory=BackoffPolicy, metadata=_help("The delay before the group is restarted as a whole.")
    )
    revive_after: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help(
            "Seconds after the group failed that it is started again on its own; default: its group's."
        ),
    )


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
        validator=_backoff_bounds,
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
    group: str | None = attrs.field(
        default=None, metadata=_help("The group the service belongs to (`[groups.NAME]`); default: none.")
    )
    critical: bool = attrs.field(
        default=False,
        metadata=_help(
            "true: when the service exhausts its restart budget, its group is failed (restarted whole, or "
            "the supervisor gives up at the top); false: the service alone fails and stays down."
        ),
    )
    intensity: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_non_negative),
        metadata=_help(
            "At most this many restarts within `period` seconds, else it fails; default: its group's."
        ),
    )
    period: float | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_period),
        metadata=_help("The window of `intensity`, in seconds; default: its group's."),
    )
    revive_after: float | None = attrs.field(
        default=None,
        validator=_positive_seconds,
        metadata=_help("Seconds after it failed that it is started again on its own; default: its group's."),
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
    #: The supervision groups (``[groups.NAME]``), in file order.
    groups: tuple[GroupSpec, ...] = ()
    #: Seconds a task step may block the event loop before its service is restarted; None: not checked.
    loop_block_limit: float | None = 5.0
    #: Seconds before a subscription to an undeclared exact name is reported; None: not reported.
    undeclared_grace: float | None = 10.0
    #: What one client connection of the bus socket may hold at once.
    connection_limits: ConnectionLimits = attrs.field(factory=ConnectionLimits)

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
        with file.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([Problem(file, "", "cannot read the config file: no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(file, "", "cannot read the config file: it is a directory")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(file, "", f"cannot read the config file: {reason}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(file, "", _too_large())])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        message = f"not UTF-8 text (TOML must be UTF-8): byte 0x{data[exc.start]:02x} cannot be decoded"
        raise ConfigError([Problem(file, "", message, line, column)]) from None
    return parse_config(text, path=file)


def _too_large() -> str:
    return f"the config file is larger than {MAX_FILE_BYTES // _MIB} MiB (is it the right file?)"


def parse_config(text: str, *, path: str | os.PathLike[str]) -> SupervisorConfig:
    """Parse and check a config given as text; ``path`` names it in problems and anchors relative paths.

    Raises `ConfigError` listing every problem.
    """
    file = Path(path)
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([Problem(file, "", _too_large())])
    too_deep = _nesting_problem(text, file)
    if too_deep is not None:
        raise ConfigError([too_deep])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(file, exc)]) from None
    except RecursionError:  # what _nesting_problem did not foresee
        raise ConfigError([Problem(file, "", "invalid TOML: nested too deeply to be parsed")]) from None
    return _Loader(file).load(data)


#: What the nesting scan looks at: string and comment openers, brackets, and what separates keys.
_TOKEN = re.compile(r"\"\"\"|'''|[\"'#\[\]{}\n=,.]")
#: Where each kind of string ends, from just after its opening quotes.
_STRING_END = {
    '"""': re.compile(r'(?:[^"\\]|\\.|"{1,2}(?!"))*"{3,5}', re.S),
    "'''": re.compile(r"(?:[^']|'{1,2}(?!'))*'{3,5}", re.S),
    '"': re.compile(r'(?:[^"\\\n]|\\.)*"'),
    "'": re.compile(r"[^'\n]*'"),
}


def _nesting_problem(text: str, file: Path) -> Problem | None:
    """The first place where arrays and inline tables nest deeper than `MAX_NESTING`, or a key has more
    than `MAX_KEY_PARTS` dotted parts, as a problem with its line and key; None if there is none.

    A scan of the text, not a parse: it knows strings, comments, table headers, keys and values just well
    enough to count, and leaves every syntax error to tomllib.
    """
    stack: list[str] = []  # the open "[" and "{" of values
    in_key, in_header = True, False
    parts = 1  # of the key being read
    table, key = "", ""  # for the message: the last [table] header and the top-level key
    start = 0  # where the current header or top-level key began
    pos = 0
    while True:
        match = _TOKEN.search(text, pos)
        if match is None:
            return None
        token, at = match.group(), match.start()
        pos = match.end()
        if token == "#":
            newline = text.find("\n", pos)
            pos = len(text) if newline < 0 else newline
        elif token in _STRING_END:
            end = _STRING_END[token].match(text, pos)
            pos = len(text) if end is None else end.end()  # unterminated: tomllib will say so
        elif token == "\n":
            if not stack:
                in_key, in_header, parts, start = True, False, 1, pos
        elif token == "." and in_key:
            parts += 1
            if parts > MAX_KEY_PARTS:
                where = f"[{table}]: " if table else ""
                message = f"invalid TOML: {where}a key of more than {MAX_KEY_PARTS} dotted parts"
                return _problem_at(file, text, at, message)
        elif token == "[":
            if not stack and in_key and not in_header:
                in_header, start = True, pos
            elif not in_header:
                stack.append(token)
                in_key = False
                if len(stack) > MAX_NESTING:
                    return _too_deep(file, text, at, table, key)
        elif token == "]":
            if in_header:
                table = text[start:at].strip("[] \t")
            elif stack:
                stack.pop()
        elif token == "{":
            stack.append(token)
            in_key, parts = True, 1
            if len(stack) > MAX_NESTING:
                return _too_deep(file, text, at, table, key)
        elif token == "}":
            if stack:
                stack.pop()
            in_key = False
        elif token == "=" and in_key:
            if not stack:
                key = text[start:at].strip()
            in_key = False
        elif token == "," and stack and stack[-1] == "{":
            in_key, parts = True, 1


def _too_deep(file: Path, text: str, at: int, table: str, key: str) -> Problem:
    where = ".".join(part for part in (table, key) if part)
    message = f"invalid TOML: arrays and inline tables nested more than {MAX_NESTING} levels deep"
    return _problem_at(file, text, at, message, where[:200])


def _problem_at(file: Path, text: str, at: int, message: str, key_path: str = "") -> Problem:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return Problem(file, key_path, message, line, column)


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
            if key not in ("supervisor", "groups", "services"):
                self.problem((key,), _unknown_key_message(key, ["supervisor", "groups", "services"]))
        supervisor = s.table(data.get("supervisor", {}), SupervisorTable, ("supervisor",)) or {}
        settings = SupervisorTable(**supervisor)
        python_path = tuple(self.base / p for p in settings.python_path)
        for i, directory in enumerate(python_path):
            if not directory.is_dir():
                self.problem(("supervisor", "python_path", i), f"no such directory: {directory}")
        prepend_sys_path(python_path)

        groups = self._groups(data.get("groups", {}))
        services = data.get("services", {})
        if not isinstance(services, dict):
            self.problem(("services",), f"expected a table of services, got {describe_value(services)}")
            services = {}
        entries = [self._service(name, table, i) for i, (name, table) in enumerate(services.items())]
        self._check_tree(entries, groups)
        self._check_after(entries, groups)
        self._check_bus_names(entries)
        order = self._start_order(entries, groups)
        usable = [e.name for e in entries if e.enabled and _service_name_problem(e.name) is None]
        for where, message in state_dir_problems(self.base / settings.state_dir, usable):
            self.problem(where, message)

        if s.problems:
            raise ConfigError(
                [Problem(self.file, format_path(p.path), p.message) for p in s.problems],
            )
        by_name = {e.name: e for e in entries}
        return SupervisorConfig(
            path=self.file.absolute(),
            policy=SupervisorPolicy(
                settings.strategy, settings.intensity, settings.period, revive_after=settings.revive_after
            ),
            state_dir=self.base / settings.state_dir,
            python_path=python_path,
            start_timeout=settings.start_timeout,
            stop_timeout=settings.stop_timeout,
            log_level=settings.log_level,
            services=tuple(self._spec(by_name[name], settings) for name in order),
            groups=tuple(self._group_spec(g) for g in groups),
            loop_block_limit=settings.loop_block_limit or None,
            undeclared_grace=settings.undeclared_grace or None,
            connection_limits=settings.connection_limits,
        )

    def _groups(self, groups: object) -> list[_Entry]:
        if not isinstance(groups, dict):
            self.problem(("groups",), f"expected a table of groups, got {describe_value(groups)}")
            return []
        entries = []
        for index, (name, table) in enumerate(groups.items()):
            path: KeyPath = ("groups", name)
            if not _SERVICE_NAME.match(name):
                self.problem(
                    path, "invalid group name: use letters, digits, '_' and '-', not starting with '-'"
                )
            values = self.structurer.table(table, GroupTable, path)
            entries.append(_Entry(name, index, path, values or {}))
        return entries

    def _group_spec(self, entry: _Entry) -> GroupSpec:
        table = GroupTable(**entry.values)
        return GroupSpec(
            entry.name,
            strategy=table.strategy,
            intensity=table.intensity,
            period=table.period,
            backoff=table.backoff,
            group=table.group,
            critical=table.critical,
            after=tuple(entry.deps),
            revive_after=table.revive_after,
        )

    def _check_tree(self, services: list[_Entry], groups: list[_Entry]) -> None:
        """Names are unique across services and groups; ``group`` names a group; groups nest as a tree."""
        group_names = {g.name: g for g in groups}
        for g in groups:
            if g.name in {e.name for e in services}:
                self.problem(
                    g.path, f"{g.name!r} names a service too: services and groups share one namespace"
                )
        for entry in (*services, *groups):
            parent = entry.values.get("group")
            if parent is None:
                continue
            if parent not in group_names:
                message = f"no group {parent!r}"
                close = suggest(parent, group_names)
                if close is not None:
                    message += f"; did you mean {close!r}?"
                elif group_names:
                    message += f" (groups: {', '.join(group_names)})"
                else:
                    message += " (there is no [groups] table)"
                self.problem((*entry.path, "group"), message)
                entry.values.pop("group")
        for g in groups:
            seen = [g.name]
            parent = g.values.get("group")
            while parent is not None:
                if parent in seen:
                    cycle = " -> ".join([*seen[seen.index(parent) :], parent])
                    self.problem((*g.path, "group"), f"groups nest in a cycle: {cycle}")
                    g.values.pop("group")
                    break
                seen.append(parent)
                parent = group_names[parent].values.get("group")

    def _service(self, name: str, table: object, index: int) -> _Entry:
        path: KeyPath = ("services", name)
        name_problem = _service_name_problem(name)
        if name_problem is not None:
            self.problem(path, name_problem)
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

    def _check_bus_names(self, entries: list[_Entry]) -> None:
        """What each service says it will use on the bus (`Service.bus_names`) must be granted by its
        ``permissions``, and no method may be served by two enabled services (the second to start fails)."""
        served: dict[str, str] = {}
        for entry in entries:
            if entry.service_class is None or entry.config is INVALID:
                continue
            try:
                names = entry.service_class.bus_names(entry.config)
            except Exception as exc:  # the plugin's bug: said, not a traceback
                message = f"the plugin cannot say which bus names it uses: {type(exc).__name__}: {exc}"
                self.problem((*entry.path, "config"), message)
                continue
            if names is None:
                continue
            granted = entry.values.get("permissions")
            if isinstance(granted, Permissions):
                for action in _CHECKED_ACTIONS:
                    denied = [n for n in getattr(names, action.value) if not granted.allows(action, n)]
                    if denied:
                        self.problem(
                            (*entry.path, "permissions", action.value),
                            f"it would {_VERBS[action]} {_listed(denied)} when it runs, which its "
                            f"permissions do not grant (it would be refused at start)",
                        )
            if not entry.enabled:
                continue
            for method in names.serve:
                if "*" in method:  # a pattern: no one name to clash on
                    continue
                other = served.setdefault(method, entry.name)
                if other != entry.name:
                    self.problem(
                        entry.path,
                        f"it would serve {method}, which {other!r} serves too: a method has one server (the "
                        "second to start would fail)",
                    )

    def _check_after(self, entries: list[_Entry], groups: list[_Entry]) -> None:
        by_name = {e.name: e for e in (*entries, *groups)}
        group_names = {g.name for g in groups}

        def ancestors(entry: _Entry) -> list[str]:
            out: list[str] = []
            parent = entry.values.get("group")
            while parent is not None and parent not in out and parent in group_names:
                out.append(parent)
                parent = by_name[parent].values.get("group")
            return out

        for entry in (*entries, *groups):
            for i, dep in enumerate(entry.values.get("after", ())):
                where = (*entry.path, "after", i)
                other = by_name.get(dep)
                if other is None:
                    message = f"unknown service or group {dep!r}"
                    close = suggest(dep, by_name)
                    if close is not None:
                        message += f"; did you mean {close!r}?"
                    elif by_name:
                        message += f" (there are: {', '.join(by_name)})"
                    self.problem(where, message)
                    continue
                if (
                    (dep == entry.name and entry in groups)
                    or dep in ancestors(entry)
                    or entry.name in ancestors(other)
                ):
                    self.problem(
                        where,
                        f"{entry.name!r} cannot start after {dep!r}: one contains the other, so it would "
                        "wait for itself",
                    )
                    continue
                if (entry in groups or entry.enabled) and other in entries and not other.enabled:
                    remedy = (
                        f"disable {entry.name!r}"
                        if entry in entries
                        else f"remove it from {entry.name!r}'s after"
                    )
                    self.problem(
                        where,
                        f"{dep!r} is disabled (enabled = false), so {entry.name!r}, which starts after it, "
                        f"cannot start: enable {dep!r} or {remedy}",
                    )
                if dep not in entry.deps:
                    entry.deps.append(dep)

    def _start_order(self, entries: list[_Entry], groups: list[_Entry]) -> list[str]:
        """Topological order by ``after`` (groups expanded to their services), ties going to the service
        earlier in the file; cycles reported."""
        from vwos._policy import ChildSpec

        try:
            children = [ChildSpec(e.name, after=tuple(e.deps), group=e.values.get("group")) for e in entries]
            group_specs = [
                GroupSpec(g.name, group=g.values.get("group"), after=tuple(g.deps)) for g in groups
            ]
            deps = service_dependencies(children, group_specs)
        except ValueError:  # reported above, key by key
            return [e.name for e in entries]
        order, cycles = start_order(deps)
        by_name = {e.name: e for e in (*entries, *groups)}
        for cycle in cycles:
            first = by_name[cycle[0]]
            key = next((dep for dep in first.deps if dep == cycle[1]), None)
            if key is not None:
                index = list(first.values.get("after", ())).index(key)
                self.problem((*first.path, "after", index), f"dependency cycle: {' -> '.join(cycle)}")
            else:  # the cycle goes through a group's after (or a group of the service)
                self.problem(
                    first.path,
                    f"dependency cycle (through the `after` of groups): {' -> '.join(cycle)}",
                )
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
            group=table.group,
            critical=table.critical,
            intensity=table.intensity,
            period=table.period,
            revive_after=table.revive_after,
        )


_CHECKED_ACTIONS: Final = (Action.PUBLISH, Action.SUBSCRIBE, Action.SERVE, Action.CALL)
_VERBS: Final = {
    Action.PUBLISH: "publish",
    Action.SUBSCRIBE: "subscribe to",
    Action.SERVE: "serve",
    Action.CALL: "call",
}


def _listed(names: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _service_name_problem(name: str) -> str | None:
    if not _SERVICE_NAME.match(name):
        return (
            "invalid service name: use letters, digits, '_' and '-', not starting with '-' (the name is also "
            "the service's state directory)"
        )
    if len(name) > MAX_SERVICE_NAME:
        return f"invalid service name: at most {MAX_SERVICE_NAME} characters, this one has {len(name)}"
    return None


def state_dir_problems(state_dir: Path, services: Sequence[str]) -> list[tuple[KeyPath, str]]:
    """What would keep the supervisor from making (or the services from writing in) ``state_dir / NAME`` for
    each of ``services``: a file in the way, no right to create directories, a path too long.

    Writability is probed the way the supervisor uses the directory -- a directory is made and removed
    again in the deepest one that exists -- rather than guessed from mode bits (root may write where the
    bits say no; nobody writes on a read-only or pseudo file system, whatever ``os.access`` says).
    """
    key: KeyPath = ("supervisor", "state_dir")
    problems: list[tuple[KeyPath, str]] = []
    existing = state_dir
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    for part in state_dir.parts:
        if len(os.fsencode(part)) > name_max:
            return [(key, f"{state_dir}: a part of it is longer than {name_max} bytes (NAME_MAX)")]
    for name in services:
        if len(os.fsencode(state_dir / name)) > path_max - _STATE_ROOM:
            where = ("services", name)
            message = (
                f"its state directory {state_dir / name} is too long for the file system: at most "
                f"{path_max - _STATE_ROOM} bytes (PATH_MAX less {_STATE_ROOM} for the service's own files)"
            )
            problems.append((where, message))
    if problems:
        return problems
    if not existing.is_dir():
        what = "is" if existing == state_dir else "is in the way of it and"
        return [(key, f"{state_dir}: {existing} {what} not a directory")]
    reason = _cannot_make_directories(existing)
    if reason is not None:
        return [(key, f"{state_dir}: cannot create directories in {existing}: {reason}")]
    if existing != state_dir:
        return []
    for name in services:
        directory = state_dir / name
        if not os.path.lexists(directory):
            continue
        if not directory.is_dir():
            problems.append((("services", name), f"its state directory {directory} is not a directory"))
            continue
        reason = _cannot_make_directories(directory)
        if reason is not None:
            problems.append(
                (("services", name), f"its state directory {directory} is not writable: {reason}")
            )
    return problems


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(path if path.is_dir() else path.parent, name)
    except (OSError, ValueError):
        return default
    return value if value > 0 else default


def _cannot_make_directories(directory: Path) -> str | None:
    """Why a directory cannot be made in ``directory`` (the probe is made and removed), or None."""
    try:
        probe = tempfile.mkdtemp(prefix=".vwos-check-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        os.rmdir(probe)
    except OSError:  # pragma: no cover - it was just made, empty
        pass
    return None
