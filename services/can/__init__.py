"""The CAN gateway: CAN networks as typed bus topics (SocketCAN, python-can), simulated ECUs, and the CAN
tools; end-to-end protection (CRCs and alive counters) per message.

See ``docs/can.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.can._codec import (
        STALE_AFTER_CYCLES,
        CanCodec,
        CanDatabaseError,
        CodecStatistics,
        EncodeError,
        Frame,
        FrameError,
        SignalMapping,
        load_database,
    )
    from services.can._e2e import (
        E2E,
        E2E_PROFILES,
        E2E_REASONS,
        E2EChecker,
        E2EConfigError,
        E2EProtection,
        E2EProtector,
        bind_e2e,
        find_e2e_signals,
    )
    from services.can._frames import RawFrame, frames_topic
    from services.can._gateway import (
        Actuator,
        CanGateway,
        CyclicMessage,
        GatewayConfig,
        LinkStatus,
        SendRequest,
        send_method,
        status_topic,
    )
    from services.can._gen import generate_topics
    from services.can._logdecode import LogDecoding
    from services.can._logtools import (
        FrameView,
        ReplayStats,
        dump_frames,
        read_log,
        replay,
    )
    from services.can._sim import CanSimulator, SignalValues, SimulatedEcu, SimulatorConfig
    from services.can._transport import (
        CanTransport,
        FrameRefusedError,
        LinkDownError,
        MemoryTransport,
        PythonCanTransport,
        open_python_can,
    )

__all__ = [
    "E2E",
    "E2E_PROFILES",
    "E2E_REASONS",
    "STALE_AFTER_CYCLES",
    "Actuator",
    "CanCodec",
    "CanDatabaseError",
    "CanGateway",
    "CanSimulator",
    "CanTransport",
    "CodecStatistics",
    "CyclicMessage",
    "E2EChecker",
    "E2EConfigError",
    "E2EProtection",
    "E2EProtector",
    "EncodeError",
    "Frame",
    "FrameError",
    "FrameRefusedError",
    "FrameView",
    "GatewayConfig",
    "LinkDownError",
    "LinkStatus",
    "LogDecoding",
    "MemoryTransport",
    "PythonCanTransport",
    "RawFrame",
    "ReplayStats",
    "SendRequest",
    "SignalMapping",
    "SignalValues",
    "SimulatedEcu",
    "SimulatorConfig",
    "bind_e2e",
    "dump_frames",
    "find_e2e_signals",
    "frames_topic",
    "generate_topics",
    "load_database",
    "open_python_can",
    "read_log",
    "replay",
    "send_method",
    "status_topic",
]

#: The private module each public name is defined in. Each is imported when one of its names is first used
#: (PEP 562), not with the package: a gateway never loads the log tools or the topic generator.
_LAZY: dict[str, str] = {
    "STALE_AFTER_CYCLES": "_codec",
    "CanCodec": "_codec",
    "CanDatabaseError": "_codec",
    "CodecStatistics": "_codec",
    "EncodeError": "_codec",
    "Frame": "_codec",
    "FrameError": "_codec",
    "SignalMapping": "_codec",
    "load_database": "_codec",
    "E2E": "_e2e",
    "E2E_PROFILES": "_e2e",
    "E2E_REASONS": "_e2e",
    "E2EChecker": "_e2e",
    "E2EConfigError": "_e2e",
    "E2EProtection": "_e2e",
    "E2EProtector": "_e2e",
    "bind_e2e": "_e2e",
    "find_e2e_signals": "_e2e",
    "Actuator": "_gateway",
    "CanGateway": "_gateway",
    "CyclicMessage": "_gateway",
    "GatewayConfig": "_gateway",
    "LinkStatus": "_gateway",
    "SendRequest": "_gateway",
    "send_method": "_gateway",
    "status_topic": "_gateway",
    "RawFrame": "_frames",
    "frames_topic": "_frames",
    "generate_topics": "_gen",
    "LogDecoding": "_logdecode",
    "FrameView": "_logtools",
    "ReplayStats": "_logtools",
    "dump_frames": "_logtools",
    "read_log": "_logtools",
    "replay": "_logtools",
    "CanSimulator": "_sim",
    "SignalValues": "_sim",
    "SimulatedEcu": "_sim",
    "SimulatorConfig": "_sim",
    "CanTransport": "_transport",
    "FrameRefusedError": "_transport",
    "LinkDownError": "_transport",
    "MemoryTransport": "_transport",
    "PythonCanTransport": "_transport",
    "open_python_can": "_transport",
}

if not TYPE_CHECKING:  # for mypy the names are the imports above, and a misspelt one stays an error

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
