"""``yrd-gateway adapter test``: the conformance kit run over province configs,
each read and validated by the node's own config loader first."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gateway.cli.common import Subparsers

#: Generated values per message for the round trips (the conformance kit's default).
DEFAULT_EXAMPLES = 50


def register(commands: Subparsers) -> None:
    adapter = commands.add_parser("adapter", help="province adapters (native formats)")
    adapter_commands = adapter.add_subparsers(
        dest="adapter_command", required=True, metavar="ACTION"
    )
    test = adapter_commands.add_parser(
        "test",
        help="run a province's golden vectors and round-trip checks; print a pass/fail table",
    )
    test.add_argument("configs", nargs="+", metavar="CONFIG", help="province TOML files")
    test.add_argument(
        "--vectors",
        metavar="DIR",
        help="golden vectors (default: golden/ beside the config file; one CONFIG only)",
    )
    test.add_argument(
        "--examples",
        type=int,
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=(
            f"generated values per message for the round trips (default {DEFAULT_EXAMPLES})"
            "; 0: no round trips, the golden vectors only"
        ),
    )
    test.set_defaults(func=adapter_test_command)


def adapter_test_command(args: argparse.Namespace) -> int:
    return adapter_test(
        [Path(f) for f in args.configs],
        vectors=Path(args.vectors) if args.vectors else None,
        examples=args.examples,
    )


def adapter_test(
    configs: list[Path],
    *,
    vectors: Path | None = None,
    examples: int = DEFAULT_EXAMPLES,
    out: Callable[[str], None] = print,
) -> int:
    """``yrd-gateway adapter test``: 0 when every check of every config passed, 1 when
    one failed, 2 when a config cannot be read or validated (its problems printed)."""
    from adapters import conformance
    from gateway.config.loading import parse_province_file
    from gateway.core.errors import ConfigError

    if vectors is not None and len(configs) > 1:
        out("--vectors names the vectors of one config; give one CONFIG with it")
        return 2
    status = 0
    for path in configs:
        try:
            config = parse_province_file(path)
        except ConfigError as exc:
            out(f"{path}: configuration refused (run `yrd-gateway config check` on it):")
            out("\n".join(f"  {problem}" for problem in exc.problems))
            status = 2
            continue
        folder = vectors or path.resolve().parent / "golden"
        report = conformance.check_province(
            config.adapter, config=path, code=config.code, vectors=folder, examples=examples
        )
        out(report.render())
        if not report.passed and status == 0:
            status = 1
    return status
