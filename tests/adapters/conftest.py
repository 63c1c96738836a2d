"""Fixtures shared by the adapter tests: the province configs as shipped.

(No imports from here in test modules: the gateway's tests have a conftest
of their own, and fixtures are how pytest shares without name clashes.)
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.spec import AdapterConfig
from tests.paths import CONFIG_DIR, config_file

#: (province code, name used in test ids), the four shipped provinces.
PROVINCES = [
    ("310000", "shanghai"),
    ("320000", "jiangsu"),
    ("330000", "zhejiang"),
    ("340000", "anhui"),
]


def _adapter_table(stem: str) -> dict[str, Any]:
    code = next(code for code, name in PROVINCES if name == stem)
    with config_file(code).open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["adapter"]
    return table


@pytest.fixture(scope="session")
def config_dir() -> Path:
    return CONFIG_DIR


@pytest.fixture(scope="session")
def adapter_table() -> Callable[[str], dict[str, Any]]:
    """A fresh copy of a shipped province's raw ``[adapter]`` table, to edit in a test."""
    tables = {stem: _adapter_table(stem) for _, stem in PROVINCES}
    return lambda stem: copy.deepcopy(tables[stem])


@pytest.fixture(scope="session", params=PROVINCES, ids=[stem for _, stem in PROVINCES])
def province(request: pytest.FixtureRequest) -> tuple[str, AdapterConfig]:
    """Each shipped province: (code, validated adapter config).

    Session-scoped so that hypothesis tests can use it.
    """
    code, stem = request.param
    return code, AdapterConfig.model_validate(_adapter_table(stem))
