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
    18 characters, birth date, ISO 7064 MOD 11-2 check character) or
    ``"gb32100"`` (unified social credit code, with its check character).
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

The certificate domain (the province's e-certificate library)::

    [adapter.certificate]
    province = "310000"              # the library's province (issuer_province)
    fetch_path = "/api/dzzz/hq"      # POST the fetch request here
    fields_path = "zzxx"             # the structured fields' object, in the certificate
    field_names = "table"            # native key of each catalogue field: "snake_case",
                                     # "camelCase", "PascalCase", or "table" (code table
                                     # certificate_field: native key = canonical name)
    field_date_format = "yyyyMMdd"   # date-valued catalogue fields (a date format)
    field_money_format = "fen"       # money-valued catalogue fields: "fen" or "yuan"
    attachments_path = "fj"          # the attachments list, in the certificate
    attachment_item = "File"         # XML only: element name of each attachment

    [adapter.certificate.certificate]   # Certificate without fields / attachments
    [adapter.certificate.holder]        # Party: person or organisation (nested)
    [adapter.certificate.person]        # the holder person: id_number, full_name
    [adapter.certificate.organisation]  # the holder organisation: credit_code, name, region
    [adapter.certificate.attachment]    # one AttachmentRef (by digest)
    [adapter.certificate.request]       # GetCertificateRequest + requesting_province
    [adapter.certificate.answer]        # outcome (a code table of the result code) +
                                        # certificate (nested)

Category codes translate through ``[adapter.code_tables.certificate_category]``
(native code = national code of :mod:`adapters.catalogue`).

The case domain (the province's system for inter-provincial service cases)::

    [adapter.case]
    province = "330000"
    submit_path = "/zjsx/case_submit"   # POST a case here
    status_path = "/zjsx/case_query"    # POST the status query, or GET with {reference}
    materials_path = "materials"        # the materials list, in the submission
    material_item = "Material"          # XML only

    [adapter.case.submission]       # CaseApplication (+ reference) without materials
    [adapter.case.applicant]        # Party (nested)
    [adapter.case.person]
    [adapter.case.organisation]
    [adapter.case.material]         # one AttachmentRef (by digest)
    [adapter.case.submit_answer]    # CaseStatusUpdate (+ reference)
    [adapter.case.status_query]     # {reference} (only for a POST status_path)
    [adapter.case.status]           # CaseStatusUpdate + found (+ reference)

Messages in XML name their document element with ``root = "StatusQuery"``
(JSON documents have none: nesting is in the paths).

What a mapping cannot express (a session handshake, a signature, a computed
field) is Python code, named here and found in the built-in registry or an
installed package's ``yrd_gateway.adapters`` entry point (:mod:`adapters.plugins`)::

    [adapter.plugin]
    name = "anhui-session"
    package = "…"                    # optional: what to install if it is missing
    [adapter.plugin.settings]        # validated by the plug-in
    app_id = "YRD-GW-340000"

Every problem is reported with its key path below ``[adapter]``
(``identity.person.fields.2.codes``), the value and what was expected; the
config loader prefixes ``adapter.`` and the file name.
"""

from __future__ import annotations

import copy as copy_module
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from adapters import formats
from adapters.canonical import DOMAINS, CanonicalField, CanonicalMessage, Kind

_JSON_KEY = re.compile(r"[^.\s][^.]*")
# XML element names without namespaces (prefixed names would need a namespace map).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_XML_SEGMENT = re.compile(r"@?[A-Za-z_][A-Za-z0-9_-]*")

CodeValue = StrictStr | StrictBool
#: A key path below ``[adapter]``.
Loc = tuple[str | int, ...]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Problem:
    """One mistake in an ``[adapter]`` table: where (key path below it), what, what was expected."""

    loc: tuple[str | int, ...]
    value: object
    expected: str


def problems_error(problems: list[Problem], title: str = "AdapterConfig") -> ValidationError:
    """A pydantic ``ValidationError`` with one line per problem, each at its own key path.

    Raised from a validator, pydantic prefixes each location with the path of
    the model being validated, so a province config reports
    ``adapter.identity.person.fields.2.codes`` rather than just ``adapter``.
    """
    return ValidationError.from_exception_data(
        title,
        [
            {
                "type": PydanticCustomError(
                    "adapter_mapping", "{expected}", {"expected": p.expected}
                ),
                "loc": p.loc,
                "input": p.value,
            }
            for p in problems
        ],
    )


class FieldRule(_Frozen):
    """How one canonical field is found in, and written to, a native document."""

    canonical: StrictStr | None = None
    native: StrictStr
    const: CodeValue | None = None
    required: StrictBool = False
    default: CodeValue | None = None
    format: StrictStr | None = None
    codes: StrictStr | None = None
    check: Literal["gb11643", "gb32100"] | None = None
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
        problems = []
        if self.status_by_get and self.status_query is not None:
            problems.append(
                Problem(
                    ("status_query",),
                    "...",
                    "no [adapter.fund.status_query]: status_path holds '{reference}' (a GET)",
                )
            )
        if not self.status_by_get and self.status_query is None:
            problems.append(
                Problem(
                    ("status_query",),
                    None,
                    "[adapter.fund.status_query] (the POSTed status query), or a "
                    "status_path with '{reference}' in it for a GET",
                )
            )
        if self.status_path.count("{") != self.status_path.count("{reference}"):
            problems.append(
                Problem(
                    ("status_path",),
                    self.status_path,
                    "a path whose only placeholder is '{reference}'",
                )
            )
        if problems:
            raise problems_error(problems, "FundAdapter")
        return self


def _list_problems_at(path: str, item: str | None, where: str) -> list[Problem]:
    """Problems of the native path / item element of a list of messages mapped in code."""
    problems = []
    if any(not part for part in path.split(".")):
        problems.append(Problem((where,), path, "a dotted path of non-empty keys"))
    if item is not None and not _XML_NAME.fullmatch(item):
        problems.append(Problem((where.replace("_path", "_item"),), item, "an XML element name"))
    return problems


class CertificateAdapter(_Frozen):
    """The certificate domain: the province's e-certificate library (see the module docstring)."""

    #: GB/T 2260 code of the library's province (Certificate.issuer_province).
    province: StrictStr = Field(pattern=r"^[1-9][0-9]{5}$")
    fetch_path: StrictStr
    fields_path: StrictStr
    field_names: Literal["table", "snake_case", "camelCase", "PascalCase"] = "snake_case"
    field_date_format: StrictStr = "yyyy-MM-dd"
    field_money_format: Literal["fen", "yuan"] = "fen"
    attachments_path: StrictStr
    attachment_item: StrictStr | None = None
    certificate: MessageMapping
    holder: MessageMapping
    person: MessageMapping
    organisation: MessageMapping
    attachment: MessageMapping
    request: MessageMapping
    answer: MessageMapping

    @field_validator("fetch_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _url_path(value)

    @field_validator("field_date_format")
    @classmethod
    def _date_format(cls, value: str) -> str:
        known = formats.FORMATS[Kind.DATE]
        if value not in known:
            raise ValueError(f"expected one of {sorted(known)}")
        return value

    @model_validator(mode="after")
    def _containers(self) -> CertificateAdapter:
        problems = _list_problems_at(self.fields_path, None, "fields_path")
        problems += _list_problems_at(
            self.attachments_path, self.attachment_item, "attachments_path"
        )
        if problems:
            raise problems_error(problems, "CertificateAdapter")
        return self


class CaseAdapter(_Frozen):
    """The case domain: the province's system for inter-provincial service cases."""

    #: GB/T 2260 code of the province whose case system this is (the handling province).
    province: StrictStr = Field(pattern=r"^[1-9][0-9]{5}$")
    submit_path: StrictStr
    #: POST with [adapter.case.status_query], or GET when it holds "{reference}".
    status_path: StrictStr
    materials_path: StrictStr
    material_item: StrictStr | None = None
    submission: MessageMapping
    applicant: MessageMapping
    person: MessageMapping
    organisation: MessageMapping
    material: MessageMapping
    submit_answer: MessageMapping
    status_query: MessageMapping | None = None
    status: MessageMapping

    @field_validator("submit_path", "status_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _url_path(value)

    @property
    def status_by_get(self) -> bool:
        """True when the status query is a GET of ``status_path`` with the reference in it."""
        return "{reference}" in self.status_path

    @model_validator(mode="after")
    def _shape(self) -> CaseAdapter:
        problems = _list_problems_at(self.materials_path, self.material_item, "materials_path")
        if self.status_by_get == (self.status_query is not None):
            problems.append(
                Problem(
                    ("status_query",),
                    None,
                    "[adapter.case.status_query] for a POSTed status query, or a status_path "
                    "with '{reference}' in it (a GET) and no status_query",
                )
            )
        if problems:
            raise problems_error(problems, "CaseAdapter")
        return self


class PluginRef(_Frozen):
    """``[adapter.plugin]``: Python code for what the declarative mapping cannot express.

    ``name`` is looked up in the built-in registry, then among the installed
    entry points of group ``yrd_gateway.adapters`` (see :mod:`adapters.plugins`);
    ``settings`` are handed to the plug-in, which validates them itself.
    ``package`` names the distribution to install when the plug-in is missing
    (only used in the error message).
    """

    name: StrictStr = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    package: StrictStr | None = None
    settings: Mapping[str, StrictStr | StrictBool | int | float] = Field(default_factory=dict)


class AdapterConfig(_Frozen):
    """The ``[adapter]`` table of a province config, validated as a whole."""

    format: Literal["json", "xml"]
    timezone: StrictStr = "Asia/Shanghai"
    code_tables: Mapping[str, Mapping[str, CodeValue]] = Field(default_factory=dict)
    identity: IdentityAdapter | None = None
    fund: FundAdapter | None = None
    certificate: CertificateAdapter | None = None
    case: CaseAdapter | None = None
    plugin: PluginRef | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone name such as 'Asia/Shanghai'") from None
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_at_once(
        cls, data: object, handler: ModelWrapValidatorHandler[AdapterConfig], info: ValidationInfo
    ) -> AdapterConfig:
        # Pydantic skips the cross-checks below when a key is unknown. An
        # operator should not fix one mistake per run: validate again without
        # the unknown keys and report both rounds' problems together.
        try:
            return handler(data)
        except ValidationError as first:
            unknown = [e["loc"] for e in first.errors() if e["type"] == "extra_forbidden"]
            if not unknown or not isinstance(data, Mapping):
                raise
            pruned = _without(data, unknown)
            try:
                # The "after" checks run outside this wrapper: run them on the pruned model.
                handler(pruned)._check(info)
            except ValidationError as second:
                seen = {(e["loc"], e["msg"]) for e in first.errors()}
                more = [e for e in second.errors() if (e["loc"], e["msg"]) not in seen]
                raise ValidationError.from_exception_data(
                    cls.__name__, [_details(e) for e in [*first.errors(), *more]]
                ) from None
            raise

    @model_validator(mode="after")
    def _mappings_match_canonical(self, info: ValidationInfo) -> AdapterConfig:
        self._check(info)
        return self

    def _check(self, info: ValidationInfo) -> None:
        """Raise one error per problem of the whole table (mappings against the canonical
        schema, code tables). Whether a named plug-in is installed is checked where
        the province config is loaded (:func:`adapters.plugins.validate_adapter`):
        looking it up needs the registry, which builds on this module."""
        problems: list[Problem] = []
        seen: set[tuple[Loc, str]] = set()
        for problem in self._problems():
            # A code table used by several rules would be reported once per rule.
            if (problem.loc, problem.expected) not in seen:
                seen.add((problem.loc, problem.expected))
                problems.append(problem)
        if problems:
            raise problems_error(problems)

    def domain(self, name: str) -> Mapping[str, MessageMapping]:
        """The message mappings of one domain, by slot name (empty if not configured)."""
        section = getattr(self, name, None)
        if section is None:
            return {}
        slots = {slot: getattr(section, slot) for slot in DOMAINS[name]}
        return {slot: mapping for slot, mapping in slots.items() if mapping is not None}

    def _problems(self) -> Iterator[Problem]:
        yield from self._code_table_problems()
        for domain, slots in DOMAINS.items():
            for slot, mapping in self.domain(domain).items():
                where = (domain, slot)
                yield from self._root_problems(where, mapping)
                yield from self._mapping_problems(where, mapping, slots[slot])

    def _code_table_problems(self) -> Iterator[Problem]:
        # Reading maps native -> canonical, writing canonical -> native; both
        # must be functions, so no two native codes may share a canonical value.
        for name, table in self.code_tables.items():
            if not table:
                yield Problem(("code_tables", name), {}, "at least one code")
            seen: dict[str | bool, str] = {}
            for code, value in table.items():
                if value in seen:
                    yield Problem(
                        ("code_tables", name, code),
                        value,
                        f"one native code per canonical value (one-to-one), but {seen[value]!r} "
                        f"and {code!r} both map to {value!r}",
                    )
                seen[value] = code

    def _root_problems(self, where: Loc, mapping: MessageMapping) -> Iterator[Problem]:
        if self.format == "xml":
            if mapping.root is None:
                yield Problem(
                    (*where, "root"), None, "the XML document element name (format is xml)"
                )
            elif not _XML_NAME.fullmatch(mapping.root):
                yield Problem((*where, "root"), mapping.root, "an XML element name")
        elif mapping.root is not None:
            yield Problem(
                (*where, "root"),
                mapping.root,
                "no root: it is only for XML documents; in JSON put nesting in native paths",
            )

    def _mapping_problems(
        self, where: Loc, mapping: MessageMapping, schema: CanonicalMessage
    ) -> Iterator[Problem]:
        mapped: dict[str, int] = {}
        for index, rule in enumerate(mapping.fields):
            if rule.canonical is None:
                continue  # a constant: checked on reading, written on writing
            at = (*where, "fields", index)
            target = schema.fields.get(rule.canonical)
            if target is None:
                yield Problem(
                    (*at, "canonical"),
                    rule.canonical,
                    f"one of {sorted(schema.fields)} ({schema.name})",
                )
                continue
            if rule.canonical in mapped:
                yield Problem(
                    (*at, "canonical"),
                    rule.canonical,
                    f"a field not already mapped by fields[{mapped[rule.canonical]}]",
                )
            mapped[rule.canonical] = index
            for problem in self._rule_problems(rule, target):
                yield Problem((*at, *problem.loc), problem.value, problem.expected)
            if rule.codes is not None:
                yield from self._code_problems(at, rule.codes, target)
        for name in schema.mapped:
            if name not in mapped:
                yield Problem(
                    (*where, "fields"),
                    sorted(mapped),
                    f"a rule for the required canonical field {name!r} ({schema.name})",
                )
            elif name in schema.required:
                rule = mapping.fields[mapped[name]]
                if not rule.required and rule.default is None:
                    yield Problem(
                        (*where, "fields", mapped[name], "required"),
                        rule.required,
                        f"required = true or a default: {name!r} is a required canonical field",
                    )
        yield from self._path_conflicts(where, mapping)

    def _rule_problems(self, rule: FieldRule, target: CanonicalField) -> Iterator[Problem]:
        segment = _XML_SEGMENT if self.format == "xml" else _JSON_KEY
        for index, part in enumerate(rule.path):
            last = index == len(rule.path) - 1
            if (not last and part.startswith("@")) or not segment.fullmatch(part):
                yield Problem(
                    ("native",),
                    rule.native,
                    f"a path of valid {self.format} keys ({part!r} is not one)",
                )
        kind = target.kind
        if rule.format is not None:
            known = formats.FORMATS.get(kind)
            if known is None:
                yield Problem(("format",), rule.format, f"no format: a {kind} field takes none")
            elif rule.format not in known:
                yield Problem(
                    ("format",), rule.format, f"one of {sorted(known)} for a {kind} field"
                )
        if kind is Kind.MESSAGE:
            if rule.path[-1].startswith("@"):
                yield Problem(
                    ("native",), rule.native, "an element path: a message field is no attribute"
                )
            if rule.default is not None or rule.check or rule.pattern:
                yield Problem(
                    ("canonical",),
                    rule.canonical,
                    "no default, check or pattern: a message field takes none",
                )
        if kind is Kind.LIST:
            yield from self._list_problems(rule)
        elif rule.separator is not None or rule.item is not None:
            yield Problem(
                ("separator" if rule.separator is not None else "item",),
                rule.separator if rule.separator is not None else rule.item,
                f"no separator / item: only list fields take them, this one is a {kind}",
            )
        if rule.check is not None and kind is not Kind.STRING:
            yield Problem(
                ("check",), rule.check, f"no check: only string fields can be checked ({kind})"
            )
        if rule.pattern is not None and kind not in (Kind.STRING, Kind.LIST):
            yield Problem(
                ("pattern",),
                rule.pattern,
                f"no pattern: only string and list fields take a pattern, this one is a {kind}",
            )
        if rule.default is not None:
            for problem in _value_problems(rule.default, target):
                yield Problem(("default",), rule.default, problem)

    def _list_problems(self, rule: FieldRule) -> Iterator[Problem]:
        if rule.codes is not None or rule.default is not None:
            yield Problem(
                ("codes" if rule.codes is not None else "default",),
                rule.codes if rule.codes is not None else rule.default,
                "no codes or default: a list field takes neither",
            )
        if rule.path[-1].startswith("@") and rule.separator is None:
            yield Problem(("separator",), None, "a 'separator' for a list in an attribute")
        if self.format == "xml" and rule.separator is None and rule.item is None:
            yield Problem(
                ("item",),
                None,
                "a list in XML needs 'item' (the element name of each item) or a 'separator'",
            )
        if rule.item is not None:
            if self.format != "xml":
                yield Problem(
                    ("item",), rule.item, "no item: only for XML; a JSON list is an array"
                )
            elif not _XML_NAME.fullmatch(rule.item):
                yield Problem(("item",), rule.item, "an XML element name")

    def _code_problems(self, at: Loc, name: str, target: CanonicalField) -> Iterator[Problem]:
        table = self.code_tables.get(name)
        if table is None:
            yield Problem(
                (*at, "codes"),
                name,
                "a table defined under [adapter.code_tables] "
                f"(defined: {sorted(self.code_tables)})",
            )
            return
        if target.kind not in (Kind.ENUM, Kind.BOOL, Kind.STRING):
            yield Problem((*at, "codes"), name, f"no code table: a {target.kind} field takes none")
            return
        for code, value in table.items():
            for problem in _value_problems(value, target):
                # Reported at the table's entry: that is the line to fix.
                yield Problem(
                    ("code_tables", name, code),
                    value,
                    f"{problem} (table {name!r} is used for canonical {target.name!r})",
                )

    def _path_conflicts(self, where: Loc, mapping: MessageMapping) -> Iterator[Problem]:
        # A native location holds one value: no path may equal another, or run
        # through a location that another rule writes a value to.
        paths = [(index, rule.path, rule.name) for index, rule in enumerate(mapping.fields)]
        for i, (_, a, name_a) in enumerate(paths):
            for index_b, b, name_b in paths[i + 1 :]:
                shorter, longer = sorted((a, b), key=len)
                if longer[: len(shorter)] != shorter:
                    continue
                if len(longer) == len(shorter) + 1 and longer[-1].startswith("@"):
                    continue  # an element's text and one of its attributes
                yield Problem(
                    (*where, "fields", index_b, "native"),
                    ".".join(b),
                    f"a native path of its own: those of {name_a!r} and {name_b!r} overlap "
                    f"({'.'.join(a)!r}, {'.'.join(b)!r})",
                )


def _value_problems(value: str | bool, target: CanonicalField) -> Iterator[str]:
    """What a canonical value of ``target`` must be, when ``value`` is not one (else nothing)."""
    kind = target.kind
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            yield "true or false (a bool field)"
        return
    if not isinstance(value, str):
        yield f"a string (a {kind} field)"
        return
    if kind is Kind.ENUM and value not in target.enum_values:
        yield f"one of {sorted(target.enum_values)}"
    elif kind is Kind.DATE:
        try:
            formats.canonical_date(value)
        except formats.Mismatch as exc:
            yield exc.expected
    elif kind is Kind.TIMESTAMP:
        try:
            formats.canonical_timestamp(value)
        except formats.Mismatch as exc:
            yield exc.expected
    elif kind is Kind.BYTES:
        try:
            formats.canonical_bytes(value)
        except formats.Mismatch as exc:
            yield exc.expected
    elif kind is Kind.INT64:
        try:
            formats.canonical_int(value)
        except formats.Mismatch as exc:
            yield f"{exc.expected} (as a string of digits)"


def _without(data: Mapping[str, Any], locations: list[tuple[str | int, ...]]) -> dict[str, Any]:
    """A deep copy of ``data`` without the keys at ``locations``."""
    copy: dict[str, Any] = copy_module.deepcopy(dict(data))
    for loc in locations:
        node: Any = copy
        for key in loc[:-1]:
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    return copy


def _details(error: ErrorDetails) -> InitErrorDetails:
    """A reported error as pydantic takes it back to build a ValidationError."""
    if error["type"] == "adapter_mapping":
        return {
            "type": PydanticCustomError(
                "adapter_mapping", "{expected}", {"expected": error["msg"]}
            ),
            "loc": error["loc"],
            "input": error["input"],
        }
    details: InitErrorDetails = {
        "type": error["type"],
        "loc": error["loc"],
        "input": error["input"],
    }
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details
