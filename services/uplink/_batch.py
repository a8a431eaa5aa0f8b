"""The uplink's batch wire format (CBOR), its builder and its defensive decoder. Pure: no I/O.

The format is specified in ``docs/uplink.md`` ("The batch format"), precisely enough to write a cloud-side
decoder from it. In short, a batch is one CBOR array, the *envelope*::

    ["vwos-uplink", 1, vehicle_id, stream, seq, encoding, body]

where ``body`` is a byte string holding (``encoding`` 0) or zlib-compressing (``encoding`` 1) the CBOR
array::

    [first_us, last_us, topics, topic_index, delta_us, values, schemas]

``topics`` is the batch's table of topic names, and the three columns hold one entry per sample: an index
into ``topics``, the timestamp as integer microseconds after ``first_us``, and the value -- ``None``,
``bool``, ``int``, ``float``, ``str`` and ``bytes`` as themselves, anything else (registered attrs values,
enums, lists, dicts) as CBOR tag 24 ("embedded CBOR data item", RFC 8949 section 3.4.5.1) around the bus
codec's encoding of the value. ``schemas`` (version 2) holds the `bus.TypeSchema` maps of the registered
types the batch's topics carry, so a reader without the classes decodes their values (as `bus.Record`);
version 1 had no ``schemas`` item, and is still read.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs
import cbor2

from bus import Codec, CodecError, NotAvailable, TypeSchema, default_codec

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "ENCODING_CBOR",
    "ENCODING_ZLIB",
    "FORMAT",
    "MIN_MAX_BATCH_BYTES",
    "VERSION",
    "ZLIB_LEVEL",
    "Batch",
    "BatchBuilder",
    "BatchError",
    "BatchHeader",
    "BatchSample",
    "OpaqueValue",
    "SampleTooLargeError",
    "decode_batch",
    "encode_batch",
    "loads_generic",
    "prepare_value",
    "read_header",
    "to_us",
]

#: The envelope's first item: what this is.
FORMAT: Final = "vwos-uplink"
#: The envelope's second item: the version of this format. A decoder refuses versions it does not know.
VERSION: Final = 2
#: The versions this decoder reads (1: no schemas in the body).
READ_VERSIONS: Final = (1, 2)
#: ``encoding`` of a body that is the CBOR array itself.
ENCODING_CBOR: Final = 0
#: ``encoding`` of a body that is zlib-compressed (RFC 1950: zlib header, deflate, Adler-32).
ENCODING_ZLIB: Final = 1
#: The default limit of a batch's size in bytes: 128 KiB, the AWS IoT Core message size limit.
DEFAULT_MAX_BATCH_BYTES: Final = 128 * 1024
#: The smallest limit a builder accepts (the envelope alone takes up to ~100 bytes plus the vehicle id).
MIN_MAX_BATCH_BYTES: Final = 1024
#: zlib's level for compressed bodies. On the benchmark's workload (bench/uplink.py) level 6, zlib's default,
#: makes batches 9 % smaller than level 1 and within 1 % of level 9, for about 0.4 us of CPU per sample
#: (level 9: 1.8 us). A batch is compressed once, when it is formed, for links where bytes cost more than CPU.
ZLIB_LEVEL: Final = 6
#: A decoder refuses bodies that decompress to more than this (a zip bomb cannot exhaust memory).
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
#: The CBOR tag around values that are not CBOR scalars: "embedded CBOR data item".
EMBEDDED_CBOR: Final = 24

_RAW_TYPES: Final[frozenset[type]] = frozenset({type(None), bool, int, float, str, bytes})
_INT_MIN: Final = -(2**64)
_INT_MAX: Final = 2**64 - 1

#: Tags cbor2 decodes into objects by itself: refused wherever they appear (bignums, tags 2 and 3, are
#: allowed: they are how CBOR carries integers beyond 64 bits). The decoder also checks the type of every
#: decoded item, so a tag missing from this list is refused too, only after cbor2 built its object.
_CBOR2_BUILTIN_TAGS: Final = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_CBOR2_BUILTIN_TAGS_HIGH: Final = (1004, 43000, 55799)


class BatchError(ValueError):
    """A batch cannot be decoded (truncated, malformed, wrong version ...), or a sample cannot go in one."""


class SampleTooLargeError(BatchError):
    """A sample does not fit in a batch of the configured size even on its own."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"{topic}: sample refused: a batch holding only this sample would take {size:,} bytes, "
            f"over the batch size limit of {limit:,} bytes"
        )
        self.topic = topic
        self.size = size
        self.limit = limit


