"""The CAN gateway service: a car's CAN traffic becomes typed bus topics, bus requests become frames."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import can
import trio

from bus import Method, Permissions, PublisherHandle, Topic, default_codec
from services.can import _config_check as _check
from services.can._codec import (
    CanCodec,
    EncodeError,
    FrameError,
    SignalMapping,
    cached_database,
)
from services.can._database import EXTENDED_FLAG
from services.can._e2e import E2E, E2EProtection, E2EProtector, bind_e2e
from services.can._frames import FRAMES_NAME, frames_topic, raw_frame
from services.can._link import keep_link_open, reconnect_backoff
from services.can._transport import (
    CanTransport,
    FrameRefusedError,
    LinkDownError,
    ProblemLog,
    ReceiveMode,
    can_filters,
    frame_message,
    open_python_can,
)
from vwos import FieldProblem, Service, ServiceContext, StructureError

if TYPE_CHECKING:
    from services.can._logdecode import LogDecoding

#: SocketCAN error class bit of a bus-off error frame (linux/can/error.h, CAN_ERR_BUSOFF).
CAN_ERR_BUSOFF = 0x40


def _raise(attribute: attrs.Attribute[Any], problems: list[FieldProblem]) -> None:
    """Report every problem a validator found, each at its path below the field (`vwos.StructureError`)."""
    if problems:
        raise StructureError(problems, key=attribute.alias)


def _network_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    problem = _check.network_problem(value)
    if problem is not None:
        raise ValueError(problem)


def _interface(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    problem = _check.interface_problem(value)
    if problem is not None:
        raise ValueError(problem)


def _channel(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError("expected the name of a channel (such as vcan0), got an empty string")


def _bitrate(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"expected a number of bits per second > 0, got {value}")


def _receive_mode(inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    problem = _check.receive_mode_problem(inst, value)
    if problem is not None:
        raise ValueError(problem)


def _finite(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")


def _cyclic_period(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not _check.MIN_CYCLIC_PERIOD <= value <= MAX_PERIOD:  # also refuses NaN
        raise ValueError(
            f"expected seconds from {_check.MIN_CYCLIC_PERIOD} (a CAN bus carries at most about 8,000 "
            f"frames a second) to {MAX_PERIOD:.0f}, got {value!r}"
        )


#: The longest period or interval of the gateway's config, in seconds (about 31 years): finite.
MAX_PERIOD: Final = 1_000_000_000.0


@attrs.frozen
class CyclicMessage:
    """A message the gateway sends every ``period`` seconds, with signal values that `Send` can change."""

    message: str = attrs.field(metadata={"help": "the message's name in the database"})
    period: float = attrs.field(
        validator=_cyclic_period, metadata={"help": "seconds between frames, at least 0.001"}
    )
    signals: dict[str, float] = attrs.field(
        factory=dict,
        metadata={"help": "initial signal values (the others: their initial value in the database, or 0)"},
    )


@attrs.frozen
class Actuator:
    """A bus topic whose samples are sent as one signal of a message (``value * scale + offset``)."""

    topic: str = attrs.field(metadata={"help": "the bus topic whose samples are sent"})
    message: str = attrs.field(
        metadata={"help": "the message that carries them (only this signal is set); in transmit or cyclic"}
    )
    signal: str = attrs.field(metadata={"help": "the signal of the message that takes the value"})
    type: Literal["float", "int", "bool"] = attrs.field(
        default="float", metadata={"help": "the topic's value type"}
    )
    scale: float = attrs.field(
        default=1.0, validator=_finite, metadata={"help": "the signal is value * scale + offset"}
    )
    offset: float = attrs.field(default=0.0, validator=_finite, metadata={"help": "see scale"})


def _gateway_database(inst: Any, attribute: attrs.Attribute[Path], value: Path) -> None:
    """The database must exist and load (as ``strict`` says), and with ``message_topics`` its messages must
    make topic names, none of them the gateway's own status topic or send method."""
    _raise(attribute, _check.database_problems(inst, value, _GATEWAY_NAMES))


