"""The CAN gateway: CAN networks as typed bus topics (SocketCAN, python-can), simulated ECUs, and the CAN
tools; end-to-end protection (CRCs and alive counters) per message.

See ``docs/can.md``.
"""

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
    "MemoryTransport",
    "PythonCanTransport",
    "ReplayStats",
    "SendRequest",
    "SignalMapping",
    "SignalValues",
    "SimulatedEcu",
    "SimulatorConfig",
    "bind_e2e",
    "dump_frames",
    "find_e2e_signals",
    "generate_topics",
    "load_database",
    "open_python_can",
    "read_log",
    "replay",
    "send_method",
    "status_topic",
]
