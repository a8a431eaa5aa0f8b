"""The uplink's pure parts: campaigns, the batch wire format, the durable outbox, the file transport, the CLI.

Crash safety is tested for real: a child process accepts, forms and acknowledges batches in a loop and is
killed with SIGKILL at random moments; every sample it reported committed must then be in the outbox, or in
a batch it reported delivered, exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import math
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest
import tmpfs  # tests/ is on sys.path
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    mutated_bytes,
    topic_names,
    uplink_campaigns,
    uplink_keeps,
    uplink_samples,
)

import services.uplink
from bus import Codec, EnumMember, Record, default_codec, matches
from services.uplink import (
    Batch,
    BatchBuilder,
    BatchError,
    Campaign,
    CampaignFilter,
    FileTransport,
    Keep,
    Outbox,
    OutboxError,
    OutboxStorageError,
    SampleTooLargeError,
    TransportError,
    UplinkTransport,
    batch_file_name,
    decode_batch,
    encode_batch,
    prepare_value,
    read_header,
)
from services.uplink._batch import ENCODING_ZLIB, FORMAT, VERSION, to_us
from services.uplink._cli import MAX_BATCH_FILE_BYTES, register
from services.uplink._outbox import APPLICATION_ID, ROW_OVERHEAD, SCHEMA_VERSION
from vwos._structure import StructureError, structure

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
#: SQLite-backed property tests: a file per example, so fewer examples and no deadline.
DB_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_value(a: object, b: object) -> bool:
    """Equal as the codec sees them (nan equals nan, -0.0 differs from 0.0)."""
    return default_codec.encode(a) == default_codec.encode(b)


@contextlib.contextmanager
def temporary_outbox(**options: Any) -> Iterator[tuple[Path, Outbox]]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "outbox.sqlite3"
        options.setdefault("quota_bytes", 1 << 30)
        options.setdefault("vehicle_id", "VIN-TEST")
        outbox = Outbox(path, **options)
        try:
            yield path, outbox
        finally:
            outbox.close()


def drain(outbox: Outbox, now: float = T0) -> list[Batch]:
    """Form, decode and acknowledge every batch."""
    batches = []
    while (formed := outbox.next_batch(now)) is not None:
        seq, payload = formed
        batch = decode_batch(payload)
        assert batch.seq == seq
        batches.append(batch)
        assert outbox.ack(seq)
    return batches


def ids_of(batches: Sequence[Batch]) -> list[Any]:
    return [s.value for b in batches for s in b.samples]


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


# ============================================================================================== public names


def test_public_names_are_exported_and_documented() -> None:
    names = services.uplink.__all__
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(services.uplink, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
            assert obj.__module__.startswith("services.uplink._"), obj.__module__


def test_the_file_transport_is_an_uplink_transport() -> None:
    transport: UplinkTransport = FileTransport("unused")  # mypy checks the protocol here
    assert transport.name == "file"
    assert issubclass(TransportError, Exception)


# ================================================================================================ campaigns


def test_campaign_from_toml_with_defaults() -> None:
    campaign = structure({"name": "speed", "topics": ["Vehicle.Speed", "Vehicle.*.Gear"]}, Campaign)
    assert campaign == Campaign("speed", ("Vehicle.Speed", "Vehicle.*.Gear"))
    assert (campaign.mode, campaign.period, campaign.priority, campaign.ttl) == ("every", None, 0, None)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "p", "topics": ["A"], "mode": "period"}, "mode 'period' needs a period"),
        ({"name": "p", "topics": ["A"], "mode": "change", "period": 1.0}, "period is only for mode 'period'"),
        ({"name": "p", "topics": ["A"], "mode": "sometimes"}, "mode"),
        ({"name": "p", "topics": []}, "at least one topic pattern"),
        ({"name": "p", "topics": ["Vehicle..Speed"]}, "segment"),
        ({"name": "p", "topics": ["Vehicle.Sp*"]}, "wildcards stand alone"),
        ({"name": "-p", "topics": ["A"]}, "campaign name"),
        ({"name": "p", "topics": ["A"], "ttl": 0}, "ttl must be a positive number of seconds"),
        ({"name": "p", "topics": ["A"], "mode": "period", "period": -1.0}, "period must be a positive"),
        ({"name": "p", "topics": ["A"], "priority": 2**40}, "priority must be between"),
    ],
)
def test_campaign_validation_names_the_problem(table: dict[str, Any], message: str) -> None:
    with pytest.raises(StructureError) as caught:
        structure(table, Campaign)
    assert message in str(caught.value)


def test_campaign_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        CampaignFilter([Campaign("a", ("X",)), Campaign("a", ("Y",))])


def test_filter_patterns_are_the_union_in_order() -> None:
    f = CampaignFilter([Campaign("a", ("X.**", "Y")), Campaign("b", ("Y", "Z.*"))])
    assert f.patterns == ("X.**", "Y", "Z.*")


def test_period_mode_keeps_at_most_one_sample_per_period_per_topic() -> None:
    f = CampaignFilter([Campaign("p", ("Vehicle.*",), mode="period", period=1.0, priority=3, ttl=5.0)])
    kept = [t for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.5) if f.keep("Vehicle.Speed", 1.0, t) is not None]
    assert kept == [0.0, 1.0, 2.5]
    assert f.keep("Vehicle.Rpm", 1.0, 2.6) == Keep(("p",), 3, 5.0)  # per topic
    assert f.keep("Other", 1.0, 10.0) is None


def test_change_mode_keeps_changes_only_and_nan_is_no_change() -> None:
    f = CampaignFilter([Campaign("c", ("Gear",), mode="change")])
    values = ["P", "P", "D", "D", "R", "P"]
    assert [v for v in values if f.keep("Gear", v, 0.0) is not None] == ["P", "D", "R", "P"]
    nans = [math.nan, math.nan, 1.0, math.nan]
    assert [f.keep("Gear2", v, 0.0) is not None for v in nans] == [False] * 4  # Gear2 is not a campaign topic
    g = CampaignFilter([Campaign("c", ("X",), mode="change")])
    assert [g.keep("X", v, 0.0) is not None for v in nans] == [True, False, True, True]
    g.reset()
    assert g.keep("X", math.nan, 0.0) is not None


def test_several_campaigns_merge_to_highest_priority_and_longest_ttl() -> None:
    f = CampaignFilter(
        [
            Campaign("fast", ("Vehicle.Speed",), priority=9, ttl=10.0),
            Campaign("log", ("Vehicle.**",), priority=1, ttl=None),
            Campaign("hour", ("Vehicle.Speed",), mode="period", period=3600.0, priority=5, ttl=60.0),
        ]
    )
    first = f.keep("Vehicle.Speed", 1.0, 0.0)
    assert first == Keep(("fast", "log", "hour"), priority=9, ttl=None)
    second = f.keep("Vehicle.Speed", 2.0, 1.0)
    assert second == Keep(("fast", "log"), priority=9, ttl=None)
    assert f.keep("Vehicle.Speed", 3.0, 2.0) is second  # one Keep instance per combination
    assert Keep.merge([Campaign("a", ("X",), ttl=1.0), Campaign("b", ("X",), ttl=2.0)]).ttl == 2.0


@settings(max_examples=200)
@given(
    campaigns=st.lists(uplink_campaigns(), min_size=1, max_size=4, unique_by=lambda c: c.name),
    samples=st.lists(
        st.tuples(topic_names(max_depth=3), st.integers(0, 3), st.floats(0, 2, allow_nan=False)), max_size=60
    ),
)
def test_filter_matches_a_per_campaign_model(
    campaigns: list[Campaign], samples: list[tuple[str, int, float]]
) -> None:
    """Each campaign decides alone (modelled here); the filter keeps a sample iff one does, merged."""
    f = CampaignFilter(campaigns)
    last_time: dict[tuple[str, str], float] = {}
    last_value: dict[tuple[str, str], int] = {}
    now = 0.0
    for topic, value, dt in samples:
        now += dt
        keepers = []
        for c in campaigns:
            if not any(matches(p, topic) for p in c.topics):
                continue
            key = (c.name, topic)
            if c.mode == "every":
                keepers.append(c)
            elif c.mode == "period":
                assert c.period is not None
                if key not in last_time or now - last_time[key] >= c.period:
                    last_time[key] = now
                    keepers.append(c)
            elif key not in last_value or last_value[key] != value:
                last_value[key] = value
                keepers.append(c)
        keep = f.keep(topic, value, now)
        if not keepers:
            assert keep is None
            continue
        assert keep is not None
        assert keep.campaigns == tuple(c.name for c in keepers)
        assert keep.priority == max(c.priority for c in keepers)
        ttls = [c.ttl for c in keepers]
        assert keep.ttl == (None if None in ttls else max(t for t in ttls if t is not None))


def test_a_topic_is_kept_only_through_the_first_pattern_that_matches_it() -> None:
    """Overlapping patterns: the bus delivers a sample once per matching subscription, and only the one of
    the first matching pattern (in `patterns` order) keeps it, so that it is stored once."""
    f = CampaignFilter(
        [Campaign("all", ("Test.**",)), Campaign("counter", ("Test.Counter", "Gear"), mode="change")]
    )
    assert f.patterns == ("Test.**", "Test.Counter", "Gear")
    both, alone = Keep(("all", "counter")), Keep(("all",))
    assert f.keep("Test.Counter", 1, 0.0, 1) is None  # "Test.**" (pattern 0) takes it
    assert f.keep("Test.Counter", 1, 0.0, 0) == both  # the copy left out did not touch the change state
    assert f.keep("Test.Counter", 1, 0.1, 1) is None
    assert f.keep("Test.Counter", 1, 0.1, 0) == alone  # no change: kept by "all" only
    assert f.keep("Test.Other", 1, 0.0, 0) == alone
    assert f.keep("Gear", "P", 0.0, 0) is None  # not the pattern that takes "Gear"
    assert f.keep("Gear", "P", 0.0, 2) == Keep(("counter",))
    assert f.keep("Gear", "P", 0.1) is None  # without a pattern index: every sample counts (no change)


@settings(max_examples=200)
@given(
    campaigns=st.lists(uplink_campaigns(), min_size=1, max_size=4, unique_by=lambda c: c.name),
    samples=st.lists(
        st.tuples(topic_names(max_depth=3), st.integers(0, 3), st.floats(0, 2, allow_nan=False)), max_size=60
    ),
    shuffle=st.randoms(use_true_random=False),
)
def test_a_sample_delivered_through_each_matching_pattern_is_kept_once(
    campaigns: list[Campaign], samples: list[tuple[str, int, float]], shuffle: random.Random
) -> None:
    """Fed each sample through every pattern that matches it (in any order, as the service's subscriptions
    deliver it), the filter keeps it once, exactly as when fed each sample once."""
    once, per_pattern = CampaignFilter(campaigns), CampaignFilter(campaigns)
    patterns = per_pattern.patterns
    now = 0.0
    for topic, value, dt in samples:
        now += dt
        expected = once.keep(topic, value, now)
        through = [i for i, p in enumerate(patterns) if matches(p, topic)]
        shuffle.shuffle(through)
        kept = [k for i in through if (k := per_pattern.keep(topic, value, now, i)) is not None]
        assert kept == ([] if expected is None else [expected])


# ============================================================================================ batch format

_BUILDER_IDS = ("VIN1", "0123456789abcdef")


@settings(max_examples=300)
@given(samples=uplink_samples(), compress=st.booleans(), seq=st.integers(0, 2**64 - 1))
def test_batch_round_trip(samples: list[tuple[str, int, object]], compress: bool, seq: int) -> None:
    builder = BatchBuilder(*_BUILDER_IDS, compress=compress, max_bytes=1 << 20)
    prepared = [(t, ts, prepare_value(v)) for t, ts, v in samples]
    payload = builder.build(seq, prepared)
    batch = decode_batch(payload)
    assert (batch.vehicle_id, batch.stream, batch.seq) == (*_BUILDER_IDS, seq)
    assert len(batch.samples) == len(samples)
    for got, (topic, ts, value) in zip(batch.samples, samples, strict=True):
        assert got.topic == topic
        assert got.timestamp_us == ts
        assert same_value(got.value, value)
    assert batch.first_us == min(ts for _, ts, _ in samples)
    assert batch.last_us == max(ts for _, ts, _ in samples)
    assert list(batch.topics) == list(dict.fromkeys(t for t, _, _ in samples))
    assert sum(batch.topic_counts().values()) == len(samples)
    assert batch.size == len(payload)
    header = read_header(payload)
    assert (header.vehicle_id, header.seq, header.compressed) == ("VIN1", seq, batch.compressed)
    if not compress:
        assert not batch.compressed


@given(st.floats(min_value=-1e10, max_value=1e10, allow_nan=False))
def test_timestamps_are_exact_to_the_microsecond(seconds: float) -> None:
    payload = encode_batch("V", "s", 1, [("A", seconds, 1.0)])
    (sample,) = decode_batch(payload).samples
    assert sample.timestamp_us == round(seconds * 1_000_000)
    assert abs(sample.timestamp - seconds) <= 0.5e-6 + abs(seconds) * 1e-15


@settings(max_examples=100)
@given(
    samples=uplink_samples(min_size=1, max_size=200), limit=st.integers(1024, 4096), compress=st.booleans()
)
def test_fill_takes_the_longest_prefix_that_fits(
    samples: list[tuple[str, int, object]], limit: int, compress: bool
) -> None:
    builder = BatchBuilder(*_BUILDER_IDS, max_bytes=limit, compress=compress)
    prepared = [(t, ts, prepare_value(v)) for t, ts, v in samples]
    try:
        builder.check(*prepared[0][::2])
    except SampleTooLargeError:
        with pytest.raises(SampleTooLargeError):
            builder.fill(7, prepared)
        return
    payload, taken = builder.fill(7, prepared)
    assert 1 <= taken <= len(prepared)
    assert len(payload) <= limit
    assert [s.timestamp_us for s in decode_batch(payload).samples] == [ts for _, ts, _ in prepared[:taken]]
    if taken < len(prepared):  # one more would not fit, uncompressed
        with pytest.raises(BatchError, match="over the limit"):
            BatchBuilder(*_BUILDER_IDS, max_bytes=limit, compress=False).build(7, prepared[: taken + 1])


def test_a_sample_larger_than_a_batch_is_refused_clearly() -> None:
    builder = BatchBuilder(*_BUILDER_IDS, max_bytes=2048)
    builder.check("Vehicle.Blob", b"x" * 1900)  # fits
    with pytest.raises(
        SampleTooLargeError, match=r"Vehicle\.Blob: sample refused: .* over the batch size limit of 2,048"
    ):
        builder.check("Vehicle.Blob", b"x" * 2048)
    with pytest.raises(SampleTooLargeError):
        builder.fill(1, [("Vehicle.Blob", 0, "y" * 5000), ("A", 0, 1.0)])
    with pytest.raises(ValueError, match="at least 1024"):
        BatchBuilder("V", "s", max_bytes=100)


def test_the_builder_refuses_what_no_batch_can_be() -> None:
    with pytest.raises(ValueError, match="zlib level must be 0 to 9, not 10"):
        BatchBuilder("V", "s", level=10)
    builder = BatchBuilder(*_BUILDER_IDS, max_bytes=2048)
    for make in (builder.build, lambda seq, samples: builder.fill(seq, samples)[0]):
        with pytest.raises(BatchError, match="a batch holds at least one sample"):
            make(1, [])
        with pytest.raises(BatchError, match=r"seq must be 0 to 2\*\*64 - 1, not -1"):
            make(-1, [("A", 0, 1.0)])
        with pytest.raises(BatchError, match=r"seq must be 0 to 2\*\*64 - 1, not 18446744073709551616"):
            make(2**64, [("A", 0, 1.0)])
    with pytest.raises(BatchError, match=r"^3 samples take 3,\d+ bytes, over the limit of 2,048$"):
        builder.build(1, [("Vehicle.Blob", 0, b"x" * 1000)] * 3)


def test_a_sample_near_the_limit_is_measured_exactly() -> None:
    """Past the quick estimate the builder measures the one-sample batch: what fits is kept, whatever its
    type (an embedded CBOR value, a long string whose UTF-8 is shorter than the estimate)."""
    builder = BatchBuilder(*_BUILDER_IDS, max_bytes=2048)
    tagged = cbor2.CBORTag(24, cbor2.dumps(b"x" * 1900))
    builder.check("Vehicle.Fix", tagged)  # fits: no error
    builder.check("Vehicle.Name", "a" * 1000)  # estimated at 4 bytes a character, it takes 1
    with pytest.raises(SampleTooLargeError):
        builder.check("Vehicle.Fix", cbor2.CBORTag(24, cbor2.dumps(b"x" * 2100)))
    payload, taken = builder.fill(1, [("Vehicle.Name", 0, "a" * 1000)])
    assert taken == 1
    assert decode_batch(payload).samples[0].value == "a" * 1000


def test_compression_is_used_only_when_it_helps() -> None:
    repetitive = [("Vehicle.Speed", i * 1000, 50.0) for i in range(500)]
    payload = encode_batch("V", "s", 1, [(t, ts / 1e6, v) for t, ts, v in repetitive])
    assert decode_batch(payload).compressed
    assert len(payload) < len(
        encode_batch("V", "s", 1, [(t, ts / 1e6, v) for t, ts, v in repetitive], compress=False)
    )
    noise = [("Blob", 0.0, random.Random(1).randbytes(800))]
    assert not decode_batch(encode_batch("V", "s", 1, noise)).compressed


@attrs.frozen
class Fix:
    latitude: float
    longitude: float
    satellites: int


def test_attrs_values_travel_as_embedded_bus_codec_cbor() -> None:
    codec = Codec()
    codec.register(Fix, name="test.Fix")
    fix = Fix(52.42, 10.78, 9)
    payload = encode_batch("V", "s", 3, [("Vehicle.Fix", T0, fix), ("Vehicle.Speed", T0, 1.5)], codec=codec)
    assert decode_batch(payload, codec=codec).samples[0].value == fix
    # The default codec does not know the type: the schema the batch carries decodes it, by field name.
    fields = {"latitude": 52.42, "longitude": 10.78, "satellites": 9}
    assert decode_batch(payload).samples[0].value == Record("test.Fix", fields)
    # A version 1 batch carries no schemas: the value stays undecoded (or fails the batch, strictly).
    old = _envelope([to_us(T0), to_us(T0), ["Vehicle.Fix"], [0], [0], [cbor2.CBORTag(24, codec.encode(fix))]])
    with pytest.raises(BatchError, match=r"value 0: unknown type name 'test\.Fix'"):
        decode_batch(old)
    opaque = decode_batch(old, strict=False).samples[0].value
    assert isinstance(opaque, services.uplink.OpaqueValue)
    assert opaque.type_name == "test.Fix"
    assert codec.decode(opaque.cbor) == fix
    # Inside the body it is tag 24 around the codec's bytes.
    plain = encode_batch(
        "V", "s", 3, [("Vehicle.Fix", T0, fix), ("Vehicle.Speed", T0, 1.5)], codec=codec, compress=False
    )
    body = cbor2.loads(cbor2.loads(plain)[6])
    assert body[5][0] == cbor2.CBORTag(24, codec.encode(fix))
    assert body[5][1] == 1.5


def _envelope(body: object, *, version: int = 1, encoding: int = 0, magic: str = FORMAT) -> bytes:
    """A batch of ``body``: version 1 by default (no schemas item), which is still read."""
    raw = cbor2.dumps(body)
    if encoding == ENCODING_ZLIB:
        raw = zlib.compress(raw)
    return cbor2.dumps([magic, version, "V", "s", 1, encoding, raw])


GOOD_BODY = [100, 105, ["A", "B"], [0, 1, 0], [0, 5, 2], [1.0, "x", None]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty data"),
        (b"\x00", "not a vwos uplink batch"),
        (cbor2.dumps(["other", 1]), "not a vwos uplink batch"),
        (_envelope(GOOD_BODY, version=3), "version 3 is not supported"),
        (_envelope(GOOD_BODY, version=VERSION), "expected an array of 7 items"),
        (_envelope([*GOOD_BODY, 5], version=VERSION), "schemas must be an array"),
        (
            _envelope([*GOOD_BODY, [{"name": "x"}]], version=VERSION),
            "batch body: schemas: schema x: the fingerprint",
        ),
        (_envelope(GOOD_BODY)[:-3], "truncated"),
        (_envelope(GOOD_BODY) + b"\x00", "trailing garbage"),
        (cbor2.dumps([FORMAT, 1, "V", "s", -1, 0, b""]), "seq must be an unsigned integer"),
        (cbor2.dumps([FORMAT, 1, "V", "s", 1, 7, b""]), "unknown body encoding 7"),
        (cbor2.dumps([FORMAT, 1, 5, "s", 1, 0, b""]), "vehicle id must be text"),
        (cbor2.dumps([FORMAT, 1, "V", "s", 1, 1, b"not zlib"]), "bad zlib data"),
        (
            cbor2.dumps([FORMAT, 1, "V", "s", 1, 1, zlib.compress(cbor2.dumps(GOOD_BODY))[:-4]]),
            "truncated zlib",
        ),
        (_envelope([100, 105, ["A"], [0], [0]]), "expected an array of 6 items"),
        (_envelope([100, 105, ["A"], [0, 0], [0], [1]]), "columns differ in length"),
        (_envelope([100, 100, ["A"], [1], [0], [1]]), "topic index 1"),
        (_envelope([100, 100, ["A"], [True], [0], [1]]), "topic index"),
        (_envelope([100, 100, ["A", "A"], [0], [0], [1]]), "appears twice"),
        (_envelope([100, 100, ["A"], [0], [-1], [1]]), "delta_us"),
        (_envelope([100, 101, ["A"], [0], [0], [1]]), "not the earliest and latest"),
        (_envelope([100, 100, [], [], [], []]), "no samples"),
        (_envelope([100, 100, ["A"], [0], [0], [[1]]]), "not a CBOR scalar or embedded CBOR"),
        (_envelope([100, 100, ["A"], [0], [0], [cbor2.CBORTag(24, b"\xff")]]), "value 0"),
        (_envelope([100, 100, ["A"], [0], [0], [cbor2.CBORTag(1, 5)]]), "unexpected CBOR tag 1"),
        (_envelope([100, 100, ["A"], [0], [0], [cbor2.CBORTag(99, 5)]]), "unexpected CBOR tag 99"),
        (cbor2.dumps([FORMAT]), "batch envelope: no format version"),
        (cbor2.dumps([FORMAT, "1"]), "batch envelope: no format version"),
        (cbor2.dumps([FORMAT, 1, "V", "s", 1, 0]), "batch envelope: expected 7 items, got 6"),
        (cbor2.dumps([FORMAT, 1, "V", 5, 1, 0, b""]), "batch envelope: stream must be text, got int 5"),
        (cbor2.dumps([FORMAT, 1, "V", "s", 1, 0, "body"]), "the body must be a byte string, got str 'body'"),
        (
            cbor2.dumps([FORMAT, 1, "V", "s", 1, 1, zlib.compress(cbor2.dumps(GOOD_BODY)) + b"junk"]),
            "4 bytes of trailing garbage after the zlib data",
        ),
        (_envelope(["100", 100, ["A"], [0], [0], [1]]), "first_us must be an integer, got str '100'"),
        (_envelope([100, 100.0, ["A"], [0], [0], [1]]), "last_us must be an integer, got float 100.0"),
        (_envelope([100, 100, "A", [0], [0], [1]]), "topics must be an array, got str 'A'"),
        (_envelope([100, 100, [1], [0], [0], [1]]), "topics must all be text"),
        (
            b"\x81" * 100_000 + b"\x00",
            r"batch envelope: malformed CBOR \(CBORDecodeError: maximum container nesting",
        ),
    ],
)
def test_bad_batches_raise_a_clear_batch_error(data: bytes, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        decode_batch(data)


def test_data_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(BatchError, match="a batch is bytes, not str"):
        decode_batch("not bytes")  # type: ignore[arg-type]  # the wrong type on purpose


def test_a_plain_body_over_the_size_bound_is_refused_before_decoding() -> None:
    data = _envelope([100, 100, ["A"], [0], [0], ["x" * 2000]], encoding=0)
    with pytest.raises(BatchError, match=r"batch body: 2,0\d\d bytes, more than 1,000"):
        decode_batch(data, max_body_bytes=1000)


def test_the_good_body_of_the_error_table_decodes() -> None:
    for encoding in (0, 1):
        batch = decode_batch(_envelope(GOOD_BODY, encoding=encoding))
        assert [(s.topic, s.timestamp_us, s.value) for s in batch.samples] == [
            ("A", 100, 1.0),
            ("B", 105, "x"),
            ("A", 102, None),
        ]


def test_a_zip_bomb_is_refused() -> None:
    body = cbor2.dumps([0, 0, ["A"], [0], [0], [b"\x00" * 5_000_000]])
    data = cbor2.dumps([FORMAT, 1, "V", "s", 1, 1, zlib.compress(body, 9)])
    assert len(data) < 10_000
    with pytest.raises(BatchError, match="decompresses to more than 1,000,000 bytes"):
        decode_batch(data, max_body_bytes=1_000_000)


def test_every_tag_but_embedded_cbor_and_bignums_is_refused() -> None:
    tags = [*range(1100), 1004, 43000, 55799, 2**32]
    for tag in tags:
        if tag in (2, 3, 24):
            continue
        for content in (0, b"\x00" * 8, "2024-01-01T00:00:00Z", [1, 2]):
            data = _envelope([0, 0, ["A"], [0], [0], [cbor2.CBORTag(tag, content)]])
            with pytest.raises(BatchError):
                decode_batch(data)
    big = decode_batch(_envelope([0, 0, ["A"], [0], [0], [2**100]]))
    assert big.samples[0].value == 2**100


@settings(max_examples=500)
@given(st.data())
def test_damaged_batches_decode_or_raise_batch_error(data: st.DataObject) -> None:
    samples = data.draw(uplink_samples(max_size=8))
    compress = data.draw(st.booleans())
    builder = BatchBuilder(*_BUILDER_IDS, max_bytes=1 << 20, compress=compress)
    payload = builder.build(1, [(t, ts, prepare_value(v)) for t, ts, v in samples])
    damaged = data.draw(mutated_bytes(payload))
    try:
        batch = decode_batch(damaged, strict=data.draw(st.booleans()))
    except BatchError as exc:
        message = str(exc)
        assert message
    else:
        assert isinstance(batch, Batch)
        assert batch.samples


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_batch_error(data: bytes) -> None:
    try:
        decode_batch(data)
    except BatchError:
        pass
    else:  # a valid batch from random bytes is next to impossible, but it would be a Batch
        raise AssertionError(f"decoded random bytes {data!r}")


# ================================================================================================== outbox

A = Keep(("a",), priority=0)
B = Keep(("b",), priority=1)


def rows(start: int, n: int, keep: Keep = A, topic: str = "Vehicle.Speed") -> list[services.uplink.Row]:
    """``n`` samples whose value is their id (``start``, ``start + 1``, ...), 1 ms apart from T0."""
    return [(topic, i, T0 + i / 1000, keep) for i in range(start, start + n)]


def test_accept_form_ack_and_statistics(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="VIN9") as outbox:
        assert outbox.accept(rows(0, 1000)) == 1000
        stats = outbox.statistics()
        assert (stats.stored_samples, stats.accepted, stats.formed_batches, stats.next_seq) == (
            1000,
            1000,
            0,
            1,
        )
        seq, payload = outbox.next_batch(T0) or (0, b"")
        assert seq == 1
        batch = decode_batch(payload)
        assert batch.vehicle_id == "VIN9"
        assert batch.stream == stats.stream
        assert ids_of([batch]) == list(range(1000))
        assert outbox.next_batch(T0) == (1, payload)  # not acked: the same batch again
        assert outbox.formed() == [1]
        assert outbox.statistics().stored_samples == 0
        assert outbox.statistics().formed_samples == 1000
        assert outbox.ack(1)
        assert not outbox.ack(1)  # twice is harmless
        assert outbox.next_batch(T0) is None
        stats = outbox.statistics()
        assert (stats.acked_batches, stats.acked_samples, stats.stored_bytes, stats.next_seq) == (
            1,
            1000,
            0,
            2,
        )
    assert integrity(path) == "ok"


def test_a_formed_batch_comes_back_after_reopen_with_the_same_seq_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=2048) as outbox:
        outbox.accept(rows(0, 2000))
        first = outbox.next_batch(T0)
        second = outbox.next_batch(T0, after=1)  # pipelined: the next one, formed now
        assert first is not None
        assert second is not None
        assert (first[0], second[0]) == (1, 2)
        assert outbox.ack(1)
        stream = outbox.statistics().stream
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=2048) as outbox:
        assert outbox.statistics().stream == stream
        assert outbox.statistics().accepted == 2000
        assert outbox.next_batch(T0) == second
        rest = drain(outbox)
        assert rest[0].seq == 2
        assert [b.seq for b in rest] == list(range(2, 2 + len(rest)))
        assert sorted(ids_of(rest)) == list(range(len(decode_batch(first[1]).samples), 2000))


def test_highest_priority_first_then_oldest(tmp_path: Path) -> None:
    low, mid, high = Keep(("low",), 0), Keep(("mid",), 5), Keep(("high",), 9)
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=1024) as outbox:
        outbox.accept(rows(0, 300, low) + rows(300, 300, high))
        outbox.accept(rows(600, 300, mid) + rows(900, 300, high))
        got = ids_of(drain(outbox))
    assert got == [*range(300, 600), *range(900, 1200), *range(600, 900), *range(300)]


@DB_SETTINGS
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("accept"), st.integers(1, 400), uplink_keeps()),
            st.tuples(st.just("form"), st.booleans(), st.just(None)),
            st.tuples(st.just("ack"), st.integers(0, 3), st.just(None)),
            st.tuples(st.just("reopen"), st.just(0), st.just(None)),
        ),
        max_size=25,
    ),
    max_batch_bytes=st.sampled_from([1024, 4096, 128 * 1024]),
    compress=st.booleans(),
)
def test_outbox_never_loses_or_duplicates_a_sample(
    ops: list[tuple[str, Any, Any]], max_batch_bytes: int, compress: bool
) -> None:
    """Whatever the order of accepts, forms, acks and reopens: every sample is acked once or still there;
    a formed batch keeps its seq and bytes until acked; what is acked never comes back."""
    options: dict[str, Any] = {
        "quota_bytes": 1 << 30,
        "vehicle_id": "V",
        "max_batch_bytes": max_batch_bytes,
        "compress": compress,
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "o.sqlite3"
        outbox = Outbox(path, **options)
        next_id = 0
        formed: dict[int, bytes] = {}
        acked: dict[int, list[Any]] = {}
        try:
            for op, arg, keep in ops:
                if op == "accept":
                    assert outbox.accept(rows(next_id, arg, keep)) == arg
                    next_id += arg
                elif op == "form":
                    after = max(formed) if arg and formed else None
                    got = outbox.next_batch(T0, after=after)
                    if got is not None:
                        seq, payload = got
                        assert formed.get(seq, payload) == payload
                        assert seq not in acked
                        formed[seq] = payload
                elif op == "ack" and formed:
                    seq = sorted(formed)[min(arg, len(formed) - 1)]
                    assert outbox.ack(seq)
                    acked[seq] = ids_of([decode_batch(formed.pop(seq))])
                elif op == "reopen":
                    outbox.close()
                    outbox = Outbox(path, **options)
                    assert outbox.formed() == sorted(formed)
                stats = outbox.statistics()
                assert stats.formed_batches == len(formed)
                assert stats.stored_bytes <= stats.quota_bytes
            for seq, payload in sorted(formed.items()):  # the unacked ones come back first, unchanged
                assert outbox.next_batch(T0) == (seq, payload)
                assert outbox.ack(seq)
                acked[seq] = ids_of([decode_batch(payload)])
            for batch in drain(outbox):
                assert batch.seq not in acked
                acked[batch.seq] = ids_of([batch])
            everything = [i for seq in sorted(acked) for i in acked[seq]]
            assert sorted(everything) == list(range(next_id))
            stats = outbox.statistics()
            assert (stats.stored_samples, stats.stored_bytes, stats.acked_samples) == (0, 0, next_id)
        finally:
            outbox.close()
        assert integrity(path) == "ok"


def disk_bytes(path: Path) -> int:
    """The outbox's files on disk: the database, its WAL (and -shm, if SQLite ever made one), the mark."""
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal", "-shm", "-journal", "-mark")
        if Path(f"{path}{suffix}").exists()
    )


