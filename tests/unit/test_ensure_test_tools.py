"""scripts/ensure_test_tools.sh: what `make test` runs before the suite to have
Debian's chromium, chromium-driver and prometheus (promtool), and gcc with the
interpreter's headers (python3-dev) for the compiled build's test. Run against fake
programs on a PATH of their own: nothing is installed here."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.paths import REPOSITORY

ENSURE = REPOSITORY / "scripts" / "ensure_test_tools.sh"
PACKAGES = "chromium chromium-driver prometheus gcc python3-dev"


def _program(folder: Path, name: str, body: str) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)


def _fakes(tmp_path: Path, *, uid: int, tools: bool) -> Path:
    """A folder to be the whole PATH: `id` saying ``uid``, an apt-get that records
    its calls (its first install fails: no package lists yet) and installs nothing,
    and the tools when ``tools`` (a ``python3`` whose headers are there among them)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    _program(fake, "id", f"echo {uid}")
    _program(
        fake,
        "apt-get",
        f'echo "$DEBIAN_FRONTEND apt-get $*" >> {fake}/calls\n'
        f'if [ "$1" = install ] && [ ! -e {fake}/updated ]; then exit 100; fi\n'
        f'if [ "$1" = update ]; then : > {fake}/updated; fi\n'
        "exit 0",
    )
    if tools:
        for name in ("chromium", "chromedriver", "promtool", "gcc", "python3"):
            _program(fake, name, "exit 0")
    return fake


def _ensure(fake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(ENSURE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": str(fake)},
        cwd="/",
    )


def test_does_nothing_when_the_tools_are_here(tmp_path: Path) -> None:
    fake = _fakes(tmp_path, uid=0, tools=True)
    result = _ensure(fake)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (fake / "calls").exists()


def test_installs_the_missing_packages_as_root(tmp_path: Path) -> None:
    fake = _fakes(tmp_path, uid=0, tools=False)
    result = _ensure(fake)
    calls = (fake / "calls").read_text(encoding="utf-8").splitlines()
    install = f"noninteractive apt-get install -y --no-install-recommends {PACKAGES}"
    assert calls == [install, "noninteractive apt-get update", install]
    # the fake installed nothing: the script says so and fails
    assert result.returncode == 1
    assert "is still not found" in result.stderr


def test_without_root_says_how_to_install(tmp_path: Path) -> None:
    fake = _fakes(tmp_path, uid=1000, tools=False)
    result = _ensure(fake)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"sudo apt-get install {PACKAGES}" in result.stderr
    assert not (fake / "calls").exists()


def test_the_headers_of_the_interpreter_named(tmp_path: Path) -> None:
    """The interpreter `make test` runs on is asked for its headers: one without
    them (this fake answers "no") needs python3-dev, even when python3 has them."""
    fake = _fakes(tmp_path, uid=1000, tools=True)
    _program(fake, "venv-python", "exit 1")
    assert _ensure(fake).returncode == 0
    result = _ensure(fake, str(fake / "venv-python"))
    assert result.returncode == 1
    assert "sudo apt-get install python3-dev" in result.stderr
