"""One kind of bus client over one `bus.Bus`: in-process, or over the socket (the ``bus_side`` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import bus
from bus._messages import (
    Get,
)

KINDS = ("in_process", "socket")


class BusSide:
    """Handles on ``bus`` of one kind: ``"in_process"`` (`bus.BusClient`) or ``"socket"``
    (`bus.RemoteBusClient`, connected to a broker that serves ``bus`` on a tmp Unix socket)."""

    def __init__(self, kind: str, the_bus: bus.Bus, path: Path | None) -> None:
        self.kind = kind
        self.bus = the_bus
        self._path = path

    @asynccontextmanager
    async def client(
        self, name: str, permissions: bus.Permissions = bus.Permissions.ALL
    ) -> AsyncIterator[bus.BusHandle]:
        """A handle on ``bus`` for the client ``name`` with ``permissions``, closed on exit."""
        if self._path is None:
            handle = self.bus.client(name, permissions)
            try:
                yield handle
            finally:
                handle.close()
            return
        requested = None if permissions == bus.Permissions.ALL else permissions
        async with bus.connect_unix(self._path, name, permissions=requested) as remote:
            yield remote

    async def settle(self, handle: bus.BusHandle) -> None:
        """Wait until the bus has handled what ``handle`` sent so far (subscriptions, publishes): a round
        trip to the broker over the socket (it answers in order), a checkpoint in-process."""
        await handle.flush()
        if isinstance(handle, bus.RemoteBusClient):
            try:
                await handle._request(Get(handle._new_id(), "Vwos.Test.Settle"))
            except bus.BusError:
                pass  # unknown, or not permitted: answered all the same


@asynccontextmanager
async def open_bus_side(kind: str, path: Path) -> AsyncIterator[BusSide]:
    """A fresh `bus.Bus` and handles of ``kind`` on it (for ``socket``, a broker serving it on ``path``)."""
    the_bus = bus.Bus()
    if kind == "in_process":
        yield BusSide(kind, the_bus, None)
        return
    if kind != "socket":
        raise ValueError(f"a bus side is one of {KINDS}, not {kind!r}")

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        await bus.serve_unix(
            the_bus, path, authorize=lambda creds, name: bus.Permissions.ALL, task_status=task_status
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        yield BusSide(kind, the_bus, path)
        nursery.cancel_scope.cancel()
