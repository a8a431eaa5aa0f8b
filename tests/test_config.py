"""The config file: loading, every kind of problem (all reported at once), start order, the structurer."""

from __future__ import annotations

import datetime
import enum
import itertools
import json
import os
import resource  # here: a user forked from this process cannot read the interpreter's lib-dynload
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import tracemalloc
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cyclic_dependency_graphs, dependency_graphs, nested_toml_documents, toml_values

from bus import Permissions, TopicError
from vwos._config import (
    MAX_FILE_BYTES,
    MAX_KEY_PARTS,
    MAX_NESTING,
    MAX_SECONDS,
    MAX_SERVICE_NAME,
    ConfigError,
    ConfiguredService,
    LogLevel,
    Problem,
    ServiceTable,
    SupervisorConfig,
    SupervisorTable,
    _nesting_problem,
    load_config,
    parse_config,
)
from vwos._logging import LEVELS
from vwos._plugins import prepend_sys_path
from vwos._policy import BackoffPolicy, Restart, Strategy, SupervisorPolicy, start_order
from vwos._service import NoConfig
from vwos._spec import ServiceSpec
from vwos._structure import (
    MAX_DEPTH,
    FieldDoc,
    FieldProblem,
    StructureError,
    describe_fields,
    describe_value,
    format_path,
    structure,
    toml_literal,
)

# -- the test plugins: a module written to a directory on sys.path ---------------------------------------

PLUGINS = """
import enum
from pathlib import Path

import attrs

from vwos._service import NoConfig, Service


def _positive(_inst, _attribute, value):
    if not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")


class Units(enum.Enum):
    KMH = "km/h"
    MPH = "mph"


@attrs.frozen
class Zone:
    name: str
    limit: float = attrs.field(default=50.0, validator=_positive)


@attrs.frozen
class OverspeedConfig:
    limit: float = attrs.field(validator=_positive, metadata={"help": "The speed limit."})
    units: Units = Units.KMH
    repeat: int = 10
    zones: tuple[Zone, ...] = ()
    log_file: Path | None = None


class Overspeed(Service[OverspeedConfig]):
    pass


class Gateway(Service[NoConfig]):
    pass


class Bare(Service[None]):
    pass


@attrs.frozen
class NamedConfig:
    topic: str = "Vehicle.Speed"
    method: str = "Vehicle.Lock"
    broken: bool = False


class Named(Service[NamedConfig]):
    @classmethod
    def bus_names(cls, config):
        from bus import Permissions

        if config.broken:
            raise RuntimeError("no idea")
        publish = (config.topic, "Named.Status")
        return Permissions(publish=publish, subscribe=("Vehicle.*",), serve=(config.method,))


NOT_A_SERVICE = 1
"""

OVERSPEED = "vwos_ct_plugins:Overspeed"
GATEWAY = "vwos_ct_plugins:Gateway"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("plugins")
    (directory / "vwos_ct_plugins.py").write_text(PLUGINS, encoding="utf-8")
    yield directory
    for name in [name for name in sys.modules if name.startswith("vwos_ct_")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def _plugins_on_sys_path(plugin_dir: Path) -> Iterator[None]:
    saved = sys.path[:]
    prepend_sys_path([plugin_dir])
    yield
    sys.path[:] = saved


def plugins() -> Any:
    import vwos_ct_plugins  # type: ignore[import-not-found]  # written by the fixture

    return vwos_ct_plugins


def parse(text: str, *, path: str | Path = "vwos.toml") -> SupervisorConfig:
    return parse_config(textwrap.dedent(text), path=path)


def problems(text: str, *, path: str | Path = "vwos.toml") -> list[str]:
    """The problems ``text`` has, as printed."""
    with pytest.raises(ConfigError) as info:
        parse(text, path=path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# -- a whole file ------------------------------------------------------------------------------------------


FULL = f"""
[supervisor]
strategy = "rest_for_one"
intensity = 5
period = 10.0
state_dir = "var/state"
start_timeout = 20.0
stop_timeout = 4.0
log_level = "debug"

[services.overspeed]
plugin = "{OVERSPEED}"
enabled = true
restart = "transient"
after = ["gateway"]
start_timeout = 10.0
watchdog = 2.0
backoff = {{ initial = 0.5, multiplier = 3.0, max_delay = 10.0, jitter = 0.0 }}
permissions = {{ publish = ["Vehicle.Warning.**"], subscribe = ["Vehicle.Speed"] }}

[services.overspeed.config]
limit = 130
units = "mph"
zones = [{{ name = "school", limit = 30 }}, {{ name = "town" }}]
log_file = "logs/overspeed.log"

[services.gateway]
plugin = "{GATEWAY}"
restart = "permanent"
stop_timeout = 1.5
"""


def test_full_file(tmp_path: Path) -> None:
    config = parse(FULL, path=tmp_path / "vwos.toml")
    mod = plugins()
    assert config.path == tmp_path / "vwos.toml"
    assert config.policy == SupervisorPolicy(Strategy.REST_FOR_ONE, 5, 10.0)
    assert config.state_dir == tmp_path / "var" / "state"
    assert config.python_path == ()
    assert (config.start_timeout, config.stop_timeout, config.log_level) == (20.0, 4.0, "debug")
    gateway, overspeed = config.services  # gateway first: overspeed starts after it
    assert gateway == ConfiguredService(
        name="gateway",
        plugin=GATEWAY,
        service_class=mod.Gateway,
        config=NoConfig(),
        enabled=True,
        restart=Restart.PERMANENT,
        after=(),
        start_timeout=20.0,  # from [supervisor]
        stop_timeout=1.5,
        watchdog=None,
        backoff=BackoffPolicy(),
        permissions=Permissions.ALL,
    )
    assert overspeed == ConfiguredService(
        name="overspeed",
        plugin=OVERSPEED,
        service_class=mod.Overspeed,
        config=mod.OverspeedConfig(
            limit=130.0,
            units=mod.Units.MPH,
            zones=(mod.Zone("school", 30.0), mod.Zone("town", 50.0)),
            log_file=tmp_path / "logs" / "overspeed.log",
        ),
        enabled=True,
        restart=Restart.TRANSIENT,
        after=("gateway",),
        start_timeout=10.0,
        stop_timeout=4.0,  # from [supervisor]
        watchdog=2.0,
        backoff=BackoffPolicy(initial=0.5, multiplier=3.0, max_delay=10.0, jitter=0.0),
        permissions=Permissions(publish=("Vehicle.Warning.**",), subscribe=("Vehicle.Speed",)),
    )
    assert type(overspeed.config.limit) is float  # an integer in TOML, a float in the config
    assert config.service("overspeed") is overspeed
    with pytest.raises(KeyError):
        config.service("trip")


def test_services_are_specs_the_supervisor_takes() -> None:
    config = parse(FULL)
    assert all(isinstance(spec, ServiceSpec) for spec in config.services)


def test_defaults() -> None:
    config = parse(f'[services.gateway]\nplugin = "{GATEWAY}"\n')
    assert config.policy == SupervisorPolicy()
    assert config.state_dir == Path.cwd() / "state"
    assert (config.start_timeout, config.stop_timeout, config.log_level) == (30.0, 5.0, "info")
    (gateway,) = config.services
    assert gateway == ConfiguredService(
        name="gateway",
        plugin=GATEWAY,
        service_class=plugins().Gateway,
        config=NoConfig(),
        start_timeout=30.0,
        stop_timeout=5.0,
    )
    assert gateway.permissions is Permissions.ALL
    assert gateway.restart is Restart.PERMANENT


def test_an_empty_file_is_a_config_without_services() -> None:
    config = parse("")
    assert config.services == ()
    assert config.policy == SupervisorPolicy()


def test_permissions_list_only_what_is_granted() -> None:
    (service,) = parse(
        f"""
        [services.a]
        plugin = "{GATEWAY}"
        permissions = {{ call = ["Vehicle.Cabin.Door.*.Lock"] }}
        """
    ).services
    assert service.permissions == Permissions(call=("Vehicle.Cabin.Door.*.Lock",))
    assert service.permissions.publish == ()  # present: deny by default


def test_service_without_config_gets_an_empty_config() -> None:
    bare, gateway = parse(
        f"""
        [services.bare]
        plugin = "vwos_ct_plugins:Bare"
        [services.gateway]
        plugin = "{GATEWAY}"
        config = {{}}
        """
    ).services
    assert bare.config == NoConfig()  # Service[None] means Service[NoConfig]
    assert gateway.config == NoConfig()


def test_log_levels_are_the_logging_modules() -> None:
    assert typing.get_args(LogLevel) == LEVELS


# -- paths ---------------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "vwos.toml").write_text(
        f"""
[supervisor]
state_dir = "../var/state"

[services.overspeed]
plugin = "{OVERSPEED}"
config = {{ limit = 100, log_file = "overspeed.log" }}
""",
        encoding="utf-8",
    )
    config = load_config(Path("..") / "etc" / "vwos.toml")
    assert config.path == elsewhere / ".." / "etc" / "vwos.toml"
    assert config.state_dir == elsewhere / ".." / "etc" / ".." / "var" / "state"
    assert config.state_dir.resolve() == (tmp_path / "var" / "state").resolve()
    assert config.services[0].config.log_file.resolve() == (tmp_path / "etc" / "overspeed.log").resolve()


def test_absolute_paths_stay(tmp_path: Path) -> None:
    state = tmp_path / "somewhere" / "state"
    config = parse(f"[supervisor]\nstate_dir = '{state}'\n", path=tmp_path / "etc" / "vwos.toml")
    assert config.state_dir == state


LOCAL_PLUGIN = """
from vwos._service import Service

class Local(Service[None]):
    pass
"""


def test_python_path_is_prepended_before_plugins_load(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "vwos_ct_local.py").write_text(LOCAL_PLUGIN, encoding="utf-8")
    text = '[supervisor]\npython_path = ["plugins"]\n[services.local]\nplugin = "vwos_ct_local:Local"\n'
    config = parse(text, path=tmp_path / "vwos.toml")
    assert config.python_path == (tmp_path / "plugins",)
    assert config.services[0].service_class.__name__ == "Local"
    assert sys.path[0] == str(tmp_path / "plugins")
    parse(text, path=tmp_path / "vwos.toml")
    assert sys.path.count(str(tmp_path / "plugins")) == 1  # loading again does not add it again


def test_python_path_must_exist(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    assert problems('[supervisor]\npython_path = ["plugins", "nope"]\n', path=tmp_path / "vwos.toml") == [
        f"{tmp_path / 'vwos.toml'}: supervisor.python_path[1]: no such directory: {tmp_path / 'nope'}"
    ]


# -- reading the file -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "vwos.toml")
    assert info.value.problems == [
        Problem(tmp_path / "vwos.toml", "", "cannot read the config file: no such file")
    ]
    assert str(info.value) == f"{tmp_path / 'vwos.toml'}: cannot read the config file: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read the config file: it is a directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "vwos.toml").write_bytes(b'[services.a]\nplugin = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "vwos.toml")
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (2, 11)
    assert str(problem) == (
        f"{tmp_path / 'vwos.toml'}:2:11: not UTF-8 text (TOML must be UTF-8): byte 0xff cannot be decoded"
    )


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "vwos.toml").write_bytes(b"\xef\xbb\xbf" + f'[services.a]\nplugin = "{GATEWAY}"\n'.encode())
    assert [s.name for s in load_config(tmp_path / "vwos.toml").services] == ["a"]


def test_problems_name_the_file_as_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "vwos.toml").write_text("[supervisor]\nintensity = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config("conf/vwos.toml")
    assert (
        str(info.value)
        == "conf/vwos.toml: supervisor.intensity: expected an integer >= 0, got the integer -1"
    )


def test_toml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse("[supervisor]\nintensity = 3\nperiod = \n")
    (problem,) = info.value.problems
    assert (problem.file, problem.key_path, problem.line, problem.column) == (Path("vwos.toml"), "", 3, 10)
    assert str(problem) == "vwos.toml:3:10: invalid TOML: Invalid value"


def test_toml_duplicate_table_is_a_syntax_error() -> None:
    assert one_problem(f'[services.a]\nplugin = "{GATEWAY}"\n[services.a]\n') == (
        "vwos.toml:3:12: invalid TOML: Cannot declare ('services', 'a') twice"
    )


# -- problems: every problem class, exact key paths and messages ----------------------------------------


def test_three_different_problems_are_all_reported() -> None:
    assert problems(
        f"""
        [supervisor]
        strategy = "one-for-one"

        [services.overspeed]
        plugin = "{OVERSPEED}"
        restat = "permanent"
        config = {{ limit = "fast" }}
        """
    ) == [
        "vwos.toml: supervisor.strategy: expected one of 'one_for_one', 'one_for_all', 'rest_for_one', got "
        "the string 'one-for-one'; did you mean 'one_for_one'?",
        "vwos.toml: services.overspeed.restat: unknown key; did you mean 'restart'?",
        "vwos.toml: services.overspeed.config.limit: expected a number, got the string 'fast'",
    ]


def test_problem_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse(f'[services.a]\nplugin = "{GATEWAY}"\nenabled = 1\n')
    assert info.value.problems == [
        Problem(
            Path("vwos.toml"), "services.a.enabled", "expected a boolean (true or false), got the integer 1"
        )
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[supervisr]\n", "supervisr: unknown key; did you mean 'supervisor'?"),
        ("[vehicle]\n", "vehicle: unknown key (valid keys: supervisor, groups, services)"),
        ("[supervisor]\nperiode = 1.0\n", "supervisor.periode: unknown key; did you mean 'period'?"),
        (
            "[supervisor]\nLog_Level = 'info'\n",
            "supervisor.Log_Level: unknown key; did you mean 'log_level'?",
        ),
        (
            "[supervisor]\ncolor = 1\n",
            "supervisor.color: unknown key (valid keys: strategy, intensity, period, state_dir, python_path, "
            "start_timeout, stop_timeout, log_level, revive_after, loop_block_limit, undeclared_grace, "
            "connection_limits)",
        ),
        (
            f'[services.a]\nplugin = "{GATEWAY}"\nbackoff = {{ inital = 1.0 }}\n',
            "services.a.backoff.inital: unknown key; did you mean 'initial'?",
        ),
        (
            f'[services.a]\nplugin = "{GATEWAY}"\npermissions = {{ publsh = [] }}\n',
            "services.a.permissions.publsh: unknown key; did you mean 'publish'?",
        ),
        (
            f'[services.a]\nplugin = "{OVERSPEED}"\nconfig = {{ limit = 1, units = "mph", unit = "mph" }}\n',
            "services.a.config.unit: unknown key; did you mean 'units'?",
        ),
        (
            f'[services.a]\nplugin = "{OVERSPEED}"\nconfig = {{ limit = 1, zones = [{{ nmae = "x" }}] }}\n',
            "services.a.config.zones[0].nmae: unknown key; did you mean 'name'?",
        ),
        (
            f'[services.a]\nplugin = "{GATEWAY}"\nconfig = {{ limit = 1 }}\n',
            f"services.a.config.limit: unknown key: {GATEWAY} takes no config",
        ),
        (
            '[services.a]\nplugin = "vwos_ct_plugins:Bare"\nconfig = { limit = 1 }\n',
            "services.a.config.limit: unknown key: vwos_ct_plugins:Bare takes no config",
        ),
    ],
)
def test_unknown_keys(text: str, expected: str) -> None:
    found = problems(text)
    assert f"vwos.toml: {expected}" in found
    if "zones[0]" in expected:  # the zone also lacks its name
        assert found == [
            f"vwos.toml: {expected}",
            "vwos.toml: services.a.config.zones[0].name: required key is missing (expected a string)",
        ]
    else:
        assert len(found) == 1


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("intensity = '3'", "supervisor.intensity: expected an integer, got the string '3'"),
        ("intensity = 2.5", "supervisor.intensity: expected an integer, got the number 2.5"),
        ("intensity = true", "supervisor.intensity: expected an integer, got the boolean true"),
        ("period = '5'", "supervisor.period: expected a number, got the string '5'"),
        ("period = false", "supervisor.period: expected a number, got the boolean false"),
        ("state_dir = 3", "supervisor.state_dir: expected a path (a string), got the integer 3"),
        ("state_dir = ''", "supervisor.state_dir: expected a path, got an empty string"),
        ("python_path = '.'", "supervisor.python_path: expected an array of paths, got the string '.'"),
        ("python_path = ['.', 1]",
         "supervisor.python_path[1]: expected a path (a string), got the integer 1"),
        ("log_level = 10", "supervisor.log_level: expected one of 'debug', 'info', 'warning', 'error', "
         "'critical', got the integer 10"),
        ("start_timeout = [1]", "supervisor.start_timeout: expected a number, got an array"),
        ("stop_timeout = {}", "supervisor.stop_timeout: expected a number, got an empty table"),
        ("period = 1979-05-27", "supervisor.period: expected a number, got the date 1979-05-27"),
    ],
)  # fmt: skip
def test_wrong_types_in_supervisor(table: str, expected: str) -> None:
    assert one_problem(f"[supervisor]\n{table}\n") == f"vwos.toml: {expected}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("enabled = 'yes'", "enabled: expected a boolean (true or false), got the string 'yes'"),
        ("after = 'gateway'", "after: expected an array of strings, got the string 'gateway'"),
        ("after = [1]", "after[0]: expected a string, got the integer 1"),
        ("watchdog = '2s'", "watchdog: expected a number, got the string '2s'"),
        ("backoff = 1.0", "backoff: expected a table, got the number 1.0"),
        ("backoff = { jitter = 'none' }", "backoff.jitter: expected a number, got the string 'none'"),
        ("permissions = { publish = 'Vehicle.**' }",
         "permissions.publish: expected an array of strings, got the string 'Vehicle.**'"),
        ("config = 3", "config: expected a table, got the integer 3"),
    ],
)  # fmt: skip
def test_wrong_types_in_a_service(line: str, expected: str) -> None:
    assert one_problem(f'[services.a]\nplugin = "{GATEWAY}"\n{line}\n') == f"vwos.toml: services.a.{expected}"


