"""How the gateway reads and writes frames: over python-can, or in memory for tests (the httpx habit:
a transport interface with a mock implementation as the test seam)."""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import can
import trio

from services.can._codec import Frame

#: At most this many frames are handed over at once (keeps a burst from starving other tasks).
MAX_BATCH = 512

ReceiveMode = Literal["auto", "fd", "thread", "poll"]


class LinkDownError(Exception):
    """The CAN interface is down or gone; the message says why, and `hint` (``""`` if there is none) what
    would bring it up: ``sudo ip link set up vcan0``, say."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def describe(self) -> str:
        """The message with its hint in parentheses, as a log line or a status shows it."""
        return f"{self} ({self.hint})" if self.hint else str(self)


class FrameRefusedError(Exception):
    """The interface refused one frame (``EINVAL``, ``EMSGSIZE``: a CAN FD frame on a classic interface,
    say) while the link itself is up; the message says which frame and why."""


#: errno values of a send that the frame caused, not the link (linux: EINVAL, EMSGSIZE).
_FRAME_ERRNOS = frozenset({errno.EINVAL, errno.EMSGSIZE})


class CanTransport(Protocol):
    """Frames in and out of one CAN network."""

    #: How frames are received: ``fd`` (wait on the socket), ``thread`` (a worker thread), ``poll``,
    #: ``memory``.
    mode: str

    async def receive(self) -> list[can.Message]:
        """Wait for frames; return at least one. Raises `LinkDownError` when the link fails."""
        ...

    def send(self, message: can.Message) -> None:
        """Send one frame. Raises `LinkDownError` when the link fails, `FrameRefusedError` when the
        interface refuses this frame, `can.CanError` otherwise."""
        ...

    def close(self) -> None: ...


def _drain(bus: can.BusABC, first: can.Message | None) -> list[can.Message]:
    batch = [] if first is None else [first]
    recv = bus.recv
    while len(batch) < MAX_BATCH:
        msg = recv(timeout=0)
        if msg is None:
            break
        batch.append(msg)
    return batch


def _make_vcan(channel: str) -> str:
    return f"a virtual one: sudo ip link add dev {channel} type vcan && sudo ip link set up {channel}"


def _link_error(exc: BaseException, interface: str = "", channel: str = "") -> LinkDownError:
    """``exc`` from opening a python-can bus as a `LinkDownError` on one line, with a hint where one helps."""
    hint = ""
    if isinstance(exc, can.CanInterfaceNotImplementedError):
        known = sorted(can.interfaces.VALID_INTERFACES)
        hint = "" if interface in known else f"python-can knows {', '.join(known)}"
    elif isinstance(exc, OSError) and interface == "socketcan":
        hint = {
            errno.ENODEV: f"no such network interface; {_make_vcan(channel)}",
            errno.ENETDOWN: f"the interface is down: sudo ip link set up {channel}",
            errno.EAFNOSUPPORT: "this kernel has no SocketCAN: sudo modprobe can_raw vcan",
        }.get(exc.errno or 0, "")
    return LinkDownError(" ".join(f"{type(exc).__name__}: {exc}".split()), hint=hint)


class PythonCanTransport:
    """A python-can bus. On SocketCAN it waits on the socket with ``trio.lowlevel.wait_readable`` and drains
    it without a thread hop per frame; other interfaces use one worker thread that hands frames over in
    batches, or polling (``mode="poll"``, for interfaces whose reads cannot wait)."""

    def __init__(self, bus: can.BusABC, mode: ReceiveMode = "auto", *, poll_interval: float = 0.01) -> None:
        self.bus = bus
        self._fd = -1
        if mode in ("auto", "fd"):
            try:
                self._fd = bus.fileno()
            except (NotImplementedError, OSError, AttributeError):
                self._fd = -1
            if self._fd < 0 and mode == "fd":
                raise ValueError(f"{bus.channel_info}: this interface has no file descriptor to wait on")
        self.mode = "fd" if self._fd >= 0 else ("poll" if mode == "poll" else "thread")
        self._poll_interval = poll_interval
        self._closed = False

    async def receive(self) -> list[can.Message]:
        try:
            if self.mode == "fd":
                while True:
                    await trio.lowlevel.wait_readable(self._fd)
                    batch = _drain(self.bus, None)
                    if batch:
                        return batch
            if self.mode == "poll":
                while True:
                    batch = _drain(self.bus, None)
                    if batch:
                        await trio.lowlevel.checkpoint()
                        return batch
                    await trio.sleep(self._poll_interval)
            while True:
                batch = await trio.to_thread.run_sync(self._read_in_thread, abandon_on_cancel=True)
                if batch:
                    return batch
        except (can.CanError, OSError) as exc:
            raise _link_error(exc) from exc

    def _read_in_thread(self) -> list[can.Message]:
        if self._closed:
            return []
        return _drain(self.bus, self.bus.recv(timeout=0.2))

    def send(self, message: can.Message) -> None:
        try:
            self.bus.send(message, timeout=0)
        except can.CanOperationError as exc:
            if exc.error_code in _FRAME_ERRNOS:
                kind = "CAN FD" if message.is_fd else "classic"
                raise FrameRefusedError(
                    f"the interface refused {kind} frame 0x{message.arbitration_id:x} "
                    f"({len(message.data)} bytes): {exc}"
                ) from exc
            raise _link_error(exc) from exc

    def close(self) -> None:
        self._closed = True
        self.bus.shutdown()


#: Linux's IFF_UP flag (linux/if.h).
_IFF_UP = 0x1


def socketcan_link_problem(channel: str) -> str | None:
    """Why a SocketCAN interface cannot carry frames now (missing or down), or None if it is up.

    A SocketCAN socket opens fine on an interface that is down, so the gateway asks the kernel first.
    """
    flags = Path("/sys/class/net") / channel / "flags"
    try:
        value = int(flags.read_text(), 16)
    except FileNotFoundError:
        return f"{channel}: no such network interface"
    except (OSError, ValueError):
        return None  # cannot tell: let the socket say
    return None if value & _IFF_UP else f"{channel}: the interface is down"


class ProblemLog:
    """Problems logged at a limited rate, per kind: the first at once, then at most one line per
    ``interval`` seconds (trio's clock), each saying how many of that kind were left out since."""

    def __init__(self, log: Any, event: str, interval: float) -> None:
        self._log = log
        self._event = event
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, detail: str, *, exc: BaseException | None = None) -> None:
        """Log one problem of ``kind``; with ``exc`` (a failure nobody foresaw) as an error with its
        traceback."""
        now = trio.current_time()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        if exc is None:
            self._log.warning(self._event, kind=kind, detail=detail, suppressed_since_last=more)
        else:
            self._log.error(self._event, kind=kind, detail=detail, suppressed_since_last=more, exc_info=exc)


def positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """The attrs validator of the gateway's and the simulator's periods and intervals: seconds above zero
    (None passes: not set)."""
    if value is not None and not value > 0:
        raise ValueError(f"must be positive, not {value}")


def can_filters(ids: Iterable[tuple[int, bool]]) -> list[dict[str, Any]]:
    """python-can's kernel filters that pass exactly the frames with these ``(id, extended)`` pairs."""
    return [{"can_id": fid, "can_mask": 0x1FFFFFFF if ext else 0x7FF, "extended": ext} for fid, ext in ids]


def open_python_can(
    interface: str,
    channel: str,
    *,
    fd: bool = False,
    bitrate: int | None = None,
    filters: list[dict[str, Any]] | None = None,
    mode: ReceiveMode = "auto",
    poll_interval: float = 0.01,
) -> PythonCanTransport:
    """Open a python-can bus as a transport (waiting on the socket for SocketCAN, a worker thread or polling
    for interfaces without one). Raises `LinkDownError` if the interface cannot be opened: its message says
    why, its ``hint`` how to fix it where one is known (``sudo ip link set up vcan0``, the interfaces
    python-can knows, ...)."""
    if interface == "socketcan":  # a SocketCAN socket opens fine on an interface that is down: ask first
        problem = socketcan_link_problem(channel)
        if problem is not None:
            missing = problem.endswith("no such network interface")
            raise LinkDownError(
                problem, hint=_make_vcan(channel) if missing else f"sudo ip link set up {channel}"
            )
    # SocketCAN takes CAN FD frames in on any socket that asks (CAN_RAW_FD_FRAMES): then a network
    # configured fd = false still sees, and counts, the FD frames it will not decode.
    take_fd = fd or interface == "socketcan"
    kwargs: dict[str, Any] = {
        "interface": interface,
        "channel": channel,
        "fd": take_fd,
        "can_filters": filters,
    }
    if bitrate is not None:
        kwargs["bitrate"] = bitrate
    try:
        bus = can.Bus(**kwargs)
    except Exception as exc:  # CanError, OSError, and what a backend raises for what it cannot do
        raise _link_error(exc, interface, channel) from exc
    try:
        return PythonCanTransport(bus, mode, poll_interval=poll_interval)
    except Exception as exc:  # receive_mode = "fd" on an interface without a file descriptor
        bus.shutdown()
        raise _link_error(exc) from exc


class MemoryTransport:
    """An in-memory CAN link for tests: `inject` frames as if received, read `sent`, and take the link
    `down` and `up` again. Works under trio's MockClock."""

    mode = "memory"

    def __init__(self) -> None:
        self.sent: list[can.Message] = []
        self._send, self._receive = trio.open_memory_channel[can.Message](math.inf)
        self._down: str | None = None
        self._down_event = trio.Event()
        self.closed = False
        #: Set it to a reason and `send` refuses every frame with `FrameRefusedError`, as an interface
        #: refuses a frame it cannot carry (EINVAL) while the link stays up.
        self.refusing: str | None = None

    def inject(self, *messages: can.Message) -> None:
        """Frames arriving from the network."""
        for message in messages:
            self._send.send_nowait(message)

    def down(self, reason: str = "link down") -> None:
        self._down = reason
        self._down_event.set()

    def up(self) -> None:
        self._down = None
        self._down_event = trio.Event()

    @property
    def is_down(self) -> bool:
        return self._down is not None

    async def receive(self) -> list[can.Message]:
        if self._down is not None:
            await trio.lowlevel.checkpoint()
            raise LinkDownError(self._down)
        result: list[can.Message] = []
        async with trio.open_nursery() as nursery:

            async def frames() -> None:
                result.append(await self._receive.receive())
                nursery.cancel_scope.cancel()

            async def link() -> None:
                await self._down_event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(frames)
            nursery.start_soon(link)
        if not result:
            raise LinkDownError(self._down or "link down")
        while len(result) < MAX_BATCH:
            try:
                result.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return result

    def send(self, message: can.Message) -> None:
        if self._down is not None:
            raise LinkDownError(self._down)
        if self.refusing is not None:
            raise FrameRefusedError(self.refusing)
        self.sent.append(message)

    def close(self) -> None:
        self.closed = True


#: Opens a transport for the gateway; tests swap it for one returning a `MemoryTransport`.
TransportFactory = Callable[[], CanTransport]


def frame_message(frame: Frame) -> can.Message:
    """The python-can message that sends ``frame``."""
    return can.Message(
        arbitration_id=frame.arbitration_id,
        data=frame.data,
        is_extended_id=frame.is_extended_id,
        is_fd=frame.is_fd,
    )
