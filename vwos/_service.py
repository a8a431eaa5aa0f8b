"""The service API: what a car service is, and what the runtime hands it."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import structlog
import trio

from bus import BusHandle, Permissions


@attrs.frozen
class NoConfig:
    """The config of a service that takes none: its TOML table must be empty."""


ConfigT = TypeVar("ConfigT")


@attrs.frozen
class ServiceContext:
    """What the runtime hands a service's ``run``.

    ``bus`` is a bus handle scoped to the service's permissions; ``log`` a structlog logger bound with the
    service's name; ``heartbeat()`` feeds the watchdog; ``state_dir`` is a private directory that survives
    restarts (created before ``run`` is called).
    """

    name: str
    bus: BusHandle
    log: structlog.typing.FilteringBoundLogger
    state_dir: Path
    _heartbeat: Callable[[], None] = attrs.field(alias="heartbeat", repr=False)

    def heartbeat(self) -> None:
        """Tell the watchdog the service is alive. Cheap: call it as often as is convenient."""
        self._heartbeat()

    async def heartbeat_every(self, seconds: float) -> None:
        """Heartbeat now and every ``seconds`` until cancelled: ``nursery.start_soon(ctx.heartbeat_every,
        1.0)`` in a service whose work has no natural loop to heartbeat from.

        It proves that the event loop runs and that the service's nursery is alive, not that its work makes
        progress: where there is a loop of work, heartbeat from it instead. Use an interval well below the
        service's ``watchdog`` (a third of it, say).
        """
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"heartbeat_every needs a finite number of seconds > 0, got {seconds!r}")
        while True:
            self._heartbeat()
            await trio.sleep(seconds)


class Service(Generic[ConfigT]):
    """Base class of a car service.

    Subclass it with the service's config class as the type argument, ``class Trip(Service[TripConfig])``,
    and write ``run``. The runtime builds the config from the service's TOML table, constructs the service
    with it, and calls ``run`` in a task of its own. ``run`` calls ``task_status.started()`` once it is
    ready (other services that start ``after`` it wait for that), then works until it is cancelled::

        async def run(self, ctx, *, task_status=trio.TASK_STATUS_IGNORED):
            with ctx.bus.subscribe(SPEED) as speeds:
                task_status.started()
                async for sample in speeds:
                    ...
    """

    #: The attrs class the service's ``[services.NAME.config]`` table is built into. Found from the type
    #: argument of ``Service[...]``; a subclass may also set it explicitly.
    config_class: ClassVar[type[Any]] = NoConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Service:
                (arg,) = typing.get_args(base)
                if arg is None or arg is type(None):
                    cls.config_class = NoConfig  # ``Service[None]``: takes no config
                elif isinstance(arg, type):
                    cls.config_class = arg
                return

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @classmethod
    def bus_names(cls, config: ConfigT) -> Permissions | None:
        """The bus names the service will publish, subscribe to, serve and call when it runs with
        ``config`` (exact names, or patterns), as a `bus.Permissions`; None (the default) if it cannot say.

        The config check (`vwos check`) reports each name the service's ``permissions`` do not grant (the
        service would be refused it when it runs) and each method that two enabled services would serve.
        It is called on configs that passed their own checks; it must be cheap and do no I/O beyond what the
        config's validators did.
        """
        return None

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Do the service's work. Must call ``task_status.started()`` once ready."""
        raise NotImplementedError
