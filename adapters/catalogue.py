"""The national e-certificate catalogue: categories, their holders and structured fields.

The federation names a certificate type by its **national category code**
(8 digits, defined here); each province's library has codes of its own,
mapped one-to-one in its config::

    [adapter.code_tables.certificate_category]   # native code = national code
    "0201" = "11100000"                          # 结婚证 marriage certificate

Every category says who holds it (a person, or an organisation with a
unified social credit code) and which structured fields it carries, under
canonical names (``Certificate.fields`` keys) and of which kind, so that a
province's native field names and date / money formats can be translated
exactly both ways — exactness matters, because the issuing authority's seal
covers the canonical form (:mod:`adapters.certificate`).

Field kinds (canonical values are always strings):

``text``         free UTF-8 text
``date``         ISO 8601 calendar date ``YYYY-MM-DD``; natively in the
                 province's ``field_date_format``
``fen``          an amount of money in fen, decimal digits without leading
                 zeros (``"100000000"``); natively an integer or a yuan string
``id_number``    GB 11643 resident ID number
``credit_code``  GB 32100 unified social credit code
``region``       GB/T 2260 six-digit region code
``count``        a non-negative integer in decimal digits without leading zeros
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from adapters.errors import TranslationError
from adapters.formats import Mismatch, canonical_date
from adapters.mapping import check_gb11643, check_gb32100
from adapters.spec import AdapterConfig
from gateway.core.identifiers import PROVINCE_PREFIXES, is_region_code

#: The code table of a province's own category codes (native code = national code).
CATEGORY_TABLE = "certificate_category"
#: The optional code table of native structured-field keys (native key = canonical name).
FIELD_TABLE = "certificate_field"

_NATIONAL_CODE = re.compile(r"[1-9][0-9]{7}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")


class FieldKind(enum.StrEnum):
    """What a structured field holds (see the module docstring)."""

    TEXT = "text"
    DATE = "date"
    FEN = "fen"
    ID_NUMBER = "id_number"
    CREDIT_CODE = "credit_code"
    REGION = "region"
    COUNT = "count"


@dataclass(frozen=True)
class CatalogueField:
    """One structured field of a category: canonical name, kind, whether always present."""

    name: str
    kind: FieldKind = FieldKind.TEXT
    required: bool = False


@dataclass(frozen=True)
class Category:
    """One certificate category of the national catalogue."""

    code: str
    name_zh: str
    name_en: str
    holder: Literal["person", "organisation"]
    fields: tuple[CatalogueField, ...]

    @property
    def field_map(self) -> Mapping[str, CatalogueField]:
        return {f.name: f for f in self.fields}


def _f(name: str, kind: FieldKind = FieldKind.TEXT, *, required: bool = False) -> CatalogueField:
    return CatalogueField(name, kind, required)


_T, _D, _FEN = FieldKind.TEXT, FieldKind.DATE, FieldKind.FEN
_ID, _CC, _RG, _N = FieldKind.ID_NUMBER, FieldKind.CREDIT_CODE, FieldKind.REGION, FieldKind.COUNT

_MARRIAGE_FIELDS = (
    _f("spouse_a_id", _ID, required=True),
    _f("spouse_a_name", required=True),
    _f("spouse_b_id", _ID, required=True),
    _f("spouse_b_name", required=True),
    _f("registration_date", _D, required=True),
    _f("registration_authority"),
)

_CATEGORIES: tuple[Category, ...] = (
    # -- identity and household
    Category(
        "10100000",
        "居民身份证",
        "resident identity card",
        "person",
        (
            _f("full_name", required=True),
            _f("gender"),
            _f("ethnicity"),
            _f("birth_date", _D, required=True),
            _f("address"),
            _f("valid_from", _D),
        ),
    ),
    Category(
        "10200000",
        "居民户口簿",
        "household register",
        "person",
        (
            _f("household_number", required=True),
            _f("household_head_name"),
            _f("relation_to_head"),
            _f("address"),
            _f("registered_region", _RG),
        ),
    ),
    Category(
        "10300000",
        "居住证",
        "residence permit",
        "person",
        (
            _f("full_name", required=True),
            _f("address", required=True),
            _f("residence_region", _RG),
            _f("valid_from", _D),
            _f("valid_until", _D),
        ),
    ),
    # -- marriage, birth and family
    Category("11100000", "结婚证", "marriage certificate", "person", _MARRIAGE_FIELDS),
    Category("11100100", "离婚证", "divorce certificate", "person", _MARRIAGE_FIELDS),
    Category(
        "11200000",
        "出生医学证明",
        "medical birth certificate",
        "person",
        (
            _f("child_name", required=True),
            _f("child_gender"),
            _f("birth_date", _D, required=True),
            _f("birth_place"),
            _f("mother_name"),
            _f("mother_id", _ID),
            _f("father_name"),
            _f("father_id", _ID),
        ),
    ),
    Category(
        "11300000",
        "独生子女父母光荣证",
        "only-child parents' certificate of honour",
        "person",
        (
            _f("father_name"),
            _f("mother_name"),
            _f("child_name", required=True),
            _f("child_birth_date", _D),
        ),
    ),
    Category(
        "11400000",
        "死亡医学证明",
        "medical death certificate",
        "person",
        (
            _f("deceased_name", required=True),
            _f("deceased_id", _ID, required=True),
            _f("death_date", _D, required=True),
            _f("death_place"),
        ),
    ),
    # -- education and qualifications
    Category(
        "12100000",
        "学历证书",
        "graduation certificate",
        "person",
        (
            _f("school_name", required=True),
            _f("major"),
            _f("education_level", required=True),
            _f("enrolment_date", _D),
            _f("graduation_date", _D, required=True),
        ),
    ),
    Category(
        "12200000",
        "学位证书",
        "degree certificate",
        "person",
        (
            _f("school_name", required=True),
            _f("degree_name", required=True),
            _f("major"),
            _f("award_date", _D, required=True),
        ),
    ),
    Category(
        "12300000",
        "教师资格证书",
        "teacher qualification certificate",
        "person",
        (_f("qualification_type", required=True), _f("subject"), _f("valid_from", _D)),
    ),
    Category(
        "12400000",
        "职业资格证书",
        "vocational qualification certificate",
        "person",
        (_f("occupation", required=True), _f("skill_level", required=True)),
    ),
    # -- real estate
    Category(
        "13100000",
        "不动产权证书",
        "real estate title certificate",
        "person",
        (
            _f("property_address", required=True),
            _f("property_unit_number", required=True),
            _f("area_m2", required=True),
            _f("usage"),
            _f("right_type"),
            _f("land_use_term_end", _D),
        ),
    ),
    Category(
        "13200000",
        "房屋租赁登记备案证明",
        "housing lease registration",
        "person",
        (
            _f("property_address", required=True),
            _f("area_m2"),
            _f("lessor_name"),
            _f("lease_start", _D, required=True),
            _f("lease_end", _D, required=True),
        ),
    ),
    # -- business
    Category(
        "14100000",
        "营业执照",
        "business licence",
        "organisation",
        (
            _f("company_name", required=True),
            _f("company_type"),
            _f("legal_representative", required=True),
            _f("registered_capital_fen", _FEN),
            _f("establishment_date", _D, required=True),
            _f("business_scope"),
            _f("registered_address"),
        ),
    ),
    Category(
        "14200000",
        "食品经营许可证",
        "food business permit",
        "organisation",
        (
            _f("company_name", required=True),
            _f("legal_representative"),
            _f("business_address", required=True),
            _f("business_items"),
        ),
    ),
    # -- driving and vehicles
    Category(
        "15100000",
        "机动车驾驶证",
        "driving licence",
        "person",
        (
            _f("full_name", required=True),
            _f("licence_class", required=True),
            _f("first_issue_date", _D),
            _f("valid_from", _D),
            _f("valid_until", _D),
        ),
    ),
    Category(
        "15200000",
        "机动车行驶证",
        "vehicle registration certificate",
        "person",
        (
            _f("plate_number", required=True),
            _f("vehicle_type"),
            _f("vin", required=True),
            _f("registration_date", _D),
        ),
    ),
    # -- social security, provident fund, health
    Category(
        "16100000",
        "社会保障卡",
        "social security card",
        "person",
        (
            _f("card_number", required=True),
            _f("social_security_number", _ID, required=True),
            _f("issuing_region", _RG),
        ),
    ),
    Category(
        "16200000",
        "社会保险参保缴费证明",
        "social insurance contribution record",
        "person",
        (
            _f("insurance_type", required=True),
            _f("insured_region", _RG),
            _f("start_date", _D),
            _f("contribution_months", _N),
            _f("employer_credit_code", _CC),
        ),
    ),
    Category(
        "16300000",
        "住房公积金缴存证明",
        "housing provident fund deposit certificate",
        "person",
        (
            _f("fund_account", required=True),
            _f("employer_name"),
            _f("monthly_deposit_fen", _FEN),
            _f("start_date", _D),
        ),
    ),
    Category(
        "16400000",
        "残疾人证",
        "disability certificate",
        "person",
        (
            _f("disability_category", required=True),
            _f("disability_level", required=True),
            _f("guardian_name"),
        ),
    ),
)

#: The catalogue by national category code.
CATALOGUE: Mapping[str, Category] = MappingProxyType({c.code: c for c in _CATEGORIES})

#: Every canonical structured-field name of the catalogue, sorted.
FIELD_NAMES: tuple[str, ...] = tuple(sorted({f.name for c in _CATEGORIES for f in c.fields}))


def category(code: str) -> Category:
    """The catalogue entry of a national category code (TranslationError when unknown)."""
    found = CATALOGUE.get(code)
    if found is None:
        shown = repr(code) if _NATIONAL_CODE.fullmatch(code) else "this value"
        raise TranslationError(
            "category_code", f"a national category code of the catalogue; {shown} is not one"
        )
    return found


def local_code(adapter: AdapterConfig, national: str) -> str:
    """The province's own code for a national category (TranslationError when unmapped)."""
    category(national)
    table = adapter.code_tables.get(CATEGORY_TABLE, {})
    for native, value in table.items():
        if value == national:
            return native
    province = adapter.certificate.province if adapter.certificate else "this province"
    raise TranslationError(
        "category_code",
        f"a category mapped by code table {CATEGORY_TABLE!r}: national category "
        f"{national!r} has no code in {province}",
    )


