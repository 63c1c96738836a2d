"""The canonical side of every mapping: which fields a message has, and of what kind.

A mapping rule names a canonical field; the schema here says what that field
holds, so that a province config can be checked at start-up (a date format on
a date, a code table whose values are names of the right enum) rather than
failing on the first request.

Canonical values in a canonical dict are what
``google.protobuf.json_format.MessageToDict(preserving_proto_field_name=True)``
produces: enums as value names (``"GENDER_MALE"``), bytes as standard base64
strings, timestamps as RFC 3339 UTC strings, dates as ``"YYYY-MM-DD"``
strings, int64 as integers (``MessageToDict`` writes them as decimal strings;
the engine accepts both on writing and reads integers), repeated strings as
lists. Messages that exist only between an adapter and its back-end (the
status request and response, the fund centre's query documents) are
described here by hand, or as a proto message plus the extra fields the
back-end exchange needs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from yrd.case.v1 import case_pb2
from yrd.certificate.v1 import certificate_pb2
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2


class Kind(enum.StrEnum):
    """What a canonical field holds, which decides the conversions allowed on it."""

    STRING = "string"
    ENUM = "enum"
    DATE = "date"  # ISO 8601 calendar date "YYYY-MM-DD"
    TIMESTAMP = "timestamp"  # RFC 3339 instant, UTC
    BOOL = "bool"
    BYTES = "bytes"  # base64 in a canonical dict
    INT64 = "int64"  # an integer (money in fen, counts); never a float
    LIST = "list"  # a repeated string field: a list of strings
    MESSAGE = "message"


@dataclass(frozen=True)
class CanonicalField:
    name: str
    kind: Kind
    #: Enum value names, for ``Kind.ENUM``.
    enum_values: frozenset[str] = frozenset()
    #: Name of the nested canonical message, for ``Kind.MESSAGE``.
    message: str = ""
    #: Every mapping of the message must map this field, with a value always present.
    required: bool = False
    #: Every mapping must map this field, but its value may be absent from some
    #: documents (an account's balance is absent from a "not found" answer).
    mapped: bool = False


@dataclass(frozen=True)
class CanonicalMessage:
    name: str
    fields: Mapping[str, CanonicalField] = field(default_factory=dict)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.fields.items() if f.required)

    @property
    def mapped(self) -> tuple[str, ...]:
        """Fields every mapping must have a rule for (required ones included)."""
        return tuple(name for name, f in self.fields.items() if f.required or f.mapped)


_SCALAR_KINDS = {
    FieldDescriptor.TYPE_STRING: Kind.STRING,
    FieldDescriptor.TYPE_ENUM: Kind.ENUM,
    FieldDescriptor.TYPE_BOOL: Kind.BOOL,
    FieldDescriptor.TYPE_BYTES: Kind.BYTES,
    FieldDescriptor.TYPE_INT64: Kind.INT64,
}

_TIMESTAMP = "google.protobuf.Timestamp"


def _from_descriptor(
    descriptor: Descriptor,
    *,
    kinds: Mapping[str, Kind] | None = None,
    required: frozenset[str],
    mapped: frozenset[str] = frozenset(),
    messages: Mapping[str, str] | None = None,
    extra: Mapping[str, CanonicalField] | None = None,
    name: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> CanonicalMessage:
    """Derive the schema from the proto, so a new proto field is mappable at once.

    ``kinds`` overrides fields whose proto type is ``string`` but whose content
    has a format (calendar dates). ``messages`` names the mapping slot of each
    nested message field (Timestamps need none: they are ``Kind.TIMESTAMP``).
    ``extra`` adds fields that the back-end exchange carries beside the proto
    message (the gateway's reference of a withdrawal, a "found" flag).
    ``exclude`` leaves out fields that the connector maps in code (maps and
    repeated messages, which the engine has no rule kind for).
    """
    kinds = kinds or {}
    messages = messages or {}
    fields: dict[str, CanonicalField] = {}
    for f in descriptor.fields:
        if f.name in exclude:
            continue
        nested = ""
        message_name = f.message_type.full_name if f.message_type is not None else ""
        if message_name == _TIMESTAMP:
            kind: Kind | None = Kind.TIMESTAMP
        elif message_name and f.name in messages:
            kind, nested = Kind.MESSAGE, messages[f.name]
        elif f.is_repeated:
            kind = Kind.LIST if f.type == FieldDescriptor.TYPE_STRING else None
        else:
            kind = kinds.get(f.name) or _SCALAR_KINDS.get(f.type)
        if kind is None:  # pragma: no cover - guards future proto changes
            raise TypeError(f"{descriptor.full_name}.{f.name}: no canonical kind for its type")
        values: frozenset[str] = frozenset()
        if kind is Kind.ENUM and f.enum_type is not None:
            values = frozenset(v.name for v in f.enum_type.values)
        fields[f.name] = CanonicalField(
            f.name,
            kind,
            values,
            message=nested,
            required=f.name in required,
            mapped=f.name in mapped,
        )
    for extra_name, extra_field in (extra or {}).items():
        fields[extra_name] = extra_field
    return CanonicalMessage(name or descriptor.full_name, MappingProxyType(fields))


PERSON = _from_descriptor(
    common_pb2.Person.DESCRIPTOR,
    kinds={"birth_date": Kind.DATE},
    required=frozenset({"id_number", "full_name", "gender", "birth_date"}),
)

#: What the gateway asks its e-ID authority: one credential, one token.
STATUS_REQUEST = CanonicalMessage(
    "adapters.identity.StatusRequest",
    MappingProxyType(
        {
            "credential_id": CanonicalField("credential_id", Kind.STRING, required=True),
            "token_id": CanonicalField("token_id", Kind.STRING, required=True),
        }
    ),
)

_STATES = frozenset(
    v.name for v in federation_pb2.CredentialState.DESCRIPTOR.values if v.number != 0
)

#: What the e-ID authority answers (holder absent when the credential is unknown).
STATUS_RESPONSE = CanonicalMessage(
    "adapters.identity.StatusResponse",
    MappingProxyType(
        {
            "state": CanonicalField("state", Kind.ENUM, _STATES, required=True),
            "token_already_used": CanonicalField("token_already_used", Kind.BOOL, required=True),
            "holder": CanonicalField("holder", Kind.MESSAGE, message="person"),
            "checked_at": CanonicalField("checked_at", Kind.TIMESTAMP),
        }
    ),
)

# ---- Fund domain: the gateway and its province's housing provident fund centre ----

_REFERENCE = CanonicalField("reference", Kind.STRING, required=True)
#: True when the centre knows the account / withdrawal asked about; the
#: centre's "not found" answer is a code of the same native field as success.
_FOUND = CanonicalField("found", Kind.BOOL, required=True)

#: Account query: the holder's resident ID number (never in a URL: it is personal data).
FUND_ACCOUNT_QUERY = CanonicalMessage(
    "adapters.fund.AccountQuery",
    MappingProxyType({"id_number": CanonicalField("id_number", Kind.STRING, required=True)}),
)

#: The centre's answer to an account query: ``yrd.fund.v1.FundAccount`` and ``found``.
FUND_ACCOUNT = _from_descriptor(
    fund_pb2.FundAccount.DESCRIPTOR,
    required=frozenset(),
    mapped=frozenset({"fund_account", "status", "balance_fen"}),
    extra={"found": _FOUND},
    name="adapters.fund.AccountAnswer",
)

#: The applicant as a fund centre records them: a Person of which only the ID
#: number and name are needed (a centre's own format rarely carries more).
FUND_APPLICANT = _from_descriptor(
    common_pb2.Person.DESCRIPTOR,
    kinds={"birth_date": Kind.DATE},
    required=frozenset({"id_number", "full_name"}),
)

#: Withdrawal submission: ``yrd.fund.v1.WithdrawalApplication`` and the
#: gateway-chosen ``reference`` by which the centre deduplicates.
FUND_WITHDRAWAL = _from_descriptor(
    fund_pb2.WithdrawalApplication.DESCRIPTOR,
    required=frozenset(
        {"applicant", "fund_account", "reason", "amount_fen", "payee_account", "payee_bank"}
    ),
    # The exchange's idempotency key reaches the centre, which can then refuse to
    # take one application twice (with the applicant's province).
    mapped=frozenset({"idempotency_key"}),
    messages={"applicant": "applicant"},
    extra={"reference": _REFERENCE},
    name="adapters.fund.Withdrawal",
)

_OPTIONAL_REFERENCE = CanonicalField("reference", Kind.STRING)

#: The centre's answer to a submission: ``WithdrawalStatusUpdate`` (its case
#: number as ``remote_reference``) and, when echoed, the reference.
FUND_SUBMIT_ANSWER = _from_descriptor(
    fund_pb2.WithdrawalStatusUpdate.DESCRIPTOR,
    required=frozenset({"status"}),
    mapped=frozenset({"remote_reference", "status_reason"}),
    extra={"reference": _OPTIONAL_REFERENCE},
    name="adapters.fund.SubmitAnswer",
)

#: Status query by reference (for centres that take it in a document, not the URL).
FUND_STATUS_QUERY = CanonicalMessage(
    "adapters.fund.StatusQuery", MappingProxyType({"reference": _REFERENCE})
)

#: The centre's answer to a status query: ``WithdrawalStatusUpdate`` and ``found``.
FUND_STATUS = _from_descriptor(
    fund_pb2.WithdrawalStatusUpdate.DESCRIPTOR,
    required=frozenset(),
    mapped=frozenset({"status", "status_reason", "paid_amount_fen"}),
    extra={"reference": _OPTIONAL_REFERENCE, "found": _FOUND},
    name="adapters.fund.StatusAnswer",
)

# ---- Certificate domain: the gateway and its province's e-certificate library ----
# The structured ``fields`` map and the ``attachments`` list of a Certificate
# are mapped by adapters.certificate (per category, from the national
# catalogue), not by field rules; everything else is declarative.

#: The holder or applicant: a Party, i.e. a person or an organisation.
PARTY = _from_descriptor(
    common_pb2.Party.DESCRIPTOR,
    required=frozenset(),
    messages={"person": "person", "organisation": "organisation"},
)

#: A person as a certificate or case names them: ID number and name.
PARTY_PERSON = _from_descriptor(
    common_pb2.Person.DESCRIPTOR,
    kinds={"birth_date": Kind.DATE},
    required=frozenset({"id_number", "full_name"}),
)

#: An organisation: unified social credit code and name.
PARTY_ORGANISATION = _from_descriptor(
    common_pb2.Organisation.DESCRIPTOR, required=frozenset({"credit_code", "name"})
)

#: One attachment reference (by digest; its content is not carried natively).
ATTACHMENT = _from_descriptor(
    common_pb2.AttachmentRef.DESCRIPTOR,
    required=frozenset({"name", "media_type", "size_bytes", "sha256"}),
    exclude=frozenset({"content"}),
)

#: The certificate envelope: ``yrd.certificate.v1.Certificate`` without
#: ``fields`` and ``attachments``.
CERTIFICATE = _from_descriptor(
    certificate_pb2.Certificate.DESCRIPTOR,
    kinds={"issue_date": Kind.DATE, "expiry_date": Kind.DATE},
    required=frozenset(
        {
            "category_code",
            "certificate_number",
            "licence_id",
            "holder",
            "issuer_credit_code",
            "issuer_name",
            "issue_date",
        }
    ),
    mapped=frozenset({"expiry_date", "seal", "seal_key_id", "seal_algorithm"}),
    messages={"holder": "holder"},
    exclude=frozenset({"fields", "attachments"}),
    name="adapters.certificate.Certificate",
)

#: The fetch request to the library (the consent is checked by the library).
CERTIFICATE_REQUEST = _from_descriptor(
    certificate_pb2.GetCertificateRequest.DESCRIPTOR,
    required=frozenset({"category_code", "holder_id", "consent_reference"}),
    mapped=frozenset({"certificate_number", "purpose"}),
    exclude=frozenset({"issuer_province"}),
    extra={
        "requesting_province": CanonicalField("requesting_province", Kind.STRING, required=True)
    },
    name="adapters.certificate.FetchRequest",
)

#: What a library answers to a fetch: an outcome, and the certificate when FOUND.
CERTIFICATE_OUTCOMES = frozenset(
    {
        "FOUND",
        "NOT_FOUND",
        "CONSENT_MISSING",
        "CONSENT_EXPIRED",
        "CONSENT_OTHER_HOLDER",
        "CONSENT_OTHER_PROVINCE",
    }
)
CERTIFICATE_ANSWER = CanonicalMessage(
    "adapters.certificate.FetchAnswer",
    MappingProxyType(
        {
            "outcome": CanonicalField("outcome", Kind.ENUM, CERTIFICATE_OUTCOMES, required=True),
            "certificate": CanonicalField(
                "certificate", Kind.MESSAGE, message="certificate", mapped=True
            ),
        }
    ),
)

# ---- Case domain: the gateway and its province's case system ----
# ``materials`` of a CaseApplication are mapped by adapters.case, by the
# [adapter.case.material] mapping per item.

#: A case application as submitted, with the gateway-chosen ``reference``.
CASE_APPLICATION = _from_descriptor(
    case_pb2.CaseApplication.DESCRIPTOR,
    required=frozenset({"service_code", "applicant", "submitting_province"}),
    mapped=frozenset({"idempotency_key", "description"}),
    messages={"applicant": "applicant"},
    exclude=frozenset({"materials", "handling_province"}),
    extra={"reference": _REFERENCE},
    name="adapters.case.Submission",
)

#: The case system's answer to a submission (``CaseStatusUpdate`` + reference).
CASE_SUBMIT_ANSWER = _from_descriptor(
    case_pb2.CaseStatusUpdate.DESCRIPTOR,
    required=frozenset({"status"}),
    mapped=frozenset({"remote_reference", "status_reason"}),
    exclude=frozenset({"idempotency_key"}),
    extra={"reference": _OPTIONAL_REFERENCE},
    name="adapters.case.SubmitAnswer",
)

#: Status query by reference.
CASE_STATUS_QUERY = CanonicalMessage(
    "adapters.case.StatusQuery", MappingProxyType({"reference": _REFERENCE})
)

#: The case system's answer to a status query: ``CaseStatusUpdate`` and ``found``.
CASE_STATUS = _from_descriptor(
    case_pb2.CaseStatusUpdate.DESCRIPTOR,
    required=frozenset(),
    mapped=frozenset({"status", "status_reason", "remote_reference"}),
    exclude=frozenset({"idempotency_key"}),
    extra={"reference": _OPTIONAL_REFERENCE, "found": _FOUND},
    name="adapters.case.StatusAnswer",
)


#: Mapping slots per domain: ``[adapter.<domain>.<slot>]`` maps this message.
DOMAINS: Mapping[str, Mapping[str, CanonicalMessage]] = MappingProxyType(
    {
        "identity": MappingProxyType(
            {"person": PERSON, "status_request": STATUS_REQUEST, "status_response": STATUS_RESPONSE}
        ),
        "fund": MappingProxyType(
            {
                "account_query": FUND_ACCOUNT_QUERY,
                "account": FUND_ACCOUNT,
                "applicant": FUND_APPLICANT,
                "withdrawal": FUND_WITHDRAWAL,
                "submit_answer": FUND_SUBMIT_ANSWER,
                "status_query": FUND_STATUS_QUERY,
                "status": FUND_STATUS,
            }
        ),
        "certificate": MappingProxyType(
            {
                "certificate": CERTIFICATE,
                "holder": PARTY,
                "person": PARTY_PERSON,
                "organisation": PARTY_ORGANISATION,
                "attachment": ATTACHMENT,
                "request": CERTIFICATE_REQUEST,
                "answer": CERTIFICATE_ANSWER,
            }
        ),
        "case": MappingProxyType(
            {
                "submission": CASE_APPLICATION,
                "applicant": PARTY,
                "person": PARTY_PERSON,
                "organisation": PARTY_ORGANISATION,
                "material": ATTACHMENT,
                "submit_answer": CASE_SUBMIT_ANSWER,
                "status_query": CASE_STATUS_QUERY,
                "status": CASE_STATUS,
            }
        ),
    }
)
