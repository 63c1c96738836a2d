"""``yrd-gateway config check``: validate province config files."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import Subparsers


def register(commands: Subparsers) -> None:
    config = commands.add_parser("config", help="province config files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate files; print every problem with file, key, value, expectation"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=config_check)


def config_check(args: argparse.Namespace) -> int:
    from gateway.config.loading import check_files

    problems = check_files([Path(f) for f in args.files])
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {len(args.files)} file(s)")
        return 1
    print(f"{len(args.files)} file(s) valid")
    return 0
