"""The compiled build's bookkeeping (``gateway/compiled.py``, ``setup.py``)
without compiling: a tree of copied sources and empty files standing in for the
extensions. The real build is tests/integration/test_compiled.py."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.compiled import MODULES, SOURCES_FILE, StaleBuild, check_current, source_path

ROOT = Path(__file__).resolve().parents[2]

#: Stands in for mypyc: records the sources it was asked to compile, compiles none.
FAKE_MYPYC = """
import json, os
def mypycify(paths, **options):
    with open(os.environ["MYPYC_ASKED"], "w") as out:
        json.dump({"paths": list(paths), "group": options.get("group_name")}, out)
    return []
"""


def _tree(tmp_path: Path) -> Path:
    """The package's compiled sources, its build list and setup.py, copied."""
    tree = tmp_path / "tree"
    for module in (*MODULES, "gateway.compiled", "gateway.__init__"):
        source = source_path(module, ROOT)
        target = source_path(module, tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    shutil.copyfile(ROOT / "setup.py", tree / "setup.py")
    return tree


def _extensions(tree: Path) -> None:
    """An (empty) extension beside every compiled source, as a build leaves."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for module in MODULES:
        source = source_path(module, tree)
        source.with_name(source.stem + suffix).touch()


def _built(tmp_path: Path) -> Path:
    """A tree as a build leaves it: extensions, and the record of their sources."""
    from gateway.compiled import source_digests

    tree = _tree(tmp_path)
    _extensions(tree)
    (tree / "gateway" / SOURCES_FILE).write_text(json.dumps(source_digests(tree)))
    return tree


def _edit(tree: Path, module: str) -> None:
    source = source_path(module, tree)
    source.write_text(source.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")


class TestCheckCurrent:
    def test_a_tree_without_extensions_is_the_python(self, tmp_path: Path) -> None:
        check_current(_tree(tmp_path))

    def test_extensions_built_from_these_sources_are_current(self, tmp_path: Path) -> None:
        check_current(_built(tmp_path))

    def test_an_edited_source_is_named(self, tmp_path: Path) -> None:
        tree = _built(tmp_path)
        _edit(tree, "gateway.trust.envelope")
        with pytest.raises(StaleBuild, match=r"gateway/trust/envelope\.py has changed"):
            check_current(tree)

    def test_extensions_without_a_record_are_refused(self, tmp_path: Path) -> None:
        tree = _tree(tmp_path)
        _extensions(tree)
        with pytest.raises(StaleBuild, match="make compiled"):
            check_current(tree)


class TestBuildHook:
    def _setup(self, tree: Path, tmp_path: Path, compile_: str) -> subprocess.CompletedProcess[str]:
        fake = tmp_path / "fake"
        (fake / "mypyc").mkdir(parents=True)
        (fake / "mypyc" / "__init__.py").write_text("")
        (fake / "mypyc" / "build.py").write_text(FAKE_MYPYC)
        env = {
            **os.environ,
            "PYTHONPATH": str(fake),
            "YRD_COMPILE": compile_,
            "MYPYC_ASKED": str(tmp_path / "asked.json"),
        }
        return subprocess.run(
            [sys.executable, "setup.py", "--name"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def test_a_build_after_an_edit_records_the_new_sources(self, tmp_path: Path) -> None:
        # The package refuses to import (a stale build): the hook must not need it.
        tree = _built(tmp_path)
        _edit(tree, "gateway.core.logs")
        with pytest.raises(StaleBuild):
            check_current(tree)

        done = self._setup(tree, tmp_path, "1")
        assert done.returncode == 0, done.stderr[-2000:]
        asked = json.loads((tmp_path / "asked.json").read_text())
        assert asked["paths"] == [source_path(m, Path()).as_posix() for m in MODULES]
        assert asked["group"] == "gateway.hotpath"
        check_current(tree)  # the record now matches the edited source

    def test_without_yrd_compile_it_adds_nothing(self, tmp_path: Path) -> None:
        tree = _tree(tmp_path)
        done = self._setup(tree, tmp_path, "")
        assert done.returncode == 0, done.stderr[-2000:]
        assert not (tmp_path / "asked.json").exists()
        assert not (tree / "gateway" / SOURCES_FILE).exists()