def test_plugin_must_be_a_string_and_is_required() -> None:
    assert problems("[services.a]\nplugin = 3\n[services.b]\nenabled = true\n") == [
        "vwos.toml: services.a.plugin: expected a string, got the integer 3",
        "vwos.toml: services.b.plugin: required key is missing (expected a string)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[supervisor]\nstrategy = 'one_for_everyone'\n",
            "supervisor.strategy: expected one of 'one_for_one', 'one_for_all', 'rest_for_one', got the "
            "string 'one_for_everyone'; did you mean 'one_for_one'?",
        ),
        (
            "[supervisor]\nstrategy = 'ONE_FOR_ALL'\n",
            "supervisor.strategy: expected one of 'one_for_one', 'one_for_all', 'rest_for_one', got the "
            "string 'ONE_FOR_ALL'; did you mean 'one_for_all'?",
        ),
        (
            "[supervisor]\nlog_level = 'warn'\n",
            "supervisor.log_level: expected one of 'debug', 'info', 'warning', 'error', 'critical', got the "
            "string 'warn'; did you mean 'warning'?",
        ),
        (
            f'[services.a]\nplugin = "{GATEWAY}"\nrestart = "always"\n',
            "services.a.restart: expected one of 'permanent', 'transient', 'temporary', got the string "
            "'always'",
        ),
        (
            f'[services.a]\nplugin = "{OVERSPEED}"\nconfig = {{ limit = 1, units = "kmh" }}\n',
            "services.a.config.units: expected one of 'km/h', 'mph', got the string 'kmh'; "
            "did you mean 'km/h'?",
        ),
    ],
)
def test_bad_enum_values_list_the_allowed_ones(text: str, expected: str) -> None:
    assert one_problem(text) == f"vwos.toml: {expected}"


@pytest.mark.parametrize("key", ["start_timeout", "stop_timeout", "watchdog"])
@pytest.mark.parametrize(
    ("value", "shown"), [("0", "0.0"), ("-1.5", "-1.5"), ("nan", "nan"), ("-inf", "-inf")]
)
def test_timeouts_must_be_positive(key: str, value: str, shown: str) -> None:
    assert one_problem(f'[services.a]\nplugin = "{GATEWAY}"\n{key} = {value}\n') == (
        f"vwos.toml: services.a.{key}: expected a number of seconds > 0, got the number {shown}"
    )
    if key != "watchdog":
        assert one_problem(f"[supervisor]\n{key} = {value}\n") == (
            f"vwos.toml: supervisor.{key}: expected a number of seconds > 0, got the number {shown}"
        )


TOO_LONG = "expected at most 1000000000 seconds (about 31 years), got the number"


