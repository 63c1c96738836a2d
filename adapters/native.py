"""Native documents: JSON objects and XML element trees behind one small interface.

The mapping engine walks a document by paths of keys. ``JsonNode`` and
``XmlNode`` give it the same four operations on either format, so a mapping
does not care which one the province speaks.

XML is parsed with :mod:`defusedxml` with DTDs forbidden: a back-end answer
cannot expand entities or make the parser fetch anything. Element trees are
only *built* with the standard library, which is safe.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # building and serialising only; parsing uses defusedxml
from collections.abc import Sequence
from typing import Any, Protocol

import defusedxml.ElementTree as SafeET

from adapters.errors import TranslationError
from adapters.formats import NativeScalar, describe

#: Largest native document accepted (bytes); a record with a 64 KiB photo is ~90 KiB.
MAX_DOCUMENT_BYTES = 1 << 20

Path = Sequence[str]

#: JSON values that are not a native scalar (a tuple: isinstance checks it faster
#: than the equivalent ``dict | list | float``).
_NOT_SCALAR = (dict, list, float)


def dotted(base: str, path: Path) -> str:
    """The full native path of ``path`` below ``base``, as error messages show it."""
    return ".".join([base, *path]) if base else ".".join(path)


class NativeNode(Protocol):
    """A position in a native document (the document itself, or an object inside it)."""

    #: Native path of this node from the document root ("" for the root).
    where: str
    #: True when scalars are text (XML); JSON has typed scalars.
    textual: bool

    def get(self, path: Path) -> NativeScalar | None:
        """The scalar at ``path``; None when absent (or JSON null)."""
        ...

    def child(self, path: Path) -> NativeNode | None:
        """The nested object at ``path``; None when absent."""
        ...

    def put(self, path: Path, value: NativeScalar) -> None:
        """Write a scalar, creating the objects on the way."""
        ...

    def make_child(self, path: Path) -> NativeNode:
        """Create (or reuse) the nested object at ``path``."""
        ...

    def get_list(self, path: Path, item: str | None) -> list[NativeScalar] | None:
        """The list at ``path`` (XML: the ``item`` elements below it); None when absent."""
        ...

    def put_list(self, path: Path, item: str | None, values: Sequence[NativeScalar]) -> None:
        """Write a list at ``path`` (XML: one ``item`` element per value)."""
        ...


class JsonNode:
    """A JSON object; values are str / int / bool, nested objects are dicts."""

    textual = False

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def _walk(self, path: Path) -> tuple[dict[str, Any], str] | None:
        node: Any = self.data
        for depth, key in enumerate(path[:-1]):
            node = node.get(key)
            if node is None:
                return None
            if not isinstance(node, dict):
                raise TranslationError(
                    dotted(self.where, path[: depth + 1]), f"an object, got {describe(node)}"
                )
        return node, path[-1]

    def get(self, path: Path) -> NativeScalar | None:
        if len(path) == 1:  # most keys are at the top of their object
            value = self.data.get(path[0])
        else:
            found = self._walk(path)
            if found is None:
                return None
            value = found[0].get(found[1])
        if isinstance(value, _NOT_SCALAR):
            raise TranslationError(
                dotted(self.where, path), f"a string, integer or boolean, got {describe(value)}"
            )
        return value

    def child(self, path: Path) -> JsonNode | None:
        found = self._walk(path)
        if found is None:
            return None
        value = found[0].get(found[1])
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TranslationError(dotted(self.where, path), f"an object, got {describe(value)}")
        return JsonNode(value, dotted(self.where, path))

    def _parent(self, path: Path) -> dict[str, Any]:
        node = self.data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        return node

    def put(self, path: Path, value: NativeScalar) -> None:
        self._parent(path)[path[-1]] = value

    def make_child(self, path: Path) -> JsonNode:
        node = self._parent(path).setdefault(path[-1], {})
        return JsonNode(node, dotted(self.where, path))

    def get_list(self, path: Path, item: str | None) -> list[NativeScalar] | None:
        found = self._walk(path)
        if found is None:
            return None
        value = found[0].get(found[1])
        if value is None:
            return None
        if not isinstance(value, list):
            raise TranslationError(dotted(self.where, path), f"an array, got {describe(value)}")
        for index, element in enumerate(value):
            if isinstance(element, _NOT_SCALAR) or element is None:
                raise TranslationError(
                    f"{dotted(self.where, path)}[{index}]", f"a string, got {describe(element)}"
                )
        return list(value)

    def put_list(self, path: Path, item: str | None, values: Sequence[NativeScalar]) -> None:
        self._parent(path)[path[-1]] = list(values)


class XmlNode:
    """An XML element; scalars are element text or (``@name``) attributes."""

    textual = True

    def __init__(self, element: ET.Element, where: str = "") -> None:
        self.element = element
        self.where = where

    def _find(self, path: Path) -> ET.Element | None:
        element = self.element
        for depth, name in enumerate(path):
            matches = element.findall(name)
            if not matches:
                return None
            if len(matches) > 1:
                raise TranslationError(
                    dotted(self.where, path[: depth + 1]),
                    f"one <{name}> element, got {len(matches)}",
                )
            element = matches[0]
        return element

    def get(self, path: Path) -> NativeScalar | None:
        if path[-1].startswith("@"):
            owner = self._find(path[:-1])
            return None if owner is None else owner.get(path[-1][1:])
        element = self._find(path)
        if element is None:
            return None
        if len(element):
            raise TranslationError(
                dotted(self.where, path), "text content, got an element with child elements"
            )
        return element.text or ""

    def child(self, path: Path) -> XmlNode | None:
        element = self._find(path)
        return None if element is None else XmlNode(element, dotted(self.where, path))

    def _ensure(self, path: Path) -> ET.Element:
        element = self.element
        for name in path:
            found = element.find(name)
            element = ET.SubElement(element, name) if found is None else found
        return element

    def put(self, path: Path, value: NativeScalar) -> None:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if path[-1].startswith("@"):
            self._ensure(path[:-1]).set(path[-1][1:], text)
        else:
            self._ensure(path).text = text

    def make_child(self, path: Path) -> XmlNode:
        return XmlNode(self._ensure(path), dotted(self.where, path))

    def get_list(self, path: Path, item: str | None) -> list[NativeScalar] | None:
        if item is None:  # pragma: no cover - AdapterConfig requires item or separator in XML
            raise TranslationError(dotted(self.where, path), "a list mapping with 'item'")
        container = self._find(path)
        if container is None:
            return None
        values: list[NativeScalar] = []
        for index, element in enumerate(container):
            if element.tag != item:
                raise TranslationError(
                    f"{dotted(self.where, path)}[{index}]", f"an <{item}> element"
                )
            if len(element):
                raise TranslationError(
                    f"{dotted(self.where, path)}.{item}[{index}]",
                    "text content, got an element with child elements",
                )
            values.append(element.text or "")
        return values

    def put_list(self, path: Path, item: str | None, values: Sequence[NativeScalar]) -> None:
        if item is None:  # pragma: no cover - AdapterConfig requires item or separator in XML
            raise TranslationError(dotted(self.where, path), "a list mapping with 'item'")
        container = self._ensure(path)
        for value in values:
            ET.SubElement(container, item).text = str(value)


def parse_json(body: bytes) -> dict[str, Any]:
    """Parse a native JSON document (an object)."""
    _check_size(body)
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TranslationError("", f"a UTF-8 JSON document ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise TranslationError("", f"a JSON object, got {describe(value)}")
    return value


def parse_xml(body: bytes, root: str) -> ET.Element:
    """Parse a native XML document whose element must be ``root`` (no DTD, no entities)."""
    _check_size(body)
    try:
        element: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except SafeET.ParseError as exc:
        raise TranslationError("", f"a well-formed XML document ({exc})") from None
    except ValueError as exc:  # defusedxml's DTDForbidden / EntitiesForbidden / ...
        raise TranslationError("", f"an XML document without DTD or entities ({exc})") from None
    if element.tag != root:
        raise TranslationError("", f"document element <{root}>, got <{element.tag}>")
    return element


def serialize_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def serialize_xml(element: ET.Element) -> bytes:
    data: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return data


def _check_size(body: bytes) -> None:
    if len(body) > MAX_DOCUMENT_BYTES:
        raise TranslationError("", f"a document of at most {MAX_DOCUMENT_BYTES} bytes")
