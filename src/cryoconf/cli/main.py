"""``cryoconf <command>``: the console entry point.

Each command lives in its own module ``cryoconf.cli.<name>`` exposing
``register(subparsers)``, which adds an ``argparse`` parser and sets
``func=run`` on it; ``run(args)`` calls the library and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cryoconf import __version__
from cryoconf.errors import InputError

COMMANDS = ["simulate", "convert", "demo", "evaluate", "ensemble", "anm", "sbi", "svi", "baseline", "recon", "fit"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryoconf",
        description="Conformations of biomolecules in individual cryo-EM particle images, "
        "with atomic models as the prior. Units: Å, 1/Å, kV, mm, degrees at the command line.",
    )
    parser.add_argument("--version", action="version", version=f"cryoconf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cryoconf.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cryoconf.cli.recon import default_subcommand

    parser = build_parser()
    args = parser.parse_args(default_subcommand(list(sys.argv[1:] if argv is None else argv)))
    # our messages at INFO (DEBUG with -v); other libraries' only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cryoconf").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"cryoconf {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
