"""A recording of several files read as one: the numbered parts of a split recording (``drive_0000.mcap``,
``drive_0001.mcap``, ... found from the base name ``drive.mcap``, or given one by one, or by a glob),
checked to be the parts of one recording (their ``recording_id``), put in order (their ``file_index``), none
missing. `bag_info` and `read_recording` here take one path or several; each file alone is
`services.record._reader`'s."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import attrs

from bus import Codec, Sample, default_codec
from services.record import _reader
from services.record._json import RecordingError
from services.record._reader import BagInfo, ChannelInfo

__all__ = ["RecordingSet", "Recordings", "bag_info", "read_recording", "recording_set"]

#: One recording file or base name, or several files.
Recordings: TypeAlias = "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]"

#: services.record._writer.METADATA_NAME (not imported from there: that module loads mcap's writer).
_METADATA_NAME = "vwos"


@attrs.frozen
class RecordingSet:
    """The files of a recording, in order; ``warnings`` about them (read in the order given, unchecked)."""

    name: str
    files: tuple[Path, ...]
    warnings: tuple[str, ...] = ()


def _as_list(paths: Recordings) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def numbered_parts(path: Path) -> list[Path]:
    """The files ``STEM_NNNN.SUFFIX`` beside ``path`` (``STEM.SUFFIX``) that a split recording to ``path``
    writes, in the order of their numbers (none: an empty list)."""
    suffix = path.suffix or ".mcap"
    pattern = re.compile(rf"{re.escape(path.stem)}_(\d{{4,}}){re.escape(suffix)}")
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return []
    found = sorted((int(m.group(1)), e) for e in entries if (m := pattern.fullmatch(e)) is not None)
    return [path.parent / e for _, e in found]


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        raise RecordingError(f"{path}: is a directory, not a recording")
    if path.exists():
        return [path]
    parts = numbered_parts(path)
    if not parts:
        suffix = path.suffix or ".mcap"
        first = f"{path.stem}_0000{suffix}"
        raise RecordingError(f"{path}: no such file, nor the parts {first}, ... of a split recording")
    return parts


def _identity(file: Path) -> tuple[str | None, int | None]:
    data = _reader.file_metadata(file).get(_METADATA_NAME, {})
    index = data.get("file_index")
    return data.get("recording_id"), int(index) if index is not None and index.isdigit() else None


def recording_set(paths: Recordings) -> RecordingSet:
    """The files ``paths`` name, in order: a file, a split recording's base name (its parts), or several
    of either. Several files must be the parts of one recording (`RecordingError` if one is from another
    recording, if a part is missing between two given, or given twice); given out of order, they are put
    in order, with a warning; files without vwos's metadata are read in the order given, with a warning.
    Of the parts a base name finds, those of another recording than the first part's (an older recording
    to the same name that had more parts) are left out, with a warning."""
    given = _as_list(paths)
    if not given:
        raise RecordingError("no recording given")
    files: list[Path] = []
    found: set[Path] = set()  # parts a base name found (not named by the caller)
    for path in given:
        expanded = _expand(path)
        files.extend(expanded)
        if expanded != [path]:
            found.update(expanded)
    name = str(given[0]) if len(given) == 1 else ", ".join(map(str, given))
    if len(files) == 1:
        return RecordingSet(name, tuple(files))
    seen: dict[Path, Path] = {}
    for file in files:
        key = file.resolve()
        if key in seen:
            raise RecordingError(f"{file}: given twice (as {seen[key]} and {file})")
        seen[key] = file
    identities = [(file, *_identity(file)) for file in files]
    known = [(file, rid, index) for file, rid, index in identities if rid is not None and index is not None]
    if len(known) < len(identities):
        unknown = next(file for file, rid, index in identities if rid is None or index is None)
        warning = (
            f"{unknown}: no recording_id or file_index in its metadata (not written by vwos record?): "
            "cannot check that the files are the parts of one recording; read in the order given"
        )
        return RecordingSet(name, tuple(files), (warning,))
    first, first_id, _ = known[0]
    warnings = []
    for file, rid, _ in known[1:]:
        if rid == first_id:
            continue
        if file in found:  # a part an earlier recording to the same name left behind
            warnings.append(f"{file}: left out, from another recording than {first} (an older one?)")
            continue
        raise RecordingError(
            f"{file}: not a part of the recording {first} is from (recording_id {rid}, not {first_id}): "
            "replay one recording at a time"
        )
    ordered = sorted((k for k in known if k[1] == first_id), key=lambda k: k[2])
    if ordered != [k for k in known if k[1] == first_id]:
        names = ", ".join(str(file) for file, _, _ in ordered)
        warnings.append(f"the parts were given out of order: read as {names} (by their file_index)")
    for (a, _, i), (b, _, j) in itertools.pairwise(ordered):
        if i == j:
            raise RecordingError(f"{a} and {b} are both part {i} of the recording")
        if j != i + 1:
            gap = ", ".join(map(str, range(i + 1, j)))
            what = f"part {gap} is" if j == i + 2 else f"parts {gap} are"
            raise RecordingError(f"{what} missing from the recording: {a} is part {i}, {b} part {j}")
    return RecordingSet(name, tuple(file for file, _, _ in ordered), tuple(warnings))


def bag_info(path: Recordings) -> BagInfo:
    """The summary of the recording at ``path``: one file (see `services.record._reader.bag_info`), or
    several as one (a split recording's base name, or its parts: `recording_set`): counts, sizes, chunks
    and lost bytes added up, times from the first start to the last end, channels of the same topic and
    type merged, the metadata of the last part (``recorded`` the sum of the parts'), ``files`` and each
    part's own summary in ``parts``."""
    recording = recording_set(path)
    if len(recording.files) == 1:
        return _reader.bag_info(recording.files[0])
    parts = [_reader.bag_info(file) for file in recording.files]
    channels: dict[tuple[str, str, str, str], ChannelInfo] = {}
    for part in parts:
        for c in part.channels:
            key = (c.topic, c.type, c.message_encoding, c.schema_encoding)
            known = channels.get(key)
            channels[key] = c if known is None else attrs.evolve(known, messages=known.messages + c.messages)
    starts = [p.start for p in parts if p.start is not None]
    ends = [p.end for p in parts if p.end is not None]
    metadata = {name: dict(data) for name, data in parts[-1].metadata.items()}
    vwos = metadata.get(_METADATA_NAME)
    if vwos is not None:
        counts = [p.metadata.get(_METADATA_NAME, {}).get("recorded") for p in parts]
        if all(c is not None and c.isdigit() for c in counts):
            vwos["recorded"] = str(sum(int(c) for c in counts if c is not None))
        else:
            vwos.pop("recorded", None)  # a part was never finished: its count is unknown
    return BagInfo(
        path=recording.name,
        size=sum(p.size for p in parts),
        messages=sum(p.messages for p in parts),
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
        compression=tuple(sorted({c for p in parts for c in p.compression})),
        chunks=sum(p.chunks for p in parts),
        channels=tuple(sorted(channels.values(), key=lambda c: (c.topic, c.type))),
        metadata=metadata,
        library=parts[0].library,
        profile=parts[0].profile,
        summary=all(p.summary for p in parts),
        lost_bytes=sum(p.lost_bytes for p in parts),
        warnings=(*recording.warnings, *(w for p in parts for w in p.warnings)),
        files=tuple(map(str, recording.files)),
        parts=tuple(parts),
    )


def read_recording(
    path: Recordings, patterns: Sequence[str] = (), *, codec: Codec = default_codec
) -> Iterator[Sample[Any]]:
    """The samples of the recording at ``path`` (one file, or the parts of a split one in order:
    `recording_set`), as `services.record._reader.read_recording` gives each file's."""
    for file in recording_set(path).files:
        yield from _reader.read_recording(file, patterns, codec=codec)
