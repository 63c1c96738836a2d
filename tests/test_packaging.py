"""What `pip install .` installs: the node, without simulators, test harness deps or tests.

The wheels are built offline from a copy of the working tree (so that setuptools'
build/ folder never lingers in the repository and leaks stale files into a later
build): ``pip wheel --no-deps --no-build-isolation``, with the setuptools the dev
extra installs. docs/architecture.md ("Packaging") says what goes where and why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.paths import REPOSITORY

#: Never copied into the build: local environments, caches, run-time data, old builds.
_NOT_SOURCES = {".venv", ".git", "build", "dist", "var", "__pycache__", ".hypothesis"}


def _ignore(_folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _NOT_SOURCES or n.endswith((".egg-info", "_cache", ".pyc"))}


class Wheel:
    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            self.names = archive.namelist()
            info = next(n.split("/")[0] for n in self.names if n.endswith(".dist-info/METADATA"))
            self.dist_info = info
            self.metadata: Message = Parser().parsestr(
                archive.read(f"{info}/METADATA").decode("utf-8")
            )
            self.entry_points = archive.read(f"{info}/entry_points.txt").decode("utf-8")

    @property
    def top_level(self) -> set[str]:
        return {n.split("/")[0] for n in self.names} - {self.dist_info}

    def requirements(self) -> list[Requirement]:
        return [Requirement(r) for r in self.metadata.get_all("Requires-Dist") or []]

    def plain_requirements(self) -> set[str]:
        """The distributions a plain ``pip install`` (no extras) brings in."""
        return {
            r.name
            for r in self.requirements()
            if r.marker is None or r.marker.evaluate({"extra": ""})
        }


def _build(source: Path, out: Path) -> Wheel:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--quiet", "-w", str(out), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("*.whl")
    return Wheel(wheel)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Wheel, Wheel]:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPOSITORY, source, ignore=_ignore)
    node = _build(source, root / "node")
    simulators = _build(source / "simulators", root / "simulators")
    return node, simulators


def test_node_wheel_holds_the_node_only(wheels: tuple[Wheel, Wheel]) -> None:
    node, _ = wheels
    assert node.metadata["Name"] == "yrd-gateway"
    assert node.top_level == {"gateway", "adapters", "yrd"}
    for name in node.names:
        assert not name.startswith(("yrd_simulators/", "simulators/", "tests/")), name
        assert not name.startswith(("adapters/simulators/", "province_configs/")), name
    # The harness and the tools ship with the node; their simulator imports are
    # satisfied only where yrd-simulators is installed (docs/architecture.md).
    assert "gateway/testing/localfed.py" in node.names
    assert "gateway/tools/demo.py" in node.names
    assert {"gateway/py.typed", "adapters/py.typed", "yrd/py.typed"} <= set(node.names)


def test_node_requires_hypothesis_only_for_the_adapter_kit(wheels: tuple[Wheel, Wheel]) -> None:
    node, _ = wheels
    plain = node.plain_requirements()
    assert "grpcio" in plain
    assert not plain & {"hypothesis", "yrd-simulators", "pytest"}
    hypothesis = [r for r in node.requirements() if r.name == "hypothesis"]
    assert hypothesis
    for requirement in hypothesis:
        assert requirement.marker is not None
        assert requirement.marker.evaluate({"extra": "adapter-kit"})
        assert not requirement.marker.evaluate({"extra": "dev"})
    assert "adapter-kit" in (node.metadata.get_all("Provides-Extra") or [])
    assert not any(r.name == "yrd-simulators" for r in node.requirements())


def test_node_wheel_has_the_console_script(wheels: tuple[Wheel, Wheel]) -> None:
    node, _ = wheels
    assert "[console_scripts]" in node.entry_points
    assert "yrd-gateway = gateway.cli.main:main" in node.entry_points


def test_simulators_wheel_holds_the_simulators_only(wheels: tuple[Wheel, Wheel]) -> None:
    _, simulators = wheels
    assert simulators.metadata["Name"] == "yrd-simulators"
    assert simulators.top_level == {"yrd_simulators"}
    assert "yrd_simulators/certificate_library.py" in simulators.names
    assert "yrd-gateway" in simulators.plain_requirements()
    assert "yrd-simulators = yrd_simulators.__main__:main" in simulators.entry_points


_WITHOUT_EXTRAS = """
import importlib, pkgutil, sys

# As if neither yrd-simulators nor hypothesis were installed: importing them fails.
for blocked in ("yrd_simulators", "hypothesis"):
    sys.modules[blocked] = None

import adapters, gateway

for package in (gateway, adapters):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        name = module.name
        if name.startswith(("gateway.testing", "gateway.tools")) or name.endswith("__main__"):
            continue
        importlib.import_module(name)

from gateway.cli.main import main

try:
    main(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
"""


def test_the_node_runs_without_simulators_or_hypothesis() -> None:
    """Every node module imports, and the CLI starts, with neither installed."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
    )
    assert done.returncode == 0, done.stderr
    assert "yrd-gateway" in done.stdout
