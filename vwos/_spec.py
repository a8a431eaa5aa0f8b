"""What the supervisor is told and what it tells: `ServiceSpec` (how to run one service) and `ServiceStatus`
(one row of its status table), plain data that the config loader, the isolation layer and the supervisor
share without importing each other."""

from __future__ import annotations

from typing import Any

import attrs

from bus import Permissions
from vwos._policy import BackoffPolicy, ChildSpec, Exit, Restart, State
from vwos._service import Service


@attrs.frozen
class ServiceSpec:
    """How the supervisor runs one service: built by the config loader, or by hand in tests."""

    name: str
    service_class: type[Service[Any]]
    config: Any = None
    restart: Restart = Restart.PERMANENT
    after: tuple[str, ...] = ()
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    watchdog: float | None = None
    backoff: BackoffPolicy = attrs.field(factory=BackoffPolicy)
    permissions: Permissions = Permissions.ALL
    enabled: bool = True
    #: Run the service in a child process of its own (see ``docs/supervisor.md``, "Isolated services").
    isolated: bool = False
    #: An isolated service's address-space limit in MiB, enforced by the OS (``RLIMIT_AS``).
    memory_limit_mb: int | None = attrs.field(default=None)
    #: The group it belongs to (see `GroupSpec`); None: the supervisor's root.
    group: str | None = None
    #: Exhausting its restart budget fails its group (escalates) instead of failing only this service.
    critical: bool = False
    #: Its own restart budget; None: its group's.
    intensity: int | None = None
    period: float | None = None
    #: Seconds after failing that it is started again on its own; None: its group's (None there: never).
    revive_after: float | None = None

    @memory_limit_mb.validator
    def _check_memory_limit(self, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is None:
            return
        if not self.isolated:
            raise ValueError(f"{self.name}: memory_limit_mb needs isolated=True")
        if type(value) is not int or value < 1:
            raise ValueError(f"{self.name}: memory_limit_mb must be a positive integer, got {value!r}")

    def child_spec(self) -> ChildSpec:
        """The service as the restart policy sees it."""
        return ChildSpec(
            self.name,
            restart=self.restart,
            backoff=self.backoff,
            after=self.after,
            group=self.group,
            critical=self.critical,
            intensity=self.intensity,
            period=self.period,
            revive_after=self.revive_after,
        )


@attrs.frozen
class ServiceStatus:
    """One row of the supervisor's status table."""

    name: str
    state: State
    restarts: int
    uptime: float | None
    last_exit: Exit | None
    last_error: str | None
    #: How many runs of the service have been started (0 before the first): a new run has a higher number.
    incarnation: int
    #: Why it is in its state, when that needs saying: what it waits for, why it failed.
    reason: str | None = None
    #: The group it belongs to (None: the root).
    group: str | None = None
    critical: bool = False
    #: When a failed service is started again on its own (supervisor clock); None: only by the operator.
    revive_at: float | None = None
