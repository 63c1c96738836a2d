"""``yrd-gateway``: serve a node, check configs and adapters, verify a message
log, steer the outbox, make development keys, run the local demo, bench and soak.

Every command has ``--help``. Exit codes: 0 success, 1 a check failed, 2 bad
usage or configuration, 3 ``serve`` refused to start (one line on stderr says why).

One module per command group (each adds its commands with ``register`` and
imports what its handlers need inside them):

- :mod:`gateway.cli.serve`: ``serve``
- :mod:`gateway.cli.config`: ``config check``
- :mod:`gateway.cli.adapter`: ``adapter test``
- :mod:`gateway.cli.audit`: ``audit verify|export|check`` (``log verify``: alias)
- :mod:`gateway.cli.outbox`: ``outbox list|retry|park|resolve``
- :mod:`gateway.cli.admin`: ``admin peers|exchanges|log|diagnostics`` (over a node's admin RPCs)
- :mod:`gateway.cli.store`: ``store info|migrate`` (SQLite to PostgreSQL)
- :mod:`gateway.cli.pki`: ``pki init``
- :mod:`gateway.cli.directory`: ``directory export|import|show|list``
- :mod:`gateway.cli.dev`: ``demo``, ``up``, ``bench``, ``soak`` (need the simulators)
"""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway.cli import adapter, admin, audit, config, dev, directory, outbox, pki, serve, store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yrd-gateway",
        description="YRD Gateway: the Yangtze River Delta provinces' data-exchange node.",
    )
    parser.add_argument("--version", action="version", version=f"yrd-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (serve, config, adapter, audit, outbox, admin, store, pki, directory, dev):
        group.register(commands)
    audit.register_log_alias(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.cli.common import EXIT_USAGE
    from gateway.core.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # Any command given a config it cannot use (missing, unreadable, wrong)
        # says so, naming the file and what is wrong; never a traceback.
        print(f"yrd-gateway {args.command}: configuration refused:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


if __name__ == "__main__":
    sys.exit(main())
