"""The declarative mapping engine: native documents ⇄ canonical dicts.

A province's ``[adapter]`` config (see :mod:`adapters.spec`) is compiled once
into a :class:`Translator`. Reading turns a native document (a JSON object or
an XML element tree) into a *canonical dict*; writing does the reverse. A
canonical dict has the proto field names of the canonical message as keys
and the values ``json_format`` uses (enum names, base64 bytes, RFC 3339
timestamps), so :func:`to_message` / :func:`from_message` move it to and from
protobuf without another layer of hand-written copying.

Every rule is applied the same way in both directions, so a mapping that
reads a document also writes it; the round trip is property-tested per
province. A document that does not match raises :class:`TranslationError`
naming the native path and what was expected, never the value itself (it may
be personal data), except for short codes missing from a code table.

Absent values: a missing key, JSON ``null`` and an empty string are all
"no value" (proto3 cannot tell them apart either). On reading, a required
field without a value is an error and an optional one takes its default or
stays out of the canonical dict. On writing, an absent optional field is left
out of the native document.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET  # building and types only; parsing uses defusedxml
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from stdnum.cn import uscc

from adapters import formats, native
from adapters.canonical import DOMAINS, CanonicalField, CanonicalMessage, Kind
from adapters.errors import TranslationError
from adapters.formats import FormatContext, Mismatch, NativeScalar, describe
from adapters.native import JsonNode, NativeNode, XmlNode
from adapters.spec import AdapterConfig, FieldRule, MessageMapping
from gateway.core.clock import set_timestamp
from gateway.core.identifiers import id_number_problem

NativeDocument = dict[str, Any] | ET.Element
M = TypeVar("M", bound=Message)
T = TypeVar("T")

_MAX_CODE_SHOWN = 16


def check_gb11643(value: str) -> None:
    """Check a resident ID number in canonical form: the node's one rule
    (:func:`gateway.core.identifiers.id_number_problem`: form, province prefix,
    birth date, check character), so a number the node refuses is never read
    from or written to a back-end either.
    """
    problem = id_number_problem(value)
    if problem is not None:
        raise Mismatch(f"a GB 11643 resident ID number: {problem}")


def check_gb32100(value: str) -> None:
    """Check a unified social credit code: 18 characters of its alphabet, check character."""
    # compact() would upper-case and strip separators: the canonical form has none.
    if len(value) != 18 or not value.isascii() or uscc.compact(value) != value:
        raise Mismatch("a GB 32100 unified social credit code (18 characters)")
    try:
        uscc.validate(value)
    except Exception:  # stdnum raises its own ValidationError subclasses
        raise Mismatch(
            "a GB 32100 unified social credit code with a valid check character"
        ) from None


class _FieldCodec:
    """One compiled field rule: converts a scalar value in both directions."""

    def __init__(self, rule: FieldRule, target: CanonicalField, config: AdapterConfig) -> None:
        self.rule = rule
        self.target = target
        self.path = rule.path
        self.kind = target.kind
        fmt_name = rule.format or formats.DEFAULT_FORMAT.get(target.kind)
        self.format = formats.FORMATS[target.kind][fmt_name] if fmt_name else None
        self.codes_name = rule.codes
        self.codes: Mapping[str, str | bool] | None = None
        self.reverse: dict[str | bool, str] = {}
        if rule.codes is not None:
            self.codes = config.code_tables[rule.codes]
            self.reverse = {value: code for code, value in self.codes.items()}
        self.pattern = re.compile(rule.pattern) if rule.pattern else None
        # Looked up on every document: kept here once instead of read from the
        # rule (``FieldRule.path`` splits the dotted path on each access).
        self.canonical = rule.canonical
        self.required = rule.required
        self.default = rule.default
        self.separator = rule.separator
        self.item = rule.item
        self._checked = rule.check is not None or self.pattern is not None

    def _table(self) -> str:
        assert self.codes is not None
        return f"a code of table {self.codes_name!r} {sorted(self.codes)}"

    def to_canonical(self, raw: NativeScalar, ctx: FormatContext) -> object:
        if self.codes is not None:
            if isinstance(raw, str) and raw in self.codes:
                return self.codes[raw]
            shown = repr(raw) if len(str(raw)) <= _MAX_CODE_SHOWN else describe(raw)
            raise Mismatch(f"{self._table()}, got {shown}")
        if self.format is not None:
            return self.format.to_canonical(raw, ctx)
        if self.kind is Kind.BOOL:
            if ctx.textual and raw in ("true", "false"):
                return raw == "true"
            if not ctx.textual and isinstance(raw, bool):
                return raw
            raise Mismatch(
                f"{'true or false' if ctx.textual else 'a boolean'}, got {describe(raw)}"
            )
        if not isinstance(raw, str):
            raise Mismatch(f"a string, got {describe(raw)}")
        if self.kind is Kind.ENUM and raw not in self.target.enum_values:
            raise Mismatch(f"one of {sorted(self.target.enum_values)}")
        self.check(raw)
        return raw

    def to_native(self, value: object, ctx: FormatContext) -> NativeScalar:
        if self.kind is Kind.STRING:
            if not isinstance(value, str):
                raise Mismatch(f"a string, got {describe(value)}")
            self.check(value)
        if self.codes is not None:
            if isinstance(value, str | bool) and value in self.reverse:
                return self.reverse[value]
            raise Mismatch(
                f"a canonical value of code table {self.codes_name!r} "
                f"{sorted(map(str, self.reverse))}, got {describe(value)}"
            )
        if self.format is not None:
            return self.format.to_native(value, ctx)
        if self.kind is Kind.BOOL:
            if not isinstance(value, bool):
                raise Mismatch(f"a boolean, got {describe(value)}")
            return value
        if self.kind is Kind.ENUM and value not in self.target.enum_values:
            raise Mismatch(f"one of {sorted(self.target.enum_values)}")
        assert isinstance(value, str)  # STRING checked above; ENUM names are strings
        return value

    def list_to_canonical(self, raw: NativeScalar | list[NativeScalar]) -> list[str]:
        """Native list (or joined string, with a separator) → list of strings."""
        separator = self.rule.separator
        if separator is not None:
            if not isinstance(raw, str):
                raise Mismatch(f"a string of items joined by {separator!r}, got {describe(raw)}")
            items: list[NativeScalar] = list(raw.split(separator))
        else:
            assert isinstance(raw, list)  # get_list returns lists
            items = raw
        result = []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise Mismatch(f"item {index} as a non-empty string, got {describe(item)}")
            self.check(item)
            result.append(item)
        return result

    def list_to_native(self, value: object) -> list[str]:
        """Canonical list of strings → the items to write (validated)."""
        if not isinstance(value, list | tuple):
            raise Mismatch(f"a list of strings, got {describe(value)}")
        separator = self.rule.separator
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise Mismatch(f"a list of non-empty strings, item {index} is {describe(item)}")
            if separator is not None and separator in item:
                raise Mismatch(f"items without the separator {separator!r} (item {index})")
            self.check(item)
        return list(value)

    def check(self, value: str) -> None:
        if not self._checked:
            return
        if self.rule.check == "gb11643":
            check_gb11643(value)
        elif self.rule.check == "gb32100":
            check_gb32100(value)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise Mismatch(f"a value matching {self.pattern.pattern!r}")


class MessageMapper:
    """A compiled :class:`MessageMapping`: reads and writes one canonical message.

    Everything a rule says is looked up once here (paths split, codecs built,
    nested mappers found on first use), so reading and writing a document only
    walks it.
    """

    def __init__(
        self, name: str, mapping: MessageMapping, schema: CanonicalMessage, translator: Translator
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.schema = schema
        self._translator = translator
        self._fields = frozenset(schema.fields)
        self._constants = [rule for rule in mapping.fields if rule.canonical is None]
        # (path, the constant as read from JSON, as read from XML, as written)
        self._constant_paths: list[
            tuple[tuple[str, ...], NativeScalar, NativeScalar, str | bool]
        ] = []
        for rule in self._constants:
            assert rule.const is not None  # FieldRule: const when canonical is None
            self._constant_paths.append(
                (
                    rule.path,
                    _native_constant(rule.const, False),
                    _native_constant(rule.const, True),
                    rule.const,
                )
            )
        self._codecs = [
            (rule, _FieldCodec(rule, schema.fields[rule.canonical], translator.config))
            for rule in mapping.fields
            if rule.canonical is not None
        ]
        self._field_codecs = [codec for _, codec in self._codecs]
        #: Nested mappers by canonical field, found on first use (the translator
        #: may not have compiled them yet while this one is built).
        self._nested_mappers: dict[str, MessageMapper] = {}

    def read(self, node: NativeNode, ctx: FormatContext) -> dict[str, Any]:
        """Native → canonical dict."""
        textual = node.textual
        for path, want_json, want_text, _ in self._constant_paths:
            want = want_text if textual else want_json
            if node.get(path) != want:
                raise TranslationError(native.dotted(node.where, path), repr(want))
        result: dict[str, Any] = {}
        for codec in self._field_codecs:
            canonical = codec.canonical
            assert canonical is not None
            path = codec.path
            kind = codec.kind
            if kind is Kind.MESSAGE:
                child = node.child(path)
                if child is not None:
                    result[canonical] = self._nested_mapper(codec).read(child, ctx)
                elif codec.required:
                    raise TranslationError(
                        native.dotted(node.where, path),
                        f"an object (required for {canonical!r})",
                    )
                continue
            if kind is Kind.LIST:
                raw_list: NativeScalar | list[NativeScalar] | None
                if codec.separator is None:
                    raw_list = node.get_list(path, codec.item)
                else:
                    raw_list = node.get(path)
                if raw_list is None or raw_list in ("", []):
                    if codec.required:
                        raise TranslationError(
                            native.dotted(node.where, path),
                            f"at least one item (required for {canonical!r})",
                        )
                    continue
                try:
                    result[canonical] = codec.list_to_canonical(raw_list)
                except Mismatch as exc:
                    raise TranslationError(native.dotted(node.where, path), exc.expected) from None
                continue
            raw = node.get(path)
            if raw is None or raw == "":
                if codec.required:
                    raise TranslationError(
                        native.dotted(node.where, path),
                        f"a value (required for {canonical!r})",
                    )
                if codec.default is not None:
                    result[canonical] = codec.default
                continue
            try:
                result[canonical] = codec.to_canonical(raw, ctx)
            except Mismatch as exc:
                raise TranslationError(native.dotted(node.where, path), exc.expected) from None
        return result

    def write(
        self, canonical: Mapping[str, Any], node: NativeNode, ctx: FormatContext, prefix: str = ""
    ) -> None:
        """Canonical dict → native, into ``node``."""
        if not self._fields.issuperset(canonical):
            unknown = set(canonical) - self._fields
            raise TranslationError(
                node.where,
                f"canonical fields of {self.schema.name}, got unknown {sorted(unknown)}",
            )
        for path, _, _, const in self._constant_paths:
            node.put(path, const)
        for codec in self._field_codecs:
            name = codec.canonical
            assert name is not None
            path = codec.path
            value = canonical.get(name)
            if value is None or value in ("", {}, []):
                if codec.required:
                    raise TranslationError(
                        native.dotted(node.where, path),
                        f"a value for required canonical {prefix + name!r}",
                    )
                continue
            kind = codec.kind
            if kind is Kind.MESSAGE:
                field = f"{prefix}{name}"
                if not isinstance(value, Mapping):
                    raise TranslationError(
                        native.dotted(node.where, path), f"canonical {field!r} as an object"
                    )
                nested = self._nested_mapper(codec)
                nested.write(value, node.make_child(path), ctx, prefix=f"{field}.")
                continue
            if kind is Kind.LIST:
                try:
                    items = codec.list_to_native(value)
                except Mismatch as exc:
                    raise TranslationError(
                        native.dotted(node.where, path),
                        f"canonical {prefix + name!r} as {exc.expected}",
                    ) from None
                if codec.separator is not None:
                    node.put(path, codec.separator.join(items))
                else:
                    node.put_list(path, codec.item, items)
                continue
            try:
                node.put(path, codec.to_native(value, ctx))
            except Mismatch as exc:
                raise TranslationError(
                    native.dotted(node.where, path),
                    f"canonical {prefix + name!r} as {exc.expected}",
                ) from None

    def _nested_mapper(self, codec: _FieldCodec) -> MessageMapper:
        assert codec.canonical is not None
        mapper = self._nested_mappers.get(codec.canonical)
        if mapper is None:
            mapper = self._translator.mapper(self._nested(codec))
            self._nested_mappers[codec.canonical] = mapper
        return mapper

    def _nested(self, codec: _FieldCodec) -> str:
        domain = self.name.split(".", 1)[0]
        return f"{domain}.{codec.target.message}"


def _native_constant(value: str | bool, textual: bool) -> NativeScalar:
    if textual and isinstance(value, bool):
        return "true" if value else "false"
    return value


class Translator:
    """All message mappings of one province, compiled from its :class:`AdapterConfig`.

    Message names are ``"<domain>.<slot>"``: ``identity.person``,
    ``identity.status_request``, ``identity.status_response``.
    """

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self._ctx = FormatContext(
            timezone=zoneinfo.ZoneInfo(config.timezone), textual=config.format == "xml"
        )
        self._mappers: dict[str, MessageMapper] = {}
        for domain, slots in DOMAINS.items():
            for slot, mapping in config.domain(domain).items():
                name = f"{domain}.{slot}"
                self._mappers[name] = MessageMapper(name, mapping, slots[slot], self)

    @property
    def messages(self) -> tuple[str, ...]:
        return tuple(self._mappers)

    @property
    def content_type(self) -> str:
        """HTTP media type of this province's documents."""
        kind = "xml" if self.config.format == "xml" else "json"
        return f"application/{kind}; charset=utf-8"

    def mapper(self, message: str) -> MessageMapper:
        try:
            return self._mappers[message]
        except KeyError:
            raise KeyError(
                f"no mapping for {message!r}; configured: {sorted(self._mappers)}"
            ) from None

    def to_canonical(self, message: str, document: NativeDocument) -> dict[str, Any]:
        """A parsed native document → canonical dict (raises TranslationError)."""
        mapper = self.mapper(message)
        node: NativeNode
        if isinstance(document, ET.Element):
            node = XmlNode(document)
        elif isinstance(document, dict):
            node = JsonNode(document)
        else:
            raise TranslationError("", f"a JSON object or XML element, got {describe(document)}")
        return self._tagged(message, lambda: mapper.read(node, self._ctx))

    def to_native(self, message: str, canonical: Mapping[str, Any]) -> NativeDocument:
        """Canonical dict → native document (dict for JSON, Element for XML)."""
        mapper = self.mapper(message)
        if self.config.format == "xml":
            assert mapper.mapping.root is not None  # enforced by AdapterConfig
            element = ET.Element(mapper.mapping.root)
            self._tagged(message, lambda: mapper.write(canonical, XmlNode(element), self._ctx))
            return element
        data: dict[str, Any] = {}
        self._tagged(message, lambda: mapper.write(canonical, JsonNode(data), self._ctx))
        return data

    def decode(self, message: str, body: bytes) -> dict[str, Any]:
        """Native document bytes → canonical dict."""
        document = self._tagged(message, lambda: self.parse(message, body))
        return self.to_canonical(message, document)

    def encode(self, message: str, canonical: Mapping[str, Any]) -> bytes:
        """Canonical dict → native document bytes (UTF-8)."""
        document = self.to_native(message, canonical)
        if isinstance(document, ET.Element):
            return native.serialize_xml(document)
        return native.serialize_json(document)

    def parse(self, message: str, body: bytes) -> NativeDocument:
        """Parse native bytes without mapping them (XML: checks the document element)."""
        if self.config.format == "xml":
            root = self.mapper(message).mapping.root
            assert root is not None  # enforced by AdapterConfig
            return native.parse_xml(body, root)
        return native.parse_json(body)

    def _tagged(self, message: str, work: Callable[[], T]) -> T:
        """Run ``work``, naming ``message`` in any TranslationError it raises."""
        return tagged(message, work)


