"""What the two halves of the ``vwos`` command share: argument types for seconds and counts, the type of an
extension's ``register`` argument and of a command's handler, the control socket's default path and its
check, and the one-line error message.

Extensions use `seconds_argument` and `count_argument` as argparse ``type=`` (also importable from
``vwos._cli``, where docs/cli.md names them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO, TypeAlias

from vwos._config import MAX_SECONDS

if TYPE_CHECKING:
    pass


EXIT_OK = 0


#: What ``register`` receives: the ``vwos`` parser's subparsers (call ``add_parser`` on it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


#: What a command's ``handler`` default is: it takes the parsed arguments and returns the exit code.
Handler: TypeAlias = Callable[[argparse.Namespace], int]


def seconds_argument(text: str) -> float:
    """An argparse ``type=``: a number of seconds, finite, > 0 and at most `MAX_SECONDS` (about 31 years)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and at most {MAX_SECONDS:.0f}, got {text!r}"
        )
    return value


def count_argument(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: The environment variable naming the control socket.
SOCKET_ENV = "VWOS_SOCKET"


def default_socket_path() -> str:
    """``$VWOS_SOCKET``; else ``/run/vwos/vwos.sock`` for root; else ``$XDG_RUNTIME_DIR/vwos.sock``; else
    ``/tmp/vwos-UID/vwos.sock``. `vwos run` serves (and the commands connect to) this path by default.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return env
    if os.getuid() == 0:
        return "/run/vwos/vwos.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "vwos.sock")
    return f"/tmp/vwos-{os.getuid()}/vwos.sock"


def _check_socket_path(path: str, *, option: str = "--socket") -> None:
    """Raise `_UsageError` if ``path`` cannot be a Unix socket's path (at most 107 bytes on Linux)."""
    size = len(os.fsencode(path))
    if size > _SUN_PATH_MAX:
        raise _UsageError(
            f"{option} {path}: a Unix socket's path has at most {_SUN_PATH_MAX} bytes, this one has {size} "
            f"(give a shorter {option}, or set ${SOCKET_ENV})"
        )


#: The longest path of a Unix socket (``sun_path`` is 108 bytes on Linux, with its terminating NUL).
_SUN_PATH_MAX = 107


def _say(err: TextIO, message: str) -> None:
    err.write(f"vwos: {message}\n")


class _UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit 2)."""
