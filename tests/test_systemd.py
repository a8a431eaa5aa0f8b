"""sd_notify over a fake NOTIFY_SOCKET: what `vwos run` tells systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vwos._systemd import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    try:
        assert notifier.enabled
        assert notifier.watchdog_interval == 2.0
        assert notifier.ready("3 services running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 services running"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping("stopping")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    finally:
        notifier.close()


def test_abstract_namespace_address() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vwos-test-{os.getpid()}"
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"})
    try:
        assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        notifier.close()
        sock.close()


def test_outside_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("up")


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_interval is None


def test_a_vanished_notify_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.enabled
        assert not notifier.ready("up")
    finally:
        notifier.close()
