"""Command-line interface: a thin argparse front over the library.

Each sub-command lives in its own module ``biper.cli.<name>`` with ``add_parser(subparsers)``
and ``run(args) -> int``; modules import heavy dependencies inside ``run`` only. A
`biper.BiperError` (bad input) prints one line and exits with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import BiperError

__all__ = ["main", "COMMANDS"]

# module name under biper.cli, in the order shown by --help
COMMANDS = ("quantizers", "recipes", "train", "compare", "eval", "qe", "analyze", "export", "infer", "summary", "bench",
            "plot_flips")


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="biper", description="Binary neural networks: train, analyse, deploy.")
    parser.add_argument("--version", action="version", version=f"biper {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # sub-command not part of this build
            raise
        module.add_parser(sub)
    return parser




def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the flags: `biper train R --out D stages.0.lr=0.1`
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides.extend(overrides)
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except BiperError as exc:
        if args.debug:
            raise
        print(f"biper {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `biper quantizers | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"biper {args.command}: interrupted", file=sys.stderr)
        return 130
