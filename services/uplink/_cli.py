"""``vwos uplink inspect DIR_OR_FILE [--json]``: decode uplink batch files for a person to read.

Registered through the ``vwos.commands`` entry-point group (``register``). Exit codes: 0 -- every file
decoded; 1 -- some file could not be decoded (each named on stderr, the others still shown); 2 -- the path
does not exist, holds no batch files, or a module named by ``--import`` cannot be imported.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import importlib
import json
import math
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import cattrs
import cattrs.gen
import cbor2

from bus import EnumMember, NotAvailable, Record
from services.uplink._batch import MAX_BODY_BYTES, Batch, BatchError, OpaqueValue, decode_batch, loads_generic
from services.uplink._file import SUFFIX

__all__ = ["register"]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``uplink`` and its subcommands to the ``vwos`` command's subparsers."""
    uplink = subparsers.add_parser("uplink", help="tools of the cloud uplink")
    commands = uplink.add_subparsers(dest="uplink_command", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="decode uplink batch files for a person to read",
        description="Decode uplink batch files (a file, or every *.cbor file of a directory, in name order).",
    )
    inspect.add_argument("path", metavar="DIR_OR_FILE", help="a batch file, or a directory of them")
    inspect.add_argument(
        "--json", action="store_true", help="JSON lines: one object per batch, then one per sample"
    )
    inspect.add_argument("--summary", action="store_true", help="batch headers and topic counts only")
    inspect.add_argument(
        "--import",
        dest="imports",
        metavar="MODULE",
        action="append",
        default=[],
        help="import a module first, so that the value types it registers decode (repeatable)",
    )
    inspect.set_defaults(handler=inspect_command)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))
    return [path]


#: The most bytes a batch file can have: its body's limit, plus room for the envelope.
MAX_BATCH_FILE_BYTES: Final = MAX_BODY_BYTES + 64 * 1024
_READ_PIECE: Final = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_batch_file(file: Path) -> bytes:
    """The bytes of a batch file, read with a bound: a device (``/dev/zero``), a pipe, a directory or a
    huge file is refused with a clear error instead of being read for ever or into all memory."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer would block the open
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BatchError(f"{_kind(info.st_mode)}, not a batch file")
        if info.st_size > MAX_BATCH_FILE_BYTES:  # not even read
            raise BatchError(
                f"{info.st_size:,} bytes: larger than any batch can be (at most {MAX_BATCH_FILE_BYTES:,} "
                "bytes), not a batch file"
            )
        # In pieces (a single read would allocate the whole limit up front), and up to the limit whatever
        # the size said: a file may grow meanwhile, and /proc's say 0.
        pieces: list[bytes] = []
        total = 0
        while total <= MAX_BATCH_FILE_BYTES:
            piece = os.read(fd, min(_READ_PIECE, MAX_BATCH_FILE_BYTES + 1 - total))
            if not piece:
                break
            pieces.append(piece)
            total += len(piece)
        data = b"".join(pieces)
    finally:
        os.close(fd)
    if len(data) > MAX_BATCH_FILE_BYTES:
        raise BatchError(
            f"larger than any batch can be (at most {MAX_BATCH_FILE_BYTES:,} bytes), not a batch file"
        )
    return data


def _os_error(exc: OSError) -> str:
    """An OS error without Python's ``[Errno N]`` and without the file name, which the line starts with."""
    return f"cannot read it: {exc.strerror or exc}"


def inspect_command(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The handler of ``vwos uplink inspect``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"vwos uplink inspect: cannot import {module}: {type(exc).__name__}: {exc}", file=err)
            return 2
    path = Path(args.path)
    if not path.exists():
        print(f"vwos uplink inspect: {path}: no such file or directory", file=err)
        return 2
    try:
        files = _files(path)
    except OSError as exc:
        print(f"vwos uplink inspect: {path}: cannot list the directory: {exc.strerror or exc}", file=err)
        return 2
    if not files:
        print(f"vwos uplink inspect: {path}: no batch files (*{SUFFIX}) in this directory", file=err)
        return 2
    failed = 0
    for file in files:
        try:
            batch = decode_batch(_read_batch_file(file), strict=False)
        except (OSError, BatchError) as exc:
            failed += 1
            print(f"{file}: error: {_os_error(exc) if isinstance(exc, OSError) else exc}", file=err)
            continue
        lines = _json_lines(file, batch, args.summary) if args.json else _text(file, batch, args.summary)
        for line in lines:
            out.write(line + "\n")
    return 1 if failed else 0


# -- text ---------------------------------------------------------------------------------------------------


def _time(us: int) -> str:
    try:
        moment = _EPOCH + datetime.timedelta(microseconds=us)
    except OverflowError:
        return f"{us} us"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(file: Path, batch: Batch, summary: bool) -> Iterator[str]:
    span = (batch.last_us - batch.first_us) / 1e6
    encoding = "zlib" if batch.compressed else "plain"
    yield f"{file}"
    yield (
        f"  vehicle {batch.vehicle_id}  stream {batch.stream}  seq {batch.seq}  "
        f"{batch.size:,} bytes ({encoding}; body {batch.body_size:,} bytes uncompressed)"
    )
    yield f"  time span {_time(batch.first_us)} .. {_time(batch.last_us)} ({span:.6f} s)"
    yield f"  {len(batch.samples):,} samples of {len(batch.topics)} topics"
    counts = batch.topic_counts()
    width = max(len(t) for t in counts)
    for topic, n in counts.items():
        yield f"    {topic.ljust(width)}  {n:>8,}"
    if summary:
        return
    for sample in batch.samples:
        yield f"  {_time(sample.timestamp_us)}  {sample.topic}  {_show(sample.value)}"


