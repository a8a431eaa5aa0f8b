"""Errors raised by the bus. Every one says which topic, method or client it concerns."""

from __future__ import annotations

from typing import Any


def shown(text: str) -> str:
    """``repr(text)``, shortened for an error message if it is long (a hostile name may be megabytes)."""
    if len(text) <= 80:
        return repr(text)
    return f"{text[:60]!r}... ({len(text)} characters)"


class BusError(Exception):
    """Base class of every error the bus raises."""


class TopicError(BusError):
    """A topic name, pattern or declaration is not acceptable."""


class UnknownTopicError(TopicError):
    """A topic was named by string but has never been declared on this bus."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: no such topic is declared on this bus")
        self.name = name


class ValueRefusedError(BusError):
    """A published value broke one of its topic's rules; nothing was delivered."""

    def __init__(self, topic: str, rule: str, value: Any) -> None:
        text = repr(value)
        if len(text) > 80:
            text = f"{text[:60]}... ({len(text)} characters)"
        super().__init__(f"{topic}: value {text} refused: {rule}")
        self.topic = topic
        self.rule = rule
        self.value = value


class PermissionDeniedError(BusError):
    """A client tried an operation its permission set does not grant; ``hint`` may say what to do."""

    def __init__(self, client: str, action: str, name: str, hint: str = "") -> None:
        super().__init__(f"client {client!r} may not {action} {shown(name)}" + (f": {hint}" if hint else ""))
        self.client = client
        self.action = action
        self.name = name
        self.hint = hint


#: What each of `bus.ConnectionLimits`' fields counts, and what to do at the limit, for the messages.
_LIMITS: dict[str, tuple[str, str]] = {
    "subscriptions": ("subscriptions", "end some first"),
    "methods": ("methods served", "end some first"),
    "calls": ("calls waiting for their reply", "wait for some first"),
    "queued": (
        "samples queued for its subscriptions (the sum of their queue sizes)",
        "ask for smaller queues, or end some subscriptions first",
    ),
}


class LimitExceededError(BusError):
    """A connection reached one of its limits (`bus.ConnectionLimits`): ``what`` names it."""

    def __init__(self, client: str, what: str, limit: int) -> None:
        noun, remedy = _LIMITS.get(what, (what, "end some first"))
        super().__init__(
            f"client {client!r} reached its limit of {limit} {noun} per connection "
            f"(ConnectionLimits.{what}); {remedy}"
        )
        self.client = client
        self.what = what
        self.limit = limit


class StaleValueError(BusError):
    """The latest value of a topic is older than the topic's max age."""

    def __init__(self, topic: str, age: float, max_age: float) -> None:
        super().__init__(f"{topic}: latest value is stale ({age:.3f} s old, max age {max_age:g} s)")
        self.topic = topic
        self.age = age
        self.max_age = max_age


class MethodError(BusError):
    """Base class of the errors a method call can end with."""


class NoSuchMethodError(MethodError):
    """Nobody serves the method that was called."""

    def __init__(self, method: str) -> None:
        super().__init__(f"{method}: no such method is served on this bus")
        self.method = method


class MethodAlreadyServedError(MethodError):
    """A second server tried to serve a method that is already served."""

    def __init__(self, method: str, server: str) -> None:
        super().__init__(f"{method}: already served by {server!r}")
        self.method = method
        self.server = server


class RemoteError(MethodError):
    """The method's handler raised; ``error_type`` names the exception it raised."""

    def __init__(self, method: str, error_type: str, message: str) -> None:
        super().__init__(f"{method}: handler raised {error_type}: {message}")
        self.method = method
        self.error_type = error_type
        self.message = message


class CallTimeoutError(MethodError):
    """No reply came within the call's timeout."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method}: no reply within {timeout:g} s")
        self.method = method
        self.timeout = timeout


class CodecError(BusError):
    """Bytes could not be decoded, or a value could not be encoded."""


class SchemaMismatchError(CodecError):
    """A peer sent a registered type whose schema fingerprint differs from ours."""

    def __init__(self, type_name: str, ours: str, theirs: str) -> None:
        super().__init__(
            f"{type_name}: schema fingerprint mismatch (ours {ours}, peer's {theirs}); "
            "both sides must use the same definition of the type"
        )
        self.type_name = type_name
        self.ours = ours
        self.theirs = theirs