QUOTA = 256 * 1024  # the smallest quota: a store of ~45 pages fills after some 7,000 samples


@DB_SETTINGS
@given(
    accepts=st.lists(st.tuples(st.integers(1, 4000), st.integers(0, 3)), min_size=1, max_size=12),
    quota=st.integers(QUOTA, 2 * QUOTA),
    form_every=st.integers(1, 4),
)
def test_quota_drops_the_oldest_of_the_lowest_priority_and_holds(
    accepts: list[tuple[int, int]], quota: int, form_every: int
) -> None:
    keeps = [Keep((f"p{p}",), p) for p in range(4)]
    priority_of: dict[int, int] = {}
    with temporary_outbox(quota_bytes=quota, max_batch_bytes=1024) as (path, outbox):
        next_id = 0
        batches: list[Batch] = []
        for k, (n, p) in enumerate(accepts):
            assert outbox.accept(rows(next_id, n, keeps[p])) == n  # room is made: the newest are stored
            priority_of.update(dict.fromkeys(range(next_id, next_id + n), p))
            next_id += n
            stats = outbox.statistics()
            # The files on disk -- database, WAL, mark -- never over the quota.
            assert disk_bytes(path) <= quota
            assert stats.disk_bytes <= quota
            assert stats.formed_batches <= 1
            assert stats.formed_bytes <= 1024 + ROW_OVERHEAD
            assert stats.storage in ("ok", "quota")
            assert stats.dropped_storage == 0
            if k % form_every == 0 and (formed := outbox.next_batch(T0)) is not None:
                batches.append(decode_batch(formed[1]))
                outbox.ack(formed[0])
                assert disk_bytes(path) <= quota
        batches += drain(outbox)
        stats = outbox.statistics()
    kept = set(ids_of(batches))
    dropped = set(range(next_id)) - kept
    assert stats.dropped_quota == len(dropped)
    assert stats.acked_samples == len(kept)
    by_priority = {p: sum(1 for i in dropped if priority_of[i] == p) for p in range(4)}
    assert dict(stats.dropped_quota_by_priority) == {p: n for p, n in by_priority.items() if n}
    assert dict(stats.dropped_quota_by_campaign) == {f"p{p}": n for p, n in by_priority.items() if n}
    # A dropped sample had, when it was dropped, nothing stored of lower priority, nor older of its own:
    # so any sample accepted before it with a lower priority, or of its priority, was dropped too, unless
    # it had already left in a batch.
    left = {i: b.seq for b in batches for i in ids_of([b])}
    for d in dropped:
        for i in range(d):
            if priority_of[i] <= priority_of[d] and i not in dropped:
                assert i in left


