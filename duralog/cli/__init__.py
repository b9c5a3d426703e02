"""The ``duralog`` command line.

Each subcommand lives in its own module and registers itself with
``add_parser(subparsers)``; ``main`` dispatches to its ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# Subcommand modules, in the order `duralog --help` lists them.
COMMANDS = ["serve", "streams", "state", "backup", "check", "keys", "token"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duralog", description="Durable Streams server, client and tools.",
        epilog="Run 'duralog COMMAND --help' for a command's options and examples.")
    parser.add_argument("--version", action="version", version=f"duralog {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Positional data may follow options (`write s --json '{"a":1}'`); anything
        # else left over is a real mistake.
        if isinstance(getattr(args, "data", None), list) and not any(
                e.startswith("-") and e != "-" for e in extra):
            args.data.extend(extra)
        else:
            # The subcommand's own usage line, not the top-level one.
            _command_parser(parser, args.command).error(
                f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130


def _command_parser(parser: argparse.ArgumentParser,
                    command: str | None) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


if __name__ == "__main__":
    sys.exit(main())
