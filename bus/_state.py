"""The socket protocol's handshake as a state machine: each end's state, and a table of what may flow when.

Sans-IO and pure (h11's ``_state.py`` is the model): `ConnectionState` tracks the handshake of both ends
of one connection, each in a `State` of its own. A message is processed as "``sender`` sent it", the same
way by the end sending it and the end receiving it: `TRANSITIONS` says which kinds of message a sender
may send in each of its states and the state it is in afterwards; a kind not in the table is too early
(the sender has not done its part of the handshake) or a repeat (it has). Two rules link the ends (see
`ConnectionState.process`); whatever breaks a rule raises `ProtocolError`, worded for the end that finds
it. `bus._wire.Connection` asks this before it sends a message and after it decodes one.
"""

from __future__ import annotations

import enum
from typing import Final

from bus._messages import BY_OP, Error, Hello, Message, ProtocolError, Refused, Role, Welcome

__all__ = ["TRANSITIONS", "ConnectionState", "Kind", "State"]

_CLIENT: Final = Role.CLIENT
_SERVER: Final = Role.SERVER


class State(enum.Enum):
    """One end's progress through the handshake."""

    #: The end has not sent its part of the handshake (the client its HELLO, the server its answer).
    IDLE = "idle"
    #: The client sent HELLO; the server sent WELCOME.
    OPEN = "open"
    #: The server sent REFUSED: nothing more flows either way.
    REFUSED = "refused"


class Kind(enum.Enum):
    """What a message is to the handshake."""

    HELLO = "HELLO"
    WELCOME = "WELCOME"
    REFUSED = "REFUSED"
    #: An ERROR: a server may send one before its answer (the reason it closes the connection).
    ERROR = "ERROR"
    #: Any other message: a request, a reply, samples.
    OTHER = "other"


_KIND_OF: Final[dict[type, Kind]] = {
    Hello: Kind.HELLO,
    Welcome: Kind.WELCOME,
    Refused: Kind.REFUSED,
    Error: Kind.ERROR,
}

#: For each sender and its state: the kinds of message it may send, and its state afterwards.
TRANSITIONS: Final[dict[Role, dict[State, dict[Kind, State]]]] = {
    _CLIENT: {
        State.IDLE: {Kind.HELLO: State.OPEN},
        State.OPEN: {Kind.OTHER: State.OPEN, Kind.ERROR: State.OPEN},
    },
    _SERVER: {
        State.IDLE: {Kind.WELCOME: State.OPEN, Kind.REFUSED: State.REFUSED, Kind.ERROR: State.IDLE},
        State.OPEN: {Kind.OTHER: State.OPEN, Kind.ERROR: State.OPEN},
        State.REFUSED: {},
    },
}

#: Why a message may not flow, worded for the end that finds it: (reason, sender, found by the sender).
_WORDING: Final[dict[tuple[str, Role, bool], str]] = {
    ("refused", _CLIENT, True): "cannot send {name}: the connection was refused",
    ("refused", _SERVER, True): "cannot send {name}: the connection was refused",
    ("refused", _CLIENT, False): "{name} received after REFUSED",
    ("refused", _SERVER, False): "{name} received after REFUSED",
    ("early", _CLIENT, True): "send HELLO before {name}",
    ("early", _CLIENT, False): "expected HELLO first, got {name}",
    ("early", _SERVER, True): "send WELCOME or REFUSED before {name}",
    ("early", _SERVER, False): "expected WELCOME or REFUSED first, got {name}",
    ("repeat", _CLIENT, True): "HELLO was sent already",
    ("repeat", _CLIENT, False): "a second HELLO",
    ("repeat", _SERVER, True): "cannot send {name}: the handshake is over",
    ("repeat", _SERVER, False): "{name} received after the handshake",
    ("no_hello", _SERVER, True): "cannot send {name} before the client's HELLO",
    ("unanswered", _CLIENT, False): "{name} received before WELCOME: wait for the server's answer",
}

_PEER: Final = {_CLIENT: _SERVER, _SERVER: _CLIENT}


class ConnectionState:
    """Both ends' handshake states, as seen by the end ``role``; `process` checks and applies a message.

    Once both ends are open, what flows freely is a set looked up per message (`process`'s fast path):
    the table is consulted only during the handshake and for a message that breaks it.
    """

    __slots__ = ("_free", "role", "states")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.states: dict[Role, State] = {_CLIENT: State.IDLE, _SERVER: State.IDLE}
        #: Per direction (True: sending): the message classes that pass without changing a state.
        self._free: dict[bool, frozenset[type]] = {}
        self._update_free()

    @property
    def refused(self) -> bool:
        return self.states[_SERVER] is State.REFUSED

    def process(self, message: Message, *, sending: bool) -> None:
        """Check ``message``, sent by this end (``sending``) or received from the peer, against the rules,
        and move the sender's state. `ProtocolError` (and no state changes) if it may not flow now.

        Beyond the table, two rules link the ends: a server answers (WELCOME, REFUSED) only after the
        client's HELLO (checked as the server sends); and a server reads nothing of the client's but its
        HELLO before it has answered (checked as it receives: a client may send requests right after its
        HELLO; the server reads them once it has answered).
        """
        cls = type(message)
        if cls in self._free[sending]:
            return
        sender = self.role if sending else _PEER[self.role]
        kind = _KIND_OF.get(cls, Kind.OTHER)
        reason = self._problem(sender, kind, sending)
        if reason is not None:
            raise ProtocolError(_WORDING[reason, sender, sending].format(name=message.NAME))
        before = self.states[sender]
        after = TRANSITIONS[sender][before][kind]
        if after is not before:
            self.states[sender] = after
            self._update_free()

    def _problem(self, sender: Role, kind: Kind, sending: bool) -> str | None:
        """Why a message of ``kind`` from ``sender`` may not flow now (a key of `_WORDING`), or None."""
        if self.refused:
            return "refused"
        state = self.states[sender]
        if kind not in TRANSITIONS[sender][state]:
            return "early" if state is State.IDLE else "repeat"
        # The two rules that link the ends (see `process`).
        answer = sender is _SERVER and kind in (Kind.WELCOME, Kind.REFUSED)
        if answer and sending and self.states[_CLIENT] is State.IDLE:
            return "no_hello"
        request = sender is _CLIENT and kind is not Kind.HELLO
        if request and not sending and self.states[_SERVER] is State.IDLE:
            return "unanswered"
        return None

    def _update_free(self) -> None:
        for sending in (True, False):
            sender = self.role if sending else _PEER[self.role]
            state = self.states[sender]
            free = []
            for cls in BY_OP.values():
                kind = _KIND_OF.get(cls, Kind.OTHER)
                if (
                    sender in cls.SENT_BY
                    and self._problem(sender, kind, sending) is None
                    and TRANSITIONS[sender][state][kind] is state
                ):
                    free.append(cls)
            self._free[sending] = frozenset(free)