def test_quota_evicts_low_priority_before_high(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=16384) as outbox:
        outbox.accept(rows(0, 500, B))  # high priority
        for start in range(500, 20500, 500):
            outbox.accept(rows(start, 500, A))
            assert disk_bytes(path) <= QUOTA
        stats = outbox.statistics()
        assert stats.storage == "quota"
        assert stats.dropped_quota > 0
        assert stats.dropped_quota_by_priority == {0: stats.dropped_quota}
        assert stats.dropped_quota_by_campaign == {"a": stats.dropped_quota}
        got = ids_of(drain(outbox))
    assert got[:500] == list(range(500))  # every high-priority sample survived
    survivors = got[500:]
    assert survivors == list(range(20500 - len(survivors), 20500))  # the newest low-priority ones


def test_the_quota_state_ends_once_the_store_has_room_again_also_after_a_burst_larger_than_it(
    tmp_path: Path,
) -> None:
    """One accept of more than the store holds evicts (state "quota"); once its batches are sent the store
    is empty and the state says "ok" -- it said "quota" for good, as the next accept "like the last" would
    still not fit (a flaky failure of the full-disk service test under load)."""
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=512 * 1024, vehicle_id="V") as outbox:
        assert outbox.accept(rows(0, 60_000)) == 60_000
        stats = outbox.statistics()
        assert (stats.storage, stats.dropped_quota > 0) == ("quota", True)
        drain(outbox)
        stats = outbox.statistics()
        assert (stats.storage, stats.stored_bytes) == ("ok", 0)
        assert outbox.accept(rows(60_000, 5000)) == 5000  # a small one after it: room, no eviction
        assert outbox.statistics().storage == "ok"


