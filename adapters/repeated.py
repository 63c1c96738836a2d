"""Lists of messages in native documents (certificate attachments, case materials).

The field rules of :mod:`adapters.spec` map one value per rule; a list of
*messages* (each mapped by a message mapping of its own) is placed by the
connector, with these two functions, at a configured path: a JSON array of
objects, or in XML a container element holding one ``item`` element per
message. Errors name the native path with the item's index.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # building only; parsing goes through adapters.native
from collections.abc import Mapping, Sequence
from typing import Any

from adapters import native
from adapters.errors import TranslationError
from adapters.formats import FormatContext, describe
from adapters.mapping import MessageMapper
from adapters.native import JsonNode, NativeNode, XmlNode


def write_messages(
    mapper: MessageMapper,
    node: NativeNode,
    path: tuple[str, ...],
    item: str | None,
    messages: Sequence[Mapping[str, Any]],
    ctx: FormatContext,
) -> None:
    """Write ``messages`` (canonical dicts) as a list at ``path`` below ``node``."""
    if not messages:
        return
    where = native.dotted(node.where, path)
    if isinstance(node, XmlNode):
        if item is None:
            raise TranslationError(where, "an item element name for a list in XML")
        container = node.make_child(path)
        assert isinstance(container, XmlNode)
        for index, canonical in enumerate(messages):
            element = ET.SubElement(container.element, item)
            mapper.write(canonical, XmlNode(element, f"{where}[{index}]"), ctx)
        return
    assert isinstance(node, JsonNode)
    documents: list[dict[str, Any]] = []
    for index, canonical in enumerate(messages):
        data: dict[str, Any] = {}
        mapper.write(canonical, JsonNode(data, f"{where}[{index}]"), ctx)
        documents.append(data)
    parent = node.make_child(path[:-1]) if len(path) > 1 else node
    assert isinstance(parent, JsonNode)
    parent.data[path[-1]] = documents


def read_messages(
    mapper: MessageMapper,
    node: NativeNode,
    path: tuple[str, ...],
    item: str | None,
    ctx: FormatContext,
) -> list[dict[str, Any]]:
    """The list at ``path`` below ``node`` as canonical dicts (empty when absent)."""
    where = native.dotted(node.where, path)
    children: list[NativeNode] = []
    if isinstance(node, XmlNode):
        container = node.child(path)
        if container is None:
            return []
        assert isinstance(container, XmlNode)
        for index, element in enumerate(container.element):
            if element.tag != item:
                raise TranslationError(f"{where}[{index}]", f"an <{item}> element")
            children.append(XmlNode(element, f"{where}[{index}]"))
    else:
        assert isinstance(node, JsonNode)
        parent = node.child(path[:-1]) if len(path) > 1 else node
        if parent is None:
            return []
        assert isinstance(parent, JsonNode)
        value = parent.data.get(path[-1])
        if value is None:
            return []
        if not isinstance(value, list):
            raise TranslationError(where, f"an array, got {describe(value)}")
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise TranslationError(f"{where}[{index}]", f"an object, got {describe(entry)}")
            children.append(JsonNode(entry, f"{where}[{index}]"))
    return [mapper.read(child, ctx) for child in children]
