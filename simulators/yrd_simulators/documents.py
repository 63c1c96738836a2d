"""Reading and writing the simulators' native documents: the helpers every province shares.

These are only the generic steps (UTF-8 JSON, safe XML, strict text fields);
what a province's documents look like stays in its hand-written dialect, which
does not use the mapping engine. A document that cannot be read raises
:class:`BadNativeRequest`, which the simulators answer with HTTP 400.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # building only; parsing uses defusedxml
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import defusedxml.ElementTree as SafeET

CST = ZoneInfo("Asia/Shanghai")


class BadNativeRequest(ValueError):
    """The native document cannot be read (answered with HTTP 400)."""


def dumps(document: dict[str, Any]) -> bytes:
    """A JSON document as UTF-8 bytes (non-ASCII kept as is)."""
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a UTF-8 JSON object."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadNativeRequest("body is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise BadNativeRequest("body is not a JSON object")
    return document


def text(document: Any, *path: str, required: bool = False) -> str:
    """The string at ``path`` in nested objects; "" when absent unless ``required``."""
    node = document
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None or node == "":
        if required:
            raise BadNativeRequest(f"{'.'.join(path)} is required")
        return ""
    if not isinstance(node, str):
        raise BadNativeRequest(f"{'.'.join(path)} must be a string")
    return node


def xml(root: ET.Element) -> bytes:
    """An XML document as UTF-8 bytes with its declaration."""
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def xml_root(body: bytes, tag: str) -> ET.Element:
    """``body`` parsed safely (no DTD); its document element must be ``<tag>``."""
    try:
        root: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except (SafeET.ParseError, ValueError):
        raise BadNativeRequest("body is not a well-formed XML document") from None
    if root.tag != tag:
        raise BadNativeRequest(f"document element must be <{tag}>")
    return root


def sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
    """A child element ``<tag>text</tag>`` of ``parent``."""
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def local(instant: datetime, pattern: str) -> str:
    """``instant`` in China Standard Time, formatted by ``pattern``."""
    return instant.astimezone(CST).strftime(pattern)


def millis(instant: datetime) -> int:
    """``instant`` as epoch milliseconds."""
    return int(instant.timestamp() * 1000)


def fen_to_yuan(fen: int) -> str:
    """An amount in fen as a yuan decimal string with two decimals."""
    return f"{fen // 100}.{fen % 100:02d}"
