"""The socket protocol's connection, sans-IO: framing, and each end's checks of what flows.

No I/O and no trio here (h11's habit): a `Connection` is fed the bytes that arrived
(`Connection.receive_data`), hands back decoded messages (`Connection.next_event`), and turns outgoing
messages into bytes (`Connection.send`). The messages are `bus._messages`'; which may flow when is
`bus._state`'s table. ``bus/_broker.py`` and ``bus/_remote.py`` drive it over a Unix socket;
``docs/protocol.md`` is the specification a client in another language is written from.

A frame is a 4-byte big-endian length and one CBOR item of that many bytes: an array of one or more
messages, so that one write carries a whole batch. Anything that breaks the protocol raises
`ProtocolError`, never another exception type.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final

import attrs

from bus._codec import Codec, default_codec
from bus._errors import CodecError
from bus._messages import (
    BY_OP,
    DEFAULT_MAX_FRAME,
    MIN_MAX_FRAME,
    SENT_BY_BOTH,
    Deliver,
    Hello,
    Message,
    ProtocolError,
    Publish,
    Role,
    Types,
    Welcome,
    label,
)
from bus._schema import TypeSchema
from bus._state import ConnectionState

__all__ = ["Closed", "Connection"]

_HEADER: Final = 4


@attrs.frozen
class Closed:
    """The event after the peer closed its end cleanly (at a frame boundary)."""


_CLOSED: Final = Closed()


class Connection:
    """One end of a connection: feed it received bytes, take decoded messages, turn messages into bytes.

    ``role`` is the end this object is. Incoming frames larger than ``max_frame`` bytes are refused from
    their length prefix, before the body is buffered; outgoing batches are split into frames that fit the
    peer's limit (announced in the handshake). Call `next_event` until it returns None after each
    `receive_data`: the buffer then holds at most one partial frame, so memory stays bounded by
    ``max_frame`` plus one read. A frame's body is decoded at once (CBOR, in C), its messages are made and
    checked one by one as `next_event` reaches them, so a caller that yields between events lets others
    run between the messages of a large frame (and those before a malformed message are handed out).
    Every protocol violation raises `ProtocolError`, and the connection stays broken (later calls raise
    it again).
    """

    def __init__(
        self, role: Role, *, max_frame: int = DEFAULT_MAX_FRAME, codec: Codec = default_codec
    ) -> None:
        if type(max_frame) is not int or max_frame < MIN_MAX_FRAME:
            raise ValueError(f"max_frame must be an int of at least {MIN_MAX_FRAME} bytes, not {max_frame!r}")
        self.role = role
        self.max_frame = max_frame
        #: The peer's frame limit: from the handshake; the default until then.
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.codec = codec
        #: Set by the handshake: the peer's HELLO (server) or the server's WELCOME (client).
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None
        self._buffer = bytearray()
        #: The messages of the frame being read, as decoded CBOR, each made a `Message` (and checked) only
        #: when `next_event` reaches it: a frame of many messages is handed out one at a time.
        self._items: deque[Any] = deque()
        self._eof = False
        self._error: ProtocolError | None = None
        #: The handshake's progress on both ends, and what may flow when (`bus._state`).
        self.state = ConnectionState(role)
        #: A server's: the types whose schemas it has sent (TYPES); every codec knows bus.NotAvailable.
        self._described: set[str] = {"bus.NotAvailable"}

    @property
    def open(self) -> bool:
        """True once the handshake is complete (WELCOME sent or received) and the connection not broken."""
        return self.welcome is not None and self._error is None and not self.state.refused

    # -- receiving -----------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes that arrived; ``b""`` means the peer closed its end."""
        if self._eof:
            if data:
                raise ProtocolError("data received after the end of the stream")
            return
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_event(self) -> Message | Closed | None:
        """The next message; `Closed` once the peer has closed cleanly; None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            self._items.clear()
            self._buffer.clear()
            raise

    def events(self) -> Iterator[Message | Closed]:
        """Every event available now (`next_event` until it returns None)."""
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event
            if event is _CLOSED:
                return

    def _next_event(self) -> Message | Closed | None:
        items = self._items
        if items:
            return self._message(items.popleft())
        buffer = self._buffer
        while len(buffer) >= _HEADER:
            size = int.from_bytes(buffer[:_HEADER], "big")
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame} bytes")
            if size == 0:
                raise ProtocolError("empty frame (length 0): a frame holds one CBOR array of messages")
            end = _HEADER + size
            if len(buffer) < end:
                break
            body = bytes(buffer[_HEADER:end])
            del buffer[:end]
            self._decode_frame(body)
            return self._message(items.popleft())
        if self._eof:
            if buffer:
                if len(buffer) < _HEADER:
                    raise ProtocolError(
                        "truncated frame: the stream ended after "
                        f"{len(buffer)} bytes of a 4-byte length prefix"
                    )
                size = int.from_bytes(buffer[:_HEADER], "big")
                raise ProtocolError(
                    f"truncated frame: the stream ended after {len(buffer) - _HEADER} of {size} bytes"
                )
            return _CLOSED
        return None

    def _decode_frame(self, body: bytes) -> None:
        try:
            batch = self.codec.decode(body)
        except CodecError as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None
        if type(batch) is not list or not batch:
            raise ProtocolError(f"a frame holds a non-empty CBOR array of messages, got {label(batch)}")
        self._items.extend(batch)

    def _message(self, items: Any) -> Message:
        """One message of a frame, from its decoded CBOR (a protocol error if it is not one)."""
        if type(items) is not list or not items:
            raise ProtocolError(f"a message is a non-empty CBOR array [op, ...], got {label(items)}")
        op = items[0]
        cls = BY_OP.get(op) if type(op) is int else None
        if cls is None:
            raise ProtocolError(f"unknown operation {label(op)}")
        if self.role in cls.SENT_BY and cls.SENT_BY != SENT_BY_BOTH:
            peer = "client" if self.role is Role.SERVER else "server"
            raise ProtocolError(f"a {peer} does not send {cls.NAME} messages")
        message: Message = cls.from_wire(items)
        self._check_incoming(message)
        return message

    def _check_incoming(self, message: Message) -> None:
        self.state.process(message, sending=False)
        if type(message) is Hello:
            self.hello = message
            self.peer_max_frame = message.max_frame
        elif type(message) is Welcome:
            self.welcome = message
            self.peer_max_frame = message.max_frame
        elif type(message) is Types:  # before the next frame is decoded: its values may need them
            self.codec.learn(message.schemas)

    # -- sending -------------------------------------------------------------------------------------------

    def send(self, messages: Sequence[Message]) -> bytes:
        """The bytes of ``messages``: one frame, or several if the batch exceeds the peer's frame limit.

        Raises `ProtocolError` for a message this end may not send now, or a single message too large for
        a frame; `CodecError` for a value the codec cannot encode (nothing is sent: encode the messages
        one by one to find it).
        """
        if not messages:
            return b""
        for message in messages:
            self._check_outgoing(message)
        if self.role is not Role.SERVER:
            return b"".join(self._frames(messages, None))
        noted: set[str] = set()
        frames = self._frames(messages, noted)
        noted -= self._described
        if noted:  # the schemas of types the client has not been told of go first, in a frame of their own
            frames[:0] = self._types_frames(noted)
        return b"".join(frames)

    def _types_frames(self, names: set[str]) -> list[bytes]:
        """TYPES frames for the types ``names`` and those their fields reach, less those described."""
        schemas: dict[str, TypeSchema] = {}
        for name in sorted(names):
            for schema in self.codec.schemas(name):
                if schema.name not in self._described and schema.name not in schemas:
                    schemas[schema.name] = schema
        self._described.update(schemas)
        if not schemas:
            return []
        message = Types(tuple(schemas.values()))
        self.state.process(message, sending=True)
        return self._frames([message], None)

    def _frames(self, messages: Sequence[Message], noted: set[str] | None) -> list[bytes]:
        body = self.codec.encode([m.to_wire() for m in messages], types=noted)
        limit = self.peer_max_frame
        if len(body) <= limit:
            return [len(body).to_bytes(_HEADER, "big") + body]
        if len(messages) == 1:
            only = messages[0]
            if isinstance(only, Publish | Deliver) and len(only) > 1:
                return self._frames(only.split(), noted)
            raise ProtocolError(
                f"a {only.NAME} message of {len(body)} bytes exceeds the peer's frame limit of {limit}"
            )
        half = len(messages) // 2
        return self._frames(messages[:half], noted) + self._frames(messages[half:], noted)

    def _check_outgoing(self, message: Message) -> None:
        if self.role not in message.SENT_BY:
            raise ProtocolError(f"a {self.role.value} does not send {message.NAME} messages")
        self.state.process(message, sending=True)
        if type(message) is Welcome:
            self.welcome = message
