"""Golden vectors: each province's mapping reproduces its hand-written native documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import Translator
from adapters.golden import check_vector, load_vectors
from adapters.spec import AdapterConfig


class TestGoldenVectors:
    """Every vector of every province passes, in both directions unless marked read-only."""

    def test_vectors_pass(self, province: tuple[str, AdapterConfig], config_dir: Path) -> None:
        code, config = province
        vectors = load_vectors(config_dir / code / "golden")
        translator = Translator(config)
        assert {v.message for v in vectors} == set(translator.messages), "every message has one"
        failures = {v.path.name: check_vector(translator, v) for v in vectors}
        assert {name: p for name, p in failures.items() if p} == {}

    def test_a_wrong_mapping_fails_its_vectors(
        self, province: tuple[str, AdapterConfig], config_dir: Path
    ) -> None:
        # Swap two gender codes: consistent in both directions, so only golden
        # vectors (not round trips) can catch it.
        code, config = province
        table = dict(config.code_tables["gender"])
        male = next(k for k, v in table.items() if v == "GENDER_MALE")
        female = next(k for k, v in table.items() if v == "GENDER_FEMALE")
        table[male], table[female] = "GENDER_FEMALE", "GENDER_MALE"
        wrong = AdapterConfig.model_validate(
            {
                **config.model_dump(),
                "code_tables": {**config.code_tables, "gender": table},
            }
        )
        vectors = load_vectors(config_dir / code / "golden")
        translator = Translator(wrong)
        assert any(check_vector(translator, v) for v in vectors if v.message == "identity.person")

    def test_fund_vectors_are_loaded(
        self, province: tuple[str, AdapterConfig], config_dir: Path
    ) -> None:
        code, _ = province
        messages = {v.message for v in load_vectors(config_dir / code / "golden" / "fund")}
        assert {"fund.account", "fund.withdrawal", "fund.status"} <= messages

    def test_a_wrong_reason_table_fails_its_vectors(
        self, province: tuple[str, AdapterConfig], config_dir: Path
    ) -> None:
        # Swap two reason codes: round trips still pass, the vectors must not.
        code, config = province
        table = dict(config.code_tables["withdrawal_reason"])
        purchase = next(k for k, v in table.items() if v == "HOUSE_PURCHASE")
        rent = next(k for k, v in table.items() if v == "RENT")
        table[purchase], table[rent] = "RENT", "HOUSE_PURCHASE"
        wrong = AdapterConfig.model_validate(
            {
                **config.model_dump(),
                "code_tables": {**config.code_tables, "withdrawal_reason": table},
            }
        )
        vectors = load_vectors(config_dir / code / "golden" / "fund")
        translator = Translator(wrong)
        assert any(check_vector(translator, v) for v in vectors if v.message == "fund.withdrawal")


class TestLoadVectors:
    """Malformed vector files are reported with their path."""

    def test_missing_key(self, tmp_path: Path) -> None:
        (tmp_path / "bad.json").write_text('{"message": "identity.person"}')
        with pytest.raises(ValueError, match=r"bad\.json: not a golden vector"):
            load_vectors(tmp_path)

    def test_bad_direction(self, tmp_path: Path) -> None:
        (tmp_path / "bad.json").write_text(
            '{"message": "identity.person", "native": {}, "canonical": {}, "direction": "up"}'
        )
        with pytest.raises(ValueError, match="direction"):
            load_vectors(tmp_path)
