"""Logging: structlog, readable on a terminal, JSON lines otherwise (or when asked)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Literal, TextIO, get_args

import structlog

LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
FORMATS: tuple[str, ...] = get_args(LogFormat)
LEVELS: tuple[str, ...] = get_args(LogLevel)


def configured_level() -> str:
    """The lowest of `LEVELS` this process's loggers pass ("debug" if structlog is not configured to
    filter): an isolated service's process is configured with it."""
    threshold: int = structlog.get_logger().bind().get_effective_level()
    numbers = logging.getLevelNamesMapping()
    passed = [name for name in LEVELS if numbers[name.upper()] >= threshold]
    return passed[0] if passed else LEVELS[-1]


def configure_logging(
    *,
    format: LogFormat = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    extra_processors: Sequence[structlog.typing.Processor] = (),
) -> None:
    """Set up structlog for the process.

    ``format="auto"`` renders for a person when ``stream`` is a terminal and as JSON lines otherwise (a
    journal, a file, a pipe). Every line has a UTC ISO timestamp and a level; lines from a service carry
    its name under ``service``. ``extra_processors`` run on every event before it is rendered (the control
    plane's log buffer is one).
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    out = stream if stream is not None else sys.stderr
    if format == "auto":
        format = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor
    if format == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        raise ValueError(f"log format must be auto, console or json, not {format!r}")
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # An exception as Python's own traceback text under ``exception``, in both formats, before the
        # extra processors (the control plane's log buffer keeps it for ``vwos logs``), and the same text
        # an isolated service's process relays.
        structlog.processors.format_exc_info,
        *extra_processors,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def service_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """The logger handed to a service: every line carries the service's name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("vwos.service").bind(service=name)
    return logger
