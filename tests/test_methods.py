"""Request/response on the bus: replies, typed remote errors, no such method, timeouts — never a hang."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing
from bus_sides import BusSide

import bus
from bus import (
    Bus,
    CallTimeoutError,
    Method,
    MethodAlreadyServedError,
    NoSuchMethodError,
    PermissionDeniedError,
    Permissions,
    RemoteError,
    ValueRefusedError,
)


@bus.default_codec.register(name="test_methods.LockRequest")
@attrs.frozen
class LockRequest:
    lock: bool


LOCK = Method("Body.Doors.Lock", LockRequest, bool)


class DoorsOpenError(Exception):
    pass


async def lock_handler(request: LockRequest) -> bool:
    await trio.sleep(0.01)
    if not request.lock:
        raise DoorsOpenError("a door is open")
    return True


# (on every client, real time: the handler's 10 ms; a broker's round trips under autojump would race it)
async def test_call_gets_the_reply(bus_side: BusSide) -> None:
    with trio.fail_after(10):
        async with bus_side.client("body") as body, bus_side.client("app") as app:
            async with trio.open_nursery() as nursery:
                await nursery.start(body.serve, LOCK, lock_handler)
                assert await app.call(LOCK, LockRequest(lock=True)) is True
                assert bus_side.bus.statistics().methods == {"Body.Doors.Lock": "body"}
                nursery.cancel_scope.cancel()
            await bus_side.settle(body)
            assert bus_side.bus.statistics().methods == {}


async def test_handler_exception_reaches_caller_as_typed_remote_error(bus_side: BusSide) -> None:
    with trio.fail_after(10):
        async with bus_side.client("body") as body, bus_side.client("app") as app, trio.open_nursery() as n:
            await n.start(body.serve, LOCK, lock_handler)
            with pytest.raises(RemoteError) as info:
                await app.call(LOCK, LockRequest(lock=False))
            n.cancel_scope.cancel()
    assert info.value.error_type == "DoorsOpenError"
    assert info.value.message == "a door is open"
    assert "Body.Doors.Lock" in str(info.value)


async def test_calling_an_unserved_method_fails_at_once(bus_side: BusSide) -> None:
    with trio.fail_after(10):
        async with bus_side.client("app") as app:
            with pytest.raises(NoSuchMethodError, match=r"Body.Doors.Lock: no such method"):
                await app.call(LOCK, LockRequest(lock=True))


async def test_slow_handler_times_out_and_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()
    finished = []

    async def slow(_: object) -> None:
        await trio.sleep(100)
        finished.append(True)

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("svc").serve, "Slow.Method", slow)
        start = trio.current_time()
        with pytest.raises(CallTimeoutError, match=r"Slow.Method: no reply within 2 s"):
            await bus.client("app").call("Slow.Method", timeout=2.0)
        assert trio.current_time() - start == pytest.approx(2.0)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert finished == []  # the abandoned handler was cancelled, not left running


async def test_server_stopping_mid_call_fails_the_caller_instead_of_hanging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = Bus()

    async def forever(_: object) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[None]) -> None:
            with server_scope:
                await bus.client("svc").serve("Svc.Forever", forever, task_status=task_status)

        await nursery.start(run_server)
        nursery.start_soon(lambda: _cancel_later(server_scope, 1.0))
        with pytest.raises(RemoteError, match="server stopped before replying"):
            await bus.client("app").call("Svc.Forever", timeout=math.inf)


async def _cancel_later(scope: trio.CancelScope, delay: float) -> None:
    await trio.sleep(delay)
    scope.cancel()


async def test_wrong_request_or_response_type_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()

    async def wrong(_: LockRequest) -> bool:
        return "yes"  # type: ignore[return-value]

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("body").serve, LOCK, wrong)
        app = bus.client("app")
        with pytest.raises(ValueRefusedError, match="expected a LockRequest argument"):
            await app.call(LOCK, "lock")  # type: ignore[misc]
        with pytest.raises(RemoteError, match="handler returned str, expected bool"):
            await app.call(LOCK, LockRequest(lock=True))
        nursery.cancel_scope.cancel()


async def test_a_method_has_one_server(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("body").serve, LOCK, lock_handler)
        with pytest.raises(MethodAlreadyServedError, match="already served by 'body'"):
            await bus.client("other").serve(LOCK, lock_handler)
        nursery.cancel_scope.cancel()


async def test_serve_and_call_need_permission() -> None:
    bus = Bus()
    client = bus.client("app", Permissions(call=["Body.Windows.*"]))
    with pytest.raises(PermissionDeniedError, match=r"may not call 'Body.Doors.Lock'"):
        await client.call(LOCK, LockRequest(lock=True))
    with pytest.raises(PermissionDeniedError, match=r"may not serve 'Body.Doors.Lock'"):
        await client.serve(LOCK, lock_handler)


async def test_many_concurrent_calls_all_get_their_own_reply(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()

    async def double(x: int) -> int:
        await trio.sleep(0.1)
        return 2 * x

    replies: dict[int, int] = {}

    async def caller(i: int) -> None:
        replies[i] = await bus.client(f"c{i}").call("Math.Double", i)

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("math").serve, "Math.Double", double)
        async with trio.open_nursery() as callers:
            for i in range(50):
                callers.start_soon(caller, i)
        nursery.cancel_scope.cancel()
    assert replies == {i: 2 * i for i in range(50)}


async def test_bad_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        await Bus().client("app").call("Any.Thing", timeout=0)


async def test_the_bus_gives_a_served_methods_declaration(autojump_clock: trio.testing.MockClock) -> None:
    bus = Bus()
    with pytest.raises(NoSuchMethodError):
        bus.method(LOCK.name)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("body").serve, LOCK, lock_handler)
        assert bus.method(LOCK.name) is LOCK
        assert bus.method(LOCK.name).request is LockRequest
        nursery.cancel_scope.cancel()
    with pytest.raises(NoSuchMethodError):
        bus.method(LOCK.name)  # its server stopped


async def test_a_call_by_name_is_checked_against_the_servers_request_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calling by name skipped the request check, and the handler got None; the server's declared type
    is checked however the method is called, before any handler runs."""
    bus = Bus()
    got: list[object] = []

    async def handler(request: LockRequest) -> bool:
        got.append(request)
        return True

    async with trio.open_nursery() as nursery:
        await nursery.start(bus.client("body").serve, LOCK, handler)
        app = bus.client("app")
        with pytest.raises(ValueRefusedError, match="expected a LockRequest argument") as info:
            await app.call("Body.Doors.Lock")
        assert (info.value.topic, info.value.value) == ("Body.Doors.Lock", None)
        with pytest.raises(ValueRefusedError):
            await app.call(Method("Body.Doors.Lock"), {"lock": True})  # a Method of its own, untyped
        assert await app.call("Body.Doors.Lock", LockRequest(lock=True)) is True
        nursery.cancel_scope.cancel()
    assert got == [LockRequest(lock=True)]
