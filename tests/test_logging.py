"""Logging: JSON lines off a terminal, a readable console on one, the service's name on its lines."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from vwos import configure_logging
from vwos._logging import configured_level, service_logger


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_lines_when_not_a_terminal_with_the_service_name() -> None:
    out = io.StringIO()
    configure_logging(format="auto", level="info", stream=out)
    service_logger("overspeed").info("limit changed", old=130.0, new=80.0)
    service_logger("overspeed").debug("not shown at info")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "limit changed"
    assert record["service"] == "overspeed"
    assert (record["old"], record["new"], record["level"]) == (130.0, 80.0, "info")
    assert record["timestamp"].endswith("Z")


def test_console_on_a_terminal() -> None:
    out = FakeTerminal()
    configure_logging(format="auto", stream=out)
    service_logger("drive").warning("sensor noisy", channel=3)
    text = out.getvalue()
    assert "sensor noisy" in text
    assert "drive" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_can_be_forced_on_a_terminal() -> None:
    out = FakeTerminal()
    configure_logging(format="json", stream=out)
    structlog.get_logger().error("boom")
    assert json.loads(out.getvalue())["level"] == "error"


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"level": "loud"}, "log level"), ({"format": "xml"}, "log format")]
)
def test_bad_settings_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(stream=io.StringIO(), **kwargs)  # type: ignore[arg-type]


def test_the_configured_level_is_what_the_loggers_pass() -> None:
    assert configured_level() == "debug"  # structlog's defaults filter nothing
    for level in ("warning", "info", "critical", "debug"):
        configure_logging(level=level, stream=io.StringIO())
        assert configured_level() == level
