"""The canonical side of every mapping: which fields a message has, and of what kind.

A mapping rule names a canonical field; the schema here says what that field
holds, so that a province config can be checked at start-up (a date format on
a date, a code table whose values are names of the right enum) rather than
failing on the first request.

Canonical values in a canonical dict are what
``google.protobuf.json_format.MessageToDict(preserving_proto_field_name=True)``
produces: enums as value names (``"GENDER_MALE"``), bytes as standard base64
strings, timestamps as RFC 3339 UTC strings, dates as ``"YYYY-MM-DD"``
strings. Messages that exist only between an adapter and its back-end
(the status request and response) are described here by hand.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2


class Kind(enum.StrEnum):
    """What a canonical field holds, which decides the conversions allowed on it."""

    STRING = "string"
    ENUM = "enum"
    DATE = "date"  # ISO 8601 calendar date "YYYY-MM-DD"
    TIMESTAMP = "timestamp"  # RFC 3339 instant, UTC
    BOOL = "bool"
    BYTES = "bytes"  # base64 in a canonical dict
    MESSAGE = "message"


@dataclass(frozen=True)
class CanonicalField:
    name: str
    kind: Kind
    #: Enum value names, for ``Kind.ENUM``.
    enum_values: frozenset[str] = frozenset()
    #: Name of the nested canonical message, for ``Kind.MESSAGE``.
    message: str = ""
    #: Every mapping of the message must map this field.
    required: bool = False


@dataclass(frozen=True)
class CanonicalMessage:
    name: str
    fields: Mapping[str, CanonicalField] = field(default_factory=dict)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.fields.items() if f.required)


_SCALAR_KINDS = {
    FieldDescriptor.TYPE_STRING: Kind.STRING,
    FieldDescriptor.TYPE_ENUM: Kind.ENUM,
    FieldDescriptor.TYPE_BOOL: Kind.BOOL,
    FieldDescriptor.TYPE_BYTES: Kind.BYTES,
}


def _from_descriptor(
    descriptor: Descriptor, *, kinds: Mapping[str, Kind], required: frozenset[str]
) -> CanonicalMessage:
    """Derive the schema from the proto, so a new proto field is mappable at once.

    ``kinds`` overrides fields whose proto type is ``string`` but whose content
    has a format (calendar dates).
    """
    fields: dict[str, CanonicalField] = {}
    for f in descriptor.fields:
        kind = kinds.get(f.name) or _SCALAR_KINDS.get(f.type)
        if kind is None:  # pragma: no cover - guards future proto changes
            raise TypeError(f"{descriptor.full_name}.{f.name}: no canonical kind for its type")
        values: frozenset[str] = frozenset()
        if kind is Kind.ENUM and f.enum_type is not None:
            values = frozenset(v.name for v in f.enum_type.values)
        fields[f.name] = CanonicalField(f.name, kind, values, required=f.name in required)
    return CanonicalMessage(descriptor.full_name, MappingProxyType(fields))


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

#: Mapping slots per domain: ``[adapter.<domain>.<slot>]`` maps this message.
DOMAINS: Mapping[str, Mapping[str, CanonicalMessage]] = MappingProxyType(
    {
        "identity": MappingProxyType(
            {"person": PERSON, "status_request": STATUS_REQUEST, "status_response": STATUS_RESPONSE}
        ),
    }
)
