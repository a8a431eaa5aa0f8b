"""Adding messages to an ``mcap`` `Writer` at a lower cost per message than ``Writer.add_message``: the same
steps (the statistics, the chunk's time range and message index, the message record, the chunk ended once
it is full) without building a `Message` per call nor going through the chunk builder's method; the
record is still serialized by the library (`Message.write`), and chunks, indexes and the summary are still
the Writer's own. Most of a recorder's time per sample went to ``add_message``'s overhead.

It reaches into the Writer's private attributes (those of ``mcap`` 1.x). `message_adder` checks once per
process that it writes exactly the bytes ``add_message`` writes; where it does not (another version of
the library), the Writer's own ``add_message`` is used.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Final, TypeAlias

__all__ = ["MessageAdder", "message_adder"]

#: ``add(channel_id, log_time, data, publish_time, sequence)``, as ``Writer.add_message``.
MessageAdder: TypeAlias = Callable[[int, int, bytes, int, int], None]

_checked: dict[str, bool] = {}
_PROBE: Final = (  # channel, log time, data, publish time, sequence: out of order, two channels
    (1, 5_000, b'{"a":1}', 7, 1),
    (2, 3_000, b'{"b":2}', 8, 1),
    (1, 9_000, b"x" * 300, 9, 2),
    (2, 1_000, b"", 10, 2),
    (1, 2_000, b'{"c":3}', 11, 3),
)


def _fast_adder(writer: Any) -> MessageAdder:
    """The lower-cost ``add_message`` of ``writer`` (AttributeError if its internals are not mcap 1.x's)."""
    from mcap.records import Message, MessageIndex

    builder = writer._Writer__chunk_builder
    stats = writer._Writer__statistics
    finish_chunk = writer._Writer__finalize_chunk
    chunk_size = writer._Writer__chunk_size
    if builder is None:  # an unchunked file: nothing to save
        add: MessageAdder = writer.add_message
        return add
    counts = stats.channel_message_counts
    indexes = builder.message_indices
    records = builder.record_writer
    message = Message(channel_id=0, log_time=0, data=b"", publish_time=0, sequence=0)
    write = Message.write

    def fast_add(channel_id: int, log_time: int, data: bytes, publish_time: int, sequence: int) -> None:
        if stats.message_count == 0 or log_time < stats.message_start_time:
            stats.message_start_time = log_time
        if log_time > stats.message_end_time:
            stats.message_end_time = log_time
        counts[channel_id] += 1
        stats.message_count += 1
        if builder.num_messages == 0 or log_time < builder.message_start_time:
            builder.message_start_time = log_time
        if log_time > builder.message_end_time:
            builder.message_end_time = log_time
        index = indexes.get(channel_id)
        if index is None:
            index = indexes[channel_id] = MessageIndex(channel_id=channel_id, records=[])
        index.records.append((log_time, records.count))
        builder.num_messages += 1
        message.channel_id = channel_id
        message.log_time = log_time
        message.data = data
        message.publish_time = publish_time
        message.sequence = sequence
        write(message, records)
        if records.count > chunk_size:
            finish_chunk()

    return fast_add


def _probe(fast: bool) -> bytes:
    from mcap.writer import CompressionType, Writer

    stream = io.BytesIO()
    writer = Writer(stream, chunk_size=400, compression=CompressionType.ZSTD)
    writer.start(profile="", library="probe")
    schema = writer.register_schema("s", "jsonschema", b"{}")
    for topic in ("a", "b"):
        writer.register_channel(topic, "json", schema)
    add = _fast_adder(writer) if fast else writer.add_message
    for item in _PROBE:
        add(*item)
    writer.flush()  # type: ignore[no-untyped-call]
    for item in _PROBE:
        add(*item)
    writer.finish()  # type: ignore[no-untyped-call]
    return stream.getvalue()


def fast_path_works() -> bool:
    """Whether the lower-cost adder writes the very bytes of ``Writer.add_message`` with this ``mcap``
    (checked once per process)."""
    works = _checked.get("works")
    if works is None:
        try:
            works = _probe(fast=True) == _probe(fast=False)
        except Exception:  # another version's internals: AttributeError, TypeError...
            works = False
        _checked["works"] = works
    return works


def message_adder(writer: Any) -> MessageAdder:
    """``writer.add_message``, or its lower-cost equivalent where `fast_path_works`."""
    if fast_path_works():
        try:
            return _fast_adder(writer)
        except AttributeError:  # pragma: no cover - the probe used the same attributes
            pass
    add: MessageAdder = writer.add_message
    return add
