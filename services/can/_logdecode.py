"""A recorded CAN log decoded as the gateway decodes live frames: the samples a gateway with a given config
would have published from that traffic, for converting a log into a recording (``vwos record convert``).

The decoding is the gateway's own (`CanGateway._prepare` and its receive path): the same codec, record
classes, topic names, mapped signals, E2E checks and not-available rules, the same counters. Only the
publishers differ: they collect `bus.Sample`s instead of handing them to a bus.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import can

from bus import Sample, Topic
from services.can._frames import frames_topic
from services.can._logtools import ToolError, read_log

if TYPE_CHECKING:
    from services.can._gateway import CanGateway

__all__ = ["LogDecoding"]

#: How many distinct problems of each kind a decoding keeps for its report (the rest are only counted).
_EXAMPLES: Final = 16


class _Collector:
    """A publisher of one topic that appends what the gateway publishes to the decoding's samples, checked
    by the topic's rules as the bus checks them, numbered from 1 as the bus numbers them."""

    __slots__ = ("_decoding", "_topic", "name", "seq")

    def __init__(self, decoding: LogDecoding, topic: Topic[Any]) -> None:
        self._decoding = decoding
        self._topic = topic
        self.name = topic.name
        self.seq = 0

    def publish_nowait(self, value: Any, *, timestamp: float | None = None) -> None:
        value = self._topic.check(value)  # ValueRefusedError: the gateway counts the frame as refused
        decoding = self._decoding
        when = decoding.first_timestamp if timestamp is None else timestamp
        self.seq += 1
        decoding.batch.append(
            Sample(self.name, value, when, max(0.0, when - decoding.first_timestamp), decoding.name, self.seq)
        )

    async def publish(self, value: Any, *, timestamp: float | None = None) -> None:
        """As `publish_nowait` (a `bus.PublisherHandle` has both; the receive path uses only that)."""
        self.publish_nowait(value, timestamp=timestamp)


@attrs.define
class _Problems:
    """A problem kind's count, and its first distinct details with how often each came and where first."""

    count: int = 0
    examples: dict[str, list[int]] = attrs.Factory(dict)  # detail -> [count, first frame number]


class LogDecoding:
    """The frames of a CAN log, decoded by a gateway (made by `CanGateway.decode_log`, which hands it a
    gateway that is not running): iterate it for batches of `bus.Sample`s in log order (the topics the
    gateway publishes, its raw frames topic too with ``raw_frames``), then read `counts` and `problems`.

    A sample's timestamp is the frame's timestamp in the log (an ASC file's from its start date), its bus
    time the seconds since the log's first frame, its publisher ``name`` (the gateway service's name).
    Iterating raises `ValueError` naming the file and where (the line of a text log) for a log python-can
    cannot read on; the batches before that have been yielded. Frames the database does not know, of the
    wrong length and so on are counted, never raised.
    """

    def __init__(
        self, gateway: CanGateway, path: str | os.PathLike[str], *, name: str, batch_size: int = 2048
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.config = gateway.config
        self.path = Path(path)
        self.name = name
        self.batch_size = batch_size
        #: Frames read from the log so far.
        self.frames = 0
        #: Samples made so far.
        self.samples = 0
        #: The first frame's timestamp (bus time 0); None until a frame is read.
        self.first: float | None = None
        self.first_timestamp = 0.0
        self.last_timestamp: float | None = None
        self.batch: list[Sample[Any]] = []
        self._problems: dict[str, _Problems] = {}
        gateway._prepare(lambda topic: _Collector(self, topic), self._problem)
        self._gateway = gateway

    @property
    def topics(self) -> list[Topic[Any]]:
        """The topics the decoding publishes (the gateway's message and signal topics, raw frames)."""
        topics = list(self._gateway.codec.topics)
        if self.config.raw_frames:
            topics.append(frames_topic(self.config.network))
        return topics

    def _problem(self, kind: str, detail: str, *, exc: BaseException | None = None) -> None:
        problems = self._problems.setdefault(kind, _Problems())
        problems.count += 1
        seen = problems.examples.get(detail)
        if seen is not None:
            seen[0] += 1
        elif len(problems.examples) < _EXAMPLES:
            problems.examples[detail] = [1, self.frames]

    def __iter__(self) -> Iterator[list[Sample[Any]]]:
        receive = self._gateway.receive
        size = self.batch_size
        try:
            with read_log(self.path, absolute=True) as frames:
                one: list[can.Message] = [can.Message()]
                for msg in frames:
                    self.frames += 1
                    timestamp = msg.timestamp
                    if self.first is None:
                        self.first = self.first_timestamp = timestamp
                    self.last_timestamp = timestamp
                    one[0] = msg
                    receive(one)  # frame by frame: a problem knows its frame's number
                    if len(self.batch) >= size:
                        yield self._take()
                if self.batch:
                    yield self._take()
        except ToolError as exc:
            if self.batch:
                yield self._take()  # what came before the damage
            raise ValueError(str(exc)) from None

    def _take(self) -> list[Sample[Any]]:
        batch, self.batch = self.batch, []
        self.samples += len(batch)
        return batch

    def counts(self) -> dict[str, int]:
        """The gateway's frame counters so far (`LinkStatus`'s, without the link's own): ``frames``,
        ``decoded``, ``unknown_ids``, ``wrong_lengths``, ``undecodable``, ``remote_frames``, ``fd_frames``,
        ``error_frames``, ``bus_off``, ``e2e_failures``, ``refused``, ``signals_out_of_range``,
        ``signals_not_available``, and ``samples``."""
        status = self._gateway.status()
        return {
            "frames": status.frames_received,
            "samples": self.samples + len(self.batch),
            "decoded": status.decoded,
            "unknown_ids": status.unknown_ids,
            "wrong_lengths": status.wrong_lengths,
            "undecodable": status.undecodable,
            "remote_frames": status.remote_frames,
            "fd_frames": status.fd_frames,
            "error_frames": status.error_frames,
            "bus_off": status.bus_off,
            "e2e_failures": status.e2e_failures,
            "refused": status.refused,
            "signals_out_of_range": status.signals_out_of_range,
            "signals_not_available": status.signals_not_available,
        }

    def problems(self) -> list[str]:
        """One line per kind of problem met (``unknown_id``, ``wrong_length``, ``e2e``...): how many frames,
        and its first distinct details, each with how many frames and the first one's number (from 1)."""
        lines = []
        for kind, problems in sorted(self._problems.items()):
            shown = [
                f"{detail} ({count}x, first frame {first})"
                for detail, (count, first) in problems.examples.items()
            ]
            more = problems.count - sum(count for count, _ in problems.examples.values())
            tail = f"; and {more} more" if more else ""
            lines.append(f"{kind}: {problems.count} frame(s): {'; '.join(shown)}{tail}")
        return lines
