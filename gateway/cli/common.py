"""What the command groups share: the sub-parser type, the exit codes, and the
checks the development tools make before they import anything heavy.

Nothing here imports more than the standard library at module level: every
command group imports this, and ``yrd-gateway serve`` refusing a bad config
should not wait for the harness or the simulators to load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

#: The ``add_subparsers`` object each command group adds its commands to.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Bad usage or configuration (argparse's own exit code for bad usage).
EXIT_USAGE = 2

#: What to install when the simulated back-ends are missing.
SIMULATORS_HINT = (
    "needs the simulated back-ends (package yrd_simulators), which are not installed "
    "with the node: run `pip install ./simulators` from a checkout, or `make`"
)


def add_configs_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--configs DIR``: the folder of province configs a development tool uses."""
    parser.add_argument(
        "--configs",
        *aliases,
        dest="configs",
        metavar="DIR",
        help="folder of province configs (default: $YRD_PROVINCE_CONFIGS, else ./province_configs)",
    )


def simulators_installed(command: str) -> bool:
    """True when ``yrd_simulators`` can be imported; else one line on stderr
    saying what to install."""
    try:
        import yrd_simulators  # noqa: F401  (imported only to see that it is there)
    except ImportError:
        print(f"yrd-gateway {command}: {SIMULATORS_HINT}", file=sys.stderr)
        return False
    return True


def tool_configs(command: str, given: str | None) -> Path | None:
    """The province configs folder for a development tool (``--configs``, else
    ``$YRD_PROVINCE_CONFIGS``, else ``./province_configs``); None, after one line
    on stderr, when the simulators are missing or the folder does not exist."""
    if not simulators_installed(command):
        return None
    from gateway.testing.localfed import province_configs_dir

    try:
        return province_configs_dir(Path(given) if given else None)
    except FileNotFoundError as exc:
        print(f"yrd-gateway {command}: {exc}", file=sys.stderr)
        return None


def login_name() -> str:
    """The operator's login name: who acts, when ``--operator`` is not given."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def age(seconds: float) -> str:
    """A duration as an operator reads it in a listing: 45s, 12.5m, 3.0h, 2.1d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the header first) in aligned columns, the last one not
    padded: the tables of ``outbox list``, ``directory list`` and ``admin``."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
