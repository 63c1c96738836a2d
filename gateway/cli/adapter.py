"""``yrd-gateway adapter test``: the conformance kit run over province configs,
each read and validated by the node's own config loader first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapters import conformance
from gateway.config.models import parse_province_file
from gateway.core.errors import ConfigError


def adapter_test(
    configs: list[Path],
    *,
    vectors: Path | None = None,
    examples: int = conformance.DEFAULT_EXAMPLES,
    out: Callable[[str], None] = print,
) -> int:
    """``yrd-gateway adapter test``: 0 when every check of every config passed, 1 when
    one failed, 2 when a config cannot be read or validated (its problems printed)."""
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
        folder = vectors or path.resolve().parent / "golden" / config.code
        report = conformance.check_province(
            config.adapter, config=path, code=config.code, vectors=folder, examples=examples
        )
        out(report.render())
        if not report.passed and status == 0:
            status = 1
    return status