def to_us(timestamp: float) -> int:
    """A timestamp in seconds (float) as integer microseconds, rounded to the nearest: the batch's unit."""
    return round(timestamp * 1_000_000)


def prepare_value(value: object, codec: Codec = default_codec, types: set[str] | None = None) -> object:
    """``value`` as it goes in a batch's values column: a CBOR scalar as itself, else tag 24 around the
    bus codec's encoding (the names of the registered types it holds added to ``types``, if given).
    Raises `bus.CodecError` if the codec cannot encode it."""
    if type(value) in _RAW_TYPES:
        return value
    return cbor2.CBORTag(EMBEDDED_CBOR, codec.encode(value, types=types))


def _head_size(n: int) -> int:
    """Bytes of a CBOR head carrying the argument ``n`` (a length or an unsigned integer)."""
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def _dumps(item: object) -> bytes:
    # canonical: floats take the shortest exact form (0.0, 1.5 and 87.5 take 3 bytes, not 9).
    return cbor2.dumps(item, canonical=True)


@attrs.frozen
class BatchHeader:
    """The envelope of a batch, read without touching the body."""

    vehicle_id: str
    #: Identifies the outbox that formed the batch; ``(vehicle_id, stream, seq)`` is unique.
    stream: str
    seq: int
    encoding: int
    #: Bytes of the body as it travels (compressed if ``encoding`` is 1).
    body_size: int
    #: The format version (1: no schemas in the body).
    version: int = VERSION

    @property
    def compressed(self) -> bool:
        return self.encoding == ENCODING_ZLIB


#: The registered type name a `bus.NotAvailable` travels under: a decoder without the bus codec sees it in
#: an opaque value's tag 27.
NOT_AVAILABLE_TYPE: Final = default_codec.type_name(NotAvailable)


@attrs.frozen
class OpaqueValue:
    """A value the decoding codec could not rebuild (its type is not registered here, say)."""

    #: The registered type name from the value's tag 27, if it has one.
    type_name: str | None
    #: The value's CBOR bytes as they travelled (the content of tag 24).
    cbor: bytes
    #: Why it could not be rebuilt.
    reason: str


@attrs.frozen
class BatchSample:
    """One sample of a decoded batch."""

    topic: str
    #: The sample's source timestamp, integer microseconds since the Unix epoch (exact as sent).
    timestamp_us: int
    value: object

    @property
    def timestamp(self) -> float:
        """The timestamp in seconds since the Unix epoch."""
        return self.timestamp_us / 1_000_000

    @property
    def available(self) -> bool:
        """False when the sample said its source had no valid value (a `bus.NotAvailable`, decoded or
        opaque): "not available" is news, unlike a sample that is not in the batch."""
        value = self.value
        if type(value) is NotAvailable:
            return False
        return not (type(value) is OpaqueValue and value.type_name == NOT_AVAILABLE_TYPE)


@attrs.frozen
class Batch:
    """A decoded batch."""

    vehicle_id: str
    stream: str
    seq: int
    compressed: bool
    #: The earliest and the latest sample timestamp, integer microseconds since the Unix epoch.
    first_us: int
    last_us: int
    topics: tuple[str, ...]
    samples: tuple[BatchSample, ...]
    #: Bytes of the whole batch as it travelled, and of its body uncompressed.
    size: int
    body_size: int
    #: The schemas the batch carries (version 2), by which its record values were decoded.
    schemas: tuple[TypeSchema, ...] = ()

    def topic_counts(self) -> dict[str, int]:
        """Samples per topic, in the order of the batch's topic table."""
        counts = dict.fromkeys(self.topics, 0)
        for sample in self.samples:
            counts[sample.topic] += 1
        return counts


# -- encoding ---------------------------------------------------------------------------------------------