def from_message(message: Message) -> dict[str, Any]:
    """A protobuf message as a canonical dict (every field, defaults included).

    Defaults are included so that an explicit ``GENDER_UNSPECIFIED`` reaches
    the mapping; empty strings are then treated as absent by it.
    """
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_message(canonical: Mapping[str, Any], message_type: type[M]) -> M:
    """A canonical dict as a protobuf message (raises TranslationError if it does not fit).

    A flat message whose values are all of the plain kinds a mapping produces is
    built directly (:func:`_flat_message`); anything else goes through
    ``json_format.ParseDict``, which also reports what does not fit.
    """
    message = _flat_message(canonical, message_type)
    if message is not None:
        return message
    try:
        return json_format.ParseDict(dict(canonical), message_type())
    except json_format.ParseError:
        # The parser's message quotes the offending value: personal data.
        raise TranslationError("", f"a valid {message_type.DESCRIPTOR.full_name}") from None


#: How ``_flat_message`` sets a field: by its proto name, the setter of its kind.
_FlatSetter = Callable[[object], object | None]
_FLAT_FIELDS: dict[type[Message], dict[str, _FlatSetter]] = {}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _flat_string(value: object) -> object | None:
    # ParseDict refuses unpaired surrogates; leave any surrogate to it.
    if type(value) is str and (value.isascii() or not _SURROGATE.search(value)):
        return value
    return None


