"""A ``cryoconf`` command made of subcommands (``cryoconf sbi train|infer|…``)."""

from __future__ import annotations

import argparse


def add_command_group(subparsers, name: str, help: str, description: str, subcommands: dict) -> None:
    """Add ``cryoconf NAME SUBCOMMAND``; each value of ``subcommands`` registers one subcommand
    on the group's subparsers. ``cryoconf NAME`` alone prints the group's help and exits with 1."""
    p = subparsers.add_parser(name, help=help, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _print_help(p))
    group = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    for register_subcommand in subcommands.values():
        register_subcommand(group)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1
