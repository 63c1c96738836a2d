"""Golden vectors: native ⇄ canonical pairs that pin down a province's formats.

A vector is a JSON file under ``province_configs/<code>/golden/<domain>/``::

    {"description": "...", "message": "identity.person",
     "native": {...} | "<xml ...>", "canonical": {...}, "direction"?: "read"}

``native`` is the JSON object (JSON provinces) or the XML document text (XML
provinces) exactly as the province's system writes it. A vector passes when
reading ``native`` gives ``canonical`` **and** writing ``canonical`` gives
``native`` (XML compared after C14N 2.0 canonicalisation). The vectors are
written from the province's interface documentation, not produced by the
engine, so they catch a config that is consistently wrong in both directions.
The gateway's ``adapter test`` command and the test-suite both use
:func:`check_vector`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # canonicalize() only; parsing goes through defusedxml
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import TranslationError
from adapters.mapping import Translator


@dataclass(frozen=True)
class GoldenVector:
    path: Path
    description: str
    message: str
    native: dict[str, Any] | str
    canonical: dict[str, Any]
    #: "both" (default), or "read" for a vector that only holds native → canonical
    #: (a default filled in on reading is written back explicitly).
    direction: str = "both"


def load_vectors(directory: Path) -> list[GoldenVector]:
    """Every ``*.json`` vector below ``directory``, in path order."""
    vectors = []
    for path in sorted(directory.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        try:
            native = data["native"]
            if data.get("direction", "both") not in ("both", "read"):
                raise TypeError("direction must be 'both' or 'read'")
            if not isinstance(native, dict | str):
                raise TypeError("native must be a JSON object or XML text")
            vectors.append(
                GoldenVector(
                    path=path,
                    description=str(data.get("description", "")),
                    message=str(data["message"]),
                    native=native,
                    canonical=dict(data["canonical"]),
                    direction=str(data.get("direction", "both")),
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a golden vector ({exc})") from None
    return vectors


def _c14n(xml: str | bytes) -> str:
    text = xml.decode("utf-8") if isinstance(xml, bytes) else xml
    if text.startswith("<?xml"):
        text = text.split("?>", 1)[1]
    return ET.canonicalize(text, strip_text=True)


def _diff(expected: dict[str, Any], actual: dict[str, Any], prefix: str = "") -> list[str]:
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want, got = expected.get(key), actual.get(key)
        if isinstance(want, dict) and isinstance(got, dict):
            problems.extend(_diff(want, got, f"{prefix}{key}."))
        elif want != got:
            problems.append(f"{prefix}{key}: expected {want!r}, got {got!r}")
    return problems


def check_vector(translator: Translator, vector: GoldenVector) -> list[str]:
    """What is wrong with ``translator`` on ``vector`` (an empty list when it passes)."""
    problems: list[str] = []
    try:
        if isinstance(vector.native, str):
            document = translator.parse(vector.message, vector.native.encode("utf-8"))
        else:
            document = vector.native
        read = translator.to_canonical(vector.message, document)
        problems += [f"native → canonical: {p}" for p in _diff(vector.canonical, read)]
    except TranslationError as exc:
        problems.append(f"native → canonical failed: {exc}")
    if vector.direction == "read":
        return problems
    try:
        written = translator.to_native(vector.message, vector.canonical)
        if isinstance(written, ET.Element):
            if not isinstance(vector.native, str):
                problems.append("canonical → native: vector has JSON, province writes XML")
            elif _c14n(ET.tostring(written, encoding="unicode")) != _c14n(vector.native):
                problems.append(
                    "canonical → native: XML differs: "
                    f"{_c14n(ET.tostring(written, encoding='unicode'))}"
                )
        elif isinstance(vector.native, str):
            problems.append("canonical → native: vector has XML, province writes JSON")
        else:
            problems += [f"canonical → native: {p}" for p in _diff(vector.native, written)]
    except TranslationError as exc:
        problems.append(f"canonical → native failed: {exc}")
    return problems