def _flat_bytes(value: object) -> object | None:
    if type(value) is not str or not value.isascii():
        return None  # base64 is ASCII; ParseDict reports anything else
    encoded = value.encode("ascii")
    try:
        # Exactly what ParseDict does with a JSON bytes value.
        return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
    except ValueError:  # binascii.Error: ParseDict reports it
        return None


def _flat_bool(value: object) -> object | None:
    return value if type(value) is bool else None


def _flat_int(low: int, high: int) -> _FlatSetter:
    def convert(value: object) -> object | None:
        # A JSON number within the field's range; ParseDict decides anything
        # else (text, floats, booleans, out of range) and reports it.
        return value if type(value) is int and low <= value <= high else None

    return convert


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
#: What format_timestamp writes (UTC, ``Z``, up to nine fractional digits), in
#: ASCII digits only (other digits ``\d`` would match are left to ParseDict).
_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z", re.ASCII
)
_TIMESTAMP = "google.protobuf.Timestamp"


def _is_timestamp(field: Any) -> bool:
    kind = field.message_type
    return kind is not None and kind.full_name == _TIMESTAMP


def _flat_timestamp(value: object) -> object | None:
    """A Timestamp from the RFC 3339 text format_timestamp writes, as ParseDict
    would read it, without its strptime (a fund centre's status update 39 µs
    through ParseDict, 8.5 µs here); any other text is left to ParseDict."""
    if type(value) is not str:
        return None
    match = _RFC3339_UTC.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        instant = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:  # no such day or time (a leap second): ParseDict decides
        return None
    stamp = Timestamp()
    set_timestamp(stamp, instant)  # whole seconds: the fraction is set from the text
    stamp.nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return stamp


