"""Adapter configuration: the ``[adapter]`` table of a province config.

A province's native formats are data, not code. The ``[adapter]`` table says
how each canonical message is laid out in the province's own documents; the
gateway validates it into the frozen models below at start-up
(``AdapterConfig.model_validate(toml["adapter"])``), so a mistake is reported
with its key path before the first request, not in the middle of one.

Shape (Shanghai, abridged)::

    [adapter]
    format = "json"                 # "json" or "xml": the back-end's document format
    timezone = "Asia/Shanghai"      # for epoch dates and local-time timestamps (default)

    # Code tables: native code = canonical value. One-to-one, so that both
    # directions are defined. Canonical values are enum value names, booleans
    # or strings, as the field that uses the table needs.
    [adapter.code_tables.gender]
    "1" = "GENDER_MALE"
    "2" = "GENDER_FEMALE"

    [adapter.code_tables.used_flag]
    "1" = true
    "0" = false

    [adapter.identity]
    status_path = "/api/sfrz/zt"    # POST here with the native status request

    # One mapping per canonical message: a list of field rules.
    [adapter.identity.person]
    fields = [
      { canonical = "id_number", native = "sfzh", required = true, check = "gb11643" },
      { canonical = "gender", native = "xb", required = true, codes = "gender" },
      { canonical = "birth_date", native = "csrq", required = true, format = "yyyyMMdd" },
      { canonical = "nationality", native = "gj", default = "CHN" },
    ]

    [adapter.identity.status_response]
    fields = [
      { canonical = "state", native = "sj.pzzt", required = true, codes = "credential_state" },
      { canonical = "holder", native = "sj.jg" },   # nested: mapped by [adapter.identity.person]
    ]

A field rule:

``canonical``
    Field name in the canonical message (the proto field name).
``native``
    Path in the native document: keys separated by dots (``sj.jg.xm``). In XML
    the keys are element names below the document element, and a last key
    ``@name`` is an attribute.
``const``
    Instead of ``canonical``: a native field with a fixed value, written on
    every document and checked on reading (``{ native = "fhdm", const = "00" }``
    rejects an answer whose result code is not success).
``required``
    The native document must carry a non-empty value; otherwise reading
    fails, naming the path. Writing fails when the canonical value is absent.
``default``
    Canonical value used when the native document has none.
``format``
    Date, timestamp or bytes format (see :mod:`adapters.formats`).
``codes``
    Name of a code table under ``[adapter.code_tables]``.
``check``
    Extra validation of the canonical value: ``"gb11643"`` (resident ID number:
    18 characters, birth date, ISO 7064 MOD 11-2 check character).
``pattern``
    Regular expression the whole canonical string value must match.

``separator``
    For a list field (a repeated string, such as supporting certificate ids):
    the native value is one string with the items joined by this separator
    (``"C1,C2"``) instead of a JSON array / repeated XML elements.
``item``
    For a list field in XML: the element name of each item below the
    container element at ``native`` (``<Proofs><ProofNo>…</ProofNo>…</Proofs>``).

A field whose canonical kind is a message (``holder``) is mapped by the
message's own mapping, with its native paths relative to ``native``.

Integer fields (int64: amounts of money) take the formats ``integer``
(default), ``fen`` (non-negative) or ``yuan`` (a decimal string such as
``"1234.56"``, converted to fen exactly); see :mod:`adapters.formats`.

The fund domain (the province's housing provident fund centre)::

    [adapter.fund]
    province = "310000"              # stamped on FundAccount.fund_province
    account_path = "/api/gjj/zhcx"   # POST the account query here
    submit_path = "/api/gjj/tqsq"    # POST a withdrawal here
    status_path = "/api/gjj/tqcx"    # POST the status query here, or GET a
                                     # path with "{reference}" in it (then no
                                     # [adapter.fund.status_query])

    [adapter.fund.account_query]     # {id_number}
    [adapter.fund.account]           # FundAccount + found (bool, via a code table
                                     # of the answer's result code)
    [adapter.fund.withdrawal]        # WithdrawalApplication + reference
    [adapter.fund.applicant]         # the nested applicant (Person): id_number, full_name
    [adapter.fund.submit_answer]     # WithdrawalStatusUpdate (+ reference)
    [adapter.fund.status_query]      # {reference} (only for a POST status_path)
    [adapter.fund.status]            # WithdrawalStatusUpdate + found (+ reference)

Messages in XML name their document element with ``root = "StatusQuery"``
(JSON documents have none: nesting is in the paths).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
    model_validator,
)

from adapters import formats
from adapters.canonical import DOMAINS, CanonicalField, CanonicalMessage, Kind

_JSON_KEY = re.compile(r"[^.\s][^.]*")
# XML element names without namespaces (prefixed names would need a namespace map).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_XML_SEGMENT = re.compile(r"@?[A-Za-z_][A-Za-z0-9_-]*")

CodeValue = StrictStr | StrictBool


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldRule(_Frozen):
    """How one canonical field is found in, and written to, a native document."""

    canonical: StrictStr | None = None
    native: StrictStr
    const: CodeValue | None = None
    required: StrictBool = False
    default: CodeValue | None = None
    format: StrictStr | None = None
    codes: StrictStr | None = None
    check: Literal["gb11643"] | None = None
    pattern: StrictStr | None = None
    separator: StrictStr | None = Field(default=None, min_length=1)
    item: StrictStr | None = None

    @field_validator("native")
    @classmethod
    def _native_path(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError("expected a dotted path of non-empty keys, e.g. 'jbxx.xm'")
        return value

    @model_validator(mode="after")
    def _canonical_or_const(self) -> FieldRule:
        if (self.canonical is None) == (self.const is None):
            raise ValueError("expected exactly one of 'canonical' (a mapped field) or 'const'")
        if self.const is not None and (
            self.required or self.default is not None or self.format or self.codes
        ):
            raise ValueError("a 'const' rule takes no required, default, format or codes")
        if self.const is not None and (self.check or self.pattern):
            raise ValueError("a 'const' rule takes no check or pattern")
        if self.const is not None and (self.separator or self.item):
            raise ValueError("a 'const' rule takes no separator or item")
        if self.separator is not None and self.item is not None:
            raise ValueError("a list is either joined by a 'separator' or has 'item' elements")
        return self

    @property
    def name(self) -> str:
        """How messages refer to the rule: its canonical field, or its constant."""
        return self.canonical if self.canonical is not None else f"const {self.native}"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"expected a regular expression: {exc}") from None
        return value

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.native.split("."))


class MessageMapping(_Frozen):
    """The layout of one canonical message in the native format: a list of field rules."""

    root: StrictStr | None = None
    fields: tuple[FieldRule, ...] = Field(min_length=1)


class IdentityAdapter(_Frozen):
    """The identity domain: the e-ID authority's status query and its record of a person."""

    status_path: StrictStr
    person: MessageMapping
    status_request: MessageMapping
    status_response: MessageMapping

    @field_validator("status_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("expected an absolute URL path such as '/api/status'")
        return value


def _url_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError("expected an absolute URL path such as '/api/status'")
    return value


class FundAdapter(_Frozen):
    """The fund domain: the provident fund centre's account, withdrawal and status documents.

    A province without this section cannot serve fund requests; one with it
    can, without any code of its own.
    """

    #: GB/T 2260 code of the province whose centre this is (FundAccount.fund_province).
    province: StrictStr = Field(pattern=r"^[1-9][0-9]{5}$")
    account_path: StrictStr
    submit_path: StrictStr
    #: POST with [adapter.fund.status_query], or GET when it holds "{reference}".
    status_path: StrictStr
    account_query: MessageMapping
    account: MessageMapping
    applicant: MessageMapping
    withdrawal: MessageMapping
    submit_answer: MessageMapping
    status_query: MessageMapping | None = None
    status: MessageMapping

    @field_validator("account_path", "submit_path", "status_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _url_path(value)

    @property
    def status_by_get(self) -> bool:
        """True when the status query is a GET of ``status_path`` with the reference in it."""
        return "{reference}" in self.status_path

    @model_validator(mode="after")
    def _status_query_shape(self) -> FundAdapter:
        if self.status_by_get and self.status_query is not None:
            raise ValueError(
                "status_path holds '{reference}' (a GET): expected no [adapter.fund.status_query]"
            )
        if not self.status_by_get and self.status_query is None:
            raise ValueError(
                "expected [adapter.fund.status_query] (the POSTed status query), or a "
                "status_path with '{reference}' in it for a GET"
            )
        if self.status_path.count("{") != self.status_path.count("{reference}"):
            raise ValueError("status_path: the only placeholder allowed is '{reference}'")
        return self


class AdapterConfig(_Frozen):
    """The ``[adapter]`` table of a province config, validated as a whole."""

    format: Literal["json", "xml"]
    timezone: StrictStr = "Asia/Shanghai"
    code_tables: Mapping[str, Mapping[str, CodeValue]] = Field(default_factory=dict)
    identity: IdentityAdapter | None = None
    fund: FundAdapter | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone name such as 'Asia/Shanghai'") from None
        return value

    @field_validator("code_tables")
    @classmethod
    def _one_to_one(
        cls, tables: Mapping[str, Mapping[str, str | bool]]
    ) -> Mapping[str, Mapping[str, str | bool]]:
        # Reading maps native -> canonical, writing canonical -> native; both
        # must be functions, so no two native codes may share a canonical value.
        problems = []
        for name, table in tables.items():
            if not table:
                problems.append(f"code_tables.{name}: expected at least one code")
            seen: dict[str | bool, str] = {}
            for code, value in table.items():
                if value in seen:
                    problems.append(
                        f"code_tables.{name}: expected one native code per canonical value, "
                        f"but {seen[value]!r} and {code!r} both map to {value!r}"
                    )
                seen[value] = code
        if problems:
            raise ValueError("; ".join(problems))
        return tables

    @model_validator(mode="after")
    def _mappings_match_canonical(self) -> AdapterConfig:
        problems = list(self._problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def domain(self, name: str) -> Mapping[str, MessageMapping]:
        """The message mappings of one domain, by slot name (empty if not configured)."""
        section = getattr(self, name, None)
        if section is None:
            return {}
        slots = {slot: getattr(section, slot) for slot in DOMAINS[name]}
        return {slot: mapping for slot, mapping in slots.items() if mapping is not None}

    def _problems(self) -> Iterator[str]:
        for domain, slots in DOMAINS.items():
            for slot, mapping in self.domain(domain).items():
                where = f"{domain}.{slot}"
                yield from self._root_problems(where, mapping)
                yield from self._mapping_problems(where, mapping, slots[slot])

    def _root_problems(self, where: str, mapping: MessageMapping) -> Iterator[str]:
        if self.format == "xml":
            if mapping.root is None:
                yield f"{where}.root: expected the XML document element name (format is xml)"
            elif not _XML_NAME.fullmatch(mapping.root):
                yield f"{where}.root: expected an XML element name, got {mapping.root!r}"
        elif mapping.root is not None:
            yield f"{where}.root: only for XML documents; in JSON put nesting in native paths"

    def _mapping_problems(
        self, where: str, mapping: MessageMapping, schema: CanonicalMessage
    ) -> Iterator[str]:
        mapped: dict[str, int] = {}
        for index, rule in enumerate(mapping.fields):
            if rule.canonical is None:
                continue  # a constant: checked on reading, written on writing
            at = f"{where}.fields[{index}] (canonical {rule.canonical!r})"
            target = schema.fields.get(rule.canonical)
            if target is None:
                yield f"{at}: expected one of {sorted(schema.fields)} ({schema.name})"
                continue
            if rule.canonical in mapped:
                yield f"{at}: already mapped by fields[{mapped[rule.canonical]}]"
            mapped[rule.canonical] = index
            yield from (f"{at}: {p}" for p in self._rule_problems(rule, target))
        for name in schema.mapped:
            if name not in mapped:
                yield f"{where}: expected a rule for the required canonical field {name!r}"
            elif name in schema.required:
                rule = mapping.fields[mapped[name]]
                if not rule.required and rule.default is None:
                    yield (
                        f"{where}.fields[{mapped[name]}] (canonical {name!r}): a required "
                        "canonical field needs required = true or a default"
                    )
        yield from self._path_conflicts(where, mapping)

    def _rule_problems(self, rule: FieldRule, target: CanonicalField) -> Iterator[str]:
        segment = _XML_SEGMENT if self.format == "xml" else _JSON_KEY
        for part in rule.path[:-1]:
            if part.startswith("@") or not segment.fullmatch(part):
                yield f"native path {rule.native!r}: {part!r} is not a valid {self.format} key"
        if not segment.fullmatch(rule.path[-1]):
            yield f"native path {rule.native!r}: {rule.path[-1]!r} is not a valid {self.format} key"
        kind = target.kind
        if rule.format is not None:
            known = formats.FORMATS.get(kind)
            if known is None:
                yield f"format: a {kind} field takes no format"
            elif rule.format not in known:
                yield f"format: expected one of {sorted(known)} for a {kind}, got {rule.format!r}"
        if rule.codes is not None:
            yield from self._code_problems(rule.codes, target)
        if kind is Kind.MESSAGE:
            if rule.path[-1].startswith("@"):
                yield "a message field needs an element path, not an attribute"
            if rule.default is not None or rule.check or rule.pattern:
                yield "a message field takes no default, check or pattern"
        if kind is Kind.LIST:
            yield from self._list_problems(rule)
        elif rule.separator is not None or rule.item is not None:
            yield f"separator / item: only list fields take them, this one is a {kind}"
        if rule.check is not None and kind is not Kind.STRING:
            yield f"check: only string fields can be checked, this one is a {kind}"
        if rule.pattern is not None and kind not in (Kind.STRING, Kind.LIST):
            yield f"pattern: only string and list fields take a pattern, this one is a {kind}"
        if rule.default is not None:
            yield from (f"default: {p}" for p in _value_problems(rule.default, target))

    def _list_problems(self, rule: FieldRule) -> Iterator[str]:
        if rule.codes is not None or rule.default is not None:
            yield "a list field takes no codes or default"
        if rule.path[-1].startswith("@") and rule.separator is None:
            yield "a list in an attribute needs a 'separator'"
        if self.format == "xml" and rule.separator is None and rule.item is None:
            yield "a list in XML needs 'item' (the element name of each item) or a 'separator'"
        if rule.item is not None:
            if self.format != "xml":
                yield "item: only for XML; a JSON list is an array at the native path"
            elif not _XML_NAME.fullmatch(rule.item):
                yield f"item: expected an XML element name, got {rule.item!r}"

    def _code_problems(self, name: str, target: CanonicalField) -> Iterator[str]:
        table = self.code_tables.get(name)
        if table is None:
            yield f"codes: expected a table defined under [adapter.code_tables], got {name!r}"
            return
        if target.kind not in (Kind.ENUM, Kind.BOOL, Kind.STRING):
            yield f"codes: a {target.kind} field cannot take a code table"
            return
        for code, value in table.items():
            for problem in _value_problems(value, target):
                yield f"code table {name!r} code {code!r}: {problem}"

    def _path_conflicts(self, where: str, mapping: MessageMapping) -> Iterator[str]:
        # A native location holds one value: no path may equal another, or run
        # through a location that another rule writes a value to.
        paths = [(rule.path, rule.name) for rule in mapping.fields]
        for i, (a, name_a) in enumerate(paths):
            for b, name_b in paths[i + 1 :]:
                shorter, longer = sorted((a, b), key=len)
                if longer[: len(shorter)] != shorter:
                    continue
                if len(longer) == len(shorter) + 1 and longer[-1].startswith("@"):
                    continue  # an element's text and one of its attributes
                yield (
                    f"{where}: native paths of {name_a!r} and {name_b!r} overlap "
                    f"({'.'.join(a)!r}, {'.'.join(b)!r})"
                )


def _value_problems(value: str | bool, target: CanonicalField) -> Iterator[str]:
    """Why ``value`` cannot be a canonical value of ``target`` (empty when it can)."""
    kind = target.kind
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            yield f"expected true or false for a bool field, got {value!r}"
        return
    if not isinstance(value, str):
        yield f"expected a string for a {kind} field, got {value!r}"
        return
    if kind is Kind.ENUM and value not in target.enum_values:
        yield f"expected one of {sorted(target.enum_values)}, got {value!r}"
    elif kind is Kind.DATE:
        try:
            formats.canonical_date(value)
        except formats.Mismatch as exc:
            yield f"expected {exc.expected}"
    elif kind is Kind.TIMESTAMP:
        try:
            formats.canonical_timestamp(value)
        except formats.Mismatch as exc:
            yield f"expected {exc.expected}"
    elif kind is Kind.BYTES:
        try:
            formats.canonical_bytes(value)
        except formats.Mismatch as exc:
            yield f"expected {exc.expected}"
    elif kind is Kind.INT64:
        try:
            formats.canonical_int(value)
        except formats.Mismatch as exc:
            yield f"expected {exc.expected} (as a string of digits)"
