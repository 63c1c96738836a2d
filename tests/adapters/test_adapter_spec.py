"""Validation of the ``[adapter]`` table: mistakes are caught at start-up, by key path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.spec import AdapterConfig

Table = Callable[[str], dict[str, Any]]


def _rules(table: dict[str, Any], slot: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = table["identity"][slot]["fields"]
    return rules


def _rule(table: dict[str, Any], slot: str, canonical: str) -> dict[str, Any]:
    return next(r for r in _rules(table, slot) if r.get("canonical") == canonical)


class TestShippedConfigs:
    """Every province config in the repository validates."""

    def test_validates(self, province: tuple[str, AdapterConfig]) -> None:
        _, config = province
        assert config.identity is not None
        assert config.identity.status_path.startswith("/")

    def test_models_are_frozen(self, province: tuple[str, AdapterConfig]) -> None:
        _, config = province
        with pytest.raises(ValidationError):
            config.format = "xml"  # type: ignore[misc]  # the point: frozen models refuse it


class TestCodeTables:
    """Code tables must be one-to-one and fit the field that uses them."""

    def test_two_codes_for_one_value_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        table["code_tables"]["gender"]["3"] = "GENDER_MALE"
        with pytest.raises(
            ValidationError, match=r"code_tables\.gender\.3\n.*one-to-one.*'1' and '3'"
        ):
            AdapterConfig.model_validate(table)

    def test_value_not_in_enum_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["code_tables"]["gender"]["X"] = "GENDER_OTHER"
        with pytest.raises(
            ValidationError,
            match=r"code_tables\.gender\.X\n.*one of \[.*GENDER_MALE.*input_value='GENDER_OTHER'",
        ):
            AdapterConfig.model_validate(table)

    def test_undefined_table_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("zhejiang")
        _rule(table, "person", "gender")["codes"] = "sex"
        with pytest.raises(
            ValidationError,
            match=r"identity\.person\.fields\.2\.codes\n.*defined under.*input_value='sex'",
        ):
            AdapterConfig.model_validate(table)

    def test_bool_field_needs_bool_codes(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        table["code_tables"]["used_flag"] = {"1": "yes", "0": "no"}
        with pytest.raises(ValidationError, match=r"code_tables\.used_flag\.1\n.*true or false"):
            AdapterConfig.model_validate(table)

    def test_integer_value_is_not_coerced(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        table["code_tables"]["used_flag"] = {"1": 1, "0": 0}
        with pytest.raises(ValidationError):
            AdapterConfig.model_validate(table)


class TestFieldRules:
    """Field rules name real canonical fields, known formats and valid paths."""

    def test_unknown_date_format_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        _rule(table, "person", "birth_date")["format"] = "ddMMyyyy"
        with pytest.raises(
            ValidationError, match=r"person\.fields\.3\.format\n.*one of .*'yyyyMMdd'"
        ):
            AdapterConfig.model_validate(table)

    def test_format_on_a_plain_string_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        _rule(table, "person", "full_name")["format"] = "yyyyMMdd"
        with pytest.raises(
            ValidationError, match=r"fields\.1\.format\n.*a string field takes none"
        ):
            AdapterConfig.model_validate(table)

    def test_unknown_key_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        _rule(table, "person", "full_name")["requird"] = True
        with pytest.raises(ValidationError, match="requird"):
            AdapterConfig.model_validate(table)

    def test_unknown_top_level_key_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["fromat"] = "json"
        with pytest.raises(ValidationError, match="fromat"):
            AdapterConfig.model_validate(table)

    def test_unknown_canonical_field_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        _rules(table, "person").append({"canonical": "shoe_size", "native": "ShoeSize"})
        with pytest.raises(
            ValidationError,
            match=r"person\.fields\.9\.canonical\n.*one of.*input_value='shoe_size'",
        ):
            AdapterConfig.model_validate(table)

    def test_required_canonical_field_must_be_mapped(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        table["identity"]["person"]["fields"] = [
            r for r in _rules(table, "person") if r["canonical"] != "birth_date"
        ]
        with pytest.raises(ValidationError, match="required canonical field 'birth_date'"):
            AdapterConfig.model_validate(table)

    def test_required_canonical_field_needs_required_or_default(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        _rule(table, "person", "id_number")["required"] = False
        with pytest.raises(
            ValidationError, match=r"person\.fields\.0\.required\n.*required = true or a default"
        ):
            AdapterConfig.model_validate(table)

    def test_field_mapped_twice_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        _rules(table, "person").append({"canonical": "address", "native": "address2"})
        with pytest.raises(ValidationError, match="already mapped"):
            AdapterConfig.model_validate(table)

    def test_overlapping_native_paths_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        _rule(table, "status_response", "checked_at")["native"] = "sj.pzzt.cxsj"
        with pytest.raises(ValidationError, match="overlap"):
            AdapterConfig.model_validate(table)

    def test_bad_default_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        _rule(table, "person", "gender")["default"] = "GENDER_UNKNOWN"
        with pytest.raises(ValidationError, match=r"person\.fields\.2\.default\n.*one of"):
            AdapterConfig.model_validate(table)

    def test_bad_pattern_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        _rule(table, "person", "ethnicity")["pattern"] = "[0-9"
        with pytest.raises(ValidationError, match="regular expression"):
            AdapterConfig.model_validate(table)

    def test_const_and_canonical_are_exclusive(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        _rule(table, "person", "nationality")["const"] = "CHN"
        with pytest.raises(ValidationError, match="exactly one of 'canonical'"):
            AdapterConfig.model_validate(table)

    def test_empty_path_segment_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        _rule(table, "person", "full_name")["native"] = "jbxx..xm"
        with pytest.raises(ValidationError, match="dotted path"):
            AdapterConfig.model_validate(table)


class TestDocumentShape:
    """XML mappings name their document element; JSON mappings have none."""

    def test_xml_needs_root(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        del table["identity"]["status_request"]["root"]
        with pytest.raises(
            ValidationError, match=r"status_request\.root\n.*the XML document element"
        ):
            AdapterConfig.model_validate(table)

    def test_json_root_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["identity"]["person"]["root"] = "Person"
        with pytest.raises(ValidationError, match="only for XML"):
            AdapterConfig.model_validate(table)

    def test_xml_element_names_checked(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        _rule(table, "person", "full_name")["native"] = "Full Name"
        with pytest.raises(ValidationError, match=r"person\.fields\.1\.native\n.*valid xml keys"):
            AdapterConfig.model_validate(table)

    def test_unknown_time_zone_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("zhejiang")
        table["timezone"] = "Asia/Hangzhou"
        with pytest.raises(ValidationError, match="IANA time zone"):
            AdapterConfig.model_validate(table)

    def test_unknown_format_rejected(self, adapter_table: Table) -> None:
        table = adapter_table("zhejiang")
        table["format"] = "yaml"
        with pytest.raises(ValidationError, match="format"):
            AdapterConfig.model_validate(table)