@pytest.mark.parametrize(
    "where",
    [
        "supervisor.period",
        "supervisor.start_timeout",
        "supervisor.stop_timeout",
        "services.a.start_timeout",
        "services.a.stop_timeout",
        "services.a.watchdog",
        "services.a.backoff.initial",
        "services.a.backoff.max_delay",
        "services.a.backoff.reset_after",
    ],
)
@pytest.mark.parametrize(
    ("value", "shown"), [("inf", "inf"), ("1e300", "1e+300"), ("1000000000.5", "1000000000.5")]
)
def test_durations_are_finite_and_at_most_31_years(where: str, value: str, shown: str) -> None:
    """An infinite or absurd wait never fires (a stop that never times out, a restart that never comes) and
    overflows some of the OS's timers: refused at its key. `MAX_SECONDS` itself is fine."""
    table, key = where.rsplit(".", 1)

    def config(number: str) -> str:
        line = (
            f"{table.split('.')[-1]} = {{ {key} = {number} }}"
            if table.endswith("backoff")
            else f"{key} = {number}"
        )
        header = "[supervisor]" if table == "supervisor" else "[services.a]"
        service = "" if table != "supervisor" else f'[services.a]\nplugin = "{GATEWAY}"\n'
        own = f'plugin = "{GATEWAY}"\n' if table != "supervisor" else ""
        return f"{header}\n{own}{line}\n{service}"

    assert one_problem(config(value)) == f"vwos.toml: {where}: {TOO_LONG} {shown}"
    assert MAX_SECONDS == 1e9
    assert parse(config("1e9")).services[0].name == "a"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("intensity = -1", "intensity: expected an integer >= 0, got the integer -1"),
        ("period = 0", "period: expected a number of seconds > 0, got the number 0.0"),
        ("period = nan", "period: expected a number of seconds > 0, got the number nan"),
        ("period = inf", f"period: {TOO_LONG} inf"),
    ],
)
def test_restart_intensity_limits(line: str, expected: str) -> None:
    assert one_problem(f"[supervisor]\n{line}\n") == f"vwos.toml: supervisor.{expected}"


def test_backoff_validators_are_reported_at_their_key() -> None:
    with pytest.raises(ValueError, match=r".") as raised:
        BackoffPolicy(multiplier=0.5)
    with pytest.raises(ConfigError) as info:
        parse(f'[services.a]\nplugin = "{GATEWAY}"\nbackoff = {{ multiplier = 0.5, jitter = 0.2 }}\n')
    assert info.value.problems == [
        Problem(Path("vwos.toml"), "services.a.backoff.multiplier", str(raised.value))
    ]


def test_bad_permission_patterns_are_reported_at_their_key() -> None:
    """Each bad pattern at its index, as bus's own check (`bus.Permissions`) words it."""
    permissions = 'permissions = { subscribe = ["Vehicle.*", "Vehicle..Speed", "A.B*", "Ok.**"] }'
    assert problems(f'[services.a]\nplugin = "{GATEWAY}"\n{permissions}\n') == [
        "vwos.toml: services.a.permissions.subscribe[1]: pattern 'Vehicle..Speed': segment '' must be a name "
        "segment, '*' or '**' (wildcards stand alone between dots)",
        "vwos.toml: services.a.permissions.subscribe[2]: pattern 'A.B*': segment 'B*' must be a name "
        "segment, '*' or '**' (wildcards stand alone between dots)",
    ]


def test_huge_permission_patterns_are_judged_by_the_bus_each_at_its_index_in_bounded_time() -> None:
    """The config holds no rules of its own for patterns: whatever bounds `bus.Permissions` sets (length,
    segments), each pattern it refuses is reported at its index with its message, and quickly."""
    huge = ".".join(["**"] * 20_000)
    patterns = [huge] * 20 + ["Vehicle..x", "Vehicle.*"]
    listed = ", ".join(f'"{p}"' for p in patterns)
    started = time.perf_counter()
    try:
        parse(f'[services.a]\nplugin = "{GATEWAY}"\npermissions = {{ subscribe = [{listed}] }}\n')
        found: list[Problem] = []
    except ConfigError as exc:
        found = exc.problems
    assert time.perf_counter() - started < 5.0
    expected = []
    for i, pattern in enumerate(patterns):
        try:
            Permissions(subscribe=(pattern,))
        except TopicError as exc:
            expected.append((f"services.a.permissions.subscribe[{i}]", str(exc)))
    assert [(p.key_path, p.message) for p in found] == expected
    assert expected[-1][0] == "services.a.permissions.subscribe[20]"


@pytest.mark.parametrize("name", ["over speed", "-overspeed", "over.speed", "über", ""])
def test_invalid_service_names(name: str) -> None:
    assert one_problem(f'[services."{name}"]\nplugin = "{GATEWAY}"\n') == (
        f"vwos.toml: services.{format_path([name])}: invalid service name: use letters, digits, '_' and '-', "
        "not starting with '-' (the name is also the service's state directory)"
    )


@pytest.mark.parametrize("name", ["overspeed", "can-gateway", "trip_2", "_x", "4wd"])
def test_valid_service_names(name: str) -> None:
    assert [s.name for s in parse(f'[services.{name}]\nplugin = "{GATEWAY}"\n').services] == [name]


def test_services_must_be_tables() -> None:
    assert (
        one_problem("services = 3\n")
        == "vwos.toml: services: expected a table of services, got the integer 3"
    )
    assert one_problem("[services]\na = 3\n") == "vwos.toml: services.a: expected a table, got the integer 3"
    assert (
        one_problem("supervisor = 'fast'\n")
        == "vwos.toml: supervisor: expected a table, got the string 'fast'"
    )


# -- problems: what `vwos run` would fail on at start ------------------------------------------------------

ISOLATED = f'[services.a]\nplugin = "{GATEWAY}"\nisolated = true\n'
#: What setrlimit takes, in MiB: the most a memory limit can be on this machine (64-bit: 2**43 - 1).
MOST_MIB = sys.maxsize // 2**20


def as_user(uid: int, work: Callable[[], object]) -> object:
    """``work()`` run in a forked child whose uid and gid are ``uid`` (needs root); its result, or the repr of
    what it raised, comes back over a pipe as JSON."""
    plugins()  # imported here: that user cannot read pytest's private tmp_path
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of forking with threads: the child only runs ``work``
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, no return
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                result: object = {"ok": work()}
            except BaseException as exc:
                result = {"raised": repr(exc)}
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as stream:
        data = stream.read()
    os.waitpid(pid, 0)
    answer: dict[str, object] = json.loads(data)
    assert "ok" in answer, answer
    return answer["ok"]


NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop to another user)")


def problems_in(directory: Path, text: str) -> list[str]:
    """The problems of ``text`` as a config file in ``directory`` (its paths relative to it)."""
    try:
        parse_config(textwrap.dedent(text), path=directory / "vwos.toml")
    except ConfigError as exc:
        return [f"{p.key_path}: {p.message}" for p in exc.problems]
    return []


def test_a_memory_limit_beyond_what_the_os_takes_is_refused() -> None:
    assert one_problem(f"{ISOLATED}memory_limit_mb = {2**63 - 1}\n") == (
        f"vwos.toml: services.a.memory_limit_mb: expected at most {MOST_MIB} MiB (the largest address-space "
        f"limit (RLIMIT_AS) the OS takes), got the integer {2**63 - 1}"
    )
    assert one_problem(f"{ISOLATED}memory_limit_mb = {MOST_MIB + 1}\n").startswith(
        f"vwos.toml: services.a.memory_limit_mb: expected at most {MOST_MIB} MiB"
    )
    (service,) = parse(f"{ISOLATED}memory_limit_mb = {MOST_MIB}\n").services
    assert service.memory_limit_mb == MOST_MIB


@pytest.mark.parametrize(("mib", "takes"), [(MOST_MIB, True), (MOST_MIB + 1, False)])
def test_the_memory_bound_is_what_setrlimit_takes(mib: int, takes: bool) -> None:
    """The child process sets ``RLIMIT_AS`` to ``memory_limit_mb`` MiB (vwos/_child.py): the bound is where
    that starts to fail."""
    code = (
        "import resource, sys; size = int(sys.argv[1]) * 1024 * 1024\n"
        "try:\n    resource.setrlimit(resource.RLIMIT_AS, (size, size))\n"
        "except (OverflowError, ValueError) as exc:\n    sys.exit(f'refused: {exc}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(mib)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode == 0) is takes, result.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="vwos-test-"))
    directory.chmod(0o755)
    yield directory
    for path in sorted(directory.rglob("*"), reverse=True):
        path.chmod(0o755) if path.is_dir() else None
    shutil.rmtree(directory)


def _check_under_hard_limit(directory: Path, hard_mib: int, wanted_mib: int) -> list[str]:
    hard = hard_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    return problems_in(directory, f"{ISOLATED}memory_limit_mb = {wanted_mib}\n")


@needs_root
def test_a_memory_limit_above_the_hard_limit_is_refused_unless_root(shared_dir: Path) -> None:
    """Only root may raise its hard limit (``ulimit -Hv``), so the bound for anyone else is that limit."""
    hard = 64 * 1024  # MiB
    shared_dir.chmod(0o777)  # for the state directory
    assert as_user(NOBODY, lambda: _check_under_hard_limit(shared_dir, hard, 2 * hard)) == [
        f"services.a.memory_limit_mb: expected at most {hard} MiB (this process's hard address-space limit "
        f"(ulimit -Hv), which only root may raise), got the integer {2 * hard}"
    ]
    assert as_user(NOBODY, lambda: _check_under_hard_limit(shared_dir, hard, hard)) == []
    assert as_user(0, lambda: _check_under_hard_limit(shared_dir, hard, 2 * hard)) == []


def test_service_names_are_at_most_64_characters() -> None:
    assert MAX_SERVICE_NAME == 64
    name = "x" * 65
    assert one_problem(f'[services.{name}]\nplugin = "{GATEWAY}"\n') == (
        f"vwos.toml: services.{name}: invalid service name: at most 64 characters, this one has 65"
    )
    assert [s.name for s in parse(f'[services.{"x" * 64}]\nplugin = "{GATEWAY}"\n').services] == ["x" * 64]


def test_a_state_dir_too_long_for_the_file_system_is_refused(tmp_path: Path) -> None:
    part = "p" * 256  # NAME_MAX is 255
    assert problems_in(
        tmp_path, f'[supervisor]\nstate_dir = "{part}"\n[services.a]\nplugin = "{GATEWAY}"\n'
    ) == [f"supervisor.state_dir: {tmp_path / part}: a part of it is longer than 255 bytes (NAME_MAX)"]
    deep = "/".join(["d" * 200] * 19)  # ~3,800 bytes: no part too long, but no room for the services' files
    found = problems_in(tmp_path, f'[supervisor]\nstate_dir = "{deep}"\n[services.a]\nplugin = "{GATEWAY}"\n')
    assert found == [
        f"services.a: its state directory {tmp_path / deep / 'a'} is too long for the file system: at most "
        "3840 bytes (PATH_MAX less 256 for the service's own files)"
    ]


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    service = f'[services.a]\nplugin = "{GATEWAY}"\n'
    assert problems_in(tmp_path, f'[supervisor]\nstate_dir = "afile"\n{service}') == [
        f"supervisor.state_dir: {tmp_path / 'afile'}: {tmp_path / 'afile'} is not a directory"
    ]
    assert problems_in(tmp_path, f'[supervisor]\nstate_dir = "afile/state"\n{service}') == [
        f"supervisor.state_dir: {tmp_path / 'afile/state'}: {tmp_path / 'afile'} is in the way of it and "
        "not a directory"
    ]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "a").write_text("")  # where the service's own directory should be
    assert problems_in(tmp_path, f'[supervisor]\nstate_dir = "state"\n{service}') == [
        f"services.a: its state directory {tmp_path / 'state' / 'a'} is not a directory"
    ]
    (tmp_path / "state" / "a").unlink()
    assert problems_in(tmp_path, f'[supervisor]\nstate_dir = "state/deeper/still"\n{service}') == []
    assert not (tmp_path / "state" / "deeper").exists()  # the check made nothing
    assert os.listdir(tmp_path / "state") == []  # and left no probe behind