def _flat_enum(numbers: Mapping[str, int]) -> _FlatSetter:
    def convert(value: object) -> object | None:
        return numbers.get(value) if type(value) is str else None

    return convert


def _flat_fields(message_type: type[Message]) -> dict[str, _FlatSetter]:
    """The fields of ``message_type`` that ``_flat_message`` may set itself: singular,
    outside any oneof, of string, bytes, bool, enum, integer or Timestamp type
    (once per type)."""
    found = _FLAT_FIELDS.get(message_type)
    if found is not None:
        return found
    descriptor = message_type.DESCRIPTOR
    json_names = {f.json_name for f in descriptor.fields}
    setters: dict[str, _FlatSetter] = {}
    for f in descriptor.fields:
        if f.is_repeated or f.containing_oneof is not None or f.is_extension:
            continue
        if f.name in json_names and f.json_name != f.name:
            continue  # ParseDict would read this key as another field's JSON name
        if f.type == FieldDescriptor.TYPE_STRING:
            setters[f.name] = _flat_string
        elif f.type == FieldDescriptor.TYPE_BYTES:
            setters[f.name] = _flat_bytes
        elif f.type == FieldDescriptor.TYPE_BOOL:
            setters[f.name] = _flat_bool
        elif f.type == FieldDescriptor.TYPE_ENUM:
            enum = f.enum_type
            if enum is not None and enum.full_name != _NULL_VALUE:
                setters[f.name] = _flat_enum({v.name: v.number for v in enum.values})
        elif f.type in _INT_RANGES:
            setters[f.name] = _flat_int(*_INT_RANGES[f.type])
        elif f.type == FieldDescriptor.TYPE_MESSAGE and _is_timestamp(f):
            setters[f.name] = _flat_timestamp
    _FLAT_FIELDS[message_type] = setters
    return setters


_NULL_VALUE = "google.protobuf.NullValue"


def _flat_message(canonical: Mapping[str, Any], message_type: type[M]) -> M | None:
    """``canonical`` as a ``message_type`` built field by field, as ``ParseDict`` would
    build it; None when a key or value is not one this path takes (then ParseDict
    decides, and reports what does not fit)."""
    setters = _flat_fields(message_type)
    values: dict[str, object] = {}
    for name, value in canonical.items():
        setter = setters.get(name)
        if setter is None:
            return None
        converted = setter(value)
        if converted is None:
            return None
        values[name] = converted
    return message_type(**values)


def tagged(message: str, work: Callable[[], T]) -> T:
    """Run ``work``, naming ``message`` in any TranslationError it raises (that names none)."""
    try:
        return work()
    except TranslationError as exc:
        if exc.message_type:
            raise
        raise TranslationError(exc.path, exc.expected, message=message) from None