def test_the_quota_counts_the_wal_and_holds_on_disk_at_every_step(tmp_path: Path) -> None:
    """The attacker's case: quota 0.5 MB, and the WAL alone grew to 2 MB. Now the database, its WAL and the
    mark together stay within the quota after every accept, form and ack, and after close."""
    path = tmp_path / "o.sqlite3"
    quota = 512 * 1024
    rng = random.Random(7)
    with Outbox(path, quota_bytes=quota, vehicle_id="V") as outbox:
        next_id = 0
        for step in range(300):
            n = rng.choice([10, 500, 5000, 20_000])  # up to a few times the WAL's share in one accept
            assert outbox.accept(rows(next_id, n, rng.choice([A, B]))) == n
            next_id += n
            assert disk_bytes(path) <= quota, f"step {step}: {disk_bytes(path):,} bytes on disk"
            if step % 3 == 0 and (formed := outbox.next_batch(T0)) is not None:
                assert disk_bytes(path) <= quota
                outbox.ack(formed[0])
                assert disk_bytes(path) <= quota
        stats = outbox.statistics()
        assert stats.dropped_quota > 0
        assert stats.dropped_storage == 0
        assert Path(f"{path}-wal").stat().st_size <= quota // 8 + 64 * 1024
    assert disk_bytes(path) <= quota
    assert integrity(path) == "ok"


def test_a_lowered_quota_shrinks_the_files_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=8 << 20, vehicle_id="V") as outbox:
        for start in range(0, 200_000, 5000):
            outbox.accept(rows(start, 5000))
    assert disk_bytes(path) > 2 << 20
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=16384) as outbox:
        assert disk_bytes(path) <= QUOTA
        stats = outbox.statistics()
        assert stats.dropped_quota > 0
        assert stats.stored_samples + stats.dropped_quota == 200_000
        got = ids_of(drain(outbox))
    assert got == list(range(200_000 - len(got), 200_000))  # the newest are kept
    assert disk_bytes(path) <= QUOTA


def test_ttl_drops_expired_samples_and_expired_formed_batches(tmp_path: Path) -> None:
    short = Keep(("live",), priority=5, ttl=10.0)
    forever = Keep(("log",), priority=0, ttl=None)
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V") as outbox:
        outbox.accept(rows(0, 100, short) + rows(100, 100, forever))
        # At T0 + 10.05 s the samples stamped after T0 + 0.05 s are still fresh (ttl is from the timestamp).
        seq, payload = outbox.next_batch(T0 + 10.05) or (0, b"")
        got = ids_of([decode_batch(payload)])
        assert got == [*range(50, 100), *range(100, 200)]
        stats = outbox.statistics()
        assert stats.dropped_ttl == 50
        assert stats.dropped_ttl_by_campaign == {"live": 50}
        assert stats.dropped_ttl_by_priority == {5: 50}
        assert outbox.ack(seq)
        # A formed batch of only short-lived samples is dropped once all of them expired.
        outbox.accept(rows(200, 10, short))
        first = outbox.next_batch(T0 + 0.1)
        assert first is not None
        assert outbox.next_batch(T0 + 100) is None
        stats = outbox.statistics()
        assert stats.dropped_ttl == 60
        assert stats.formed_batches == 0
        assert outbox.ack(first[0]) is False


def test_refused_samples_are_counted_and_reported(tmp_path: Path) -> None:
    refused: list[tuple[str, str]] = []
    big = "x" * 3000
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=2048) as outbox:
        stored = outbox.accept(
            [
                ("Vehicle.Note", big, T0, A),
                ("Vehicle.Speed", 1.0, T0, A),
                ("Vehicle.Thing", object(), T0, A),
                ("Vehicle.Speed", 2.0, math.nan, A),
                ("Vehicle.Far", 3.0, 1e300, A),  # a valid float, beyond what SQLite's integers sum
                ("Vehicle.Far", 4.0, -1e13, B),
            ],
            on_refused=lambda topic, reason: refused.append((topic, reason)),
        )
        assert stored == 1
        stats = outbox.statistics()
        assert (stats.refused_oversize, stats.refused_unencodable, stats.accepted) == (1, 4, 1)
        assert [t for t, _ in refused] == [
            "Vehicle.Note",
            "Vehicle.Thing",
            "Vehicle.Speed",
            "Vehicle.Far",
            "Vehicle.Far",
        ]
        assert "over the batch size limit of 2,048 bytes" in refused[0][1]
        assert "bad timestamp" in refused[2][1]
        assert refused[3][1] == "bad timestamp 1e+300 (beyond +-2305843009214 s)"
        assert ids_of(drain(outbox)) == [1.0]
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V") as outbox:
        assert outbox.statistics().refused_oversize == 1  # counters persist


def test_samples_too_large_for_a_lowered_batch_limit_are_dropped_not_stuck(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="V") as outbox:  # 128 KiB batches
        outbox.accept([("Vehicle.Note", "n" * 3000, T0, B), *rows(0, 10)])
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=2048) as outbox:
        assert ids_of(drain(outbox)) == list(range(10))
        assert outbox.statistics().refused_oversize == 1
        assert outbox.statistics().stored_samples == 0


def test_attrs_values_are_stored_opaque_and_sent_as_accepted(tmp_path: Path) -> None:
    codec = Codec()
    codec.register(Fix, name="test.Fix")
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V", codec=codec) as outbox:
        outbox.accept([("Vehicle.Fix", Fix(1.0, 2.0, 3), T0, A), ("Vehicle.Gear", "D", T0, A)])
    # Reopened with the default codec, which does not know Fix: the stored bytes are sent as they are.
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V") as outbox:
        _, payload = outbox.next_batch(T0) or (0, b"")
    batch = decode_batch(payload, codec=codec)
    assert [s.value for s in batch.samples] == [Fix(1.0, 2.0, 3), "D"]


@pytest.mark.parametrize(
    "content", [b"this is not a database, just garbage" * 100, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_a_garbage_file_is_moved_aside_not_destroyed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(content)
    with pytest.raises(OutboxError, match=rf"{path}: not a usable outbox"):
        Outbox(path, quota_bytes=1 << 20, vehicle_id="V", on_unusable="raise")
    assert path.read_bytes() == content
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        moved = outbox.moved_aside
        assert moved is not None
        assert moved.original == path
        assert moved.moved_to.read_bytes() == content
        assert moved.moved_to.name.startswith("outbox.sqlite3.unusable-")
        assert f"outbox {path} is unusable" in str(moved)
        assert "moved aside" in str(moved)
        assert outbox.accept(rows(0, 5)) == 5
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.moved_aside is None
        assert outbox.statistics().stored_samples == 5


def test_an_outbox_of_a_future_schema_version_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    Outbox(path, quota_bytes=1 << 20, vehicle_id="V").close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 6}")
    db.commit()
    db.close()
    with pytest.raises(
        OutboxError, match=rf"{path}: .*newer vwos \(outbox schema version {SCHEMA_VERSION + 6}"
    ):
        Outbox(path, quota_bytes=1 << 20, vehicle_id="V", on_unusable="raise")
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.moved_aside is not None
        assert "newer vwos" in outbox.moved_aside.reason
        moved_to = outbox.moved_aside.moved_to
    db = sqlite3.connect(moved_to)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 6
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


def test_another_applications_database_is_not_an_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="not a vwos outbox"):
        Outbox(path, quota_bytes=1 << 20, vehicle_id="V", on_unusable="raise")


def test_an_outbox_in_use_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        outbox.accept(rows(0, 3))
        with pytest.raises(OutboxError, match="in use by another process"):
            Outbox(path, quota_bytes=1 << 20, vehicle_id="V")
        assert outbox.accept(rows(3, 3)) == 3
    assert not list(tmp_path.glob("*.unusable-*"))
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.statistics().stored_samples == 6


def test_an_outbox_that_cannot_be_created_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match=rf"{blocker}/state/outbox\.sqlite3: cannot create its directory"):
        Outbox(blocker / "state" / "outbox.sqlite3", quota_bytes=1 << 20, vehicle_id="V")
    directory = tmp_path / "a-directory.sqlite3"
    directory.mkdir()
    with pytest.raises(OutboxError, match="cannot open it"):
        Outbox(directory, quota_bytes=1 << 20, vehicle_id="V")
    assert directory.is_dir()