def _read_only_problems(directory: Path) -> list[str]:
    return problems_in(
        directory, f'[supervisor]\nstate_dir = "ro/state"\n[services.a]\nplugin = "{GATEWAY}"\n'
    )


def test_a_state_dir_that_cannot_be_made_is_refused(shared_dir: Path) -> None:
    """Not writable for the user who runs it: refused. Root, who may write there, is not refused; the check
    probes, as the supervisor will write, rather than reading mode bits."""
    read_only = shared_dir / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    state = read_only / "state"
    expected = [f"supervisor.state_dir: {state}: cannot create directories in {read_only}: Permission denied"]
    if os.geteuid() != 0:
        assert _read_only_problems(shared_dir) == expected
        return
    assert as_user(NOBODY, lambda: _read_only_problems(shared_dir)) == expected
    assert _read_only_problems(shared_dir) == []  # root may
    (read_only / "state" / "a").mkdir(parents=True)  # and does: what the supervisor will do
    (read_only / "state" / "a").chmod(0o555)
    assert as_user(NOBODY, lambda: _read_only_problems(shared_dir)) == [
        f"supervisor.state_dir: {read_only / 'state'}: cannot create directories in {read_only / 'state'}: "
        "Permission denied"
    ]
    (read_only / "state").chmod(0o777)
    assert as_user(NOBODY, lambda: _read_only_problems(shared_dir)) == [
        f"services.a: its state directory {read_only / 'state' / 'a'} is not writable: Permission denied"
    ]


@needs_root
def test_a_state_dir_where_even_root_cannot_write_is_refused() -> None:
    """sysfs: root passes ``os.access(W_OK)`` there, and still cannot make a directory. The probe finds it."""
    if not os.access("/sys", os.W_OK) or not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs at /sys that access() calls writable")
    found = problems_in(
        Path("/"), f'[supervisor]\nstate_dir = "/sys/vwos-state"\n[services.a]\nplugin = "{GATEWAY}"\n'
    )
    assert len(found) == 1
    assert found[0].startswith("supervisor.state_dir: /sys/vwos-state: cannot create directories in /sys: ")


# -- problems: TOML beyond what tomllib can take -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "column"),
    [
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "a", 1, 5 + MAX_NESTING),
        ("a = " + "{ b = " * 100_000 + "1" + " }" * 100_000 + "\n", "a", 1, 5 + 6 * MAX_NESTING),
        (
            "x = 1\n[services.s.config]\nzones = [" + "[" * 1000 + "]" * 1001 + "\n",
            "services.s.config.zones",
            3,
            9 + MAX_NESTING,
        ),
    ],
    ids=["arrays", "inline tables", "in a table"],
)
def test_deeply_nested_toml_is_a_problem_with_its_line_not_a_recursion_error(
    text: str, key: str, line: int, column: int
) -> None:
    """tomllib recurses once per level: 100,000 levels raised RecursionError. Now: the key, line, column."""
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="vwos.toml")
    assert time.perf_counter() - started < 2.0  # generous: the scan is linear
    (problem,) = info.value.problems
    assert problem.message == (
        f"invalid TOML: arrays and inline tables nested more than {MAX_NESTING} levels deep"
    )
    assert (problem.key_path, problem.line, problem.column) == (key, line, column)


@pytest.mark.parametrize(
    "text",
    [
        "[" + ".".join(["a"] * 100_000) + "]\nx = 1\n",
        ".".join(["a"] * 100_000) + " = 1\n",
        "x = { " + ".".join(["a"] * 100_000) + " = 1 }\n",
    ],
    ids=["header", "key", "inline key"],
)
def test_a_key_of_100000_dotted_parts_is_refused_in_bounded_time(text: str) -> None:
    """tomllib's work grows with the square of a dotted key's length (100,000 parts: seconds and GBs)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as info:
            parse_config(text, path="vwos.toml")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 50 * 2**20
    (problem,) = info.value.problems
    assert problem.message.endswith(f"a key of more than {MAX_KEY_PARTS} dotted parts")
    assert problem.line == 1


def test_nesting_within_the_bounds_and_brackets_in_strings_and_comments_are_fine() -> None:
    deep = "[" * MAX_NESTING + "]" * MAX_NESTING
    key = ".".join(["k"] * MAX_KEY_PARTS)
    text = (
        f"a = {deep}\n"
        f'b = "{"[" * 500}"  # {"{" * 500}\n'
        f"c = '{'[' * 500}'\n"
        f'd = """\n{"[{" * 500}"\n"""\n'
        f"e = '''{'[' * 500}''''\n"
        f"{key} = 1\n"
        f'f = ["]", "[[[[", \'{{\', """]""", {{ g = "[" }}]\n'
    )
    data = tomllib.loads(text)
    assert data["e"] == "[" * 500 + "'"
    assert _nesting_problem(text, Path("vwos.toml")) is None


@given(nested_toml_documents())
@settings(max_examples=150)
def test_the_nesting_scan_agrees_with_tomllib(drawn: tuple[str, int]) -> None:
    """Over documents of every string kind (with brackets, quotes and escapes in them), comments and
    nesting up to past the bound: the scan refuses exactly those that nest deeper than `MAX_NESTING`."""
    text, depth = drawn
    tomllib.loads(text)  # the document is valid TOML, at any depth drawn
    problem = _nesting_problem(text, Path("vwos.toml"))
    assert (problem is not None) == (depth > MAX_NESTING), problem


def test_a_config_file_larger_than_4_mib_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    assert MAX_FILE_BYTES == 4 * 2**20
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(big)
    assert [str(p) for p in info.value.problems] == [
        f"{big}: the config file is larger than 4 MiB (is it the right file?)"
    ]
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            load_config("/dev/zero")  # endless
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_FILE_BYTES
    assert "larger than 4 MiB" in str(info.value)


# -- problems: plugins --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        ("vwos_ct_nosuch:Thing", "vwos_ct_nosuch:Thing: no module named 'vwos_ct_nosuch'"),
        ("vwos_ct_plugins:Nope", "vwos_ct_plugins:Nope: module 'vwos_ct_plugins' has no attribute 'Nope'"),
        (
            "vwos_ct_plugins:NOT_A_SERVICE",
            "vwos_ct_plugins:NOT_A_SERVICE is not a vwos Service subclass (it is int 1)",
        ),
        (
            "vwos_ct_plugins:Zone",
            "vwos_ct_plugins:Zone is not a vwos Service subclass (it is the class vwos_ct_plugins.Zone)",
        ),
    ],
)
def test_unknown_plugins(plugin: str, expected: str) -> None:
    assert one_problem(f'[services.a]\nplugin = "{plugin}"\n[services.a.config]\nanything = 1\n') == (
        f"vwos.toml: services.a.plugin: {expected}"
    )  # and its config is not checked: there is no class to check it against


def test_entry_point_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vwos._plugins._entry_points", list)
    assert one_problem('[services.a]\nplugin = "overspeed"\n') == (
        "vwos.toml: services.a.plugin: overspeed: no installed plugin has this name (entry point group "
        "'vwos.services'; none are installed); to name a class directly, write 'module:Class'"
    )


# -- problems: the plugin's config table ---------------------------------------------------------------


def test_config_table_problems_are_all_reported() -> None:
    assert problems(
        f"""
        [services.overspeed]
        plugin = "{OVERSPEED}"

        [services.overspeed.config]
        units = "knots"
        repeat = "often"
        zones = [{{ name = "school", limit = -30 }}, {{ name = 7 }}, "town"]
        log_file = 42
        colour = "red"
        """
    ) == [
        "vwos.toml: services.overspeed.config.units: expected one of 'km/h', 'mph', got the string 'knots'",
        "vwos.toml: services.overspeed.config.repeat: expected an integer, got the string 'often'",
        "vwos.toml: services.overspeed.config.zones[0].limit: must be > 0, got -30.0",
        "vwos.toml: services.overspeed.config.zones[1].name: expected a string, got the integer 7",
        "vwos.toml: services.overspeed.config.zones[2]: expected a table, got the string 'town'",
        "vwos.toml: services.overspeed.config.log_file: expected a path (a string), got the integer 42",
        "vwos.toml: services.overspeed.config.colour: unknown key (valid keys: limit, units, repeat, zones, "
        "log_file)",
        "vwos.toml: services.overspeed.config.limit: required key is missing (expected a number)",
    ]


def test_config_validator_message_is_reported() -> None:
    assert one_problem(f'[services.a]\nplugin = "{OVERSPEED}"\nconfig = {{ limit = 0 }}\n') == (
        "vwos.toml: services.a.config.limit: must be > 0, got 0.0"
    )


def test_config_table_missing_altogether() -> None:
    assert one_problem(f'[services.a]\nplugin = "{OVERSPEED}"\n') == (
        "vwos.toml: services.a.config.limit: required key is missing (expected a number)"
    )


# -- after: unknown names, cycles, disabled services, start order ---------------------------------------