def _known_mappings(inst: Any, attribute: attrs.Attribute[Any], value: tuple[SignalMapping, ...]) -> None:
    _raise(attribute, _check.mapping_problems(inst, value))


def _known_transmit(inst: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    _raise(attribute, _check.transmit_problems(inst, value))


def _known_cyclic(inst: Any, attribute: attrs.Attribute[Any], value: tuple[CyclicMessage, ...]) -> None:
    _raise(attribute, _check.cyclic_problems(inst, value))


def _known_actuators(inst: Any, attribute: attrs.Attribute[Any], value: tuple[Actuator, ...]) -> None:
    _raise(attribute, _check.actuator_problems(inst, value))


def _known_e2e(inst: Any, attribute: attrs.Attribute[Any], value: tuple[E2E, ...]) -> None:
    _raise(attribute, _check.e2e_problems(inst, value))


def _topics_module(inst: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        _raise(attribute, _check.topics_module_problems(inst, value))


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    """A period or interval: seconds above zero, finite (``inf`` would never come)."""
    if not 0 < value <= MAX_PERIOD:  # also refuses NaN
        raise ValueError(f"expected seconds > 0 and at most {MAX_PERIOD:.0f}, got {value!r}")


@attrs.frozen
class GatewayConfig:
    """The gateway's ``[services.NAME.config]``: the database, the interface, what to publish and send."""

    database: Path = attrs.field(
        validator=_gateway_database, metadata={"help": "the CAN database (DBC, KCD, SYM, ARXML)"}
    )
    network: str = attrs.field(
        default="can0", validator=_network_name, metadata={"help": "the network's name in topic names"}
    )
    interface: str = attrs.field(
        default="socketcan", validator=_interface, metadata={"help": "a python-can interface"}
    )
    channel: str = attrs.field(
        default="vcan0", validator=_channel, metadata={"help": "the interface's channel"}
    )
    bitrate: int | None = attrs.field(
        default=None, validator=_bitrate, metadata={"help": "for interfaces that set it"}
    )
    fd: bool = attrs.field(default=False, metadata={"help": "CAN FD frames"})
    strict: bool = attrs.field(
        default=True, metadata={"help": "false for real-world databases with overlaps"}
    )
    topics_module: str | None = attrs.field(
        default=None,
        validator=_topics_module,
        metadata={"help": "a module `vwos can gen` wrote: its typed topics are then the gateway's topics"},
    )
    message_topics: bool = attrs.field(
        default=True, metadata={"help": "one topic per message, CAN.<network>.<Message>"}
    )
    signals: tuple[SignalMapping, ...] = attrs.field(
        default=(), validator=_known_mappings, metadata={"help": "signals under names of their own"}
    )
    transmit: tuple[str, ...] = attrs.field(
        default=(),
        validator=_known_transmit,
        metadata={"help": "messages the Send method may send; '*' for all"},
    )
    cyclic: tuple[CyclicMessage, ...] = attrs.field(
        default=(),
        validator=_known_cyclic,
        metadata={"help": "messages sent every period; Send changes their values"},
    )
    actuators: tuple[Actuator, ...] = attrs.field(
        default=(),
        validator=_known_actuators,
        metadata={"help": "bus topics whose samples are sent as a signal"},
    )
    e2e: tuple[E2E, ...] = attrs.field(
        default=(),
        validator=_known_e2e,
        metadata={"help": "end-to-end protection (CRC, alive counter) of messages, checked and filled"},
    )
    kernel_filters: bool = attrs.field(
        default=True, metadata={"help": "let the kernel drop frames nobody wants (not with raw_frames)"}
    )
    raw_frames: bool = attrs.field(
        default=False,
        metadata={"help": "also publish every received frame, as it is, on CAN.<network>.frames"},
    )
    receive_mode: ReceiveMode = attrs.field(
        default="auto", validator=_receive_mode, metadata={"help": "auto | fd | thread | poll"}
    )
    poll_interval: float = attrs.field(
        default=0.01, validator=_seconds, metadata={"help": "seconds, for poll"}
    )
    reconnect_initial: float = attrs.field(
        default=0.1, validator=_seconds, metadata={"help": "seconds before the first try to reopen a link"}
    )
    reconnect_max: float = attrs.field(
        default=5.0,
        validator=_seconds,
        metadata={"help": "the longest wait between tries, doubling up to it"},
    )
    status_period: float = attrs.field(
        default=1.0, validator=_seconds, metadata={"help": "seconds between status samples"}
    )
    log_interval: float = attrs.field(
        default=10.0,
        validator=_seconds,
        metadata={"help": "at most one log line per problem kind this often"},
    )


@default_codec.register(name="vwos.can.SendRequest")
@attrs.frozen
class SendRequest:
    """The argument of ``CAN.<network>.Send``: a message name and the signal values to set."""

    message: str
    signals: dict[str, float] = attrs.field(factory=dict)


@default_codec.register(name="vwos.can.LinkStatus")
@attrs.frozen
class LinkStatus:
    """What ``CAN.<network>.Status`` carries."""

    state: str  # "up" or "down"
    reason: str
    mode: str
    frames_received: int
    frames_sent: int
    unknown_ids: int
    wrong_lengths: int
    undecodable: int
    error_frames: int
    bus_off: int
    reconnects: int
    #: Frames whose signals were published (values, or "not available" where a signal had none).
    decoded: int = 0
    #: Remote (RTR) frames: they carry no data to decode.
    remote_frames: int = 0
    #: CAN FD frames on a network configured ``fd = false`` (not decoded: the config says no FD here).
    fd_frames: int = 0
    #: Frames whose values the bus refused, or that failed in a way the codec did not foresee (a bug:
    #: logged with its traceback); the gateway goes on.
    refused: int = 0
    #: Frames whose end-to-end protection failed: published with every signal not available.
    e2e_failures: int = 0
    #: Frames the interface refused to send (EINVAL, EMSGSIZE), for Send, cyclic and actuators.
    send_errors: int = 0
    #: Signal values (not frames) decoded as not available: outside their declared range ...
    signals_out_of_range: int = 0
    #: ... or a raw value the database marks as no valid value (SNA, Init, error): see `CodecStatistics`.
    signals_not_available: int = 0
    #: With ``raw_frames``: received frames the bus did not take on ``CAN.<network>.frames`` (a full
    #: outgoing queue); each is still decoded and counted above.
    raw_frames_dropped: int = 0


#: Names under CAN.<network> that the gateway itself uses: a database message may not take them.
_GATEWAY_NAMES: Final = {"Status": "status topic", "Send": "send method", FRAMES_NAME: "raw frames topic"}


def status_topic(network: str) -> Topic[LinkStatus]:
    """The topic a gateway reports the health of CAN network ``network`` on."""
    return Topic(f"CAN.{network}.Status", LinkStatus, description=f"health of CAN network {network}")


def send_method(network: str) -> Method[SendRequest, bool]:
    """The method that sends a message on CAN network ``network``."""
    return Method(f"CAN.{network}.Send", SendRequest, bool, description=f"send a message on {network}")


class _Counters:
    __slots__ = (
        "bus_off",
        "decoded",
        "e2e",
        "error_frames",
        "fd_frames",
        "frames_received",
        "frames_sent",
        "raw_dropped",
        "reconnects",
        "refused",
        "remote_frames",
        "send_errors",
        "undecodable",
        "unknown_id",
        "wrong_length",
    )

    def __init__(self) -> None:
        self.frames_received = self.frames_sent = self.error_frames = self.bus_off = self.reconnects = 0
        self.unknown_id = self.wrong_length = self.undecodable = self.decoded = self.remote_frames = 0
        self.fd_frames = self.refused = self.e2e = self.send_errors = self.raw_dropped = 0


class _Guard:
    """The E2E check of one received message: its checker, the frame lengths it takes (others are wrong
    lengths, counted by the codec), and what a frame that fails publishes."""

    __slots__ = ("checker", "lengths", "unavailable")

    def __init__(self, protection: E2EProtection, codec: CanCodec) -> None:
        self.checker = protection.checker()
        self.lengths = codec.frame_lengths(protection.message)
        self.unavailable = codec.not_available(protection.frame_id, protection.extended, "e2e")


class CanGateway(Service[GatewayConfig]):
    """Bridges one CAN network and the bus: decodes frames into typed topics, sends frames on request."""

    @classmethod
    def bus_names(cls, config: GatewayConfig) -> Permissions | None:
        """Its topics, its ``Send`` method and its actuators' topics: for the config check."""
        return _check.bus_names(config)

    @classmethod
    def decode_log(cls, config: GatewayConfig, path: str | os.PathLike[str], *, name: str) -> LogDecoding:
        """The frames of the CAN log at ``path`` decoded as this gateway, service ``name`` with ``config``,
        decodes them live: a `LogDecoding` (iterate it for its samples). What ``vwos bag convert`` uses to
        make a recording of a log; it opens no CAN link and needs no bus."""
        from services.can._logdecode import LogDecoding  # not loaded by a running gateway

        return LogDecoding(cls(config), path, name=name)

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        self.ctx = ctx
        self._prepare(ctx.bus.publisher, ProblemLog(ctx.log, "CAN frame problem", cfg.log_interval))
        for warning in self.codec.warnings:  # what loading the database repaired
            ctx.log.warning("CAN database repaired", database=str(cfg.database), repair=warning)
        self._status = ctx.bus.publisher(status_topic(cfg.network))
        self._transport: CanTransport | None = None
        self._cyclic_values = {c.message: dict(c.signals) for c in cfg.cyclic}
        for cyclic in cfg.cyclic:  # fail at start, not at the first period, if the config is wrong
            self.codec.encode(cyclic.message, cyclic.signals)
        async with trio.open_nursery() as nursery:
            await nursery.start(ctx.bus.serve, send_method(cfg.network), self._send_request)
            for actuator in cfg.actuators:
                await nursery.start(self._actuate, actuator)
            nursery.start_soon(self._link)
            if cfg.cyclic:
                nursery.start_soon(self._cyclic)
            nursery.start_soon(self._report)
            task_status.started()

    def _prepare(
        self, publisher: Callable[[Topic[Any]], PublisherHandle[Any]], problem: Callable[..., None]
    ) -> None:
        """What receiving needs, without I/O: the codec, the counters, a publisher of each topic (made by
        ``publisher``), the E2E checkers; ``problem(kind, detail, exc=None)`` reports a bad frame. Shared
        by `run` and the conversion of a recorded log (``services.can._logdecode``): one decoding."""
        cfg = self.config
        records = None
        if cfg.topics_module is not None:
            records = importlib.import_module(cfg.topics_module).RECORDS
        db = cached_database(cfg.database, cfg.strict)  # names checked by the config's validators
        self.codec = CanCodec(
            db,
            cfg.network,
            message_topics=cfg.message_topics,
            mappings=cfg.signals,
            records=records,
        )
        self.counters = _Counters()
        self._state, self._reason, self._mode = "down", "starting", ""
        self._publishers: dict[str, PublisherHandle[Any]] = {t.name: publisher(t) for t in self.codec.topics}
        #: The raw frames topic's publisher (None: ``raw_frames = false``, and `_handle` receives alone).
        self._frames = publisher(frames_topic(cfg.network)) if cfg.raw_frames else None
        self._problem = problem
        protections = bind_e2e(cfg.e2e, db)  # checked by the config's validator
        #: E2E checkers of received frames, by route key (frame id, with EXTENDED_FLAG if extended).
        self._checkers: dict[int, _Guard] = {
            (p.frame_id | EXTENDED_FLAG if p.extended else p.frame_id): _Guard(p, self.codec)
            for p in protections.values()
        }
        #: E2E protectors of sent frames, by message name: Send, cyclic messages and actuators share one
        #: counter per message.
        self._protectors: dict[str, E2EProtector] = {name: p.protector() for name, p in protections.items()}

    # -- receive --------------------------------------------------------------------------------------

    @property
    def receive(self) -> Callable[[list[can.Message]], None]:
        """What handles a batch of received frames: `_handle`, behind `_handle_raw` with ``raw_frames``
        (chosen once: without raw frames the receive path has not one step more)."""
        return self._handle if self._frames is None else self._handle_raw

    def open_transport(self) -> CanTransport:
        """Open the CAN link (tests override this with a `MemoryTransport`)."""
        cfg = self.config
        filters = None
        if cfg.kernel_filters and not cfg.raw_frames:  # raw frames are all frames, unknown ids too
            wanted = self.codec.wanted_ids()
            if len(wanted) <= 512:  # CAN_RAW_FILTER_MAX
                filters = can_filters(wanted)
        return open_python_can(
            cfg.interface,
            cfg.channel,
            fd=cfg.fd,
            bitrate=cfg.bitrate,
            filters=filters,
            mode=cfg.receive_mode,
            poll_interval=cfg.poll_interval,
        )

    async def _link(self) -> None:
        """Keep the link open: receive while it is up; when it fails, report degraded and reopen with
        exponential backoff (never a crash loop)."""
        cfg = self.config
        opened = 0

        def up(transport: CanTransport) -> None:
            nonlocal opened
            if opened:
                self.counters.reconnects += 1
            opened += 1
            self._transport = transport
            self._up(transport.mode)

        def closed() -> None:
            self._transport = None

        await keep_link_open(
            self.open_transport,
            self.receive,
            reconnect_backoff(cfg.reconnect_initial, cfg.reconnect_max),
            up=up,
            down=self._down,
            closed=closed,
        )

    def _up(self, mode: str) -> None:
        self._state, self._reason, self._mode = "up", "", mode
        self.reset_e2e()  # the counters start anew after a gap
        self.ctx.log.info("CAN link up", network=self.config.network, channel=self.config.channel, mode=mode)
        self._publish_status()

    def _down(self, reason: str) -> None:
        if self._state != "down" or self._reason != reason:
            self.ctx.log.warning(
                "CAN link down: degraded, reconnecting", network=self.config.network, reason=reason
            )
        self._state, self._reason = "down", reason
        self._publish_status()

    def _handle_raw(self, batch: list[can.Message]) -> None:
        """Publish each frame of a batch as it is on ``CAN.<network>.frames``, then `_handle` the batch."""
        publish = self._frames.publish_nowait  # type: ignore[union-attr]  # set: see `receive`
        make = raw_frame
        for msg in batch:
            try:
                publish(make(msg), timestamp=msg.timestamp)
            except Exception:  # a full outgoing queue, a closed client: counted, decoding goes on
                self.counters.raw_dropped += 1
        self._handle(batch)

    def _handle(self, batch: list[can.Message]) -> None:
        """Decode and publish a batch of received frames: the hot path. Never raises for a frame: each
        one is counted under exactly one of ``decoded``, the bad-frame kinds, ``remote_frames``,
        ``fd_frames``, ``error_frames``, ``e2e_failures`` or ``refused``."""
        counters = self.counters
        decode = self.codec.decode
        publishers = self._publishers
        checkers = self._checkers
        classic_only = not self.config.fd
        counters.frames_received += len(batch)
        for msg in batch:
            if msg.is_error_frame or msg.is_remote_frame or (msg.is_fd and classic_only):
                self._odd_frame(msg)
                continue
            decoded = None
            if (
                checkers
            ):  # checked before decoding: a frame that fails is not decoded, nor its signals counted
                ident = msg.arbitration_id
                guard = checkers.get(ident | EXTENDED_FLAG if msg.is_extended_id else ident)
                if (
                    guard is not None and len(msg.data) in guard.lengths
                ):  # a wrong length: the codec's to count
                    reason = guard.checker.check(msg.data)
                    if reason is not None:
                        decoded = self._e2e_failed(msg, reason, guard)
            failed = decoded is not None
            if decoded is None:
                try:
                    decoded = decode(msg.arbitration_id, msg.data, msg.is_extended_id)
                except FrameError as exc:
                    setattr(counters, exc.kind, getattr(counters, exc.kind) + 1)
                    self._problem(exc.kind, str(exc))
                    continue
                except Exception as exc:  # a payload the codec did not foresee: this frame only
                    self._refused(msg, exc)
                    continue
            timestamp = msg.timestamp
            try:
                for topic, value in decoded:
                    publishers[topic.name].publish_nowait(value, timestamp=timestamp)
            except Exception as exc:  # the bus refused a value: the rest of the batch goes on
                self._refused(msg, exc)
                continue
            if failed:
                counters.e2e += 1
            else:
                counters.decoded += 1

    def _e2e_failed(self, msg: can.Message, reason: str, guard: _Guard) -> list[tuple[Topic[Any], Any]]:
        """What a frame whose E2E check failed publishes: every signal not available (reason ``e2e``)."""
        self._problem(
            "e2e",
            f"frame 0x{msg.arbitration_id:x} [{bytes(msg.data).hex()}] on {self.config.network} failed its "
            f"end-to-end check ({reason}): published as not available",
        )
        return guard.unavailable

    def reset_e2e(self) -> None:
        """Forget the last alive counter of every E2E-checked message: the next frame's counter is taken
        as it is. Done when the link comes up (after a gap, a counter jump is no fault)."""
        for guard in self._checkers.values():
            guard.checker.reset()

    def _odd_frame(self, msg: can.Message) -> None:
        """An error, remote or (on a classic network) CAN FD frame: counted, never decoded."""
        counters = self.counters
        if msg.is_error_frame:
            counters.error_frames += 1
            if msg.arbitration_id & CAN_ERR_BUSOFF:
                counters.bus_off += 1
                self._problem("bus_off", "bus-off error frame")
        elif msg.is_remote_frame:
            counters.remote_frames += 1
        else:
            counters.fd_frames += 1
            self._problem(
                "fd_frame",
                f"CAN FD frame 0x{msg.arbitration_id:x} ({len(msg.data)} bytes) on network "
                f"{self.config.network}, which is configured fd = false: not decoded",
            )

    def _refused(self, msg: can.Message, exc: Exception) -> None:
        self.counters.refused += 1
        self._problem(
            "refused",
            f"frame 0x{msg.arbitration_id:x} [{bytes(msg.data).hex()}] on {self.config.network} not "
            f"published: {type(exc).__name__}: {exc}",
            exc=exc,
        )

    # -- status ---------------------------------------------------------------------------------------

    def status(self) -> LinkStatus:
        c = self.counters
        signals = self.codec.statistics()
        return LinkStatus(
            state=self._state,
            reason=self._reason,
            mode=self._mode,
            frames_received=c.frames_received,
            frames_sent=c.frames_sent,
            unknown_ids=c.unknown_id,
            wrong_lengths=c.wrong_length,
            undecodable=c.undecodable,
            error_frames=c.error_frames,
            bus_off=c.bus_off,
            reconnects=c.reconnects,
            decoded=c.decoded,
            remote_frames=c.remote_frames,
            fd_frames=c.fd_frames,
            refused=c.refused,
            e2e_failures=c.e2e,
            send_errors=c.send_errors,
            signals_out_of_range=signals.out_of_range,
            signals_not_available=signals.not_available,
            raw_frames_dropped=c.raw_dropped,
        )

    def _publish_status(self) -> None:
        self._status.publish_nowait(self.status())

    async def _report(self) -> None:
        while True:
            await trio.sleep(self.config.status_period)
            self._publish_status()
            self.ctx.heartbeat()

    # -- transmit -------------------------------------------------------------------------------------

    def _may_send(self, message: str) -> bool:
        cfg = self.config
        return "*" in cfg.transmit or message in cfg.transmit or message in self._cyclic_values

    def send(self, message: str, signals: dict[str, float]) -> None:
        """Encode and send one message now. Raises `EncodeError` or `LinkDownError`."""
        defaults = self.codec.defaults(message)  # EncodeError if there is no such message
        if not self._may_send(message):
            raise PermissionError(f"{message} is not in the gateway's transmit list of {self.config.network}")
        base = self._cyclic_values.get(message)
        frame = self.codec.encode(message, signals, base=None if base is None else defaults | base)
        if base is not None:
            base.update(signals)  # a cyclic message carries the new values from now on
        if frame.is_fd and not self.config.fd:
            raise FrameRefusedError(
                f"{message} is a CAN FD message ({len(frame.data)} bytes) and CAN network "
                f"{self.config.network} is configured fd = false: it cannot be sent there"
            )
        transport = self._transport
        if transport is None:
            raise LinkDownError(f"CAN network {self.config.network} is down: {self._reason}")
        protector = self._protectors.get(message)
        if protector is not None:  # its alive counter and CRC, as the receivers check them
            frame = attrs.evolve(frame, data=protector.protect(frame.data, advance=False))
        try:
            transport.send(frame_message(frame))
        except FrameRefusedError:
            self.counters.send_errors += 1
            raise
        if protector is not None:  # one counter step per frame sent, none for a frame that was not
            protector.advance()
        self.counters.frames_sent += 1

    async def _send_request(self, request: SendRequest) -> bool:
        self.send(request.message, dict(request.signals))
        return True

    async def _cyclic(self) -> None:
        """One task sends every cyclic message at its period, each by its own schedule."""
        now = trio.current_time()
        due = {c.message: now for c in self.config.cyclic}
        periods = {c.message: c.period for c in self.config.cyclic}
        while True:
            message = min(due, key=due.__getitem__)
            await trio.sleep_until(due[message])
            try:
                self.send(message, {})
            except LinkDownError:
                pass  # degraded: already reported; the schedule goes on
            except (EncodeError, FrameRefusedError) as exc:
                self._problem("send", str(exc))
            due[message] += periods[message]
            if due[message] < trio.current_time():  # fell behind (link was slow): do not burst to catch up
                due[message] = trio.current_time() + periods[message]

    async def _actuate(
        self, actuator: Actuator, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        kinds: dict[str, type] = {"float": float, "int": int, "bool": bool}
        topic: Topic[Any] = Topic(
            actuator.topic, kinds[actuator.type], description=f"sent as {actuator.message}.{actuator.signal}"
        )
        with self.ctx.bus.subscribe(topic, queue_size=16) as samples:
            task_status.started()
            async for sample in samples:
                if not sample.available:  # nothing to send: the signal's source has no value
                    self._problem(
                        "actuator",
                        f"{actuator.topic} is not available ({sample.reason}): {actuator.message} not sent",
                    )
                    continue
                value = float(sample.value) * actuator.scale + actuator.offset
                try:
                    self.send(actuator.message, {actuator.signal: value})
                except (EncodeError, LinkDownError, PermissionError, FrameRefusedError) as exc:
                    self.ctx.log.warning("actuator not sent", topic=actuator.topic, error=str(exc))