def test_a_closed_outbox_says_so(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 20, vehicle_id="V")
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.accept(rows(0, 1))
    with pytest.raises(OutboxError, match="closed"):
        outbox.next_batch(T0)


def test_a_failed_transaction_leaves_memory_and_file_consistent(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"

    def broken_rows() -> Iterator[services.uplink.Row]:
        yield ("New.Topic", 1.0, T0, A)
        raise RuntimeError("the producer failed")

    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        with pytest.raises(RuntimeError):
            outbox.accept(broken_rows())
        assert outbox.statistics().stored_samples == 0
        assert outbox.accept([("New.Topic", 2.0, T0, A)]) == 1
        assert [s.topic for s in drain(outbox)[0].samples] == ["New.Topic"]


# --------------------------------------------------------------------------------------------- storage faults


def storage_counts(outbox: Outbox) -> tuple[int, int, int]:
    stats = outbox.statistics()
    return stats.dropped_quota, stats.dropped_storage, stats.dropped_ttl


def test_a_store_full_of_formed_batches_keeps_the_newest_then_refuses_and_says_so(tmp_path: Path) -> None:
    """Formed batches are never evicted. Once they fill the quota, SQLite itself reports the store full (its
    page limit is the quota): an accept keeps its newest samples, evicting its older ones; forming says
    "full"; what does not fit at all is refused, counted, never raised; acknowledgements make room again."""
    path = tmp_path / "o.sqlite3"
    options: dict[str, Any] = {"quota_bytes": QUOTA, "vehicle_id": "V", "max_batch_bytes": 65536}
    with Outbox(path, compress=False, **options) as outbox:
        next_id = 0
        formed: list[int] = []
        for _ in range(10):
            assert outbox.accept(rows(next_id, 3000)) == 3000
            next_id += 3000
            with contextlib.suppress(OutboxStorageError):  # no room left to form a batch: full
                while (item := outbox.next_batch(T0, after=formed[-1] if formed else None)) is not None:
                    formed.append(item[0])  # formed, never acknowledged
        with pytest.raises(OutboxStorageError, match="cannot form a batch: database or disk is full") as info:
            outbox.next_batch(T0, after=formed[-1])
        assert info.value.kind == "full"
        stats = outbox.statistics()
        assert 0 < stats.stored_samples < 3000  # the newest of the last accept; its older ones evicted
        assert stats.storage == "quota"
        assert disk_bytes(path) <= QUOTA
        kept = stats.stored_samples
        big = [("Vehicle.Blob", b"x" * 900, T0, A) for _ in range(200)]  # 180 kB: no room for even 64 of them
        assert outbox.accept(big) == 0
        stats = outbox.statistics()
        assert stats.dropped_storage == 200
        assert stats.storage == "quota"
        assert "200 samples could not be stored: database or disk is full" in stats.storage_error
        assert stats.stored_samples == kept  # nothing evicted for what could not be stored anyway
        for seq in formed:  # the cloud acknowledges: room again
            assert outbox.ack(seq)
        assert outbox.accept(rows(next_id, 100)) == 100
        stats = outbox.statistics()
        assert (stats.storage, stats.storage_error) == ("ok", "")
        got = ids_of(drain(outbox))
        stats = outbox.statistics()
    assert got[:kept] == list(range(next_id - kept, next_id))  # the newest were kept, in order
    assert got[kept:] == list(range(next_id, next_id + 100))
    assert stats.acked_samples + stats.dropped_quota + stats.dropped_storage == next_id + 300
    with Outbox(path, **options) as outbox:
        assert outbox.statistics().dropped_storage == 200  # the count persists


class _SmallDisk:
    """``os.statvfs`` of a disk of ``size`` bytes holding nothing but the outbox at ``path``."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size

    def __call__(self, _: object) -> Any:
        free = max(0, self.size - disk_bytes(self.path))
        return types.SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)


def test_little_free_disk_space_is_the_limit_and_the_state_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk's free space (os.statvfs) bounds the store like a smaller quota: the oldest samples are
    evicted, the state says "disk_full"; with space back, the store grows again and says "ok"."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=8 << 20, vehicle_id="V") as outbox:
        monkeypatch.setattr(os, "statvfs", _SmallDisk(path, 600_000))
        for start in range(0, 120_000, 2000):
            assert outbox.accept(rows(start, 2000)) == 2000
            assert disk_bytes(path) <= 600_000
        stats = outbox.statistics()
        assert stats.storage == "disk_full"
        assert stats.dropped_quota > 0
        assert stats.dropped_storage == 0
        assert stats.disk_budget <= 600_000
        monkeypatch.undo()  # the disk is larger now
        for start in range(120_000, 160_000, 2000):
            assert outbox.accept(rows(start, 2000)) == 2000
        assert outbox.statistics().storage == "ok"
        assert outbox.statistics().dropped_quota == stats.dropped_quota  # no more evictions
        got = ids_of(drain(outbox))
    assert got == list(range(160_000 - len(got), 160_000))  # the oldest went, nothing newer
    assert len(got) + stats.dropped_quota == 160_000


def test_statistics_read_from_another_thread_are_always_consistent(tmp_path: Path) -> None:
    """The service reads statistics (for its status topic) while a worker thread accepts: every snapshot
    must add up -- accepted = stored + formed + acked + dropped -- and never raise."""
    import threading

    path = tmp_path / "o.sqlite3"
    problems: list[str] = []
    done = threading.Event()
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as outbox:

        def read() -> None:
            while not done.is_set():
                try:
                    s = outbox.statistics()
                    held = s.stored_samples + s.formed_samples + s.acked_samples + s.dropped_quota
                    if held != s.accepted:
                        problems.append(f"accepted {s.accepted}, accounted {held}")
                    s.dropped_quota_by_campaign.items()
                except Exception as exc:  # whatever it is, the test reports it
                    problems.append(repr(exc))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            next_id = 0
            for k in range(300):
                keep = Keep((f"c{k}",), k % 7)  # new campaigns: new counter keys as samples are evicted
                outbox.accept(rows(next_id, 300, keep))
                next_id += 300
                if k % 5 == 0 and (item := outbox.next_batch(T0)) is not None:
                    outbox.ack(item[0])
        finally:
            done.set()
            reader.join(timeout=60)
    assert not problems, problems[:5]


# -- a really full disk: a small tmpfs (root on Linux; CI runs as root) -------------------------------------


def test_a_really_full_disk_evicts_the_oldest_never_raises_and_recovers(small_disk: Path) -> None:
    """Quota 1 MiB on a 256 KiB disk: SQLite meets ENOSPC's limit, not the quota's. The outbox keeps the
    newest samples, evicting the oldest; once the disk grows it stops evicting; nothing is unaccounted."""
    path = small_disk / "outbox.sqlite"
    offered = 0
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        for _ in range(40):
            outbox.accept(rows(offered, 8000))  # more than the disk holds, in one call
            offered += 8000
            assert disk_bytes(path) <= 256 * 1024
        stats = outbox.statistics()
        assert stats.storage == "disk_full", stats.storage_error
        assert stats.dropped_quota > 100_000
        assert stats.stored_samples > 4000
        tmpfs.resize(small_disk, 4 << 20)  # space returns
        for _ in range(10):
            assert outbox.accept(rows(offered, 2000)) == 2000
            offered += 2000
        after = outbox.statistics()
        assert after.storage == "ok"
        assert after.dropped_quota == stats.dropped_quota
        got = ids_of(drain(outbox))
        stats = outbox.statistics()
    assert got == sorted(got)
    assert got[-1] == offered - 1
    assert len(got) + stats.dropped_quota + stats.dropped_storage == offered
    assert integrity(path) == "ok"


def test_a_disk_filled_by_another_program_drops_counts_and_drains_once_space_returns(
    small_disk: Path,
) -> None:
    path = small_disk / "outbox.sqlite"
    tmpfs.resize(small_disk, 1 << 20)
    offered, got = 0, []
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as outbox:
        for _ in range(5):
            assert outbox.accept(rows(offered, 1000)) == 1000
            offered += 1000
        filler = tmpfs.fill(small_disk)  # someone else takes every byte left
        kinds = set()
        for _ in range(30):
            outbox.accept(rows(offered, 1000))  # never raises
            offered += 1000
            try:
                if (item := outbox.next_batch(T0)) is not None:
                    got += ids_of([decode_batch(item[1])])
                    outbox.ack(item[0])
            except OutboxStorageError as exc:  # no room to form or acknowledge: nothing lost, retried
                kinds.add(exc.kind)
        assert kinds <= {"full"}
        stats = outbox.statistics()
        assert stats.storage == "disk_full"
        assert stats.dropped_storage > 0
        filler.unlink()  # space returns
        for _ in range(3):
            assert outbox.accept(rows(offered, 1000)) == 1000
            offered += 1000
        assert outbox.statistics().storage == "ok"
        got += ids_of(drain(outbox))
        stats = outbox.statistics()
    assert len(got) == len(set(got))  # a batch that could not be acknowledged came again, same seq
    assert len(set(got)) + stats.dropped_quota + stats.dropped_storage == offered
    assert integrity(path) == "ok"


def test_closing_on_a_full_disk_releases_the_lock_and_the_next_open_is_at_once(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite"
    outbox = Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096)
    outbox.accept(rows(0, 3000))
    filler = tmpfs.fill(small_disk)
    outbox.accept(rows(3000, 20_000))  # fails for want of room: counted
    outbox.close()  # its checkpoint cannot grow the file: it closes anyway
    started = time.perf_counter()
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as again:  # not "in use"
        assert time.perf_counter() - started < 5
        stats = again.statistics()
        assert stats.stored_samples == 3000
    filler.unlink()


def test_an_outbox_cannot_be_created_on_a_full_disk_and_says_so(small_disk: Path) -> None:
    filler = tmpfs.fill(small_disk)
    path = small_disk / "outbox.sqlite"
    with pytest.raises(OutboxStorageError, match=r"outbox\.sqlite: cannot open it: database or disk is full"):
        Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096)
    filler.unlink()
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as outbox:  # not locked
        assert outbox.accept(rows(0, 10)) == 10


def test_damage_found_at_open_on_a_full_disk_is_an_outbox_error_and_counted_once_there_is_room(
    small_disk: Path,
) -> None:
    """Counting damage at open is a write: on a full disk it fails. That is an OutboxStorageError (which
    the service reports and retries), not a bare sqlite3 error; the lock is released; with room again the
    damage is found and counted."""
    path = small_disk / "outbox.sqlite"
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as outbox:
        outbox.accept(rows(0, 300))
        outbox.accept(rows(300, 300))
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE chunks SET crc = (crc + 1) % 4294967296 WHERE id = (SELECT min(id) FROM chunks)")
        db.commit()
    finally:
        db.close()
    filler = tmpfs.fill(small_disk)
    with pytest.raises(OutboxStorageError, match=r"outbox\.sqlite: .*database or disk is full") as info:
        Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096)
    assert info.value.kind == "full"
    filler.unlink()
    with Outbox(path, quota_bytes=QUOTA, vehicle_id="V", max_batch_bytes=4096) as outbox:  # not locked
        assert outbox.damage is not None
        assert outbox.damage.corrupt_samples == 300
        assert ids_of(drain(outbox)) == list(range(300, 600))


async def test_the_file_transport_on_a_full_disk_fails_clearly_and_leaves_nothing(small_disk: Path) -> None:
    transport = FileTransport(small_disk / "batches", fsync=True)
    await transport.connect()
    builder = BatchBuilder("V", "0123456789abcdef", max_bytes=200_000, compress=False)
    payload, _ = builder.fill(1, [("T.x", i, float(i)) for i in range(10_000)])
    filler = tmpfs.fill(small_disk)
    with pytest.raises(TransportError, match=r"cannot write batch 1 to .*: No space left on device"):
        await transport.publish(1, payload)
    assert list((small_disk / "batches").iterdir()) == []  # no temporary file left behind
    filler.unlink()
    await transport.publish(1, payload)
    assert [p.read_bytes() for p in (small_disk / "batches").iterdir()] == [payload]


# ------------------------------------------------------------------------------------------ kill -9 at random

CHILD = """
import hashlib, random, sys
sys.path.insert(0, sys.argv[1])
from services.uplink import Keep, Outbox, decode_batch

path, start, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
keeps = [Keep(("lo",), 0), Keep(("hi",), 1), Keep(("ttl",), 2, 3600.0)]
outbox = Outbox(path, quota_bytes=1 << 40, vehicle_id="crash", max_batch_bytes=16384)
print("R", flush=True)
next_id = start
while True:
    r = rng.random()
    if r < 0.5:
        n = rng.randint(1, 1000)
        print(f"B {next_id} {n}", flush=True)
        ids = range(next_id, next_id + n)
        outbox.accept([("T.x" if i % 3 else "T.y", i, 1.7e9 + i * 1e-4, keeps[i % 3]) for i in ids])
        print(f"A {next_id} {n}", flush=True)
        next_id += n
    else:
        formed = outbox.next_batch(1.7e9)
        if formed is None:
            continue
        seq, payload = formed
        ids = ",".join(str(s.value) for s in decode_batch(payload).samples)
        print(f"D {seq} {hashlib.sha256(payload).hexdigest()} {ids}", flush=True)
        if rng.random() < 0.8:
            outbox.ack(seq)
            print(f"K {seq}", flush=True)
"""


class CrashLog:
    """What the children reported, over all rounds."""

    def __init__(self) -> None:
        self.committed: set[int] = set()
        self.delivered: dict[int, tuple[str, list[int]]] = {}
        self.acked: set[int] = set()

    def read(self, log: Path) -> tuple[int, int] | None:
        """Read one child's log; the accept it was in (start, n) when killed, if any."""
        in_flight: tuple[int, int] | None = None
        text = log.read_text()
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line cut short by the kill
            kind, *rest = line.split()
            if kind == "B":
                in_flight = (int(rest[0]), int(rest[1]))
            elif kind == "A":
                start, n = int(rest[0]), int(rest[1])
                self.committed.update(range(start, start + n))
                in_flight = None
            elif kind == "D":
                seq, digest = int(rest[0]), rest[1]
                ids = [int(i) for i in rest[2].split(",")] if len(rest) > 2 else []
                if seq in self.delivered:
                    assert self.delivered[seq] == (digest, ids), f"batch {seq} changed content"
                self.delivered[seq] = (digest, ids)
            elif kind == "K":
                self.acked.add(int(rest[0]))
        return in_flight


def check_after_crash(path: Path, log: CrashLog, in_flight: tuple[int, int] | None, scratch: Path) -> None:
    """Copy the killed child's outbox, check its integrity, drain the copy and account for every sample."""
    copy = scratch / "copy.sqlite3"
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        target = Path(f"{copy}{suffix}")
        target.unlink(missing_ok=True)
        if source.exists():
            target.write_bytes(source.read_bytes())
    assert integrity(copy) == "ok"
    where: dict[int, int] = {}  # sample id -> the seq of the batch it is in
    with Outbox(copy, quota_bytes=1 << 40, vehicle_id="crash", max_batch_bytes=16384) as outbox:
        assert outbox.moved_aside is None
        while (formed := outbox.next_batch(1.7e9)) is not None:
            seq, payload = formed
            assert seq not in log.acked, f"batch {seq} came back after its ack was committed"
            ids = [int(s.value) for s in decode_batch(payload).samples]  # type: ignore[call-overload]
            if seq in log.delivered:
                assert log.delivered[seq] == (hashlib.sha256(payload).hexdigest(), ids), (
                    f"batch {seq} changed"
                )
            for i in ids:
                assert i not in where, f"sample {i} in batches {where[i]} and {seq}"
                where[i] = seq
            outbox.ack(seq)
    for seq, (_, ids) in log.delivered.items():
        for i in ids:
            assert where.get(i, seq) == seq, f"sample {i} in batches {where[i]} and {seq}"
            where[i] = seq
    present = set(where)
    if in_flight is not None:
        start, n = in_flight
        flight = set(range(start, start + n))
        assert flight <= present or not (flight & present), "an accept was half committed"
        if flight <= present:
            log.committed |= flight
    assert present == log.committed, (
        f"lost {sorted(log.committed - present)[:10]}, unexpected {sorted(present - log.committed)[:10]}"
    )


def test_kill_9_at_random_moments_loses_and_corrupts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    log = CrashLog()
    rng = random.Random(20240607)
    next_id = 0
    rounds = 8
    for round_ in range(rounds):
        out = tmp_path / f"child{round_}.log"
        with out.open("w") as stdout:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(ROOT),
                    str(path),
                    str(next_id),
                    str(rng.randrange(1 << 30)),
                ],
                stdout=stdout,
                stderr=subprocess.PIPE,
            )
            try:
                deadline = time.monotonic() + 60
                while not out.read_text().startswith("R") and child.poll() is None:
                    assert time.monotonic() < deadline, "the child did not start"
                    time.sleep(0.01)
                assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
                time.sleep(rng.uniform(0.05, 0.5))
                child.send_signal(signal.SIGKILL)
                _, err = child.communicate(timeout=60)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL, err.decode()
        in_flight = log.read(out)
        check_after_crash(path, log, in_flight, tmp_path)
        next_id = max([*log.committed, *(range(*in_flight) if in_flight else ())], default=-1) + 1
        next_id = max(next_id, (in_flight[0] + in_flight[1]) if in_flight else 0)
    assert len(log.committed) > 0
    assert log.delivered, "no batch was formed in any round"
    assert integrity(path) == "ok"


