"""The CAN services' reconnect loop (services/can/_link.py): `vwos.BackoffPolicy`'s waits between tries, on
trio's MockClock (the ``autojump_clock`` fixture: no real sleeps)."""

from __future__ import annotations

import can
import pytest
import trio
import trio.testing

from services.can import LinkDownError, MemoryTransport
from services.can._link import keep_link_open, reconnect_backoff
from services.can._transport import CanTransport
from vwos import BackoffPolicy


class Opener:
    """``open_transport`` for the loop: fails while ``failing``, else hands out a fresh MemoryTransport;
    records when each try came (trio's clock)."""

    def __init__(self, failing: bool = True) -> None:
        self.failing = failing
        self.tries: list[float] = []
        self.opened: list[MemoryTransport] = []

    def __call__(self) -> CanTransport:
        self.tries.append(trio.current_time())
        if self.failing:
            raise LinkDownError("vcan9: no such network interface")
        transport = MemoryTransport()
        self.opened.append(transport)
        return transport

    def waits(self) -> list[float]:
        return [round(b - a, 9) for a, b in zip(self.tries, self.tries[1:], strict=False)]


async def test_waits_start_at_initial_double_and_stop_at_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opener = Opener()
    downs: list[str] = []
    with trio.move_on_after(10):
        await keep_link_open(
            opener, lambda batch: None, reconnect_backoff(0.1, 1.0), up=lambda t: None, down=downs.append
        )
    assert opener.waits()[:6] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert set(opener.waits()[4:]) == {1.0}
    assert downs[0] == "vcan9: no such network interface"
    assert len(downs) == len(opener.tries)


async def test_the_count_starts_over_once_a_link_opens(autojump_clock: trio.testing.MockClock) -> None:
    opener = Opener()
    events: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: keep_link_open(
                opener,
                lambda batch: None,
                reconnect_backoff(0.1, 5.0),
                up=lambda t: events.append("up"),
                down=lambda reason: events.append(f"down: {reason}"),
                closed=lambda: events.append("closed"),
            )
        )
        await trio.sleep(0.65)  # tries at 0, 0.1, 0.3 and 0.7 fail: the next wait would be 0.8
        assert opener.waits() == [0.1, 0.2]
        opener.failing = False
        await trio.sleep(0.1)  # the try at 0.7 opens the link
        assert events[-1] == "up"
        assert len(opener.opened) == 1
        opener.opened[0].down("bus-off")
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert events[-4:] == ["down: bus-off", "closed", "up", "closed"]
    assert opener.opened[0].closed
    # the link opened at 0.7 and failed at 0.75: then the initial 0.1 again, not 0.8
    assert opener.waits()[:4] == [0.1, 0.2, 0.4, 0.15]


async def test_reset_after_keeps_counting_for_a_link_that_was_up_only_briefly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = BackoffPolicy(initial=1.0, multiplier=2.0, max_delay=60.0, jitter=0.0, reset_after=5.0)
    opener = Opener(failing=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: keep_link_open(
                opener, lambda batch: None, backoff, up=lambda t: None, down=lambda r: None
            )
        )
        await trio.sleep(0.5)
        opener.opened[-1].down("flap")  # up 0.5 s < reset_after: failure 1, wait 1
        await trio.sleep(1.25)
        opener.opened[-1].down("flap")  # up 0.25 s: failure 2, wait 2
        await trio.sleep(2.0 + 10)
        opener.opened[-1].down("gone")  # up 10 s: the count starts over, wait 1
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    # try to try: up 0.5 + wait 1; up 0.25 + wait 2 (counting on); up 10 + wait 1 (started over)
    assert opener.waits() == [1.5, 2.25, 11.0]


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)])
async def test_jitter_of_the_policy_varies_each_wait(
    autojump_clock: trio.testing.MockClock, rand: float, factor: float
) -> None:
    backoff = BackoffPolicy(initial=1.0, multiplier=2.0, max_delay=4.0, jitter=0.5, reset_after=0.0)
    opener = Opener()
    with trio.move_on_after(30):
        await keep_link_open(
            opener, lambda batch: None, backoff, up=lambda t: None, down=lambda r: None, rand=lambda: rand
        )
    assert opener.waits()[:4] == [round(d * factor, 9) for d in (1.0, 2.0, 4.0, 4.0)]


async def test_ready_after_the_first_try_whether_or_not_it_opened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for failing in (True, False):
        opener = Opener(failing=failing)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status, o=opener: keep_link_open(
                    o,
                    lambda batch: None,
                    reconnect_backoff(1.0, 1.0),
                    up=lambda t: None,
                    down=lambda r: None,
                    task_status=task_status,
                )
            )
            assert trio.current_time() == opener.tries[0]
            assert len(opener.tries) == 1
            nursery.cancel_scope.cancel()


async def test_frames_are_handled_and_other_errors_propagate_with_the_link_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opener = Opener(failing=False)
    seen: list[int] = []

    def handle(batch: list[can.Message]) -> None:
        seen.extend(m.arbitration_id for m in batch)
        if 0x666 in seen:
            raise RuntimeError("a bug in the handler")

    async def inject() -> None:
        await trio.sleep(0.1)
        opener.opened[0].inject(can.Message(arbitration_id=0x100), can.Message(arbitration_id=0x101))
        await trio.sleep(0.1)
        opener.opened[0].inject(can.Message(arbitration_id=0x666))

    with pytest.raises(ExceptionGroup) as raised:  # noqa: PT012 - the nursery is the call
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inject)
            await keep_link_open(
                opener, handle, reconnect_backoff(0.1, 1.0), up=lambda t: None, down=lambda r: None
            )
    assert raised.group_contains(RuntimeError, match="a bug in the handler")
    assert seen == [0x100, 0x101, 0x666]
    assert opener.opened[0].closed
    assert len(opener.tries) == 1


def test_the_services_policy_doubles_without_jitter() -> None:
    policy = reconnect_backoff(0.25, 2.0)
    assert [policy.delay(n, rand) for n in (1, 2, 3, 4, 9) for rand in (0.0, 1.0)] == [
        0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0,
    ]  # fmt: skip
