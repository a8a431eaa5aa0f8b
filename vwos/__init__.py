"""vwos: the runtime — service API, supervisor, restart policy, logging. See ``docs/``."""

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
    "installed_plugins",
    "load_config",
    "load_plugin",
    "parse_config",
]
