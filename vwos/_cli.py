"""The ``vwos`` command: run, check, plugins, and the commands of installed extensions.

Exit codes: 0 — done (``run`` stopped cleanly, ``check`` found nothing wrong); 1 — the supervisor gave up
(restarts exceeded the intensity); 2 — the config or the command line is wrong (every problem listed).

**Extensions.** A distribution adds subcommands through the entry-point group ``vwos.commands``: each entry
point names a function ``register(subparsers) -> None`` that adds its subparser(s) to the given
``argparse`` subparsers and sets ``handler`` on each: ``parser.set_defaults(handler=fn)`` with
``fn(args: argparse.Namespace) -> int`` returning the exit code. An extension that fails to load or to
register is skipped with a one-line warning on stderr; the core commands never load extensions at all.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import structlog
import trio

from vwos._config import ConfigError, SupervisorConfig, load_config
from vwos._logging import LEVELS, configure_logging
from vwos._plugins import installed_plugins
from vwos._structure import FieldDoc, describe_fields
from vwos._supervisor import Supervisor, SupervisorGaveUp

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_CONFIG = 2

_log = structlog.get_logger("vwos")

#: The entry-point group of command extensions: each names a ``register(subparsers) -> None`` function.
COMMANDS_GROUP = "vwos.commands"

#: What ``register`` receives: the ``vwos`` parser's subparsers (call ``add_parser`` on it).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: What a command's ``handler`` default is: it takes the parsed arguments and returns the exit code.
Handler: TypeAlias = Callable[[argparse.Namespace], int]

_CORE_COMMANDS = ("run", "check", "plugins")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vwos")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _parser(*, extensions: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vwos", description="vwos in-vehicle middleware runtime")
    parser.add_argument("--version", action="version", version=f"vwos {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the supervisor and its services from a TOML config")
    run.add_argument("config", help="the TOML config file")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop cleanly after this long")
    run.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="console on a terminal, JSON lines otherwise (default: auto)",
    )
    run.add_argument("--log-level", choices=LEVELS, help="overrides [supervisor] log_level")
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check", help="validate a config and its plugins without running anything")
    check.add_argument("config", help="the TOML config file")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_cmd_check)

    plugins = sub.add_parser("plugins", help="list installed services and their config fields")
    plugins.add_argument("--json", action="store_true", help="print the result as JSON")
    plugins.set_defaults(handler=_cmd_plugins)
    if extensions:
        _add_extension_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vwos`` command. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The core commands (and --version) do not load extensions: `vwos run` starts as fast, and says the
    # same, whatever else is installed.
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    extensions = first not in _CORE_COMMANDS and "--version" not in argv
    args = _parser(extensions=extensions).parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:  # an extension's subparser that did not set its handler
        print(f"vwos: the command {args.command!r} has no handler (a bug in its extension)", file=sys.stderr)
        return EXIT_CONFIG
    return handler(args)


# -- extensions -------------------------------------------------------------------------------------


def _command_entry_points() -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=COMMANDS_GROUP)
    return sorted(found, key=lambda ep: (ep.name, ep.value))


def _add_extension_commands(sub: Subparsers) -> None:
    """Let each extension add its commands; one that fails leaves nothing behind but a warning."""
    for ep in _command_entry_points():
        names = set(sub.choices)
        listed = len(sub._choices_actions)  # the help lines of the commands, which argparse keeps apart
        try:
            register = ep.load()
            if not callable(register):
                raise TypeError(f"{type(register).__name__} is not callable")
            register(sub)
        except Exception as exc:
            for name in set(sub.choices) - names:
                del sub.choices[name]
            del sub._choices_actions[listed:]
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(
                f"vwos: warning: command extension {ep.name!r} ({ep.value}) not loaded: {reason}",
                file=sys.stderr,
            )


def _print_problems(exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"vwos: {count} problem{'s' if count != 1 else ''} in the config:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


# -- check ------------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.json:
            problems = [
                {"file": str(p.file), "key": p.key_path, "message": p.message, "line": p.line}
                for p in exc.problems
            ]
            print(json.dumps({"ok": False, "problems": problems}, indent=2))
        else:
            _print_problems(exc)
        return EXIT_CONFIG
    if args.json:
        services = [
            {"name": s.name, "plugin": s.plugin, "enabled": s.enabled, "after": list(s.after)}
            for s in config.services
        ]
        print(json.dumps({"ok": True, "config": str(config.path), "services": services}, indent=2))
    else:
        enabled = [s for s in config.services if s.enabled]
        print(f"{config.path}: ok, {len(enabled)} service{'s' if len(enabled) != 1 else ''} in start order:")
        for s in config.services:
            state = "" if s.enabled else "  (disabled)"
            after = f"  after {', '.join(s.after)}" if s.after else ""
            print(f"  {s.name:<20} {s.plugin}{after}{state}")
    return EXIT_OK


# -- plugins ----------------------------------------------------------------------------------------


def _field_json(doc: FieldDoc) -> dict[str, Any]:
    return {
        "name": doc.name,
        "type": doc.type_text,
        "default": doc.default_text,
        "required": doc.required,
        "help": doc.help,
        "fields": [_field_json(f) for f in doc.fields],
    }


def _field_lines(docs: Sequence[FieldDoc], indent: str) -> list[str]:
    lines = []
    for doc in docs:
        default = "required" if doc.required else f"= {doc.default_text}"
        help_text = f"  # {doc.help}" if doc.help else ""
        lines.append(f"{indent}{doc.name}: {doc.type_text} {default}{help_text}")
        lines.extend(_field_lines(doc.fields, indent + "  "))
    return lines


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins = installed_plugins()
    if args.json:
        out = []
        for p in plugins:
            fields = describe_fields(p.service_class.config_class) if p.service_class is not None else []
            out.append(
                {
                    "name": p.name,
                    "ref": p.ref,
                    "distribution": p.distribution,
                    "error": p.error,
                    "config": [_field_json(f) for f in fields],
                }
            )
        print(json.dumps(out, indent=2))
        return EXIT_OK
    if not plugins:
        print("no services are installed (entry point group 'vwos.services')")
    for p in plugins:
        origin = f"  [{p.distribution}]" if p.distribution else ""
        print(f"{p.name}  {p.ref}{origin}")
        if p.service_class is None:
            print(f"  cannot be loaded: {p.error}")
            continue
        doc = (p.service_class.__doc__ or "").strip().splitlines()
        if doc:
            print(f"  {doc[0]}")
        fields = describe_fields(p.service_class.config_class)
        print("\n".join(_field_lines(fields, "    ")) if fields else "    (no config)")
    return EXIT_OK


# -- run --------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        configure_logging(format=args.log_format, level="info")
        _print_problems(exc)
        return EXIT_CONFIG
    configure_logging(format=args.log_format, level=args.log_level or config.log_level)
    try:
        return trio.run(_run, config, args.duration)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


async def _run(config: SupervisorConfig, duration: float | None) -> int:
    supervisor = Supervisor(
        [s for s in config.services if s.enabled],
        policy=config.policy,
        state_dir=config.state_dir,
    )
    _log.info(
        "vwos starting",
        config=str(config.path),
        pid=os.getpid(),
        stop="Ctrl-C or SIGTERM" + (f", or after {duration:g} s" if duration else ""),
    )
    gave_up: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, supervisor)
            if duration is not None:
                nursery.start_soon(_stop_after, supervisor, duration)
            try:
                await supervisor.run()
            finally:
                nursery.cancel_scope.cancel()  # the signal watcher and the timer
    except* SupervisorGaveUp as group:
        gave_up = group.exceptions[0]
    if gave_up is not None:
        print(f"vwos: the supervisor gave up: {gave_up}", file=sys.stderr)
        return EXIT_GAVE_UP
    return EXIT_OK


async def _stop_after(supervisor: Supervisor, seconds: float) -> None:
    await trio.sleep(seconds)
    _log.info("duration reached, stopping", seconds=seconds)
    supervisor.shutdown()


async def _watch_signals(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping:
                _log.warning("second signal while stopping: exiting at once", signal=name)
                raise KeyboardInterrupt
            stopping = True
            _log.info("stopping on signal", signal=name)
            supervisor.shutdown()


def console_main() -> None:
    """The ``vwos`` console script."""
    sys.exit(main())
