"""Arbitrary native documents in a province's own format, for "whatever a
back-end sends" property tests: one random shape, given to the reader as a
JSON object or as an XML element tree (elements, repeated elements, attributes
and text), with the province's own keys mixed in so that reading gets past
the first lookup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st

from adapters import Translator

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


def native_keys(translator: Translator) -> list[str]:
    """Every key of every native path and document element the province maps."""
    keys: set[str] = set()
    for message in translator.messages:
        mapping = translator.mapper(message).mapping
        if mapping.root:
            keys.add(mapping.root)
        for rule in mapping.fields:
            keys.update(part for part in rule.path if part)
    return sorted(keys)


def _fill(element: ET.Element, tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        if key.startswith("@"):
            if not isinstance(value, dict | list):
                element.set(key[1:], "" if value is None else str(value))
            continue
        for item in value if isinstance(value, list) else [value]:
            child = ET.SubElement(element, key)
            if isinstance(item, dict):
                _fill(child, item)
            elif isinstance(item, bool):
                child.text = "true" if item else "false"
            elif item is not None and not isinstance(item, list):
                child.text = str(item)


def as_native(translator: Translator, message: str, tree: dict[str, Any]) -> Any:
    """``tree`` as the province's reader takes it: the dict (JSON) or an element tree (XML)."""
    if translator.config.format != "xml":
        return tree
    element = ET.Element(translator.mapper(message).mapping.root or "Document")
    _fill(element, tree)
    return element


def trees(keys: Iterable[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Nested dicts keyed mostly by ``keys`` with arbitrary scalars, lists and dicts."""
    key = st.sampled_from(sorted(set(keys))) | st.text(max_size=6)
    return st.dictionaries(
        key,
        st.recursive(
            SCALARS,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key, inner, max_size=4),
            max_leaves=12,
        ),
    )


@st.composite
def documents(
    draw: st.DrawFn, translator: Translator, message: str, extra_keys: Iterable[str] = ()
) -> Any:
    """A native document for ``message``: a random tree in which each mapped
    path is sometimes left alone, sometimes holds its constant (a result code
    such as ``fhdm = "00"``) or a code of its table, and sometimes an arbitrary
    value, so that the
    reader gets past the first check and meets wrong values deep down too."""
    keys = [*native_keys(translator), *extra_keys]
    tree = draw(trees(keys))
    for rule in translator.mapper(message).mapping.fields:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        value: Any
        codes = translator.config.code_tables.get(rule.codes or "", {})
        if rule.const is not None and choice < 3:
            value = rule.const
        elif codes and choice < 3:
            value = draw(st.sampled_from(sorted(codes)))
        else:
            value = draw(SCALARS | st.text(max_size=24) | trees(keys))
        node = tree
        for part in rule.path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[rule.path[-1]] = value
    return as_native(translator, message, tree)