# ============================================================================================ file transport


async def test_file_transport_writes_each_batch_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "out" / "batches"
    transport = FileTransport(directory, fsync=True)
    with pytest.raises(TransportError, match="not connected"):
        await transport.publish(1, encode_batch("V", "s", 1, [("A", T0, 1.0)]))
    await transport.connect()
    payloads = {seq: encode_batch("VIN/1", "abc", seq, [("A", T0 + seq, float(seq))]) for seq in (1, 2, 10)}
    for seq, payload in payloads.items():
        await transport.publish(seq, payload)
    await transport.publish(2, payloads[2])  # a resend after a lost ack: same name, same content
    names = sorted(p.name for p in directory.iterdir())
    assert names == [batch_file_name("VIN/1", "abc", seq) for seq in (1, 2, 10)]
    assert names[0] == "VIN%2F1_abc_00000000000000000001.cbor"
    for seq, payload in payloads.items():
        assert (directory / batch_file_name("VIN/1", "abc", seq)).read_bytes() == payload
    with pytest.raises(TransportError, match="carries seq 1"):
        await transport.publish(5, payloads[1])
    with pytest.raises(TransportError, match="not a valid batch"):
        await transport.publish(5, b"junk")
    await transport.close()
    await transport.close()


async def test_file_transport_reports_an_unusable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    transport = FileTransport(blocker / "batches")
    with pytest.raises(TransportError, match="cannot use"):
        await transport.connect()


async def test_file_transport_failure_leaves_no_temporary_file(tmp_path: Path) -> None:
    directory = tmp_path / "batches"
    transport = FileTransport(directory, fsync=False)
    await transport.connect()
    target = directory / batch_file_name("V", "s", 1)
    target.mkdir()  # the final name is taken by a directory: the rename fails
    (target / "keep").write_text("x")
    with pytest.raises(TransportError, match="cannot write batch 1"):
        await transport.publish(1, encode_batch("V", "s", 1, [("A", T0, 1.0)]))
    assert sorted(p.name for p in directory.iterdir()) == [target.name]


async def test_outbox_to_file_transport_end_to_end(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path / "batches", fsync=False)
    await transport.connect()
    with Outbox(tmp_path / "o.sqlite3", quota_bytes=1 << 30, vehicle_id="V", max_batch_bytes=4096) as outbox:
        outbox.accept(rows(0, 3000))
        while (formed := outbox.next_batch(T0)) is not None:
            await transport.publish(*formed)
            outbox.ack(formed[0])
            await trio.lowlevel.checkpoint()
    files = sorted((tmp_path / "batches").iterdir())
    assert len(files) > 1
    assert ids_of([decode_batch(f.read_bytes()) for f in files]) == list(range(3000))


# ===================================================================================================== CLI