def national_code(adapter: AdapterConfig, native: str) -> str:
    """The national code of a province's own category code (TranslationError when unmapped)."""
    value = adapter.code_tables.get(CATEGORY_TABLE, {}).get(native)
    if not isinstance(value, str):
        province = adapter.certificate.province if adapter.certificate else "this province"
        shown = repr(native) if len(native) <= 16 else "this code"
        raise TranslationError(
            "category_code",
            f"a category code of {province}'s code table {CATEGORY_TABLE!r}; {shown} is not one",
        )
    category(value)
    return value


def check_value(kind: FieldKind, value: str) -> None:
    """Check a canonical structured-field value of ``kind`` (raises Mismatch)."""
    if kind is FieldKind.DATE:
        canonical_date(value)
    elif kind in (FieldKind.FEN, FieldKind.COUNT):
        if not _DECIMAL.fullmatch(value):
            raise Mismatch("decimal digits without leading zeros")
    elif kind is FieldKind.ID_NUMBER:
        check_gb11643(value)
    elif kind is FieldKind.CREDIT_CODE:
        check_gb32100(value)
    elif kind is FieldKind.REGION and not is_region_code(value):
        raise Mismatch(f"a GB/T 2260 six-digit region code (province prefix {PROVINCE_PREFIXES})")


