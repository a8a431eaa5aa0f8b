"""The recorder's lower-cost way of adding messages to the ``mcap`` Writer (services/record/_fastmcap.py)
writes exactly the bytes of ``Writer.add_message``, and the recorder uses it."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest
from strategies import mcap_messages

from bus import Sample
from services.record import RecordingWriter, sample_json
from services.record._fastmcap import fast_path_works, message_adder


def _write(
    messages: list[tuple[int, int, bytes, int, int]], chunk_size: int, fast: bool, flush_at: int
) -> bytes:
    from mcap.writer import CompressionType, Writer

    stream = io.BytesIO()
    writer = Writer(stream, chunk_size=chunk_size, compression=CompressionType.ZSTD)
    writer.start(profile="", library="test")
    schema = writer.register_schema("s", "jsonschema", b"{}")
    for topic in ("a", "b", "c"):
        writer.register_channel(topic, "json", schema)
    add = message_adder(writer) if fast else writer.add_message
    for n, message in enumerate(messages):
        if n == flush_at:
            writer.flush()  # type: ignore[no-untyped-call]
            writer.add_metadata("m", {"n": str(n)})
        add(*message)
    writer.finish()  # type: ignore[no-untyped-call]
    return stream.getvalue()


def test_the_fast_path_is_in_use_with_this_mcap() -> None:
    assert fast_path_works(), "the mcap package's Writer changed: services/record/_fastmcap.py falls back"


@hypothesis.settings(max_examples=60)
@hypothesis.given(
    messages=mcap_messages(),
    chunk_size=st.sampled_from([1, 100, 4096, 1024 * 1024]),
    flush_at=st.integers(0, 50),
)
def test_it_writes_the_bytes_add_message_writes(
    messages: list[tuple[int, int, bytes, int, int]], chunk_size: int, flush_at: int
) -> None:
    assert _write(messages, chunk_size, True, flush_at) == _write(messages, chunk_size, False, flush_at)


def test_the_recorder_uses_it(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "a.mcap") as writer:
        assert writer._add != writer._writer.add_message


@hypothesis.settings(max_examples=40)
@hypothesis.given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=30))
def test_the_recorders_float_messages_are_sample_json(values: list[float]) -> None:
    from mcap.reader import make_reader

    written = [Sample("A.B", v, 1.0 + i, 2.0 + i, 'pub\u00e9"', i + 1) for i, v in enumerate(values)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.mcap"
        with RecordingWriter(path) as writer:
            writer.write_many(written)
        with path.open("rb") as stream:
            got = [m.data for _, _, m in make_reader(stream).iter_messages(log_time_order=False)]
    assert got == [sample_json(s) for s in written]


def test_it_steps_aside_where_it_cannot_help_or_would_be_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcap.writer import Writer

    from services.record import _fastmcap

    unchunked = Writer(io.BytesIO(), use_chunking=False)
    assert message_adder(unchunked) == unchunked.add_message  # nothing to save without chunks
    monkeypatch.setattr(_fastmcap, "_checked", {})  # another mcap, whose Writer has other insides
    monkeypatch.setattr(_fastmcap, "_fast_adder", lambda writer: writer._no_such_attribute)
    writer = Writer(io.BytesIO())
    assert not fast_path_works()
    assert message_adder(writer) == writer.add_message
