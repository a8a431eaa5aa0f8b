"""vwos: the runtime — service API, supervisor, restart policy, logging. See ``docs/``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vwos._cli_common import default_socket_path
    from vwos._config import (
        ConfigError,
        ConfiguredService,
        Problem,
        SupervisorConfig,
        load_config,
        parse_config,
    )
    from vwos._logging import configure_logging
    from vwos._plugins import PluginError, PluginInfo, installed_plugins, load_plugin
    from vwos._policy import (
        BackoffPolicy,
        ChildSpec,
        ChildStatus,
        Decision,
        Exit,
        GroupSpec,
        GroupStatus,
        Restart,
        RestartEngine,
        State,
        Strategy,
        SupervisorPolicy,
        TransitionError,
    )
    from vwos._runtime import tune_gc
    from vwos._service import NoConfig, Service, ServiceContext
    from vwos._spec import ServiceSpec, ServiceStatus
    from vwos._structure import FieldProblem, StructureError
    from vwos._supervisor import Supervisor, SupervisorGaveUp

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "ChildStatus",
    "ConfigError",
    "ConfiguredService",
    "Decision",
    "Exit",
    "FieldProblem",
    "GroupSpec",
    "GroupStatus",
    "NoConfig",
    "PluginError",
    "PluginInfo",
    "Problem",
    "Restart",
    "RestartEngine",
    "Service",
    "ServiceContext",
    "ServiceSpec",
    "ServiceStatus",
    "State",
    "Strategy",
    "StructureError",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorGaveUp",
    "SupervisorPolicy",
    "TransitionError",
    "configure_logging",
    "default_socket_path",
    "installed_plugins",
    "load_config",
    "load_plugin",
    "parse_config",
    "tune_gc",
]

#: The private module each public name is defined in. Each is imported when one of its names is first used
#: (PEP 562), not with the package: a service's module (or an isolated service's process) that uses only
#: `Service` and `ServiceContext` does not load the supervisor, the config loader or the control plane.
_LAZY: dict[str, str] = {
    "ConfigError": "_config",
    "ConfiguredService": "_config",
    "Problem": "_config",
    "SupervisorConfig": "_config",
    "load_config": "_config",
    "parse_config": "_config",
    "configure_logging": "_logging",
    "default_socket_path": "_cli_common",
    "tune_gc": "_runtime",
    "PluginError": "_plugins",
    "PluginInfo": "_plugins",
    "installed_plugins": "_plugins",
    "load_plugin": "_plugins",
    "BackoffPolicy": "_policy",
    "ChildSpec": "_policy",
    "ChildStatus": "_policy",
    "Decision": "_policy",
    "Exit": "_policy",
    "GroupSpec": "_policy",
    "GroupStatus": "_policy",
    "Restart": "_policy",
    "RestartEngine": "_policy",
    "State": "_policy",
    "Strategy": "_policy",
    "SupervisorPolicy": "_policy",
    "TransitionError": "_policy",
    "NoConfig": "_service",
    "Service": "_service",
    "ServiceContext": "_service",
    "ServiceSpec": "_spec",
    "ServiceStatus": "_spec",
    "FieldProblem": "_structure",
    "StructureError": "_structure",
    "Supervisor": "_supervisor",
    "SupervisorGaveUp": "_supervisor",
}

if not TYPE_CHECKING:  # for mypy the names are the imports above, and a misspelt one stays an error

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