def _show(value: object) -> str:
    if type(value) is NotAvailable:
        return str(value)
    if isinstance(value, OpaqueValue):
        shown = _generic(value.cbor)
        return f"<{value.type_name or 'undecoded'}: {shown}>"
    if isinstance(value, Record | EnumMember):  # decoded by the schema the batch carries
        return str(value)
    return repr(value)


def _generic(data: bytes) -> str:
    """A value the codec could not rebuild, decoded as plain CBOR (tag 27: its fields, without names)."""
    try:
        item = loads_generic(data)
    except BatchError:
        return f"{len(data)} bytes of CBOR"
    return repr(_plain(item))


def _plain(item: object) -> object:
    if isinstance(item, cbor2.CBORTag):
        if item.tag == 27 and isinstance(item.value, list | tuple) and len(item.value) == 3:
            return _plain(item.value[2])
        return {f"tag {item.tag}": _plain(item.value)}
    if isinstance(item, list | tuple):
        return [_plain(x) for x in item]
    if isinstance(item, dict):
        return {k: _plain(v) for k, v in item.items()}
    return item


# -- JSON lines ---------------------------------------------------------------------------------------------


def _json_lines(file: Path, batch: Batch, summary: bool) -> Iterator[str]:
    yield json.dumps(
        {
            "type": "batch",
            "file": str(file),
            "vehicle_id": batch.vehicle_id,
            "stream": batch.stream,
            "seq": batch.seq,
            "compressed": batch.compressed,
            "bytes": batch.size,
            "body_bytes": batch.body_size,
            "first_us": batch.first_us,
            "last_us": batch.last_us,
            "first": _time(batch.first_us),
            "last": _time(batch.last_us),
            "samples": len(batch.samples),
            "topics": batch.topic_counts(),
        },
        allow_nan=False,
    )
    if summary:
        return
    for sample in batch.samples:
        yield json.dumps(
            {
                "type": "sample",
                "seq": batch.seq,
                "topic": sample.topic,
                "timestamp_us": sample.timestamp_us,
                "timestamp": _time(sample.timestamp_us),
                "value": jsonable(sample.value),
                "available": sample.available,
            },
            allow_nan=False,
        )


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _opaque_json(value: OpaqueValue) -> dict[str, Any]:
    try:
        plain = jsonable(_plain(loads_generic(value.cbor)))
    except BatchError:
        plain = None
    return {"type": value.type_name, "cbor_hex": value.cbor.hex(), "undecoded": value.reason, "plain": plain}


def _scalar_json(value: Any) -> Any:
    """Enums typed (also those of str or int, which cattrs finds by MRO at the str or int hook), non-finite
    floats as strings, the rest as they are."""
    if isinstance(value, enum.Enum):
        return {"type": _type_name(type(value)), "member": value.name}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_converter() -> cattrs.Converter:
    """Decoded values as JSON, on cattrs' unstructuring: attrs values typed (``{"type", "fields"}``, each
    field by the type of its value), bytes as ``{"bytes_hex"}``, arrays and tables as such, anything else
    as its repr."""
    converter = cattrs.Converter()
    unstructure = converter.unstructure

    def typed(cls: type) -> Any:
        fields: dict[str, Any] = {
            f.name: cattrs.gen.override(unstruct_hook=unstructure) for f in attrs.fields(cls)
        }
        as_dict: Any = cattrs.gen.make_dict_unstructure_fn(cls, converter, **fields)
        name = _type_name(cls)
        return lambda value: {"type": name, "fields": as_dict(value)}

    converter.register_unstructure_hook_func(lambda _: True, repr)  # first: every later hook wins over it
    converter.register_unstructure_hook_factory(attrs.has, typed)
    converter.register_unstructure_hook(type(None), lambda value: value)
    for scalar in (bool, int, float, str, enum.Enum):
        converter.register_unstructure_hook(scalar, _scalar_json)
    converter.register_unstructure_hook(NotAvailable, lambda value: {"not_available": value.reason})
    converter.register_unstructure_hook(bytes, lambda value: {"bytes_hex": value.hex()})
    converter.register_unstructure_hook(OpaqueValue, _opaque_json)
    converter.register_unstructure_hook(
        Record, lambda r: {"type": r.type_name, "fields": {k: unstructure(v) for k, v in r.fields.items()}}
    )
    converter.register_unstructure_hook(EnumMember, lambda m: {"type": m.type_name, "member": m.name})
    for array in (list, tuple, set, frozenset):
        converter.register_unstructure_hook(array, lambda items: [unstructure(v) for v in items])
    converter.register_unstructure_hook(
        dict, lambda table: {str(k): unstructure(v) for k, v in table.items()}
    )
    return converter


_JSON: Final = _json_converter()


def jsonable(value: object) -> Any:
    """A decoded value as JSON: non-finite floats as strings, bytes as hex, attrs values and enums typed."""
    return _JSON.unstructure(value)
