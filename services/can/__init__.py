"""The CAN gateway: CAN networks as typed bus topics (SocketCAN, python-can), simulated ECUs, and the CAN
tools.

See ``docs/can.md``.
"""

from services.can._cli import (
    FrameView,
    ReplayStats,
    dump_frames,
    generate_topics,
    read_log,
    replay,
)
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
    "STALE_AFTER_CYCLES",
    "Actuator",
    "CanCodec",
    "CanDatabaseError",
    "CanGateway",
    "CanSimulator",
    "CanTransport",
    "CodecStatistics",
    "CyclicMessage",
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
    "dump_frames",
    "generate_topics",
    "load_database",
    "open_python_can",
    "read_log",
    "replay",
    "send_method",
    "status_topic",
]