def _inspect(*args: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vwos")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["uplink", "inspect", *args])
    out, err = io.StringIO(), io.StringIO()
    code = parsed.handler(parsed, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def batch_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "batches"
    directory.mkdir()
    samples = [
        ("Vehicle.Speed", T0 + 0.25, 87.5),
        ("Vehicle.Gear", T0, "D"),
        ("Vehicle.Speed", T0 + 1, math.nan),
    ]
    (directory / batch_file_name("VIN1", "s1", 1)).write_bytes(encode_batch("VIN1", "s1", 1, samples))
    codec = Codec()
    codec.register(Fix, name="test.Fix")
    fix = encode_batch(
        "VIN1", "s1", 2, [("Vehicle.Fix", T0 + 2, Fix(1.5, 2.5, 7)), ("B", T0, b"\x01")], codec=codec
    )
    (directory / batch_file_name("VIN1", "s1", 2)).write_bytes(fix)
    (directory / ".hidden.tmp-1234").write_bytes(b"partial")
    return directory


def test_inspect_prints_batches_for_a_person(batch_dir: Path) -> None:
    code, out, err = _inspect(str(batch_dir))
    assert (code, err) == (0, "")
    assert "vehicle VIN1  stream s1  seq 1" in out
    assert "time span 2023-11-14T22:13:20.000000Z .. 2023-11-14T22:13:21.000000Z (1.000000 s)" in out
    assert "3 samples of 2 topics" in out
    assert "Vehicle.Speed         2" in out
    assert "2023-11-14T22:13:20.250000Z  Vehicle.Speed  87.5" in out
    # A type this process never registered: decoded by the schema the batch carries, fields by name.
    assert "Vehicle.Fix  Fix(latitude=1.5, longitude=2.5, satellites=7)" in out
    code, summary, _ = _inspect(str(batch_dir), "--summary")
    assert code == 0
    assert "87.5" not in summary
    assert "seq 2" in summary


def test_inspect_json_lines(batch_dir: Path) -> None:
    code, out, _ = _inspect(str(batch_dir / batch_file_name("VIN1", "s1", 1)), "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "batch"
    assert (lines[0]["vehicle_id"], lines[0]["seq"], lines[0]["samples"]) == ("VIN1", 1, 3)
    assert lines[0]["topics"] == {"Vehicle.Speed": 2, "Vehicle.Gear": 1}
    assert [(x["topic"], x["value"]) for x in lines[1:]] == [
        ("Vehicle.Speed", 87.5),
        ("Vehicle.Gear", "D"),
        ("Vehicle.Speed", "nan"),
    ]
    assert lines[2]["timestamp_us"] == to_us(T0)


def test_inspect_with_import_decodes_registered_types(
    batch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fixtypes.py").write_text(
        "import attrs\nfrom bus import default_codec\n\n"
        "@default_codec.register(name='test.Fix')\n@attrs.frozen\nclass Fix:\n"
        "    latitude: float\n    longitude: float\n    satellites: int\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        code, out, _ = _inspect(
            str(batch_dir / batch_file_name("VIN1", "s1", 2)), "--json", "--import", "fixtypes"
        )
    finally:
        sys.modules.pop("fixtypes", None)
    assert code == 0
    value = json.loads(out.splitlines()[1])["value"]
    assert value == {"type": "fixtypes.Fix", "fields": {"latitude": 1.5, "longitude": 2.5, "satellites": 7}}


def test_inspect_reports_bad_files_and_paths(batch_dir: Path, tmp_path: Path) -> None:
    (batch_dir / "zz_broken.cbor").write_bytes(b"\x85garbage")
    code, out, err = _inspect(str(batch_dir))
    assert code == 1
    assert "seq 1" in out
    assert "seq 2" in out
    assert "zz_broken.cbor: error:" in err
    assert _inspect(str(tmp_path / "missing"))[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _inspect(str(empty))
    assert code == 2
    assert "no batch files" in err
    code, _, err = _inspect(str(batch_dir), "--import", "no_such_module_xyz")
    assert code == 2
    assert "cannot import no_such_module_xyz" in err


def test_inspect_of_what_is_not_a_batch_is_one_clear_line_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/zero was read for ever; a pipe blocked the open; a directory named like a batch gave "[Errno 21]
    Is a directory: 3". Each is one line on stderr now, exit 1 (docs/uplink.md), and nothing is read whole."""
    fifo = tmp_path / "pipe.cbor"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.cbor"
    with huge.open("wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MiB of zeros, three times what any batch can be
    directory = tmp_path / "dir"
    (directory / "sub.cbor").mkdir(parents=True)
    noise = tmp_path / "noise.cbor"
    noise.write_bytes(random.Random(11).randbytes(100_000))
    cases = [
        ("/dev/zero", "a device, not a batch file"),
        (str(fifo), "a pipe, not a batch file"),
        (str(huge), "209,715,200 bytes: larger than any batch can be (at most 67,174,400 bytes)"),
        (str(noise), "batch envelope: "),
    ]
    if Path("/proc/self/mem").exists():  # a regular file that cannot be read at offset 0
        cases.append(("/proc/self/mem", "cannot read it: Input/output error"))
    tracemalloc.start()
    try:
        for path, message in cases:
            code, out, err = _inspect(path)
            assert (code, out) == (1, ""), path
            assert err.startswith(f"{path}: error: {message}"), err
            assert err.count("\n") == 1, err  # one line, no traceback
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the huge file was refused by its size, not read
    code, out, err = _inspect(str(directory))
    assert (code, out) == (1, "")
    assert err == f"{directory / 'sub.cbor'}: error: a directory, not a batch file\n"

    def unreadable(self: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", unreadable)
    code, _, err = _inspect(str(directory))
    assert code == 2
    assert err == f"vwos uplink inspect: {directory}: cannot list the directory: Permission denied\n"


def test_inspect_reads_a_file_at_the_size_limit_at_most_once(tmp_path: Path) -> None:
    """A file just within the limit is read (it could be a batch), once, and refused for its content."""
    limit = MAX_BATCH_FILE_BYTES
    big = tmp_path / "big.cbor"
    with big.open("wb") as f:
        f.truncate(limit)
    tracemalloc.start()
    try:
        code, out, err = _inspect(str(big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (code, out) == (1, "")
    assert err.startswith(f"{big}: error: batch envelope: ")
    assert err.count("\n") == 1
    assert peak < 2 * limit + (8 << 20)


def test_inspect_through_the_vwos_command_entry_point(
    batch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As installed with ``uplink = "services.uplink._cli:register"`` in the ``vwos.commands`` group."""
    from vwos._cli import COMMANDS_GROUP, main

    installed = importlib.metadata.entry_points(group=COMMANDS_GROUP, name="uplink")
    if not installed:  # until pyproject.toml declares it: a distribution that does, on sys.path
        site = tmp_path / "site"
        info = site / "vwos_uplink_cli_test-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vwos-uplink-cli-test\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[{COMMANDS_GROUP}]\nuplink = services.uplink._cli:register\n"
        )
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
    try:
        assert main(["uplink", "inspect", str(batch_dir), "--summary"]) == 0
    finally:
        monkeypatch.undo()
        importlib.invalidate_caches()
    captured = capsys.readouterr()
    assert "vehicle VIN1  stream s1  seq 2" in captured.out
    assert "warning" not in captured.err


def test_batch_file_names_sort_by_seq() -> None:
    names = [batch_file_name("V", "s", seq) for seq in (1, 2, 10, 2**64 - 1)]
    assert names == sorted(names)
    assert batch_file_name(".", "s", 1) == "%2E_s_00000000000000000001.cbor"  # never a hidden file


# -- damage after a crash: found, counted, never silent ---------------------------------------------------


def _flip_one_byte(path: Path, table: str, column: str) -> tuple[int, int]:
    """Flip a byte in the middle of the first row of ``table`` (its CRC left as it was), behind the outbox's
    back; returns the row's id and its sample count."""
    key, count = ("id", "count") if table == "chunks" else ("seq", "samples")
    db = sqlite3.connect(path)
    try:
        row_id, blob, n = db.execute(
            f"SELECT {key}, {column}, {count} FROM {table} ORDER BY {key} LIMIT 1"
        ).fetchone()
        data = bytearray(blob)
        data[len(data) // 2] ^= 0xFF
        db.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (bytes(data), row_id))
        db.commit()
    finally:
        db.close()
    return row_id, n


def test_a_damaged_chunk_is_dropped_counted_and_the_rest_is_delivered(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        for start in range(0, 3000, 300):
            outbox.accept(rows(start, 300))  # one chunk per accept
    _, lost = _flip_one_byte(path, "chunks", "data")
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        delivered = ids_of(drain(outbox))
        stats = outbox.statistics()
    assert stats.dropped_corrupt == lost
    assert len(delivered) == 3000 - lost
    assert len(set(delivered)) == len(delivered)  # nothing twice, nothing made up
    assert set(delivered) <= set(range(3000))


def test_a_damaged_formed_batch_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        outbox.accept(rows(0, 2000))
        first = outbox.next_batch(T0)  # formed, not acknowledged: it waits for the next start
        assert first is not None
    _, lost = _flip_one_byte(path, "batches", "payload")
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        delivered = ids_of(drain(outbox))
        stats = outbox.statistics()
    assert stats.dropped_corrupt == lost
    assert len(delivered) == 2000 - lost
    assert len(set(delivered)) == len(delivered)


def test_commits_lost_with_a_truncated_wal_are_counted_at_the_next_open(tmp_path: Path) -> None:
    """A crash that damages the WAL: the commits it held are gone; the high-water mark, written after
    every commit, tells how many accepted samples that was."""
    path = tmp_path / "o.sqlite3"
    wal = Path(f"{path}-wal")
    outbox = Outbox(path, quota_bytes=64 << 20, vehicle_id="V")
    try:
        outbox.accept(rows(0, 1000))
        saved = {p: p.read_bytes() for p in (path, wal) if p.exists()}  # a checkpointed state ...
        outbox.accept(rows(1000, 500))  # ... then commits that live only in the WAL
        mark = Path(f"{path}-mark").read_bytes()
    finally:
        outbox.close()
    for p, data in saved.items():  # as if the crash took the last commits with a damaged WAL
        p.write_bytes(data)
    Path(f"{path}-mark").write_bytes(mark)
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V") as outbox:
        stats = outbox.statistics()
        delivered = ids_of(drain(outbox))
    assert stats.lost_damaged == 500
    assert sorted(delivered) == list(range(1000))


def _crash_copy(path: Path, into: Path) -> Path:
    """The outbox's files as a crash would leave them: copied while it is open (its WAL not checkpointed)."""
    into.mkdir()
    for suffix in ("", "-wal", "-mark"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            Path(f"{into / path.name}{suffix}").write_bytes(source.read_bytes())
    return into / path.name


def _flip_in_file(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_commits_lost_with_a_damaged_wal_after_a_crash_are_counted_logged_and_shown(
    tmp_path: Path, how: str
) -> None:
    """A crash, then the WAL cut short (a torn write at power loss) or a byte in it flipped: SQLite drops
    the commits from the damaged frame on, silently. The high-water mark counts them."""
    path = tmp_path / "live" / "o.sqlite3"
    wal = Path(f"{path}-wal")
    outbox = Outbox(path, quota_bytes=64 << 20, vehicle_id="V")
    try:
        outbox.accept(rows(0, 1000))
        good_end = wal.stat().st_size  # the WAL holds the first commit up to here
        outbox.accept(rows(1000, 400))
        outbox.accept(rows(1400, 600))
        assert wal.stat().st_size > good_end + 200
        crashed = _crash_copy(path, tmp_path / "crashed")
    finally:
        outbox.close()
    damaged_wal = Path(f"{crashed}-wal")
    if how == "truncated":
        with damaged_wal.open("r+b") as f:
            f.truncate(good_end + 100)  # in the middle of the second commit's first frame
    else:
        _flip_in_file(damaged_wal, good_end + 200)  # inside the second commit's first frame
    with Outbox(crashed, quota_bytes=64 << 20, vehicle_id="V") as again:
        damage = again.damage
        stats = again.statistics()
        delivered = ids_of(drain(again))
    assert damage is not None
    assert (damage.lost_samples, damage.corrupt_samples) == (1000, 0)
    assert "1,000 accepted samples are missing" in str(damage)
    assert (stats.lost_damaged, stats.accepted, stats.stored_samples) == (1000, 1000, 1000)
    assert delivered == list(range(1000))
    with Outbox(crashed, quota_bytes=64 << 20, vehicle_id="V") as later:  # counted once, not at every open
        assert later.damage is None
        assert later.statistics().lost_damaged == 1000


def _blob_offset(path: Path, query: str) -> tuple[int, int]:
    """Where in the database file a blob of ``query`` (blob, samples) lies, and its sample count."""
    db = sqlite3.connect(path)
    try:
        blob, samples = db.execute(query).fetchone()
    finally:
        db.close()
    data = path.read_bytes()
    start = max(range(0, min(len(blob), 3000) - 32, 8), key=lambda i: len(set(blob[i : i + 32])))
    probe = bytes(blob[start : start + 32])  # the most varied 32 bytes of its first page: found once
    offset = data.find(probe)
    assert offset > 0
    assert data.find(probe, offset + 1) == -1, "the probe must be found once"
    return offset + 16, samples


@pytest.mark.parametrize("table", ["chunks", "batches"])
def test_a_byte_flipped_on_disk_inside_a_chunk_or_a_formed_batch_is_found_at_open(
    tmp_path: Path, table: str
) -> None:
    """A sector gone bad under SQLite: its pages still parse (quick_check says ok), the bytes are wrong.
    The CRC-32 finds it at the next open: that chunk's or batch's samples are dropped and counted, the
    rest is delivered."""
    path = tmp_path / "o.sqlite3"
    options: dict[str, Any] = {"quota_bytes": 64 << 20, "vehicle_id": "V", "compress": False}
    with Outbox(path, max_batch_bytes=8192, **options) as outbox:
        for start in range(0, 3000, 1000):
            outbox.accept(rows(start, 1000))  # three chunks
        assert outbox.next_batch(T0) is not None  # one formed batch, not acknowledged
    query = {
        "chunks": "SELECT data, count FROM chunks ORDER BY id DESC LIMIT 1",
        "batches": "SELECT payload, samples FROM batches LIMIT 1",
    }[table]
    offset, lost = _blob_offset(path, query)
    _flip_in_file(path, offset)
    assert integrity(path) == "ok"  # SQLite itself sees nothing wrong
    with Outbox(path, **options) as outbox:
        damage = outbox.damage
        stats = outbox.statistics()
        delivered = ids_of(drain(outbox))
    assert damage is not None
    assert (damage.lost_samples, damage.corrupt_samples) == (0, lost)
    assert "their CRC-32 did not match" in str(damage)
    assert stats.dropped_corrupt == lost
    assert len(delivered) == len(set(delivered)) == 3000 - lost
    assert set(delivered) <= set(range(3000))


def test_a_database_damaged_beyond_use_is_moved_aside_and_what_it_held_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        outbox.accept(rows(0, 20_000))
        assert outbox.next_batch(T0) is not None
        held = outbox.statistics().stored_samples + outbox.statistics().formed_samples
    data = bytearray(path.read_bytes())
    data[4096 : 3 * 4096] = bytes(2 * 4096)  # pages 2 and 3 zeroed: the b-trees no longer parse
    path.write_bytes(bytes(data))
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        assert outbox.moved_aside is not None
        assert outbox.damage is not None
        assert outbox.damage.lost_samples == held
        assert "was moved aside" in str(outbox.damage)
        assert outbox.statistics().lost_damaged == held
    assert outbox.moved_aside.moved_to.exists()  # kept, for a person to look at


# -- batches carry the schemas of their record values ----------------------------------------------------


class Gear(enum.Enum):
    P = "P"
    D = "D"


@attrs.frozen
class Drive:
    fix: Fix
    gear: Gear


def test_batches_carry_the_schemas_of_their_records_across_restarts(tmp_path: Path) -> None:
    """A cloud reader (or `vwos uplink inspect`) without the classes decodes the records by the schemas the
    batch carries; the outbox keeps the schemas with the samples, so batches formed after a restart carry
    them too. Topics of plain values carry none."""
    codec = Codec()
    codec.register(Drive, name="test.Drive")
    path = tmp_path / "outbox.sqlite"
    drive = Drive(Fix(52.4, 10.8, 9), Gear.D)
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="VIN1", codec=codec) as outbox:
        keep = Keep(("all",), 0, None)
        outbox.accept([("Vehicle.Drive", drive, T0, keep), ("Vehicle.Speed", 50.0, T0, keep)])
        outbox.accept([("Vehicle.Drive", drive, T0 + 1, keep)])
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="VIN1", codec=codec) as outbox:  # a restart
        formed = outbox.next_batch(T0)
        assert formed is not None
        _, payload = formed
    batch = decode_batch(payload, codec=Codec())  # a reader that never registered Drive
    assert {s.name for s in batch.schemas} == {"test.Drive", f"{__name__}.Fix", f"{__name__}.Gear"}
    values = [s.value for s in batch.samples if s.topic == "Vehicle.Drive"]
    assert values[0] == Record(
        "test.Drive",
        {
            "fix": Record(f"{__name__}.Fix", {"latitude": 52.4, "longitude": 10.8, "satellites": 9}),
            "gear": EnumMember(f"{__name__}.Gear", "D"),
        },
    )
    assert decode_batch(payload, codec=codec).samples[0].value == drive  # with the class: the class
    plain = encode_batch("VIN1", "s", 1, [("Vehicle.Speed", T0, 1.0)])
    assert decode_batch(plain).schemas == ()


def test_a_version_2_outbox_is_upgraded_and_its_values_then_carry_their_schemas(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    codec = Codec()
    codec.register(Fix, name="test.Fix")
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="VIN1", codec=codec) as outbox:
        outbox.accept([("Vehicle.Fix", Fix(1.0, 2.0, 3), T0, Keep(("all",), 0, None))])
    db = sqlite3.connect(path)
    db.execute("DROP TABLE types")
    db.execute("DROP TABLE topic_types")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with Outbox(path, quota_bytes=1 << 30, vehicle_id="VIN1", codec=codec) as outbox:
        formed = outbox.next_batch(T0)
        assert formed is not None
        assert decode_batch(formed[1], codec=codec).schemas == ()  # stored before: no schema known for it
        outbox.accept([("Vehicle.Fix", Fix(4.0, 5.0, 6), T0 + 1, Keep(("all",), 0, None))])
        assert outbox.ack(formed[0])
        formed = outbox.next_batch(T0)
        assert formed is not None
    assert decode_batch(formed[1], codec=Codec()).samples[0].value == Record(
        "test.Fix", {"latitude": 4.0, "longitude": 5.0, "satellites": 6}
    )
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


# ----------------------------------------------------------------------------- schema upgrades, a bad mark


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"synchronous": "off"}, "synchronous must be 'normal' or 'full', not 'off'"),
        ({"on_unusable": "delete"}, "on_unusable must be 'move_aside' or 'raise', not 'delete'"),
        ({"max_batch_bytes": 10}, "max_batch_bytes must be at least"),
        ({"quota_bytes": 10}, "quota_bytes must be from"),
        ({"quota_bytes": (1 << 40) + 1}, "quota_bytes must be from"),
    ],
)
def test_bad_outbox_options_are_refused_before_any_file_is_made(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    options = {"quota_bytes": 1 << 20, "vehicle_id": "V", **options}
    with pytest.raises(ValueError, match=message):
        Outbox(tmp_path / "o.sqlite3", **options)
    assert list(tmp_path.iterdir()) == []


def _downgrade_to_schema_1(path: Path) -> None:
    """The outbox at ``path`` as vwos wrote it before checksums: no crc columns, user_version 1."""
    db = sqlite3.connect(path)
    try:
        db.execute("ALTER TABLE chunks DROP COLUMN crc")
        db.execute("ALTER TABLE batches DROP COLUMN crc")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    finally:
        db.close()


def test_an_outbox_of_schema_1_is_upgraded_and_its_samples_are_sent(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        outbox.accept(rows(0, 1000))
        assert outbox.next_batch(T0) is not None  # one batch formed (not acknowledged), the rest in chunks
    _downgrade_to_schema_1(path)
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        assert outbox.moved_aside is None
        assert outbox.damage is None
        assert sorted(ids_of(drain(outbox))) == list(range(1000))
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "crc" in [row[1] for row in db.execute("PRAGMA table_info(chunks)")]
    finally:
        db.close()


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\x00\xff",  # not CBOR
        cbor2.dumps([[0], [0]]),  # not 3 columns
        cbor2.dumps([0, [0], [1.0]]),  # a column that is not an array
        cbor2.dumps([[], [], []]),  # empty
        cbor2.dumps([[0], [0, 1], [1.0]]),  # columns of different lengths
        cbor2.dumps([[0], [0], [1.0]]),  # decodes, but 1 sample where the row says 10
    ],
)
def test_a_chunk_from_before_checksums_that_does_not_decode_is_dropped_as_corrupt(
    tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V") as outbox:
        outbox.accept(rows(0, 10))
    _downgrade_to_schema_1(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE chunks SET data = ?", (data,))
    db.commit()
    db.close()
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V") as outbox:
        assert outbox.damage is not None
        assert outbox.damage.corrupt_samples == 10
        assert "10 samples in 1 chunk were damaged" in str(outbox.damage)
        assert outbox.statistics().dropped_corrupt == 10
        assert drain(outbox) == []


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("PRAGMA user_version = 0", "unknown outbox schema version 0"),
        ("UPDATE meta SET value = 0 WHERE key = 'next_seq'", "its meta table is damaged (stream '"),
        ("DELETE FROM meta WHERE key = 'stream'", "its meta table is damaged (stream None, next_seq 1)"),
    ],
)
def test_an_outbox_with_a_damaged_schema_or_meta_is_kept_aside(tmp_path: Path, sql: str, reason: str) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox(path, quota_bytes=1 << 20, vehicle_id="V").close()
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match=re.escape(reason)):
        Outbox(path, quota_bytes=1 << 20, vehicle_id="V", on_unusable="raise")
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.moved_aside is not None
        assert reason in outbox.moved_aside.reason
        assert outbox.moved_aside.moved_to.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"short", b"\xff" * 1024],
    ids=["empty", "shorter than a slot", "no intact slot"],
)
def test_a_damaged_high_water_mark_is_reported_and_rewritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        outbox.accept(rows(0, 5))
    mark = Path(f"{path}-mark")
    mark.write_bytes(content)
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.damage is not None
        assert (outbox.damage.lost_samples, outbox.damage.corrupt_samples) == (0, 0)
        assert f"its high-water mark {mark} is damaged" in str(outbox.damage)
        assert ids_of(drain(outbox)) == list(range(5))  # nothing is lost for it
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.damage is None  # written again at the last open


def test_a_mark_slot_with_a_valid_crc_but_not_the_magic_does_not_count(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox(path, quota_bytes=1 << 20, vehicle_id="V").close()
    body = struct.pack("<8sQ16sQQQ", b"notamark", 99, b"x" * 16, 1, 0, 0)
    Path(f"{path}-mark").write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with Outbox(path, quota_bytes=1 << 20, vehicle_id="V") as outbox:
        assert outbox.damage is not None
        assert "high-water mark" in str(outbox.damage)


def test_batches_formed_but_lost_with_the_wal_do_not_reuse_their_seq(tmp_path: Path) -> None:
    """The mark remembers the next seq: a crash that loses formed batches must not hand their seqs to
    different samples (the cloud would take them for duplicates)."""
    path = tmp_path / "o.sqlite3"
    wal = Path(f"{path}-wal")
    outbox = Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096)
    try:
        outbox.accept(rows(0, 1000))
        saved = {p: p.read_bytes() for p in (path, wal) if p.exists()}
        seqs = []
        for _ in range(3):
            formed = outbox.next_batch(T0)
            assert formed is not None
            seqs.append(formed[0])
            assert outbox.ack(formed[0])
        mark = Path(f"{path}-mark").read_bytes()
    finally:
        outbox.close()
    for p, data in saved.items():
        p.write_bytes(data)
    Path(f"{path}-mark").write_bytes(mark)
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        assert outbox.damage is not None
        assert f"batches up to seq {seqs[-1]} were formed but are missing" in str(outbox.damage)
        formed = outbox.next_batch(T0)
        assert formed is not None
        assert formed[0] == seqs[-1] + 1
    with Outbox(path, quota_bytes=64 << 20, vehicle_id="V", max_batch_bytes=4096) as outbox:
        assert outbox.damage is None
