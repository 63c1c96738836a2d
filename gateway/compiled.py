"""The verification path compiled with mypyc: which modules, and whether a build is current.

A node runs as pure Python unless it is built with ``make compiled`` (or
``YRD_COMPILE=1 pip wheel --no-build-isolation .``): then mypyc compiles the
modules in :data:`MODULES` to C extensions beside their sources, and the
interpreter imports the extension instead of the ``.py`` (docs/operations.md,
"A compiled build"; the figures are in docs/performance.md, section 18).

The build records the SHA-256 of each source it compiled in
:data:`SOURCES_FILE`. An extension built from an older source would run the
older code without a word, so :func:`check_current` (run when the ``gateway``
package is imported) refuses to start when a compiled module's source has
changed since: compile again, or remove the build (``make pure``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

#: The modules a compiled build compiles: the verification's and the withdrawal's
#: path through both nodes, where the profile spends its interpreted time. Left
#: out: the modules with async generators (mypyc cannot compile them), the
#: interceptor and the group commit (classes mypyc compiles wrongly or not).
MODULES: tuple[str, ...] = (
    "gateway.core.crypto",
    "gateway.core.eid_token",
    "gateway.core.identifiers",
    "gateway.core.logs",
    "gateway.federation.client",
    "gateway.federation.payloads",
    "gateway.services.fund",
    "gateway.services.identity",
    "gateway.trust.batchsig",
    "gateway.trust.envelope",
)

#: Beside this file: ``{"gateway/core/crypto.py": "<sha256 hex>", ...}``.
SOURCES_FILE = "_compiled_sources.json"

_PACKAGE = Path(__file__).resolve().parent


def source_path(module: str, root: Path = _PACKAGE.parent) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _key(module: str) -> str:
    """A module's source as :data:`SOURCES_FILE` names it: its path under the root."""
    return source_path(module, Path()).as_posix()


def _digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def source_digests(root: Path = _PACKAGE.parent) -> dict[str, str]:
    """SHA-256 of each compiled module's source, by its path under ``root``."""
    return {_key(m): _digest(source_path(m, root)) for m in MODULES}


def _has_extension(source: Path) -> bool:
    return any(
        source.with_name(source.stem + suffix).exists()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def compiled_modules(root: Path = _PACKAGE.parent) -> list[str]:
    """The modules of :data:`MODULES` that have a compiled extension beside their source."""
    return [m for m in MODULES if _has_extension(source_path(m, root))]


class StaleBuild(ImportError):
    pass


def check_current(root: Path = _PACKAGE.parent) -> None:
    """Raise :class:`StaleBuild` when a compiled module's source is not the one
    its extension was built from (or the build recorded no sources)."""
    compiled = compiled_modules(root)
    if not compiled:
        return
    try:
        recorded = json.loads((root / "gateway" / SOURCES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    for module in compiled:
        source = source_path(module, root)
        if not source.exists():
            continue  # an installed build without its sources: nothing can differ
        if recorded.get(_key(module)) != _digest(source):
            raise StaleBuild(
                f"{_key(module)} has changed since it was compiled: its compiled extension "
                "would run the old code. Compile again (make compiled) or remove the "
                "compiled build (make pure)."
            )