def check_fields(entry: Category, fields: Mapping[str, str]) -> None:
    """Check a certificate's structured fields against its category (TranslationError)."""
    known = entry.field_map
    for name, value in fields.items():
        spec = known.get(name)
        if spec is None:
            raise TranslationError(
                f"fields.{name}",
                f"a field of category {entry.code} ({entry.name_en}): one of {sorted(known)}",
            )
        try:
            check_value(spec.kind, value)
        except Mismatch as exc:
            raise TranslationError(f"fields.{name}", exc.expected) from None
    for spec in entry.fields:
        if spec.required and not fields.get(spec.name):
            raise TranslationError(
                f"fields.{spec.name}", f"a value (required for category {entry.code})"
            )


def check_category_table(adapter: AdapterConfig) -> None:
    """Check a province's category table: national codes of the catalogue only (ValueError)."""
    table = adapter.code_tables.get(CATEGORY_TABLE)
    if not table:
        raise ValueError(f"code_tables.{CATEGORY_TABLE}: expected the province's category codes")
    unknown = sorted(str(v) for v in table.values() if not isinstance(v, str) or v not in CATALOGUE)
    if unknown:
        raise ValueError(
            f"code_tables.{CATEGORY_TABLE}: expected national codes of the catalogue, got {unknown}"
        )
