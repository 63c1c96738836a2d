"""E-certificates: licence identifiers, native translation, library connector.

Licence identifier (electronic-licence identifier of the national standard)::

    1.2.156.3005.2.<category>.<issuer credit code>.<serial>.<version>.<check>

``category`` is the 8-digit national category code, ``issuer credit code``
the issuing authority's 18-character GB 32100 code, ``serial`` 1–32
characters of ``[0-9A-Z]``, ``version`` three digits (``001``), and
``check`` the ISO 7064 MOD 37,36 check character computed over every
character before it **with the dots removed** (``stdnum.iso7064.mod_37_36``).

Seals (the issuing authority's e-stamp) are the gateway's to make and judge
(:mod:`gateway.trust.seals`): a seal covers the canonical form, every field
but the ``content`` of attachments. So translation must be exact: every
sealed field is carried by every province's mapping (dates, structured fields
of every catalogue category, attachments). :class:`CertificateCodec` checks
that on every write (it reads its own output back and compares everything but
attachment content, the seal included), so a mapping that would lose or change
a field fails loudly instead of making a genuine certificate look forged.

Native documents. The envelope (category, number, licence id, holder,
issuer, dates, seal) is mapped by the field rules of
``[adapter.certificate.certificate]``; the structured fields live in an
object at ``fields_path`` (native key per catalogue field by
``field_names``, dates in ``field_date_format``, money in
``field_money_format``) and the attachments in a list at
``attachments_path``, each mapped by ``[adapter.certificate.attachment]``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # building only; parsing goes through adapters.native
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, NamedTuple, TypeVar

from stdnum.iso7064 import mod_37_36

from adapters import catalogue, native
from adapters.canonical import Kind
from adapters.catalogue import FIELD_NAMES, FIELD_TABLE, FieldKind
from adapters.connector import HttpConnector
from adapters.errors import CertificateNotFound, ConsentRefused, TranslationError
from adapters.formats import (
    FORMATS,
    FormatContext,
    Mismatch,
    NativeScalar,
    canonical_date,
    describe,
)
from adapters.http import BackendHttp
from adapters.mapping import (
    NativeDocument,
    Translator,
    check_gb11643,
    check_gb32100,
    from_message,
    tagged,
    to_message,
)
from adapters.native import JsonNode, NativeNode, XmlNode
from adapters.repeated import read_messages, write_messages
from adapters.spec import AdapterConfig, CertificateAdapter
from gateway.core.clock import Clock, SystemClock
from gateway.core.identifiers import is_region_code
from yrd.certificate.v1 import certificate_pb2
from yrd.common.v1 import common_pb2

CERTIFICATE = "certificate.certificate"
ATTACHMENT = "certificate.attachment"
REQUEST = "certificate.request"
ANSWER = "certificate.answer"

LICENCE_ID_PREFIX = "1.2.156.3005.2"
_LICENCE_ID = re.compile(
    r"1\.2\.156\.3005\.2\.([1-9][0-9]{7})\.([0-9A-Z]{18})\.([0-9A-Z]{1,32})\.([0-9]{3})\.([0-9A-Z])"
)
_SERIAL = re.compile(r"[0-9A-Z]{1,32}")
_SHA256_BYTES = 32

#: Library outcomes (``[adapter.code_tables.certificate_outcome]`` values) → consent reasons.
_CONSENT_OUTCOMES = {
    "CONSENT_MISSING": "missing",
    "CONSENT_EXPIRED": "expired",
    "CONSENT_OTHER_HOLDER": "other_holder",
    "CONSENT_OTHER_PROVINCE": "other_province",
}
_BACKEND = "certificate library"
T = TypeVar("T")


# ---- Licence identifiers -------------------------------------------------------------


class LicenceId(NamedTuple):
    """The parts of a licence identifier."""

    category: str
    issuer_credit_code: str
    serial: str
    version: int


def _check_character(body: str) -> str:
    return str(mod_37_36.calc_check_digit(body.replace(".", "")))


def licence_id(category: str, issuer_credit_code: str, serial: str, version: int = 1) -> str:
    """The licence identifier of a certificate (ValueError for malformed parts)."""
    if category not in catalogue.CATALOGUE:
        raise ValueError("category must be a national category code of the catalogue")
    try:
        check_gb32100(issuer_credit_code)
    except Mismatch as exc:
        raise ValueError(f"issuer_credit_code must be {exc.expected}") from None
    if not _SERIAL.fullmatch(serial):
        raise ValueError("serial must be 1..32 characters of [0-9A-Z]")
    if not 0 <= version <= 999:
        raise ValueError("version must be 0..999")
    body = f"{LICENCE_ID_PREFIX}.{category}.{issuer_credit_code}.{serial}.{version:03d}"
    return f"{body}.{_check_character(body)}"


def validate_licence_id(value: str) -> LicenceId:
    """Parse and check a licence identifier (TranslationError naming what is wrong)."""
    match = _LICENCE_ID.fullmatch(value)
    if not match:
        raise TranslationError(
            "licence_id",
            f"{LICENCE_ID_PREFIX}.<8-digit category>.<18-character credit code>."
            "<serial [0-9A-Z]{1,32}>.<3-digit version>.<check character>",
        )
    body = value[: value.rfind(".")]
    if not mod_37_36.is_valid(body.replace(".", "") + match[5]):
        raise TranslationError("licence_id", "a valid ISO 7064 MOD 37,36 check character")
    try:
        check_gb32100(match[2])
    except Mismatch as exc:
        raise TranslationError("licence_id", f"an issuer segment that is {exc.expected}") from None
    return LicenceId(match[1], match[2], match[3], int(match[4]))


# ---- Canonical checks ----------------------------------------------------------------


def _carried(cert: certificate_pb2.Certificate) -> bytes:
    """What a mapping must carry exactly: the canonical form but attachment content
    (the content may travel or not; a seal covers the attachment's digest)."""
    copy = certificate_pb2.Certificate()
    copy.CopyFrom(cert)
    for attachment in copy.attachments:
        attachment.ClearField("content")
    return copy.SerializeToString(deterministic=True)


def check_certificate(cert: certificate_pb2.Certificate) -> None:
    """Check a canonical certificate's identifiers, dates and fields (TranslationError).

    Messages name the canonical field and what was expected, never a value.
    """
    entry = catalogue.category(cert.category_code)
    if not cert.certificate_number:
        raise TranslationError("certificate_number", "a certificate number")
    holder_kind = cert.holder.WhichOneof("party")
    if holder_kind != entry.holder:
        raise TranslationError(
            "holder", f"a holder that is a {entry.holder} (category {entry.code})"
        )
    try:
        if holder_kind == "person":
            check_gb11643(cert.holder.person.id_number)
        else:
            check_gb32100(cert.holder.organisation.credit_code)
    except Mismatch as exc:
        raise TranslationError(f"holder.{holder_kind}", exc.expected) from None
    try:
        check_gb32100(cert.issuer_credit_code)
    except Mismatch as exc:
        raise TranslationError("issuer_credit_code", exc.expected) from None
    parts = validate_licence_id(cert.licence_id)
    if parts.category != cert.category_code or parts.issuer_credit_code != cert.issuer_credit_code:
        raise TranslationError(
            "licence_id", "the certificate's own category code and issuer credit code"
        )
    if cert.issuer_province and not is_region_code(cert.issuer_province):
        raise TranslationError("issuer_province", "a GB/T 2260 six-digit province code")
    issued = _date("issue_date", cert.issue_date)
    if cert.expiry_date and _date("expiry_date", cert.expiry_date) < issued:
        raise TranslationError("expiry_date", "a date not before the issue date")
    catalogue.check_fields(entry, dict(cert.fields))
    for index, attachment in enumerate(cert.attachments):
        if len(attachment.sha256) != _SHA256_BYTES:
            raise TranslationError(f"attachments[{index}].sha256", "a 32-byte SHA-256 digest")
        if attachment.size_bytes < 0:
            raise TranslationError(
                f"attachments[{index}].size_bytes", "a size that is not negative"
            )


def _date(name: str, value: str) -> date:
    try:
        return canonical_date(value)
    except Mismatch as exc:
        raise TranslationError(name, exc.expected) from None


# ---- Native translation --------------------------------------------------------------


def _native_key(style: str, name: str) -> str:
    parts = name.split("_")
    if style == "camelCase":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == "PascalCase":
        return "".join(p.capitalize() for p in parts)
    return name


class CertificateCodec:
    """A province's certificate documents ⇄ canonical ``Certificate`` messages.

    Built once per province (it compiles the mapping); raises ``ValueError``
    when the province's config cannot carry the catalogue (no
    ``[adapter.certificate]``, a category table with unknown codes, a field
    name table that misses catalogue fields).
    """

    def __init__(self, adapter: AdapterConfig) -> None:
        if adapter.certificate is None:
            raise ValueError("the adapter config has no [adapter.certificate] section")
        self.adapter = adapter
        self.spec: CertificateAdapter = adapter.certificate
        self.translator = Translator(adapter)
        catalogue.check_category_table(adapter)
        self._xml = adapter.format == "xml"
        if self._xml and self.spec.attachment_item is None:
            raise ValueError(
                "certificate.attachment_item: expected an element name (format is xml)"
            )
        self._ctx = FormatContext(timezone=zoneinfo.ZoneInfo(adapter.timezone), textual=self._xml)
        self._date = FORMATS[Kind.DATE][self.spec.field_date_format]
        self._money = FORMATS[Kind.INT64][self.spec.field_money_format]
        self._count = FORMATS[Kind.INT64]["integer"]
        self._keys = self._key_table()
        self._names = {native_key: name for name, native_key in self._keys.items()}
        answer_rule = next(r for r in self.spec.answer.fields if r.canonical == "certificate")
        self._answer_path = answer_rule.path
        self._fields_path = tuple(self.spec.fields_path.split("."))
        self._attachments_path = tuple(self.spec.attachments_path.split("."))

    def _key_table(self) -> dict[str, str]:
        """Canonical field name → native key, for every field of the catalogue."""
        if self.spec.field_names != "table":
            keys = {name: _native_key(self.spec.field_names, name) for name in FIELD_NAMES}
        else:
            table = self.adapter.code_tables.get(FIELD_TABLE)
            if table is None:
                raise ValueError(
                    "certificate.field_names is 'table': expected "
                    f"[adapter.code_tables.{FIELD_TABLE}]"
                )
            keys = {str(name): native_key for native_key, name in table.items()}
            missing = sorted(set(FIELD_NAMES) - set(keys))
            extra = sorted(set(keys) - set(FIELD_NAMES))
            if missing or extra:
                raise ValueError(
                    f"code_tables.{FIELD_TABLE}: expected a native key for every catalogue field "
                    f"and no other; missing {missing}, unknown {extra}"
                )
        if len(set(keys.values())) != len(keys):
            raise ValueError("certificate field names: two catalogue fields share a native key")
        return keys

    # -- public API ------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        return self.translator.content_type

    def local_code(self, national: str) -> str:
        """The province's own code of a national category (TranslationError when unmapped)."""
        return catalogue.local_code(self.adapter, national)

    def national_code(self, local: str) -> str:
        """The national code of one of the province's category codes (TranslationError)."""
        return catalogue.national_code(self.adapter, local)

    def to_native(self, cert: certificate_pb2.Certificate) -> NativeDocument:
        """A canonical certificate as the province's native certificate document."""
        self._check_writable(cert)
        document = self.translator.to_native(CERTIFICATE, self._envelope(cert))
        node = self._node(document)
        self._tagged(lambda: self._write_extras(cert, node))
        self._check_exact(cert, node)
        return document

    def from_native(self, document: NativeDocument) -> certificate_pb2.Certificate:
        """A native certificate document as a canonical certificate (checked)."""
        envelope = self.translator.to_canonical(CERTIFICATE, document)
        return self._tagged(lambda: self._read(envelope, self._node(document)))

    def encode_certificate(self, cert: certificate_pb2.Certificate) -> bytes:
        return _serialize(self.to_native(cert))

    def decode_certificate(self, body: bytes) -> certificate_pb2.Certificate:
        return self.from_native(self.translator.parse(CERTIFICATE, body))

    def encode_request(
        self, request: certificate_pb2.GetCertificateRequest, requesting_province: str
    ) -> bytes:
        """The native fetch request (category in the province's code)."""
        if not is_region_code(requesting_province):
            raise TranslationError(
                "requesting_province", "a GB/T 2260 six-digit province code", message=REQUEST
            )
        if request.issuer_province and request.issuer_province != self.spec.province:
            raise TranslationError(
                "issuer_province", f"this library's province {self.spec.province}", message=REQUEST
            )
        self.local_code(request.category_code)  # a clear error for an unmapped category
        canonical = from_message(request)
        canonical.pop("issuer_province", None)
        canonical["requesting_province"] = requesting_province
        return self.translator.encode(REQUEST, canonical)

    def decode_request(self, body: bytes) -> tuple[certificate_pb2.GetCertificateRequest, str]:
        """A native fetch request: (request with the national category, requesting province)."""
        canonical = self.translator.decode(REQUEST, body)
        requesting = canonical.pop("requesting_province")
        request = to_message(canonical, certificate_pb2.GetCertificateRequest)
        request.issuer_province = self.spec.province
        return request, requesting

    def encode_answer(self, outcome: str, cert: certificate_pb2.Certificate | None = None) -> bytes:
        """A native fetch answer (what a library following the mapping would send)."""
        if (outcome == "FOUND") != (cert is not None):
            raise ValueError("a certificate goes with outcome FOUND, and only with it")
        canonical: dict[str, Any] = {"outcome": outcome}
        if cert is not None:
            self._check_writable(cert)
            canonical["certificate"] = self._envelope(cert)
        document = self.translator.to_native(ANSWER, canonical)
        if cert is not None:
            node = self._node(document).child(self._answer_path)
            assert node is not None  # the envelope was just written there
            self._tagged(lambda: self._write_extras(cert, node))
            self._check_exact(cert, node)
        return _serialize(document)

    def decode_answer(self, body: bytes) -> tuple[str, certificate_pb2.Certificate | None]:
        """A native fetch answer: (outcome, certificate when FOUND)."""
        document = self.translator.parse(ANSWER, body)
        canonical = self.translator.to_canonical(ANSWER, document)
        outcome: str = canonical["outcome"]
        if outcome != "FOUND":
            return outcome, None
        envelope = canonical.get("certificate")
        node = self._node(document).child(self._answer_path)
        if envelope is None or node is None:
            raise TranslationError(
                native.dotted("", self._answer_path), "the certificate when found", message=ANSWER
            )
        return outcome, self._tagged(lambda: self._read(envelope, node), ANSWER)

    # -- internals -------------------------------------------------------------------

    def _tagged(self, work: Callable[[], T], message: str = CERTIFICATE) -> T:
        return tagged(message, work)

    def _check_writable(self, cert: certificate_pb2.Certificate) -> None:
        self._tagged(lambda: check_certificate(cert))
        self._tagged(lambda: self.local_code(cert.category_code))

    def _node(self, document: NativeDocument) -> NativeNode:
        if isinstance(document, ET.Element):
            return XmlNode(document)
        return JsonNode(document)

    def _envelope(self, cert: certificate_pb2.Certificate) -> dict[str, Any]:
        canonical = from_message(cert)
        canonical.pop("fields", None)
        canonical.pop("attachments", None)
        return canonical

    def _check_exact(self, cert: certificate_pb2.Certificate, node: NativeNode) -> None:
        """Read back what was written: all the seal covers, and the seal, unchanged."""
        mapper = self.translator.mapper(CERTIFICATE)
        back = self._read(mapper.read(node, self._ctx), node)
        if _carried(back) != _carried(cert):
            raise TranslationError(
                "",
                "a certificate the mapping carries exactly (a sealed field would be lost "
                "or changed; check that every set field has a rule)",
                message=CERTIFICATE,
            )

    def _read(self, envelope: Mapping[str, Any], node: NativeNode) -> certificate_pb2.Certificate:
        cert = to_message(envelope, certificate_pb2.Certificate)
        entry = catalogue.category(cert.category_code)
        for name, value in self._read_fields(node, entry).items():
            cert.fields[name] = value
        for attachment in self._read_attachments(node):
            cert.attachments.append(attachment)
        check_certificate(cert)
        return cert

    # structured fields

    def _field_to_native(self, kind: FieldKind, value: str) -> NativeScalar:
        if kind is FieldKind.DATE:
            return self._date.to_native(value, self._ctx)
        if kind is FieldKind.FEN:
            return self._money.to_native(int(value), self._ctx)
        if kind is FieldKind.COUNT:
            return self._count.to_native(int(value), self._ctx)
        return value

    def _field_to_canonical(self, kind: FieldKind, raw: NativeScalar) -> str:
        if kind is FieldKind.DATE:
            return str(self._date.to_canonical(raw, self._ctx))
        if kind is FieldKind.FEN:
            fen = self._money.to_canonical(raw, self._ctx)
            if not isinstance(fen, int) or fen < 0:
                raise Mismatch("an amount of money that is not negative")
            return str(fen)
        if kind is FieldKind.COUNT:
            count = self._count.to_canonical(raw, self._ctx)
            if not isinstance(count, int) or count < 0:
                raise Mismatch("a count that is not negative")
            return str(count)
        if not isinstance(raw, str):
            raise Mismatch(f"a string, got {describe(raw)}")
        catalogue.check_value(kind, raw)
        return raw

    def _write_extras(self, cert: certificate_pb2.Certificate, node: NativeNode) -> None:
        entry = catalogue.category(cert.category_code)
        specs = entry.field_map
        if cert.fields:
            fields_node = node.make_child(self._fields_path)
            for name in sorted(cert.fields):
                native_key = self._keys[name]
                try:
                    value = self._field_to_native(specs[name].kind, cert.fields[name])
                except Mismatch as exc:
                    raise TranslationError(f"fields.{name}", exc.expected) from None
                fields_node.put((native_key,), value)
        write_messages(
            self.translator.mapper(ATTACHMENT),
            node,
            self._attachments_path,
            self.spec.attachment_item,
            [_attachment_dict(a) for a in cert.attachments],
            self._ctx,
        )

    def _read_fields(self, node: NativeNode, entry: catalogue.Category) -> dict[str, str]:
        fields_node = node.child(self._fields_path)
        if fields_node is None:
            return {}
        where = native.dotted(node.where, self._fields_path)
        raw_items: list[tuple[str, NativeScalar]] = []
        if isinstance(fields_node, XmlNode):
            for element in fields_node.element:
                if len(element):
                    raise TranslationError(f"{where}.{element.tag}", "text content")
                raw_items.append((str(element.tag), element.text or ""))
        else:
            assert isinstance(fields_node, JsonNode)
            for key, value in fields_node.data.items():
                if not isinstance(value, str | int) or isinstance(value, bool):
                    raise TranslationError(
                        f"{where}.{key}", f"a string or integer, got {describe(value)}"
                    )
                raw_items.append((key, value))
        specs = entry.field_map
        result: dict[str, str] = {}
        for native_key, raw in raw_items:
            name = self._names.get(native_key)
            if name is None or name not in specs:
                shown = native_key if len(native_key) <= 40 else native_key[:40] + "…"
                raise TranslationError(
                    f"{where}.{shown}", f"a field of category {entry.code} ({entry.name_en})"
                )
            if name in result:
                raise TranslationError(f"{where}.{native_key}", "one value per field")
            if raw == "":
                continue
            try:
                result[name] = self._field_to_canonical(specs[name].kind, raw)
            except Mismatch as exc:
                raise TranslationError(f"{where}.{native_key}", exc.expected) from None
        return result

    def _read_attachments(self, node: NativeNode) -> list[common_pb2.AttachmentRef]:
        read = read_messages(
            self.translator.mapper(ATTACHMENT),
            node,
            self._attachments_path,
            self.spec.attachment_item,
            self._ctx,
        )
        return [to_message(canonical, common_pb2.AttachmentRef) for canonical in read]


def _attachment_dict(attachment: common_pb2.AttachmentRef) -> dict[str, Any]:
    canonical = from_message(attachment)
    canonical.pop("content", None)
    return canonical


def _serialize(document: NativeDocument) -> bytes:
    if isinstance(document, ET.Element):
        return native.serialize_xml(document)
    return native.serialize_json(document)


def to_local(cert: certificate_pb2.Certificate, adapter: AdapterConfig) -> tuple[str, bytes]:
    """``cert`` in a province's terms: (its own category code, its native document bytes).

    For repeated use hold a :class:`CertificateCodec` per province instead
    (this compiles the mapping on every call).
    """
    codec = CertificateCodec(adapter)
    return codec.local_code(cert.category_code), codec.encode_certificate(cert)


# ---- The connector -------------------------------------------------------------------


class HttpCertificateLibrary(HttpConnector):
    """:class:`~adapters.base.CertificateLibrary` over HTTP, in the province's native format.

    POSTs ``[adapter.certificate.request]`` to ``fetch_path`` and reads
    ``[adapter.certificate.answer]``: its outcome becomes the certificate,
    ``CertificateNotFound`` or ``ConsentRefused(reason)``. The certificate is
    returned exactly as sealed (the seal is the gateway's to verify), after
    checking that it is what was asked for.
    """

    def __init__(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
    ) -> None:
        self.codec = CertificateCodec(adapter)
        self._http = BackendHttp(_BACKEND, base_url)
        self._clock: Clock = clock or SystemClock()

    @property
    def province(self) -> str:
        return self.codec.spec.province

    async def fetch(
        self,
        request: certificate_pb2.GetCertificateRequest,
        requesting_province: str,
        *,
        timeout: float,
    ) -> certificate_pb2.Certificate:
        body = self.codec.encode_request(request, requesting_province)
        answer = await self._http.exchange(
            "POST",
            self.codec.spec.fetch_path,
            body,
            content_type=self.codec.content_type,
            timeout=timeout,
            what="certificate fetch",
        )
        outcome, cert = self.codec.decode_answer(answer)
        if outcome == "NOT_FOUND":
            raise CertificateNotFound("the certificate library has no such certificate")
        if outcome in _CONSENT_OUTCOMES:
            raise ConsentRefused(_CONSENT_OUTCOMES[outcome])
        assert cert is not None  # decode_answer returns one with FOUND
        self._check_asked_for(request, cert)
        return cert

    def _check_asked_for(
        self, request: certificate_pb2.GetCertificateRequest, cert: certificate_pb2.Certificate
    ) -> None:
        # A certificate of someone else, or of another category, must not be
        # released under this consent even if the library sent it.
        holder = cert.holder
        holder_id = (
            holder.person.id_number
            if holder.WhichOneof("party") == "person"
            else holder.organisation.credit_code
        )
        if cert.category_code != request.category_code:
            raise TranslationError("category_code", "the category asked for", message=ANSWER)
        if holder_id != request.holder_id:
            raise TranslationError("holder", "the holder asked about", message=ANSWER)
        if request.certificate_number and cert.certificate_number != request.certificate_number:
            raise TranslationError(
                "certificate_number", "the certificate number asked for", message=ANSWER
            )
        if cert.issuer_province and cert.issuer_province != self.province:
            raise TranslationError("issuer_province", "this library's province", message=ANSWER)
