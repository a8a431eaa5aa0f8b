"""Recording and replay of bus samples as MCAP files: `vwos record`, `vwos replay`, `vwos bag info`.

`RecordingWriter` writes samples to MCAP (one channel per topic, JSON messages with a JSON Schema per type,
the form Foxglove reads; zstd chunks; splitting); `record_bus` records a live bus through any
`bus.BusHandle`; `read_recording` reads the samples back as bus values and `bag_info` summarizes a file;
`replay` publishes a recording into a bus (under trio's MockClock, deterministically: the test kit's way to
play a drive into a harness). Snapshot mode: `SnapshotRecorder` (given to `record_bus`) keeps the last N
seconds in memory and writes them when a `Condition` (`parse_condition`) or a call of `SNAPSHOT_METHOD`
triggers it. `sample_json`, `to_json`, `from_json` and `sample_schema` are the JSON form.
Needs the ``record`` extra (the ``mcap`` and ``zstandard`` packages). See ``docs/record.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.record._json import RecordingError, from_json, sample_json, to_json, type_key
    from services.record._parts import bag_info, read_recording
    from services.record._reader import BagInfo, ChannelInfo
    from services.record._recorder import DEFAULT_QUEUE_SIZE, RecordResult, record_bus
    from services.record._replay import ReplayResult, replay
    from services.record._schema import sample_schema
    from services.record._snapshot import Condition, ConditionError, SnapshotTooSoonError, parse_condition
    from services.record._snapshot_run import SNAPSHOT_METHOD, SnapshotRecorder, SnapshotReply, SnapshotResult
    from services.record._writer import METADATA_NAME, RecordingWriter

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "METADATA_NAME",
    "SNAPSHOT_METHOD",
    "BagInfo",
    "ChannelInfo",
    "Condition",
    "ConditionError",
    "RecordResult",
    "RecordingError",
    "RecordingWriter",
    "ReplayResult",
    "SnapshotRecorder",
    "SnapshotReply",
    "SnapshotResult",
    "SnapshotTooSoonError",
    "bag_info",
    "from_json",
    "parse_condition",
    "read_recording",
    "record_bus",
    "replay",
    "sample_json",
    "sample_schema",
    "to_json",
    "type_key",
]

#: The private module each public name is defined in. Each is imported when one of its names is first used
#: (PEP 562), not with the package: `vwos bag info` never loads the bus client.
_LAZY: dict[str, str] = {
    "RecordingError": "_json",
    "from_json": "_json",
    "sample_json": "_json",
    "to_json": "_json",
    "type_key": "_json",
    "BagInfo": "_reader",
    "ChannelInfo": "_reader",
    "bag_info": "_parts",
    "read_recording": "_parts",
    "DEFAULT_QUEUE_SIZE": "_recorder",
    "RecordResult": "_recorder",
    "record_bus": "_recorder",
    "ReplayResult": "_replay",
    "replay": "_replay",
    "sample_schema": "_schema",
    "Condition": "_snapshot",
    "ConditionError": "_snapshot",
    "SnapshotTooSoonError": "_snapshot",
    "parse_condition": "_snapshot",
    "SNAPSHOT_METHOD": "_snapshot_run",
    "SnapshotRecorder": "_snapshot_run",
    "SnapshotReply": "_snapshot_run",
    "SnapshotResult": "_snapshot_run",
    "METADATA_NAME": "_writer",
    "RecordingWriter": "_writer",
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
