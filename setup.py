"""Build hook for a compiled build (optional; pyproject.toml has the rest).

By default the package is pure Python and this file adds nothing. With
``YRD_COMPILE=1`` the modules in :data:`gateway.compiled.MODULES` are compiled
with mypyc (a C compiler and the interpreter's headers are needed, and mypy
with the node's dependencies, hence ``--no-build-isolation``):

    make compiled                                        # in place, for this checkout
    YRD_COMPILE=1 pip wheel --no-build-isolation .       # a wheel to deploy

The SHA-256 of each compiled source is recorded beside the package, so that a
node refuses to start on an extension older than its source
(:func:`gateway.compiled.check_current`).
"""

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def build_list() -> ModuleType:
    """``gateway/compiled.py`` loaded by itself, not through the package: importing
    ``gateway`` refuses a stale build (``check_current``), which is just what a
    build after an edit has to replace."""
    spec = importlib.util.spec_from_file_location("_yrd_compiled", ROOT / "gateway" / "compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_extensions() -> list:
    if os.environ.get("YRD_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    compiled = build_list()
    (ROOT / "gateway" / compiled.SOURCES_FILE).write_text(
        json.dumps(compiled.source_digests(ROOT), indent=1, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    return mypycify(
        [compiled.source_path(m, Path()).as_posix() for m in compiled.MODULES],
        opt_level="3",
        # The modules' shared library inside the package (not at the top of
        # site-packages, where an editable install would not find it).
        group_name="gateway.hotpath",
    )


setup(ext_modules=compiled_extensions())
