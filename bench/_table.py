"""Shared helpers of the benchmarks in ``bench/``: repeated runs, tables, goals, and ``--json`` output.

Each benchmark is a script (``python bench/<name>.py [--json] [--samples N] [--repeat R]``) that measures
its figures several times, prints a table of them beside the references measured in the same run, and with
``--json`` prints exactly one JSON object instead (what ``tests/test_bench.py`` checks). A benchmark::

    parser = _table.parser(__doc__, default_samples=100_000)
    args = parser.parse_args()
    runs = _table.Runs("samples/s", [measure() for _ in range(args.repeat)])
    table = _table.Table("what was measured", ["figure", "best", "median", "spread"])
    table.runs("our figure", runs)
    _table.emit(args, {"our_figure_per_s": runs.best, **_table.environment()}, table)

A benchmark script in ``bench/`` must put the project root first on ``sys.path`` before importing anything
(``sys.path.insert(0, str(Path(__file__).resolve().parents[1]))``): Python puts the script's directory
(``bench/``) first, where ``bench/bus.py`` would shadow the ``bus`` package and ``bench/can.py`` python-can.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Runs:
    """The results of one figure measured several times (one value per run)."""

    unit: str
    values: Sequence[float]
    #: True for rates (the best run is the highest), False for times (the lowest).
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("Runs needs at least one value")

    @property
    def best(self) -> float:
        return max(self.values) if self.higher_is_better else min(self.values)

    @property
    def worst(self) -> float:
        return min(self.values) if self.higher_is_better else max(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """The run-to-run spread: (highest - lowest) / median, as a fraction (0.05 is 5 %)."""
        low, high, median = min(self.values), max(self.values), self.median
        if low == high:
            return 0.0
        return (high - low) / abs(median) if median else math.inf

    def summary(self) -> dict[str, Any]:
        """The figures for ``--json``: best, median, spread and every run."""
        return {
            "best": self.best,
            "median": self.median,
            "spread": self.spread,
            "runs": list(self.values),
            "unit": self.unit,
        }


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank: a value that was actually measured."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None if either is missing or the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# -- formatting ------------------------------------------------------------------------------------------


def rate(value: float | None, unit: str = "/s") -> str:
    """``1234567.0`` -> ``"1.23 M/s"``."""
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def micros(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} µs"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f} %"


def times(value: float | None) -> str:
    """A ratio: ``2.345`` -> ``"2.35x"``."""
    return "-" if value is None else f"{value:.2f}x"


# -- tables --------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A plain-text table: a title, a header row, rows of cells, and notes printed under it."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, *cells: object) -> None:
        if len(cells) > len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells] + [""] * (len(self.columns) - len(cells)))

    def runs(
        self, label: str, runs: Runs, *extra: object, fmt: Callable[[float | None], str] | None = None
    ) -> None:
        """A row of a measured figure: best and median (by ``fmt``, a rate by default), spread, then the
        ``extra`` cells (a ratio to a reference, say)."""
        show = rate if fmt is None else fmt
        self.row(label, show(runs.best), show(runs.median), percent(runs.spread), *extra)

    def rule(self) -> None:
        """A separating line before the next row."""
        self.rows.append([])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def goal(self, text: str, met: bool | None, measured: str) -> None:
        """A goal line: ``met`` None means it could not be judged (a reference is missing)."""
        verdict = "n/a" if met is None else ("met" if met else "NOT MET")
        self.notes.append(f"goal {text}: {verdict} ({measured})")

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for cells in self.rows:
            for i, cell in enumerate(cells):
                widths[i] = max(widths[i], len(cell))

        def line(cells: Sequence[str]) -> str:
            # The first column (the figure's name) is left-aligned, numbers right-aligned.
            parts = [cells[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)
            ]
            return "  ".join(parts).rstrip()

        ruler = "  ".join("-" * w for w in widths)
        out = [self.title, "", line(self.columns), ruler]
        out += [line(cells) if cells else ruler for cells in self.rows]
        if self.notes:
            out.append("")
            out += self.notes
        return "\n".join(out)


# -- command line and output ---------------------------------------------------------------------------


def parser(
    description: str | None, *, default_samples: int, default_repeat: int = 5
) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--json``, ``--samples``/``--size`` and ``--repeat``."""
    p = argparse.ArgumentParser(
        description=(description or "").strip().splitlines()[0] if description else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--samples",
        "--size",
        type=positive_int,
        default=default_samples,
        help="workload of one run (the test suite runs it tiny)",
    )
    p.add_argument("--repeat", type=positive_int, default=default_repeat, help="runs per measurement")
    return p


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def environment(**versions: str | None) -> dict[str, Any]:
    """Where the figures were measured, for ``--json``; ``versions`` adds library versions."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **{f"{name}_version": version for name, version in versions.items()},
    }


def emit(args: argparse.Namespace, result: Mapping[str, Any], table: Table) -> None:
    """Print ``result`` as exactly one JSON object (with ``--json``), else the table."""
    if args.json:
        sys.stdout.write(json.dumps(result, allow_nan=False, default=_jsonable) + "\n")
    else:
        sys.stdout.write(table.render() + "\n")
    sys.stdout.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Runs):
        return value.summary()
    raise TypeError(f"cannot put a {type(value).__name__} in JSON")
