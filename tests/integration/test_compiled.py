"""A compiled build (`make compiled`): mypyc compiles the verification path, the
compiled nodes pass the exchanges' tests, and a node refuses to run an extension
older than its source.

The build writes beside the sources, so it runs in a copy of the checkout: the
rest of the suite, running at the same time, keeps importing the Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.compiled import MODULES, SOURCES_FILE

ROOT = Path(__file__).resolve().parents[2]

#: The tests run again on the compiled build: the unit tests, both exchanges end
#: to end, the stream, single use, and hostile answers and a fuzzing peer against
#: the compiled checks.
COMPILED_TESTS = (
    "tests/unit",
    "tests/integration/test_identity_exchange.py",
    "tests/integration/test_fund_exchange.py",
    "tests/integration/test_federation_stream.py",
    "tests/integration/test_hostile_answers.py",
    "tests/integration/test_single_use.py",
    "tests/integration/test_fuzz_peer.py",
    # Tests that replace a compiled class's method, or pass a stand-in where a
    # compiled function declares its type: a compiled class has fixed methods
    # and a compiled function checks the types it declares.
    "--deselect",
    "tests/integration/test_fuzz_peer.py::test_a_retry_gets_the_remembered_answer_byte_for_byte",
    "--deselect",
    "tests/unit/test_identity_relying.py",
)


def _run(
    args: list[str], cwd: Path, timeout: float, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "YRD_"))}
    env.update(extra)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _which_file(module: str, cwd: Path) -> str:
    done = _run([sys.executable, "-c", f"import {module} as m; print(m.__file__)"], cwd, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_compiled_build_passes_the_exchange_tests(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        # Not the dot-folders (.git, .venv, caches, the hypothesis database that
        # the other tests write to meanwhile), nor what a run or a build leaves.
        ignore=shutil.ignore_patterns(
            ".*", "var", "build", "__pycache__", "*.egg-info", "*.so", SOURCES_FILE
        ),
    )
    # What `make compiled` runs, with this interpreter.
    built = _run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        tree,
        timeout=900,
        YRD_COMPILE="1",
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]

    # Every module of the list is compiled, and is what the interpreter imports.
    for module in MODULES:
        assert _which_file(module, tree).endswith(".so"), module
    assert (tree / "gateway" / SOURCES_FILE).exists()

    tests = _run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *COMPILED_TESTS],
        tree,
        timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout
    assert " skipped" not in tests.stdout

    # An edited source: its extension would run the old code, so the package refuses.
    source = tree / "gateway" / "core" / "crypto.py"
    original = source.read_text(encoding="utf-8")
    source.write_text(original + "\n# edited after the build\n", encoding="utf-8")
    stale = _run([sys.executable, "-c", "import gateway"], tree, timeout=60)
    assert stale.returncode != 0
    assert "gateway/core/crypto.py has changed since it was compiled" in stale.stderr
    assert "make compiled" in stale.stderr
    assert "make pure" in stale.stderr
    source.write_text(original, encoding="utf-8")
    assert _run([sys.executable, "-c", "import gateway"], tree, timeout=60).returncode == 0

    # make pure: back to the Python, which runs whatever the sources say.
    removed = _run(["make", "--no-print-directory", "-s", "pure"], tree, timeout=60)
    assert removed.returncode == 0, removed.stderr
    assert _which_file("gateway.services.identity", tree).endswith(".py")
    assert not list((tree / "gateway").rglob("*.so"))
