"""Field checks of every federation payload, run before its handler.

A peer's request payload is parsed and checked here, after the envelope was
verified and logged and before the handler for its service runs, so that no
malformed request reaches a back-end adapter and comes back as a server fault:
every problem is an :class:`~gateway.core.errors.InvalidArgument` naming the field
and what was expected (never its value), which the server signs as a decision.

Two layers of checks:

- every payload, generically: each string at most :data:`MAX_STRING`
  characters and free of control characters (tab and line breaks allowed),
  each repeated field at most :data:`MAX_REPEATED` items, each enum a value the
  schema defines, each timestamp a valid one;
- per payload type (:data:`VALIDATORS`), the fields its handler relies on:
  identifiers of the right form, required fields present, bounded references.

A peer's **answer** is checked the same way by the asking node, after its
envelope was verified and before anything uses it (:func:`validate_answer`):
the generic checks, then per answer type (:data:`ANSWER_VALIDATORS`) what the
asking node relies on (a defined credential state, attribute names it knows, an
ID number of the right form, a bounded reference). An answer that fails is
not the peer's decision about the request but a fault of the peer: the
exchange fails as one (retried, or an indeterminate verification), never as a
crash of the asking node.

The domain checks the handlers run themselves (a withdrawal's every field, a
certificate category against the catalogue) stay with the handlers, which the
submitting node runs too; this table is what a node requires from a peer
before it does anything with a request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.config.models import DISCLOSABLE_ATTRIBUTES, FEDERATION_SERVICES
from gateway.core.errors import InvalidArgument
from gateway.core.identifiers import (
    validate_id_number,
    validate_idempotency_key,
    validate_region_code,
)
from gateway.trust.envelope import OpenedEnvelope
from yrd.case.v1 import case_pb2
from yrd.certificate.v1 import certificate_pb2
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2

#: Longest string accepted in any payload field, in characters.
MAX_STRING = 4096
#: Most items accepted in any repeated payload field.
MAX_REPEATED = 100
#: Largest whole amount in fen (10^12 fen = 10 billion yuan).
MAX_FEN = 10**12
#: Characters allowed in any payload string: no C0/C1 control characters but
#: tab and line breaks, no lone surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: Opaque references and ids a peer passes through (token ids, credential ids,
#: case references): printable ASCII without spaces.
_REFERENCE = re.compile(r"[\x21-\x7e]{1,128}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_CATEGORY = re.compile(r"[A-Za-z0-9._-]{1,32}")
_HOLDER = re.compile(r"[0-9A-Za-z]{18}")
_CONSENT = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PURPOSE_CODE = re.compile(r"[A-Za-z0-9_]{0,64}")
_CLAIM_KEY = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
#: Seconds of 0001-01-01 and 9999-12-31T23:59:59 (the range of a Timestamp).
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799

Validator = Callable[[Any], None]


def _reference(field: str, value: str, *, required: bool = True) -> None:
    if (value or required) and not _REFERENCE.fullmatch(value):
        raise InvalidArgument(field, "1..128 printable ASCII characters without spaces")


def _region(field: str, value: str) -> None:
    """A region code: six ASCII digits (checked here first so that no longer value
    reaches a message), then the GB/T 2260 check of gateway.core.identifiers."""
    if not re.fullmatch(r"[0-9]{6}", value):
        raise InvalidArgument(field, "a six-digit GB/T 2260 region code")
    validate_region_code(field, value)


def _enum(field: str, value: int, enum: Any, *, required: bool = True) -> None:
    """A value the enum defines (and not its UNSPECIFIED zero, if required)."""
    if value not in enum.DESCRIPTOR.values_by_number or (required and value == 0):
        names = [name for name, number in enum.items() if number != 0]
        raise InvalidArgument(field, f"one of {', '.join(names)}")


def _check_generic(message: Message, path: str) -> None:
    """Bounds every payload meets, field by field, at any depth (maps too: an
    answer's, e.g. a certificate's fields). A list item's name is built only
    for the error (this runs on every request and every answer)."""
    if message.DESCRIPTOR.full_name == _TIMESTAMP:
        assert isinstance(message, Timestamp)
        if not (_MIN_SECONDS <= message.seconds <= _MAX_SECONDS and 0 <= message.nanos < 10**9):
            raise InvalidArgument(path.rstrip("."), "a timestamp between years 1 and 9999")
        return
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if not field.is_repeated:
            _check_item(field, value, name)
            continue
        if len(value) > MAX_REPEATED:
            raise InvalidArgument(name, f"at most {MAX_REPEATED} items")
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for key, item in value.items():  # named by the map, never by a key
                _check_item(key_field, key, f"{name}.key")
                _check_item(value_field, item, f"{name}.value")
            continue
        for index, item in enumerate(value):
            _check_item(field, item, name, index)


def _check_item(field: FieldDescriptor, value: object, name: str, index: int = -1) -> None:
    """One value of ``field`` (named ``name``, or ``name[index]`` in a list)."""
    if isinstance(value, Message):
        _check_generic(value, f"{name}[{index}]." if index >= 0 else f"{name}.")
        return
    problem = _scalar_problem(field, value)
    if problem is not None:
        raise InvalidArgument(f"{name}[{index}]" if index >= 0 else name, problem)


def _scalar_problem(field: FieldDescriptor, value: object) -> str | None:
    """What is wrong with a scalar (as "expected …"), None if nothing."""
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"at most {MAX_STRING} characters"
        if _CONTROL.search(value):
            return "text without control characters"
    elif (
        field.enum_type is not None
        and isinstance(value, int)
        and value not in field.enum_type.values_by_number
    ):
        names = [v.name for v in field.enum_type.values if v.number != 0]
        return f"one of {', '.join(names)}"
    return None


def _credential_check(request: federation_pb2.CredentialCheckRequest) -> None:
    _reference("token_id", request.token_id)
    _reference("credential_id", request.credential_id)
    _enum("purpose", request.purpose, identity_pb2.Purpose)
    if request.relying_party_id and not _CLIENT_ID.fullmatch(request.relying_party_id):
        raise InvalidArgument("relying_party_id", "1..64 characters of [A-Za-z0-9._:-]")
    if len(request.requested_attributes) > len(DISCLOSABLE_ATTRIBUTES):
        raise InvalidArgument(
            "requested_attributes", f"at most {len(DISCLOSABLE_ATTRIBUTES)} attribute names"
        )
    _attribute_names("requested_attributes", request.requested_attributes)
    if request.claim_key and not _CLAIM_KEY.fullmatch(request.claim_key):
        raise InvalidArgument("claim_key", "64 lowercase hexadecimal digits (SHA-256), or empty")


def _fund_query(request: fund_pb2.QueryFundAccountRequest) -> None:
    validate_id_number("id_number", request.id_number)
    _region("fund_province", request.fund_province)


def _withdrawal(app: fund_pb2.WithdrawalApplication) -> None:
    validate_idempotency_key("application.idempotency_key", app.idempotency_key)
    _region("application.fund_province", app.fund_province)
    _region("application.applicant_province", app.applicant_province)
    if not app.HasField("applicant"):
        raise InvalidArgument("application.applicant", "the applicant (a Person)")
    if not 0 < app.amount_fen <= MAX_FEN:
        raise InvalidArgument("application.amount_fen", f"a whole number of fen in 1..{MAX_FEN}")


def _status_update(
    update: fund_pb2.WithdrawalStatusUpdate | case_pb2.CaseStatusUpdate, statuses: Any
) -> None:
    validate_idempotency_key("idempotency_key", update.idempotency_key)
    _enum("status", update.status, statuses)
    if len(update.status_reason) > 512:
        raise InvalidArgument("status_reason", "at most 512 characters")
    _reference("remote_reference", update.remote_reference, required=False)


def _withdrawal_status(update: fund_pb2.WithdrawalStatusUpdate) -> None:
    _status_update(update, fund_pb2.WithdrawalStatus)
    if not 0 <= update.paid_amount_fen <= MAX_FEN:
        raise InvalidArgument("paid_amount_fen", f"a whole number of fen in 0..{MAX_FEN}")


def _case_status(update: case_pb2.CaseStatusUpdate) -> None:
    _status_update(update, case_pb2.CaseStatus)


def _case(app: case_pb2.CaseApplication) -> None:
    validate_idempotency_key("application.idempotency_key", app.idempotency_key)
    _region("application.handling_province", app.handling_province)
    _region("application.submitting_province", app.submitting_province)
    if app.applicant.WhichOneof("party") is None:
        raise InvalidArgument("application.applicant", "a person or an organisation")


def _certificate(request: certificate_pb2.GetCertificateRequest) -> None:
    if not _CATEGORY.fullmatch(request.category_code):
        raise InvalidArgument("category_code", "a national category code, 1..32 characters")
    if not _HOLDER.fullmatch(request.holder_id.strip()):
        raise InvalidArgument(
            "holder_id", "an 18-character resident ID number or unified social credit code"
        )
    _region("issuer_province", request.issuer_province)
    if not _CONSENT.fullmatch(request.consent_reference):
        raise InvalidArgument("consent_reference", "1..128 characters of [A-Za-z0-9._:-]")
    if len(request.certificate_number) > 64:
        raise InvalidArgument("certificate_number", "at most 64 characters")
    if not _PURPOSE_CODE.fullmatch(request.purpose):
        raise InvalidArgument("purpose", "a purpose code: at most 64 characters of [A-Za-z0-9_]")


#: Each federation request payload type: its message class, the prefix its
#: field names carry in refusals, and its own field checks.
VALIDATORS: dict[str, tuple[type[Message], str, Validator]] = {
    "yrd.federation.v1.CredentialCheckRequest": (
        federation_pb2.CredentialCheckRequest,
        "",
        _credential_check,
    ),
    "yrd.fund.v1.QueryFundAccountRequest": (fund_pb2.QueryFundAccountRequest, "", _fund_query),
    "yrd.fund.v1.WithdrawalApplication": (
        fund_pb2.WithdrawalApplication,
        "application.",
        _withdrawal,
    ),
    "yrd.fund.v1.WithdrawalStatusUpdate": (
        fund_pb2.WithdrawalStatusUpdate,
        "",
        _withdrawal_status,
    ),
    "yrd.certificate.v1.GetCertificateRequest": (
        certificate_pb2.GetCertificateRequest,
        "",
        _certificate,
    ),
    "yrd.case.v1.CaseApplication": (case_pb2.CaseApplication, "application.", _case),
    "yrd.case.v1.CaseStatusUpdate": (case_pb2.CaseStatusUpdate, "", _case_status),
}

# Every request type of a federation service has its checks (a new service
# without them fails at import, in every test run).
assert {request for request, _ in FEDERATION_SERVICES.values()} == set(VALIDATORS)


def _attribute_names(field: str, names: Iterable[str]) -> None:
    """Every name one of DISCLOSABLE_ATTRIBUTES (asked for, or disclosed)."""
    for index, name in enumerate(names):
        if name not in DISCLOSABLE_ATTRIBUTES:
            known = ", ".join(sorted(DISCLOSABLE_ATTRIBUTES))
            raise InvalidArgument(f"{field}[{index}]", f"one of {known}")


def _credential_answer(answer: federation_pb2.CredentialCheckResponse) -> None:
    _enum("state", answer.state, federation_pb2.CredentialState)
    _attribute_names("claims.disclosed_attributes", answer.claims.disclosed_attributes)
    if answer.claims.holder.id_number:
        validate_id_number("claims.holder.id_number", answer.claims.holder.id_number)


def _ack(ack: federation_pb2.DeliveryAck) -> None:
    _reference("remote_reference", ack.remote_reference, required=False)


def _fund_account(account: fund_pb2.FundAccount) -> None:
    if account.fund_province:
        _region("fund_province", account.fund_province)
    _reference("fund_account", account.fund_account, required=False)


def _certificate_answer(certificate: certificate_pb2.Certificate) -> None:
    if certificate.issuer_province:
        _region("issuer_province", certificate.issuer_province)


#: The checks of each answer type beyond the generic ones (every response
#: type of a federation service has an entry).
ANSWER_VALIDATORS: dict[str, Validator] = {
    "yrd.federation.v1.CredentialCheckResponse": _credential_answer,
    "yrd.federation.v1.DeliveryAck": _ack,
    "yrd.fund.v1.FundAccount": _fund_account,
    "yrd.certificate.v1.Certificate": _certificate_answer,
}

assert {answer for _, answer in FEDERATION_SERVICES.values()} == set(ANSWER_VALIDATORS)


def validate_answer(answer: Message) -> None:
    """Check a peer's parsed answer; raise InvalidArgument naming the field (never
    its value). A type without an entry (none today) gets the generic checks."""
    _check_generic(answer, "")
    check = ANSWER_VALIDATORS.get(answer.DESCRIPTOR.full_name)
    if check is not None:
        check(answer)


def validate_payload(opened: OpenedEnvelope) -> Message:
    """Parse an opened request's payload and check it; raise InvalidArgument
    (or EnvelopeRejected INVALID_ARGUMENT for bytes that do not parse)."""
    message_type, prefix, check = VALIDATORS[opened.header.payload_type]
    message = opened.parse(message_type)
    _check_generic(message, prefix)
    check(message)
    return message
