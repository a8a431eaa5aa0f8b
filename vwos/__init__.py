"""vwos: the runtime — service API, supervisor, restart policy, logging. See ``docs/``."""

from vwos._logging import configure_logging
from vwos._policy import (
    BackoffPolicy,
    ChildSpec,
    ChildStatus,
    Decision,
    Exit,
    Restart,
    RestartEngine,
    State,
    Strategy,
    SupervisorPolicy,
    TransitionError,
)
from vwos._service import NoConfig, Service, ServiceContext
from vwos._supervisor import ServiceSpec, ServiceStatus, Supervisor, SupervisorGaveUp

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "ChildStatus",
    "Decision",
    "Exit",
    "NoConfig",
    "Restart",
    "RestartEngine",
    "Service",
    "ServiceContext",
    "ServiceSpec",
    "ServiceStatus",
    "State",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
    "SupervisorPolicy",
    "TransitionError",
    "configure_logging",
]
