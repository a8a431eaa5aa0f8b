"""Raw CAN frames as bus values: what a gateway with ``raw_frames = true`` publishes on
``CAN.<network>.frames``, one sample per received frame, whatever the database says of it."""

from __future__ import annotations

from typing import Any, Final

import attrs
import can

from bus import Topic, default_codec

__all__ = ["FRAMES_NAME", "RawFrame", "frames_topic", "raw_frame"]

#: The last segment of a network's raw frames topic, ``CAN.<network>.frames`` (no message may take it).
FRAMES_NAME: Final = "frames"


@default_codec.register(name="vwos.can.RawFrame")
@attrs.frozen
class RawFrame:
    """One received CAN frame as it came off the network (python-can's `can.Message` flags, renamed).

    The frame's timestamp is the sample's source timestamp (``Sample.timestamp``), so it is not a field.
    """

    #: The frame id: 11 bits, or 29 bits when ``extended``; for an error frame, the error class bits.
    arbitration_id: int
    #: A 29-bit (extended) frame id.
    extended: bool
    #: A CAN FD frame.
    fd: bool
    #: A remote (RTR) frame: it asks for data and carries none (``dlc`` is the length it asks for).
    remote: bool
    #: An error frame (SocketCAN's error class in ``arbitration_id``, its details in ``data``).
    error: bool
    #: CAN FD: the data phase was sent at the higher bit rate (BRS).
    bitrate_switch: bool
    #: CAN FD: the sender was error passive (ESI).
    error_state_indicator: bool
    #: The data length code as python-can gives it: the number of data bytes (up to 64 for CAN FD).
    dlc: int
    #: The data bytes (empty for a remote frame).
    data: bytes


def frames_topic(network: str) -> Topic[RawFrame]:
    """The topic a gateway with ``raw_frames = true`` publishes every received frame of ``network`` on."""
    return Topic(
        f"CAN.{network}.{FRAMES_NAME}", RawFrame, description=f"every frame received on CAN network {network}"
    )


_new: Final = object.__new__
_SETTERS: Final = tuple(getattr(RawFrame, f.name).__set__ for f in attrs.fields(RawFrame))
(
    _set_id,
    _set_extended,
    _set_fd,
    _set_remote,
    _set_error,
    _set_brs,
    _set_esi,
    _set_dlc,
    _set_data,
) = _SETTERS


def raw_frame(msg: can.Message) -> RawFrame:
    """The `RawFrame` of a python-can message (the same as ``RawFrame(...)`` with its fields, built through
    the class's slots: this is on the gateway's receive path, once per frame)."""
    frame: Any = _new(RawFrame)
    _set_id(frame, msg.arbitration_id)
    _set_extended(frame, bool(msg.is_extended_id))
    _set_fd(frame, bool(msg.is_fd))
    _set_remote(frame, bool(msg.is_remote_frame))
    _set_error(frame, bool(msg.is_error_frame))
    _set_brs(frame, bool(msg.bitrate_switch))
    _set_esi(frame, bool(msg.error_state_indicator))
    _set_dlc(frame, msg.dlc)
    _set_data(frame, bytes(msg.data))
    return frame  # type: ignore[no-any-return]