def services(graph: dict[str, list[str]], *, disabled: Sequence[str] = ()) -> str:
    """A config with a service per key of ``graph``, each ``after`` its list."""
    return "".join(
        f'[services.{name}]\nplugin = "{GATEWAY}"\nafter = {json.dumps(after)}\n'
        + ("enabled = false\n" if name in disabled else "")
        for name, after in graph.items()
    )


def test_after_unknown_service() -> None:
    assert problems(services({"gateway": [], "overspeed": ["gatway", "trip"]})) == [
        "vwos.toml: services.overspeed.after[0]: unknown service or group 'gatway'; did you mean 'gateway'?",
        "vwos.toml: services.overspeed.after[1]: unknown service or group 'trip'"
        " (there are: gateway, overspeed)",
    ]


def test_two_service_cycle() -> None:
    assert problems(services({"overspeed": ["gateway"], "gateway": ["overspeed"]})) == [
        "vwos.toml: services.overspeed.after[0]: dependency cycle: overspeed -> gateway -> overspeed"
    ]


def test_self_dependency_is_a_cycle() -> None:
    assert problems(services({"a": [], "b": ["a", "b"]})) == [
        "vwos.toml: services.b.after[1]: dependency cycle: b -> b"
    ]


def test_each_cycle_is_named_once() -> None:
    graph = {"a": ["c"], "b": ["a"], "c": ["b"], "d": [], "e": ["f"], "f": ["e"], "g": ["a"]}
    assert problems(services(graph)) == [
        "vwos.toml: services.a.after[0]: dependency cycle: a -> c -> b -> a",
        "vwos.toml: services.e.after[0]: dependency cycle: e -> f -> e",
    ]


def test_enabled_service_after_a_disabled_one() -> None:
    assert problems(services({"gateway": [], "overspeed": ["gateway"]}, disabled=["gateway"])) == [
        "vwos.toml: services.overspeed.after[0]: 'gateway' is disabled (enabled = false), so 'overspeed', "
        "which starts after it, cannot start: enable 'gateway' or disable 'overspeed'"
    ]


def test_disabled_services_may_depend_on_disabled_ones_and_are_listed() -> None:
    config = parse(
        services({"gateway": [], "overspeed": ["gateway"], "trip": []}, disabled=["gateway", "overspeed"])
    )
    assert [(s.name, s.enabled) for s in config.services] == [
        ("gateway", False),
        ("overspeed", False),
        ("trip", True),
    ]


def test_disabled_services_are_still_checked() -> None:
    assert one_problem('[services.a]\nplugin = "vwos_ct_nosuch:A"\nenabled = false\n') == (
        "vwos.toml: services.a.plugin: vwos_ct_nosuch:A: no module named 'vwos_ct_nosuch'"
    )


def test_start_order_is_topological_then_file_order() -> None:
    graph = {
        "ui": ["trip", "gateway"],
        "trip": ["gateway"],
        "logger": [],
        "gateway": [],
        "uplink": ["gateway"],
    }
    names = [s.name for s in parse(services(graph)).services]
    assert names == ["logger", "gateway", "trip", "ui", "uplink"]


def test_repeated_after_entries_count_once() -> None:
    config = parse(services({"a": [], "b": ["a", "a"]}))
    assert config.service("b").after == ("a",)


def reference_order(graph: dict[str, list[str]]) -> list[str]:
    """The definition: repeatedly, the earliest service in the file whose ``after`` services all started."""
    order: list[str] = []
    while len(order) < len(graph):
        name = next(n for n in graph if n not in order and all(d in order for d in graph[n]))
        order.append(name)
    return order


@given(dependency_graphs())
def test_start_order_of_any_acyclic_graph(graph: dict[str, list[str]]) -> None:
    order, cycles = start_order(graph)
    assert cycles == []
    assert order == reference_order(graph)
    position = {name: i for i, name in enumerate(order)}
    assert all(position[dep] < position[name] for name, deps in graph.items() for dep in deps)


@settings(max_examples=50)
@given(dependency_graphs())
def test_config_services_come_after_their_after_services(graph: dict[str, list[str]]) -> None:
    config = parse(services(graph))
    assert [s.name for s in config.services] == reference_order(graph)
    for spec in config.services:
        assert spec.after == tuple(dict.fromkeys(graph[spec.name]))


@given(cyclic_dependency_graphs())
def test_start_order_finds_real_cycles(drawn: tuple[dict[str, list[str]], list[str]]) -> None:
    graph, _planted = drawn
    order, cycles = start_order(graph)
    assert cycles
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle
        assert all(b in graph[a] for a, b in itertools.pairwise(cycle))  # made of real edges
        assert not set(cycle) & set(order)  # and nothing in it was ordered


@settings(max_examples=50)
@given(cyclic_dependency_graphs())
def test_any_cycle_is_refused(drawn: tuple[dict[str, list[str]], list[str]]) -> None:
    graph, planted = drawn
    with pytest.raises(ConfigError) as info:
        parse(services(graph))
    messages = [p.message for p in info.value.problems]
    assert messages
    assert all(m.startswith("dependency cycle: ") for m in messages)
    named = [m.removeprefix("dependency cycle: ").split(" -> ") for m in messages]
    members = set(planted)
    assert any(members & set(cycle) for cycle in named)  # the planted cycle is among those named


# -- the structurer ---------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Inner:
    x: int
    label: str = attrs.field(default="inner", metadata={"help": "What to call it."})


@attrs.frozen
class Everything:
    i: int
    f: float
    b: bool
    s: str
    p: Path
    color: Color
    mode: Literal["eco", "sport"]
    level: Level = Level.LOW
    maybe: float | None = None
    ints: list[int] = attrs.Factory(list)
    names: tuple[str, ...] = ()
    pair: tuple[int, str] = (0, "")
    table: dict[str, float] = attrs.Factory(dict)
    by_color: dict[Color, int] = attrs.Factory(dict)
    inner: Inner = Inner(0)
    inners: list[Inner] = attrs.Factory(list)
    maybe_inner: Inner | None = None
    either: int | str = 0
    seq: Sequence[int] = ()
    day: datetime.date | None = None
    anything: Any = None


MINIMAL = {"i": 1, "f": 1.5, "b": True, "s": "x", "p": "/tmp/x", "color": "red", "mode": "eco"}


def test_structure_every_supported_type() -> None:
    value = structure(
        {
            **MINIMAL,
            "f": 2,
            "level": 2,
            "maybe": 3,
            "ints": [1, 2],
            "names": ["a", "b"],
            "pair": [7, "seven"],
            "table": {"a": 1, "b": 2.5},
            "by_color": {"green": 3},
            "inner": {"x": 5},
            "inners": [{"x": 1, "label": "one"}],
            "maybe_inner": {"x": 2},
            "either": "text",
            "seq": [3, 4],
            "day": datetime.date(2024, 5, 1),
            "anything": {"free": ["form"]},
        },
        Everything,
    )
    assert value == Everything(
        i=1,
        f=2.0,
        b=True,
        s="x",
        p=Path("/tmp/x"),
        color=Color.RED,
        mode="eco",
        level=Level.HIGH,
        maybe=3.0,
        ints=[1, 2],
        names=("a", "b"),
        pair=(7, "seven"),
        table={"a": 1.0, "b": 2.5},
        by_color={Color.GREEN: 3},
        inner=Inner(5),
        inners=[Inner(1, "one")],
        maybe_inner=Inner(2),
        either="text",
        seq=(3, 4),
        day=datetime.date(2024, 5, 1),
        anything={"free": ["form"]},
    )
    assert type(value.f) is float
    assert type(value.table["a"]) is float


def test_structure_defaults() -> None:
    assert structure(MINIMAL, Everything) == Everything(
        i=1, f=1.5, b=True, s="x", p=Path("/tmp/x"), color=Color.RED, mode="eco"
    )


def test_structure_relative_paths_against_base_dir(tmp_path: Path) -> None:
    assert structure({**MINIMAL, "p": "data/x"}, Everything, base_dir=tmp_path).p == tmp_path / "data" / "x"
    assert structure({**MINIMAL, "p": "data/x"}, Everything).p == Path("data/x")
    assert structure({**MINIMAL, "p": "/abs"}, Everything, base_dir=tmp_path).p == Path("/abs")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("i", "1", "expected an integer, got the string '1'"),
        ("i", 1.0, "expected an integer, got the number 1.0"),
        ("i", True, "expected an integer, got the boolean true"),
        ("f", "1.5", "expected a number, got the string '1.5'"),
        ("f", False, "expected a number, got the boolean false"),
        ("b", 1, "expected a boolean (true or false), got the integer 1"),
        ("b", "true", "expected a boolean (true or false), got the string 'true'"),
        ("s", 5, "expected a string, got the integer 5"),
        ("p", ["a"], "expected a path (a string), got an array"),
        ("color", "RED", "expected one of 'red', 'green', got the string 'RED'; did you mean 'red'?"),
        ("color", 1, "expected one of 'red', 'green', got the integer 1"),
        ("level", "LOW", "expected one of 1, 2, got the string 'LOW'"),
        ("level", 1.0, "expected one of 1, 2, got the number 1.0"),
        ("level", True, "expected one of 1, 2, got the boolean true"),
        ("mode", "Sport", "expected one of 'eco', 'sport', got the string 'Sport'; did you mean 'sport'?"),
        ("maybe", "none", "expected a number, got the string 'none'"),
        ("ints", [1, "2"], None),
        ("names", "a", "expected an array of strings, got the string 'a'"),
        ("pair", [1], "expected an array of exactly 2 items, got 1"),
        ("pair", [1, 2], None),
        ("table", [], "expected a table of numbers, got an empty array"),
        ("by_color", {"blue": 1}, None),
        ("inner", 5, "expected a table, got the integer 5"),
        ("maybe_inner", "x", "expected a table, got the string 'x'"),
        ("either", 1.5, "expected an integer or a string, got the number 1.5"),
        ("seq", [1.5], None),
        ("day", "2024-05-01", "expected a date, got the string '2024-05-01'"),
        (
            "day",
            datetime.datetime(2024, 5, 1, 12, 0),
            "expected a date, got the date-time 2024-05-01T12:00:00",
        ),
    ],
)
def test_structure_is_strict(key: str, value: object, message: str | None) -> None:
    with pytest.raises(StructureError) as info:
        structure({**MINIMAL, key: value}, Everything)
    (problem,) = info.value.problems
    if message is not None:
        assert problem == FieldProblem((key,), message)
    else:  # an item inside: the path goes down to it
        assert problem.path[0] == key
        assert len(problem.path) == 2


