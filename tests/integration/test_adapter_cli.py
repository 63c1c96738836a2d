"""`yrd-gateway config check` and `yrd-gateway adapter test` on adapter mistakes, as an
operator runs them (real processes), on the guide's fifth region."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adapters import conformance
from gateway.cli import adapter
from tests.integration.test_fifth_region import cli, make_region


@pytest.fixture
def penglai(tmp_path: Path) -> Path:
    return make_region(tmp_path)


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text(encoding="utf-8")
    assert old in text, old
    file.write_text(text.replace(old, new, 1), encoding="utf-8")


class TestConfigCheckOfTheAdapter:
    """Every adapter mistake is one line: file, `adapter.` key path, value, expectation."""

    def test_every_mistake_named(self, penglai: Path) -> None:
        _edit(penglai, 'N = "GENDER_NOT_STATED"', 'N = "GENDER_NOT_STATED"\nW = "GENDER_FEMALE"')
        _edit(penglai, 'format = "yyyy/MM/dd"', 'format = "dd.MM.yyyy"')
        _edit(
            penglai,
            '  { canonical = "balance_fen", native = "account.balance_yuan", format = "yuan" },\n',
            "",
        )
        _edit(penglai, 'separator = ";"', 'seperator = ";"')
        result = cli("config", "check", str(penglai))
        assert result.returncode == 1
        out = result.stdout
        assert (
            f"{penglai}: adapter.code_tables.gender.W: got 'GENDER_FEMALE', expected one native "
            "code per canonical value (one-to-one), but 'F' and 'W' both map to 'GENDER_FEMALE'"
        ) in out
        assert (
            f"{penglai}: adapter.identity.person.fields.3.format: got 'dd.MM.yyyy', expected "
            "one of ['epoch_millis', 'yyyy-MM-dd', 'yyyy/MM/dd', 'yyyyMMdd'] for a date field"
        ) in out
        assert (
            f"{penglai}: adapter.fund.account.fields: got ['as_of', 'found', 'fund_account', "
            "'status'], expected a rule for the required canonical field 'balance_fen'"
        ) in out
        assert (
            f"{penglai}: adapter.fund.withdrawal.fields.7.seperator: got ';', expected no such "
            "key (unknown keys are refused)"
        ) in out

    def test_missing_plugin_says_what_to_install(self, penglai: Path) -> None:
        _edit(
            penglai,
            'timezone = "Asia/Shanghai"\n',
            'timezone = "Asia/Shanghai"\n\n[adapter.plugin]\nname = "penglai-seal"\n',
        )
        result = cli("config", "check", str(penglai))
        assert result.returncode == 1
        assert f"{penglai}: adapter.plugin.name: got 'penglai-seal', expected" in result.stdout
        assert "pip install yrd-gateway-adapter-penglai-seal" in result.stdout


class TestAdapterTest:
    """`adapter test` prints a table and exits 0 only when every check passed."""

    def test_passing_region(self, penglai: Path) -> None:
        result = cli("adapter", "test", str(penglai), "--examples", "10")
        assert result.returncode == 0, result.stdout
        header = re.search(r"message\s+vector\s+direction\s+result", result.stdout)
        assert header is not None
        assert re.search(
            r"fund\.withdrawal\s+fund/withdrawal\.json\s+read\+write\s+pass", result.stdout
        )
        assert re.search(r"identity\.person\s+10 generated\s+round trip\s+pass", result.stdout)

    def test_failing_vector_names_the_field(self, penglai: Path) -> None:
        vector = penglai.parent / "golden" / "identity" / "person.json"
        data = json.loads(vector.read_text(encoding="utf-8"))
        data["native"]["sex"] = "M"  # the documentation says F: a consistently wrong table
        vector.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        result = cli("adapter", "test", str(penglai), "--examples", "5")
        assert result.returncode == 1
        assert re.search(
            r"identity\.person\s+identity/person\.json\s+read\+write\s+FAIL", result.stdout
        )
        assert "native → canonical: gender: expected 'GENDER_FEMALE', got 'GENDER_MALE'" in (
            result.stdout
        )

    def test_message_without_vector_fails(self, penglai: Path) -> None:
        (penglai.parent / "golden" / "fund" / "applicant.json").unlink()
        result = cli("adapter", "test", str(penglai), "--examples", "5")
        assert result.returncode == 1
        assert "no golden vector for fund.applicant" in result.stdout

    def test_vectors_elsewhere(self, penglai: Path, tmp_path: Path) -> None:
        result = cli(
            "adapter",
            "test",
            str(penglai),
            "--vectors",
            str(tmp_path / "nowhere"),
            "--examples",
            "5",
        )
        assert result.returncode == 1
        assert "no golden vectors: the folder does not exist" in result.stdout

    def test_invalid_config_is_refused(self, penglai: Path) -> None:
        _edit(penglai, 'format = "json"', 'format = "yaml"')
        result = cli("adapter", "test", str(penglai))
        assert result.returncode == 2
        assert f"{penglai}: adapter.format: got 'yaml'" in result.stdout

    def test_help(self) -> None:
        result = cli("adapter", "test", "--help")
        assert result.returncode == 0
        assert "usage: yrd-gateway adapter test" in result.stdout
        # The command's default is the conformance kit's (the CLI does not import
        # the kit until the command runs).
        assert adapter.DEFAULT_EXAMPLES == conformance.DEFAULT_EXAMPLES
        assert f"(default {conformance.DEFAULT_EXAMPLES})" in " ".join(result.stdout.split())