class BatchBuilder:
    """Builds batches of one vehicle and stream, each at most ``max_bytes`` long.

    Samples are ``(topic, timestamp_us, prepared_value)`` triples (`prepare_value`, `to_us`). `fill` takes
    the longest prefix of a candidate list that fits; `check` refuses a sample that could never fit.

    The limit holds for the uncompressed batch, so the compressed one (sent only when it is smaller) holds
    it too: exact, and one compression per batch. A compressed batch is therefore typically a third to a
    quarter of the limit; see docs/uplink.md for why that is the right trade.
    """

    def __init__(
        self,
        vehicle_id: str,
        stream: str,
        *,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        compress: bool = True,
        level: int = ZLIB_LEVEL,
    ) -> None:
        if max_bytes < MIN_MAX_BATCH_BYTES:
            raise ValueError(
                f"the batch size limit must be at least {MIN_MAX_BATCH_BYTES} bytes, not {max_bytes}"
            )
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level must be 0 to 9, not {level}")
        self.vehicle_id = vehicle_id
        self.stream = stream
        self.max_bytes = max_bytes
        self.compress = compress
        self.level = level
        # The envelope without its body, for the largest seq (a seq of up to 2**64 - 1 takes 9 bytes).
        self._envelope_max = self._envelope_size(_INT_MAX, 0)
        #: A sample whose value and topic together take less than this fits on its own: no need to measure.
        self._small = max_bytes - self._envelope_max - 4 * 9 - 16
        #: The schema maps (`bus.TypeSchema.to_wire`) a batch of the given topics carries; None: none.
        self.schemas_for: Callable[[list[str]], list[Any]] | None = None

    def _envelope_size(self, seq: int, body_size: int) -> int:
        head = len(_dumps([FORMAT, VERSION, self.vehicle_id, self.stream, seq, ENCODING_CBOR, b""])) - 1
        return head + _head_size(body_size) + body_size

    def single_size(self, topic: str, prepared: object) -> int:
        """Bytes of a batch holding only this sample (with the largest seq: an upper bound for any seq)."""
        body = _dumps([0, 0, [topic], [0], [0], [prepared], []])
        return self._envelope_size(_INT_MAX, len(body))

    def check(self, topic: str, prepared: object) -> None:
        """Raise `SampleTooLargeError` if a batch holding only this sample would be over the limit."""
        kind = type(prepared)
        if kind is float or kind is bool or prepared is None:
            size = 9
        elif kind is int:
            size = 9 if _INT_MIN <= prepared <= _INT_MAX else len(_dumps(prepared))  # type: ignore[operator]
        elif kind is str:
            size = 4 * len(prepared) + 9  # type: ignore[arg-type]
        elif kind is bytes:
            size = len(prepared) + 9  # type: ignore[arg-type]
        elif kind is cbor2.CBORTag:
            size = len(prepared.value) + 11  # type: ignore[attr-defined]
        else:
            size = len(_dumps(prepared))
        if size + len(topic) + 9 <= self._small:
            return
        exact = self.single_size(topic, prepared)
        if exact > self.max_bytes:
            raise SampleTooLargeError(topic, exact, self.max_bytes)

    def _body(self, samples: Sequence[tuple[str, int, object]]) -> bytes:
        """The uncompressed body of ``samples`` (non-empty)."""
        index: dict[str, int] = {}
        setdefault = index.setdefault
        topic_index = [setdefault(topic, len(index)) for topic, _, _ in samples]
        times = [t for _, t, _ in samples]
        first, last = min(times), max(times)
        topics = list(index)
        schemas = self.schemas_for(topics) if self.schemas_for is not None else []
        deltas = [t - first for t in times]
        return _dumps([first, last, topics, topic_index, deltas, [v for _, _, v in samples], schemas])

    def build(self, seq: int, samples: Sequence[tuple[str, int, object]]) -> bytes:
        """The batch of all ``samples`` (at least one), compressed if enabled and smaller.

        Raises `BatchError` if it is over the limit (use `fill` to take what fits).
        """
        if not samples:
            raise BatchError("a batch holds at least one sample")
        if not 0 <= seq <= _INT_MAX:
            raise BatchError(f"seq must be 0 to 2**64 - 1, not {seq}")
        body = self._body(samples)
        size = self._envelope_size(seq, len(body))
        if size > self.max_bytes:
            raise BatchError(
                f"{len(samples)} samples take {size:,} bytes, over the limit of {self.max_bytes:,}"
            )
        return self._seal(seq, body)

    def _seal(self, seq: int, body: bytes) -> bytes:
        encoding = ENCODING_CBOR
        if self.compress:
            packed = zlib.compress(body, self.level)
            if len(packed) < len(body):
                body, encoding = packed, ENCODING_ZLIB
        return _dumps([FORMAT, VERSION, self.vehicle_id, self.stream, seq, encoding, body])

    def fill(self, seq: int, candidates: Sequence[tuple[str, int, object]]) -> tuple[bytes, int]:
        """The batch of the longest prefix of ``candidates`` that fits the limit, and that prefix's length.

        Raises `SampleTooLargeError` if not even the first candidate fits.
        """
        if not candidates:
            raise BatchError("a batch holds at least one sample")
        if not 0 <= seq <= _INT_MAX:
            raise BatchError(f"seq must be 0 to 2**64 - 1, not {seq}")
        limit = self.max_bytes
        n = len(candidates)
        body = self._body(candidates)
        size = self._envelope_size(seq, len(body))
        if size <= limit:
            return self._seal(seq, body), n
        # The longest fitting prefix: interpolation between a fitting length (lo) and a failing one (hi),
        # falling back to bisection; the size grows about linearly with the length.
        lo, lo_size, lo_body = 0, 0, b""
        hi, hi_size = n, size
        while hi - lo > 1:
            guess = lo + int((hi - lo) * (limit - lo_size) / max(hi_size - lo_size, 1))
            guess = min(max(guess, lo + 1), hi - 1)
            if hi - lo > 8 and (guess - lo < (hi - lo) // 16 or hi - guess < (hi - lo) // 16):
                guess = (lo + hi) // 2  # interpolation stalls at an end: bisect instead
            body = self._body(candidates[:guess])
            size = self._envelope_size(seq, len(body))
            if size <= limit:
                lo, lo_size, lo_body = guess, size, body
            else:
                hi, hi_size = guess, size
        if lo == 0:
            topic, _, value = candidates[0]
            raise SampleTooLargeError(topic, self.single_size(topic, value), limit)
        return self._seal(seq, lo_body), lo


def encode_batch(
    vehicle_id: str,
    stream: str,
    seq: int,
    samples: Iterable[tuple[str, float, object]],
    *,
    compress: bool = True,
    max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    codec: Codec = default_codec,
) -> bytes:
    """One batch of ``(topic, timestamp_seconds, value)`` samples (a convenience for tests and tools).

    Raises `BatchError` if they do not all fit in ``max_bytes``, `bus.CodecError` for a value the codec
    cannot encode.
    """
    builder = BatchBuilder(vehicle_id, stream, max_bytes=max_bytes, compress=compress)
    noted: set[str] = set()
    prepared = [(topic, to_us(t), prepare_value(v, codec, noted)) for topic, t, v in samples]
    noted.discard(NOT_AVAILABLE_TYPE)  # every codec knows it
    if noted:  # the batch carries the schemas of the registered types its values hold
        wire = {s.name: s.to_wire() for name in sorted(noted) for s in codec.schemas(name)}
        builder.schemas_for = lambda topics: list(wire.values())
    return builder.build(seq, prepared)


# -- decoding ---------------------------------------------------------------------------------------------


def _refuse(tag: int) -> Any:
    def refuse(value: object, immutable: bool) -> Any:
        raise BatchError(f"unexpected CBOR tag {tag}")

    return refuse


_SEMANTIC: Final = {tag: _refuse(tag) for tag in (*_CBOR2_BUILTIN_TAGS, *_CBOR2_BUILTIN_TAGS_HIGH)}


def _keep_tag(tag: cbor2.CBORTag, immutable: bool) -> Any:
    if tag.tag != EMBEDDED_CBOR:
        raise BatchError(f"unexpected CBOR tag {tag.tag}")
    return tag


def _loads(data: bytes | bytearray | memoryview, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            stream, semantic_decoders=_SEMANTIC, tag_hook=_keep_tag, allow_duplicate_keys=False
        ).decode()
    except Exception as exc:
        ours = _batch_error_in(exc)
        if ours is not None:
            raise BatchError(f"{what}: {ours}") from None
        if isinstance(exc, cbor2.CBORDecodeEOF | EOFError):
            raise BatchError(f"{what}: truncated CBOR ({exc})") from None
        if isinstance(exc, RecursionError):
            raise BatchError(f"{what}: CBOR nested too deeply") from None
        raise BatchError(f"{what}: malformed CBOR ({type(exc).__name__}: {exc})") from None
    end, size = stream.tell(), len(data)
    if end != size:
        raise BatchError(f"{what}: {size - end} bytes of trailing garbage after the CBOR item")
    return item


def _batch_error_in(exc: BaseException) -> BatchError | None:
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            return None
        if isinstance(cause, BatchError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _envelope(data: bytes | bytearray | memoryview) -> tuple[BatchHeader, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BatchError(f"a batch is bytes, not {type(data).__name__}")
    if not data:
        raise BatchError("empty data: not a vwos uplink batch")
    item = _loads(data, "batch envelope")
    if type(item) is not list or not item or item[0] != FORMAT:
        raise BatchError(f"not a vwos uplink batch (expected a CBOR array starting with {FORMAT!r})")
    if len(item) < 2 or type(item[1]) is not int:
        raise BatchError("batch envelope: no format version")
    if item[1] not in READ_VERSIONS:
        raise BatchError(
            f"batch format version {item[1]} is not supported (this decoder reads versions 1 and {VERSION})"
        )
    if len(item) != 7:
        raise BatchError(f"batch envelope: expected 7 items, got {len(item)}")
    _, _, vehicle_id, stream, seq, encoding, body = item
    if type(vehicle_id) is not str:
        raise BatchError(f"batch envelope: vehicle id must be text, got {_describe(vehicle_id)}")
    if type(stream) is not str:
        raise BatchError(f"batch envelope: stream must be text, got {_describe(stream)}")
    if type(seq) is not int or not 0 <= seq <= _INT_MAX:
        raise BatchError(f"batch envelope: seq must be an unsigned integer, got {_describe(seq)}")
    if type(encoding) is not int or encoding not in (ENCODING_CBOR, ENCODING_ZLIB):
        raise BatchError(f"batch envelope: unknown body encoding {encoding!r} (known: 0 plain, 1 zlib)")
    if type(body) is not bytes:
        raise BatchError(f"batch envelope: the body must be a byte string, got {_describe(body)}")
    return BatchHeader(vehicle_id, stream, seq, encoding, len(body), item[1]), body


def read_header(data: bytes | bytearray | memoryview) -> BatchHeader:
    """The envelope of a batch (vehicle, stream, seq, encoding) without decoding the body."""
    return _envelope(data)[0]


def _inflate(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise BatchError(f"batch body: bad zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise BatchError(f"batch body: decompresses to more than {limit:,} bytes")
    if not inflater.eof:
        raise BatchError("batch body: truncated zlib data")
    if inflater.unused_data:
        raise BatchError(
            f"batch body: {len(inflater.unused_data)} bytes of trailing garbage after the zlib data"
        )
    return out


def decode_batch(
    data: bytes | bytearray | memoryview,
    *,
    codec: Codec | None = default_codec,
    strict: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Batch:
    """Decode a batch; every problem raises `BatchError` saying what is wrong.

    Tagged values (tag 24) are rebuilt by ``codec`` (the bus codec, which knows the registered attrs
    classes and enums). With ``strict=False`` -- or ``codec=None`` -- a value it cannot rebuild comes back
    as an `OpaqueValue` instead of failing the batch.
    """
    header, body = _envelope(data)
    if header.compressed:
        body = _inflate(body, max_body_bytes)
    elif len(body) > max_body_bytes:
        raise BatchError(f"batch body: {len(body):,} bytes, more than {max_body_bytes:,}")
    item = _loads(body, "batch body")
    items = 6 if header.version == 1 else 7
    if type(item) is not list or len(item) != items:
        raise BatchError(f"batch body: expected an array of {items} items, got {_describe(item)}")
    first, last, topics, topic_index, deltas, values = item[:6]
    schemas = _schemas(item[6]) if items == 7 else ()
    if schemas and codec is not None:
        codec = codec.with_schemas(schemas)
    for name, value in (("first_us", first), ("last_us", last)):
        if type(value) is not int:
            raise BatchError(f"batch body: {name} must be an integer, got {_describe(value)}")
    for name, value in (
        ("topics", topics),
        ("topic_index", topic_index),
        ("delta_us", deltas),
        ("values", values),
    ):
        if type(value) is not list:
            raise BatchError(f"batch body: {name} must be an array, got {_describe(value)}")
    n = len(values)
    if not n:
        raise BatchError("batch body: no samples (a batch holds at least one)")
    if len(topic_index) != n or len(deltas) != n:
        raise BatchError(
            f"batch body: the columns differ in length (topic_index {len(topic_index)}, "
            f"delta_us {len(deltas)}, values {n})"
        )
    if not all(type(t) is str for t in topics):
        raise BatchError("batch body: topics must all be text")
    if len(set(topics)) != len(topics):
        raise BatchError("batch body: a topic appears twice in the topic table")
    count = len(topics)
    if not all(type(i) is int and 0 <= i < count for i in topic_index):
        bad = next(i for i in topic_index if not (type(i) is int and 0 <= i < count))
        raise BatchError(f"batch body: topic index {_short(bad)} is not an index into the {count} topics")
    if not all(type(d) is int and d >= 0 for d in deltas):
        bad = next(d for d in deltas if not (type(d) is int and d >= 0))
        raise BatchError(f"batch body: delta_us {_short(bad)} is not an unsigned integer")
    if min(deltas) != 0 or first + max(deltas) != last:
        raise BatchError(
            f"batch body: first_us {first} and last_us {last} are not the earliest and latest timestamps"
        )
    decoded = [_value(v, k, codec, strict) for k, v in enumerate(values)]
    samples = tuple(
        BatchSample(topics[i], first + d, v) for i, d, v in zip(topic_index, deltas, decoded, strict=True)
    )
    return Batch(
        vehicle_id=header.vehicle_id,
        stream=header.stream,
        seq=header.seq,
        compressed=header.compressed,
        first_us=first,
        last_us=last,
        topics=tuple(topics),
        samples=samples,
        size=len(data),
        body_size=len(body),
        schemas=schemas,
    )


def _schemas(value: object) -> tuple[TypeSchema, ...]:
    if type(value) is not list or len(value) > _MAX_SCHEMAS:
        raise BatchError(
            f"batch body: schemas must be an array of at most {_MAX_SCHEMAS}, got {_describe(value)}"
        )
    try:
        return tuple(TypeSchema.from_wire(item) for item in value)
    except CodecError as exc:
        raise BatchError(f"batch body: schemas: {exc}") from None


#: At most this many schemas in one batch.
_MAX_SCHEMAS: Final = 4096


def _value(value: object, k: int, codec: Codec | None, strict: bool) -> object:
    kind = type(value)
    if kind in _RAW_TYPES:
        return value
    if kind is not cbor2.CBORTag or type(value.value) is not bytes:  # type: ignore[attr-defined]
        raise BatchError(f"batch body: value {k} is {_describe(value)}, not a CBOR scalar or embedded CBOR")
    embedded: bytes = value.value  # type: ignore[attr-defined]
    if codec is not None:
        try:
            return codec.decode(embedded)
        except CodecError as exc:
            if strict:
                raise BatchError(f"batch body: value {k}: {exc}") from None
            reason = str(exc)
    else:
        reason = "not decoded (no codec)"
    return OpaqueValue(_type_name(embedded), embedded, reason)


def loads_generic(data: bytes) -> object:
    """Decode CBOR without a codec, for display: unknown tags stay `cbor2.CBORTag` objects, cbor2's own
    tags (datetimes, regular expressions ...) are refused. Raises `BatchError` if it is not valid CBOR."""
    try:
        return cbor2.CBORDecoder(
            io.BytesIO(data), semantic_decoders=_SEMANTIC, tag_hook=lambda tag, immutable: tag
        ).decode()
    except Exception as exc:
        raise BatchError(f"not valid CBOR ({type(exc).__name__}: {exc})") from None


def _type_name(embedded: bytes) -> str | None:
    """The type name of a bus codec object (tag 27: ``[name, fingerprint, payload]``), if it is one."""
    try:
        item = loads_generic(embedded)
    except BatchError:
        return None
    # cbor2 decodes arrays inside tags as tuples.
    if type(item) is cbor2.CBORTag and item.tag == 27 and type(item.value) in (list, tuple) and item.value:
        name = item.value[0]
        return name if type(name) is str else None
    return None