def test_structure_item_paths() -> None:
    with pytest.raises(StructureError) as info:
        structure(
            {
                **MINIMAL,
                "ints": [1, "2"],
                "by_color": {"blue": 1},
                "inners": [{"x": 1}, {"x": "2", "y": 0}],
                "pair": [1, 2],
            },
            Everything,
        )
    assert [str(p) for p in info.value.problems] == [
        "ints[1]: expected an integer, got the string '2'",
        "by_color.blue: expected one of 'red', 'green', got the string 'blue'",
        "inners[1].x: expected an integer, got the string '2'",
        "inners[1].y: unknown key (valid keys: x, label)",
        "pair[1]: expected a string, got the integer 2",
    ]
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)


def test_structure_reports_every_missing_key() -> None:
    with pytest.raises(StructureError) as info:
        structure({"mode": "eco"}, Everything)
    assert [str(p) for p in info.value.problems] == [
        "i: required key is missing (expected an integer)",
        "f: required key is missing (expected a number)",
        "b: required key is missing (expected a boolean (true or false))",
        "s: required key is missing (expected a string)",
        "p: required key is missing (expected a path (a string))",
        "color: required key is missing (expected one of 'red', 'green')",
    ]


def _at_most_ten(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if value > 10:
        raise ValueError(f"at most 10, got {value}")


def _ordered(instance: Validated, _attribute: attrs.Attribute[int], value: int) -> None:
    if value < instance.low:
        raise ValueError(f"high ({value}) must not be below low ({instance.low})")


def _no_post_init_problem(instance: Validated) -> None:
    if instance.low == 7:
        raise ValueError("seven is unlucky")


def _to_upper(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value.upper()


@attrs.frozen
class Validated:
    low: int = attrs.field(validator=_at_most_ten)
    high: int = attrs.field(default=10, validator=_ordered)
    code: str = attrs.field(default="x", converter=_to_upper)
    count: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    kind: str = attrs.field(default="a", validator=attrs.validators.instance_of(str))

    def __attrs_post_init__(self) -> None:
        _no_post_init_problem(self)


def test_validators_are_reported_at_their_key_all_at_once() -> None:
    with pytest.raises(StructureError) as info:
        structure({"low": 11, "high": 3, "code": "", "count": -1}, Validated)
    assert [str(p) for p in info.value.problems] == [
        "code: must not be empty",  # converters run first, as in __init__
        "low: at most 10, got 11",
        "high: high (3) must not be below low (11)",
        "count: 'count' must be >= 0: -1",
    ]


def test_validators_see_the_other_fields_whatever_the_table_order() -> None:
    with pytest.raises(StructureError) as info:
        structure({"high": 3, "low": 5}, Validated)
    assert [str(p) for p in info.value.problems] == ["high: high (3) must not be below low (5)"]


def test_a_validator_reading_a_wrong_field_does_not_add_a_problem() -> None:
    with pytest.raises(StructureError) as info:
        structure({"high": 3, "low": "five"}, Validated)
    assert [str(p) for p in info.value.problems] == ["low: expected an integer, got the string 'five'"]


def test_validators_run_next_to_type_errors() -> None:
    with pytest.raises(StructureError) as info:
        structure({"low": "1", "count": -1}, Validated)
    assert [str(p) for p in info.value.problems] == [
        "low: expected an integer, got the string '1'",
        "count: 'count' must be >= 0: -1",
    ]


def test_converters_apply_and_a_failure_of_the_whole_object_is_reported_at_the_table() -> None:
    assert structure({"low": 1, "code": "ab"}, Validated) == Validated(low=1, code="AB")
    with pytest.raises(StructureError) as info:
        structure({"inner": {"low": 7}}, dict[str, Validated])
    assert [str(p) for p in info.value.problems] == ["inner: seven is unlucky"]


def _known_name(_inst: object, _attribute: object, value: str) -> None:
    if value not in ("a", "b"):
        raise ValueError(f"unknown name {value!r}")


def _codes(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_to_upper(v) for v in values)  # stops at the first bad one


def _at_least_two(_inst: object, _attribute: object, value: tuple[str, ...]) -> None:
    if len(value) < 2:
        raise ValueError(f"expected at least 2 names, got {len(value)}")


def _low_and_high(_inst: object, _attribute: object, value: dict[str, int]) -> None:
    problems = [FieldProblem((key,), f"at most 10, got {v}") for key, v in value.items() if v > 10]
    if problems:
        raise StructureError(problems)


@attrs.frozen
class Listed:
    names: tuple[str, ...] = attrs.field(
        default=(), validator=attrs.validators.deep_iterable(member_validator=_known_name)
    )
    codes: tuple[str, ...] = attrs.field(default=(), converter=_codes)
    pair: tuple[str, ...] = attrs.field(default=("a", "b"), validator=[_at_least_two])
    limits: dict[str, int] = attrs.field(factory=dict, validator=_low_and_high)


def test_every_bad_item_of_an_array_is_reported_at_its_index() -> None:
    """A validator or converter that stops at the first bad item still has each bad item reported."""
    with pytest.raises(StructureError) as info:
        structure({"names": ["a", "x", "b", "y"], "codes": ["ok", "", "fine", ""]}, Listed)
    assert [str(p) for p in info.value.problems] == [
        "codes[1]: must not be empty",
        "codes[3]: must not be empty",
        "names[1]: unknown name 'x'",
        "names[3]: unknown name 'y'",
    ]
    assert structure({"names": ["b", "a"], "codes": ["x"]}, Listed) == Listed(names=("b", "a"), codes=("X",))


def test_a_problem_of_the_whole_array_is_reported_at_its_key() -> None:
    """No item is at fault when the rest fails too (here: too few items)."""
    with pytest.raises(StructureError) as info:
        structure({"pair": ["a"]}, Listed)
    assert [str(p) for p in info.value.problems] == ["pair: expected at least 2 names, got 1"]


def _first_bad_name(_inst: object, _attribute: object, value: tuple[str, ...]) -> None:
    for i, name in enumerate(value):
        if name not in ("a", "b"):
            raise ValueError(f"[{i}] unknown name {name!r}")


@attrs.frozen
class OwnLoop:
    names: tuple[str, ...] = attrs.field(default=(), validator=_first_bad_name)
    more: tuple[str, ...] = attrs.field(
        default=(),
        validator=[attrs.validators.deep_iterable(member_validator=_known_name), _at_least_two],
    )


def test_a_validator_of_its_own_is_reported_at_its_key_as_it_says() -> None:
    """It may name items in its message (``[3] ...``): it is not run again on items alone, which would
    renumber them. deep_iterable in a list of validators still reports each item, and stops that list."""
    with pytest.raises(StructureError) as info:
        structure({"names": ["a", "b", "c", "x"], "more": ["x", "a", "y"]}, OwnLoop)
    assert [str(p) for p in info.value.problems] == [
        "names: [2] unknown name 'c'",
        "more[0]: unknown name 'x'",
        "more[2]: unknown name 'y'",
    ]
    with pytest.raises(StructureError) as info:
        structure({"more": ["a"]}, OwnLoop)
    assert [str(p) for p in info.value.problems] == ["more: expected at least 2 names, got 1"]


def test_a_validator_may_report_several_problems_below_its_key() -> None:
    with pytest.raises(StructureError) as info:
        structure({"limits": {"low": 11, "mid": 5, "high": 12}}, Listed)
    assert [str(p) for p in info.value.problems] == [
        "limits.low: at most 10, got 11",
        "limits.high: at most 10, got 12",
    ]


def test_what_a_service_says_it_uses_on_the_bus_must_be_granted_and_a_method_served_once(
    tmp_path: Path,
) -> None:
    """`Service.bus_names`: what run would be refused (a permission) or fail on (a second server)."""
    found = problems_in(
        tmp_path,
        """
        [services.a]
        plugin = "vwos_ct_plugins:Named"
        permissions = { publish = ["Vehicle.**"], subscribe = ["Vehicle.Speed"] }
        [services.b]
        plugin = "vwos_ct_plugins:Named"
        [services.c]
        plugin = "vwos_ct_plugins:Named"
        enabled = false
        [services.d]
        plugin = "vwos_ct_plugins:Named"
        config = { method = "Other.Lock", broken = true }
        """,
    )
    refused = "when it runs, which its permissions do not grant (it would be refused at start)"
    assert found == [
        f"services.a.permissions.publish: it would publish Named.Status {refused}",
        f"services.a.permissions.subscribe: it would subscribe to Vehicle.* {refused}",
        f"services.a.permissions.serve: it would serve Vehicle.Lock {refused}",
        "services.b: it would serve Vehicle.Lock, which 'a' serves too: a method has one server (the second "
        "to start would fail)",
        "services.d.config: the plugin cannot say which bus names it uses: RuntimeError: no idea",
    ]
    assert problems_in(tmp_path, '[services.a]\nplugin = "vwos_ct_plugins:Named"\n') == []


@attrs.frozen
class Zone:
    name: str
    limit: float = 130.0


def _known_zones(_inst: object, _attribute: object, value: tuple[Zone, ...]) -> None:
    """Item by item, each problem at its item: the way a validator lists every problem of an array."""
    problems = [
        FieldProblem((i, "name"), f"no zone {z.name!r}") for i, z in enumerate(value) if z.name != "a"
    ]
    if len(value) < 4:  # of the array as a whole: 3 are built below, so it would say so
        problems.append(FieldProblem((), f"expected at least 4 zones, got {len(value)}"))
    if problems:
        raise StructureError(problems)


@attrs.frozen
class Zoned:
    zones: tuple[Zone, ...] = attrs.field(default=(), validator=_known_zones)
    names: tuple[str, ...] = attrs.field(
        default=(), validator=attrs.validators.deep_iterable(member_validator=_known_name)
    )
    pair: tuple[str, ...] = attrs.field(default=("a", "b"), validator=_at_least_two)


def test_the_validator_of_an_array_checks_the_items_that_were_built_when_others_were_not() -> None:
    """A table of an array that is wrong in itself does not hide what the array's validator finds wrong with
    the others: each is reported at its own index. What it says of the array as a whole is left out (it may
    not hold once every item is there), and so is anything a validator of no items says."""
    table = {
        "zones": [{"name": "a"}, {"name": "a", "limit": "fast"}, {"name": "x"}, {"nme": "a"}, {"name": "y"}],
        "names": ["a", 3, "x"],
        "pair": ["a", 1],
    }
    with pytest.raises(StructureError) as info:
        structure(table, Zoned)
    assert [str(p) for p in info.value.problems] == [
        "zones[1].limit: expected a number, got the string 'fast'",
        "zones[3].nme: unknown key; did you mean 'name'?",
        "zones[3].name: required key is missing (expected a string)",
        "names[1]: expected a string, got the integer 3",
        "pair[1]: expected a string, got the integer 1",
        "zones[2].name: no zone 'x'",
        "zones[4].name: no zone 'y'",
        "names[2]: unknown name 'x'",
    ]


def test_a_structure_error_may_name_the_key_its_paths_are_below() -> None:
    problems = [FieldProblem((2, "name"), "no zone 'x'"), FieldProblem((), "too few")]
    assert str(StructureError(problems, key="zones")).splitlines() == [
        "zones[2].name: no zone 'x'",
        "zones: too few",
    ]
    assert str(StructureError(problems)).splitlines() == ["[2].name: no zone 'x'", "too few"]


def test_a_problem_of_several_lines_is_shown_on_one(tmp_path: Path) -> None:
    problem = Problem(tmp_path / "vwos.toml", "services.x.config.a", "first line\n  second line\n")
    assert str(problem) == f"{tmp_path / 'vwos.toml'}: services.x.config.a: first line | second line"


@attrs.frozen
class Node:
    label: str = ""
    child: Node | None = None
    children: tuple[Node, ...] = ()


def _chain(depth: int, key: str) -> dict[str, Any]:
    """``{key: {key: ... {}}}``, ``depth`` tables deep, built without recursion."""
    top: dict[str, Any] = {}
    here = top
    for _ in range(depth):
        inner: dict[str, Any] = {}
        here[key] = [inner] if key == "children" else inner
        here = inner
    return top


@pytest.mark.parametrize("key", ["child", "children"])
def test_a_value_nested_too_deeply_is_a_problem_not_a_recursion_error(key: str) -> None:
    """A recursive config type fed a 100,000-deep value (a desired config, or TOML headers ``[a.b.c...]``):
    one problem at the depth bound, in bounded time."""
    with pytest.raises(StructureError) as info:
        structure(_chain(100_000, key), Node)
    (problem,) = info.value.problems
    assert problem.message == f"nested more than {MAX_DEPTH} levels deep"
    assert len(problem.path) == MAX_DEPTH + 1
    assert problem.path[:2] == ((key, key) if key == "child" else (key, 0))
    shallow = structure(_chain(30, key), Node)
    assert isinstance(shallow, Node)


def test_a_recursion_error_of_a_validator_is_a_problem_at_its_key() -> None:
    def recurse(inst: object, attribute: object, value: object) -> None:
        recurse(inst, attribute, value)

    @attrs.frozen
    class Looping:
        x: int = attrs.field(default=0, validator=recurse)

    with pytest.raises(StructureError) as info:
        structure({"x": 1}, Looping)
    assert [str(p) for p in info.value.problems] == ["x: maximum recursion depth exceeded"]


@attrs.frozen
class Unsupported:
    when: complex


@attrs.frozen
class Unresolvable:
    x: NoSuchType  # type: ignore[name-defined]  # noqa: F821


def test_unsupported_and_unresolvable_types_are_problems_not_crashes() -> None:
    with pytest.raises(StructureError) as info:
        structure({"when": 1}, Unsupported)
    assert str(info.value) == "when: cannot be built from TOML: its type, builtins.complex, is not supported"
    with pytest.raises(StructureError) as info:
        structure({"x": 1}, Unresolvable)
    assert str(info.value) == (
        "cannot be built from TOML: the type annotations of test_config.Unresolvable do not resolve "
        "(NameError: name 'NoSuchType' is not defined)"
    )


def test_structure_of_plain_types() -> None:
    assert structure([1, 2], tuple[int, ...]) == (1, 2)
    assert structure({"a": [1.5]}, dict[str, list[float]]) == {"a": [1.5]}
    assert structure("eco", Literal["eco", "sport"]) == "eco"
    with pytest.raises(StructureError) as info:
        structure({"a": ["x"]}, dict[str, list[float]])
    assert str(info.value) == "a[0]: expected a number, got the string 'x'"


def to_toml(value: object) -> object:
    """The TOML data ``value`` was built from (the inverse of `structure` for the types above)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_toml(v) for v in value]
    if isinstance(value, dict):
        return {to_toml(k): to_toml(v) for k, v in value.items()}
    cls = type(value)
    if attrs.has(cls):
        return {f.alias: to_toml(getattr(value, f.name)) for f in attrs.fields(cls) if f.init}
    return value


_i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_floats = st.floats(allow_nan=False)
_inners = st.builds(Inner, x=_i64, label=st.text(max_size=5))
_everything = st.builds(
    Everything,
    i=_i64,
    f=_floats,
    b=st.booleans(),
    s=st.text(max_size=10),
    p=st.sampled_from([Path("/"), Path("/a/b"), Path("rel/x")]),
    color=st.sampled_from(Color),
    mode=st.sampled_from(["eco", "sport"]),
    level=st.sampled_from(Level),
    maybe=st.none() | _floats,
    ints=st.lists(_i64, max_size=3),
    names=st.lists(st.text(max_size=3), max_size=3).map(tuple),
    pair=st.tuples(_i64, st.text(max_size=3)),
    table=st.dictionaries(st.text(max_size=3), _floats, max_size=3),
    by_color=st.dictionaries(st.sampled_from(Color), _i64, max_size=2),
    inner=_inners,
    inners=st.lists(_inners, max_size=2),
    maybe_inner=st.none() | _inners,
    either=_i64 | st.text(max_size=3),
    seq=st.lists(_i64, max_size=3).map(tuple),
    day=st.none() | st.dates(),
    anything=toml_values(max_leaves=3),
)


@given(_everything)
def test_structure_round_trips(value: Everything) -> None:
    data = to_toml(value)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if v is not None}  # TOML has no null: a None is a key left out
    assert repr(structure(data, Everything)) == repr(value)  # repr: TOML floats may be NaN, never equal


@given(
    st.dictionaries(st.sampled_from([f.name for f in attrs.fields(Everything)] + ["extra"]), toml_values())
)
def test_structure_never_crashes(data: dict[str, object]) -> None:
    error: StructureError | None = None
    try:
        value = structure(data, Everything)
    except StructureError as exc:
        error = exc
    if error is None:
        assert isinstance(value, Everything)
    else:
        assert error.problems
        keys = {*data, *(f.name for f in attrs.fields(Everything))}  # given, or missing
        assert all(p.message and p.path and p.path[0] in keys for p in error.problems)


@given(toml_values())
def test_any_toml_in_a_service_config_is_a_config_error_or_a_config(config: object) -> None:
    table = {"services": {"a": {"plugin": OVERSPEED, "config": config}}}
    error: ConfigError | None = None
    try:
        loaded = parse_config(_dump(table), path="vwos.toml")
    except ConfigError as exc:
        error = exc
    if error is None:
        assert isinstance(loaded.services[0].config, plugins().OverspeedConfig)
    else:
        assert error.problems
        assert all(p.key_path.startswith("services.a.config") for p in error.problems)


def _dump(table: Mapping[str, object]) -> str:
    """A tiny TOML writer for the fuzz test: everything inline, which TOML allows for any value."""
    return "\n".join(f"{format_path([k])} = {toml_literal(v)}" for k, v in table.items()) + "\n"


# -- describing -------------------------------------------------------------------------------------------


def test_describe_value() -> None:
    assert describe_value("fast") == "the string 'fast'"
    assert describe_value("") == "an empty string"
    assert describe_value("x" * 100) == f"the string '{'x' * 57}...'"
    assert describe_value(True) == "the boolean true"
    assert describe_value(3) == "the integer 3"
    assert describe_value(float("-inf")) == "the number -inf"
    assert describe_value([1]) == "an array"
    assert describe_value({"a": 1}) == "a table"
    assert describe_value(datetime.time(7, 30)) == "the time 07:30:00"
    assert describe_value(datetime.date(2026, 1, 2)) == "the date 2026-01-02"
    assert describe_value(datetime.datetime(2026, 1, 2, 3, 4)) == "the date-time 2026-01-02T03:04:00"
    assert describe_value([]) == "an empty array"
    assert describe_value({}) == "an empty table"
    assert describe_value(None) == "nothing (None)"
    assert describe_value(b"ab") == "bytes b'ab'"
    assert describe_value(b"x" * 100) == f"bytes b'{'x' * 55}..."


def test_format_path_quotes_keys_that_are_not_bare() -> None:
    assert format_path(["services", "over-speed", "config", "zones", 2, "name"]) == (
        "services.over-speed.config.zones[2].name"
    )
    assert format_path(["labels", "Vehicle.Speed", 'say "hi"']) == 'labels."Vehicle.Speed"."say \\"hi\\""'
    assert format_path([]) == ""


def test_toml_literal() -> None:
    assert toml_literal(Inner(1)) == '{ x = 1, label = "inner" }'
    assert toml_literal([Color.RED, Path("/a"), 1.5, False]) == '["red", "/a", 1.5, false]'
    assert toml_literal({}) == "{}"
    assert toml_literal((datetime.date(2026, 1, 2), datetime.time(7, 30))) == "[2026-01-02, 07:30:00]"
    assert toml_literal(float("nan")) == "nan"
    assert toml_literal(b"raw") == "b'raw'"  # no TOML form: shown as Python writes it


def test_describe_fields_of_a_plugin_config() -> None:
    docs = {doc.name: doc for doc in describe_fields(Everything)}
    assert docs["i"] == FieldDoc("i", "integer", None, True, "")
    assert docs["f"].type_text == "number"
    assert docs["color"].type_text == "'red' | 'green'"
    assert docs["mode"].type_text == "'eco' | 'sport'"
    assert (docs["level"].type_text, docs["level"].default_text) == ("1 | 2", "1")
    assert (docs["maybe"].type_text, docs["maybe"].default_text, docs["maybe"].required) == (
        "number",
        "(not set)",
        False,
    )
    assert (docs["ints"].type_text, docs["ints"].default_text) == ("array of integers", "[]")
    assert docs["pair"].type_text == "array [an integer, a string]"
    assert docs["table"].type_text == "table of numbers"
    assert docs["either"].type_text == "integer or string"
    assert docs["inner"].default_text == '{ x = 0, label = "inner" }'
    assert docs["inner"].fields == (
        FieldDoc("x", "integer", None, True, ""),
        FieldDoc("label", "string", '"inner"', False, "What to call it."),
    )
    assert docs["maybe_inner"].fields == docs["inner"].fields
    assert docs["inners"].type_text == "array of tables"


def test_describe_fields_of_the_config_file_tables() -> None:
    supervisor = describe_fields(SupervisorTable)
    assert [d.name for d in supervisor] == [
        "strategy",
        "intensity",
        "period",
        "state_dir",
        "python_path",
        "start_timeout",
        "stop_timeout",
        "log_level",
        "revive_after",
        "loop_block_limit",
        "undeclared_grace",
        "connection_limits",
    ]
    assert all(d.help and not d.required for d in supervisor)
    strategy = supervisor[0]
    assert (strategy.type_text, strategy.default_text) == (
        "'one_for_one' | 'one_for_all' | 'rest_for_one'",
        '"one_for_one"',
    )
    service = {d.name: d for d in describe_fields(ServiceTable)}
    assert service["plugin"].required
    assert service["plugin"].default_text is None
    assert [d.name for d in service["backoff"].fields] == [
        "initial",
        "multiplier",
        "max_delay",
        "jitter",
        "reset_after",
    ]
    assert [(d.name, d.type_text, d.default_text) for d in service["permissions"].fields] == [
        ("publish", "array of strings", "[]"),
        ("subscribe", "array of strings", "[]"),
        ("serve", "array of strings", "[]"),
        ("call", "array of strings", "[]"),
        ("block", "array of strings", "[]"),
    ]


def test_the_bus_socket_s_connection_limits_are_configured_and_checked(tmp_path: Path) -> None:
    from bus import ConnectionLimits

    config = tmp_path / "vwos.toml"
    config.write_text("[supervisor.connection_limits]\nsubscriptions = 16\ncalls = 8\n")
    assert load_config(config).connection_limits == ConnectionLimits(subscriptions=16, methods=64, calls=8)
    config.write_text("[supervisor]\nconnection_limits = { subscriptions = 0, method = 3 }\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert [str(p) for p in info.value.problems] == [
        f"{config}: supervisor.connection_limits.method: unknown key; did you mean 'methods'?",
        f"{config}: supervisor.connection_limits.subscriptions: ConnectionLimits.subscriptions must be a "
        "positive int, not 0",
    ]


# -- groups: the supervision tree of the config file -----------------------------------------------------


def test_groups_become_group_specs_in_file_order_and_services_join_them() -> None:
    config = parse(
        f"""
        [groups.body]
        strategy = "one_for_all"
        intensity = 2
        period = 30.0
        critical = true

        [groups.doors]
        group = "body"
        after = ["gateway"]
        revive_after = 60.0

        [services.gateway]
        plugin = "{GATEWAY}"

        [services.lock]
        plugin = "{GATEWAY}"
        group = "doors"
        """
    )
    body, doors = config.groups
    assert (body.name, body.strategy, body.intensity, body.period, body.critical, body.group) == (
        "body",
        Strategy.ONE_FOR_ALL,
        2,
        30.0,
        True,
        None,
    )
    assert (doors.name, doors.group, doors.after, doors.revive_after, doors.critical) == (
        "doors",
        "body",
        ("gateway",),
        60.0,
        False,
    )
    assert [s.name for s in config.services] == ["gateway", "lock"]


def test_groups_must_be_a_table_of_tables() -> None:
    assert one_problem("groups = 3\n") == "vwos.toml: groups: expected a table of groups, got the integer 3"


def test_a_group_name_is_checked_like_a_service_name() -> None:
    assert one_problem("[groups.-body]\n") == (
        "vwos.toml: groups.-body: invalid group name: use letters, digits, '_' and '-', not starting with '-'"
    )


def test_a_group_may_not_share_a_service_s_name() -> None:
    assert one_problem(f'[groups.gateway]\n[services.gateway]\nplugin = "{GATEWAY}"\n') == (
        "vwos.toml: groups.gateway: 'gateway' names a service too: services and groups share one namespace"
    )


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ("[groups.body]\n", "no group 'bdy'; did you mean 'body'?"),
        ("[groups.body]\n[groups.cabin]\n", "no group 'zzz' (groups: body, cabin)"),
        ("", "no group 'zzz' (there is no [groups] table)"),
    ],
)
def test_a_service_in_an_unknown_group(groups: str, message: str) -> None:
    name = "bdy" if "did you mean" in message else "zzz"
    text = f'{groups}[services.a]\nplugin = "{GATEWAY}"\ngroup = "{name}"\n'
    assert one_problem(text) == f"vwos.toml: services.a.group: {message}"


def test_groups_nesting_in_a_cycle_are_named_once_per_group_in_it() -> None:
    found = problems('[groups.a]\ngroup = "b"\n[groups.b]\ngroup = "a"\n[groups.c]\ngroup = "c"\n')
    assert found == [
        "vwos.toml: groups.a.group: groups nest in a cycle: a -> b -> a",
        "vwos.toml: groups.c.group: groups nest in a cycle: c -> c",
    ]


def test_a_unit_cannot_start_after_a_group_that_holds_it_or_that_it_holds() -> None:
    found = problems(
        f"""
        [groups.body]
        after = ["body", "doors"]
        [groups.doors]
        group = "body"
        [services.lock]
        plugin = "{GATEWAY}"
        group = "doors"
        after = ["body"]
        """
    )
    assert found == [
        "vwos.toml: services.lock.after[0]: 'lock' cannot start after 'body': one contains the other, so it "
        "would wait for itself",
        "vwos.toml: groups.body.after[0]: 'body' cannot start after 'body': one contains the other, so it "
        "would wait for itself",
        "vwos.toml: groups.body.after[1]: 'body' cannot start after 'doors': one contains the other, so it "
        "would wait for itself",
    ]


def test_a_group_after_a_disabled_service() -> None:
    text = f'[groups.body]\nafter = ["gateway"]\n[services.gateway]\nplugin = "{GATEWAY}"\nenabled = false\n'
    assert one_problem(text) == (
        "vwos.toml: groups.body.after[0]: 'gateway' is disabled (enabled = false), so 'body', which starts "
        "after it, cannot start: enable 'gateway' or remove it from 'body''s after"
    )


def test_a_group_after_an_unknown_name() -> None:
    assert one_problem('[groups.body]\nafter = ["bdy"]\n') == (
        "vwos.toml: groups.body.after[0]: unknown service or group 'bdy'; did you mean 'body'?"
    )


def test_a_dependency_cycle_through_a_group_s_after() -> None:
    found = problems(
        f"""
        [groups.body]
        after = ["gateway"]
        [services.lock]
        plugin = "{GATEWAY}"
        group = "body"
        [services.gateway]
        plugin = "{GATEWAY}"
        after = ["lock"]
        """
    )
    assert found == [
        "vwos.toml: services.lock: dependency cycle (through the `after` of groups): lock -> gateway -> lock"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "loop_block_limit = 0.1",
            "supervisor.loop_block_limit: expected 0 (off) or a number of seconds from 0.5 to 1000000000, "
            "got the number 0.1",
        ),
        (
            "undeclared_grace = -1.0",
            "supervisor.undeclared_grace: expected a number of seconds >= 0 and at most 1000000000, got the "
            "number -1.0",
        ),
        (
            "undeclared_grace = nan",
            "supervisor.undeclared_grace: expected a number of seconds >= 0 and at most 1000000000, got the "
            "number nan",
        ),
    ],
)
def test_out_of_range_supervisor_seconds(line: str, message: str) -> None:
    assert one_problem(f"[supervisor]\n{line}\n") == f"vwos.toml: {message}"


def test_zero_turns_the_loop_block_check_and_the_undeclared_report_off() -> None:
    config = parse("[supervisor]\nloop_block_limit = 0\nundeclared_grace = 0\n")
    assert (config.loop_block_limit, config.undeclared_grace) == (None, None)


def test_a_memory_limit_below_one_mib_is_refused() -> None:
    assert one_problem(f"{ISOLATED}memory_limit_mb = 0\n") == (
        "vwos.toml: services.a.memory_limit_mb: expected a number of MiB >= 1, got the integer 0"
    )


def test_a_config_file_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / ("x" * 300))
    (problem,) = info.value.problems
    assert problem.message == "cannot read the config file: File name too long"


def test_config_text_too_large_is_refused_before_parsing() -> None:
    assert one_problem("#" * (MAX_FILE_BYTES + 1)) == (
        "vwos.toml: the config file is larger than 4 MiB (is it the right file?)"
    )


def test_a_key_in_a_table_that_takes_none() -> None:
    with pytest.raises(StructureError) as info:
        structure({"x": 1}, NoConfig)
    assert info.value.problems == [FieldProblem(("x",), "unknown key (this table takes no keys)")]


@attrs.frozen
class Shapes:
    annotated: typing.Annotated[int, "a note"] = 1
    counts: dict[str, int] = attrs.Factory(dict)
    either: int | str | None = None
    series: dict[str, list[float]] = attrs.Factory(dict)


def test_the_names_of_annotated_optional_unions_and_tables_of_a_type() -> None:
    assert [(f.name, f.type_text) for f in describe_fields(Shapes)] == [
        ("annotated", "integer"),
        ("counts", "table of integers"),
        ("either", "integer or string"),
        ("series", "table of arrays of numbers"),
    ]
    for key, value, path, message in [
        ("annotated", "x", ("annotated",), "expected an integer, got the string 'x'"),
        ("counts", {"k": "x"}, ("counts", "k"), "expected an integer, got the string 'x'"),
        ("counts", 3, ("counts",), "expected a table of integers, got the integer 3"),
        ("either", 1.5, ("either",), "expected an integer or a string, got the number 1.5"),
        ("series", 3, ("series",), "expected a table of arrays of numbers, got the integer 3"),
    ]:
        with pytest.raises(StructureError) as info:
            structure({key: value}, Shapes)
        assert info.value.problems == [FieldProblem(path, message)]


def _doubled(value: int, instance: object, field: attrs.Attribute[int]) -> int:
    if value < 0:
        raise ValueError(f"{field.name}: cannot double {value}")
    return value * 2


@attrs.frozen
class Converted:
    x: int = attrs.field(converter=attrs.Converter(_doubled, takes_self=True, takes_field=True))  # type: ignore[misc]
    y: int = attrs.field(default=0, converter=attrs.Converter(int))  # type: ignore[misc]


def test_an_attrs_converter_that_takes_self_and_field_is_called_with_them_and_its_error_reported() -> None:
    assert structure({"x": 3, "y": 2}, Converted) == Converted(3, 2)  # x converted once, to 6
    assert structure({"x": 3}, Converted).x == 6
    with pytest.raises(StructureError) as info:
        structure({"x": -1}, Converted)
    assert info.value.problems == [FieldProblem(("x",), "x: cannot double -1")]
