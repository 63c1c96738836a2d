"""Adapter plug-ins: found by name, first built in, then among installed entry points.

A province whose back-end does something its declarative ``[adapter]``
mapping cannot express names a plug-in in its config::

    [adapter.plugin]
    name = "anhui-session"                  # what to load
    package = "yrd-gateway-adapter-anhui"   # optional: what to install if it is missing

    [adapter.plugin.settings]               # handed to the plug-in, which validates them
    app_id = "YRD-GW-340000"

Resolution, in order (as OpenTelemetry resolves its exporters):

1. the built-in registry :data:`BUILTIN` (plug-ins shipped in this package);
2. entry points of group :data:`ENTRY_POINT_GROUP` (``yrd_gateway.adapters``)
   of the installed distributions. A third-party package registers one in
   its ``pyproject.toml``::

       [project.entry-points."yrd_gateway.adapters"]
       fujian-soap = "yrd_fujian.adapter:FujianSoapPlugin"

A registry entry (built in or an entry point) is a *factory*: a callable
taking the settings table and returning an :class:`~adapters.base.AdapterPlugin`
(usually the plug-in class itself). It validates the settings and raises
``ValueError`` or a pydantic ``ValidationError`` naming what is wrong.

Every failure is a :class:`~adapters.errors.PluginError` whose lines name
the key path below ``[adapter.plugin]``; when a plug-in is not installed the
error says which package to install (``package``, else the conventional
``yrd-gateway-adapter-<name>``). The config loader validates plug-ins with
the rest of the ``[adapter]`` table, so ``yrd-gateway config check`` reports
a missing plug-in before a node starts.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from adapters.base import AdapterPlugin
from adapters.errors import PluginError
from adapters.spec import AdapterConfig, PluginRef, Problem, problems_error

#: Entry point group third-party adapter plug-ins register under.
ENTRY_POINT_GROUP = "yrd_gateway.adapters"

#: Plug-ins shipped with the gateway: name -> "module:attribute" of the factory.
#: Imported only when a config names them.
BUILTIN: Mapping[str, str] = MappingProxyType(
    {"anhui-session": "adapters.session:AnhuiSessionPlugin"}
)

PluginFactory = Callable[[Mapping[str, Any]], AdapterPlugin]
EntryPointSource = Callable[[str], Iterable[importlib.metadata.EntryPoint]]


def _installed(group: str) -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=group)


class PluginRegistry:
    """Where plug-in names are looked up: the built-in table, then entry points.

    Immutable and cheap to build; tests make their own with other tables or
    another ``entry_points`` source instead of changing global state.
    """

    def __init__(
        self,
        builtin: Mapping[str, str] = BUILTIN,
        *,
        group: str = ENTRY_POINT_GROUP,
        entry_points: EntryPointSource = _installed,
    ) -> None:
        self.builtin = MappingProxyType(dict(builtin))
        self.group = group
        self._entry_points = entry_points

    def names(self) -> list[str]:
        """Every plug-in name this registry can resolve (built in and installed)."""
        installed = {ep.name for ep in self._entry_points(self.group)}
        return sorted(set(self.builtin) | installed)

    def load(self, name: str, package: str | None = None) -> PluginFactory:
        """The factory registered under ``name``; PluginError when there is none."""
        if name in self.builtin:
            target = self.builtin[name]
            module_name, _, attribute = target.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as exc:  # pragma: no cover - our own table
                raise PluginError(
                    [(("name",), name, f"a loadable built-in plug-in ({target}: {exc})")]
                ) from exc
            return _callable(name, factory)
        matches = [ep for ep in self._entry_points(self.group) if ep.name == name]
        if not matches:
            install = package or f"yrd-gateway-adapter-{name}"
            known = ", ".join(self.names()) or "none"
            raise PluginError(
                [
                    (
                        ("name",),
                        name,
                        f"an installed adapter plug-in (available: {known}); install the "
                        f"package that provides it into the gateway's environment "
                        f"(pip install {install}) so that it registers entry point "
                        f"{name!r} in group {self.group!r}",
                    )
                ]
            )
        if len({ep.value for ep in matches}) > 1:
            raise PluginError(
                [
                    (
                        ("name",),
                        name,
                        "one installed plug-in of that name, but several packages register "
                        f"it: {sorted(ep.value for ep in matches)}",
                    )
                ]
            )
        try:
            factory = matches[0].load()
        except Exception as exc:  # any import-time failure of third-party code
            raise PluginError(
                [
                    (
                        ("name",),
                        name,
                        f"an importable plug-in: entry point {matches[0].value!r} failed to "
                        f"load ({type(exc).__name__}: {exc}); reinstall or upgrade its package",
                    )
                ]
            ) from exc
        return _callable(name, factory)

    def create(self, ref: PluginRef) -> AdapterPlugin:
        """Load ``ref.name`` and configure it with ``ref.settings``."""
        factory = self.load(ref.name, ref.package)
        try:
            plugin = factory(dict(ref.settings))
        except ValidationError as exc:
            raise PluginError(
                [
                    (
                        ("settings", *error["loc"]),
                        error.get("input"),
                        _setting_message(error["type"], error["msg"]),
                    )
                    for error in exc.errors()
                ]
            ) from exc
        except (ValueError, TypeError) as exc:
            raise PluginError([(("settings",), dict(ref.settings), str(exc))]) from exc
        if not isinstance(plugin, AdapterPlugin):
            raise PluginError(
                [
                    (
                        ("name",),
                        ref.name,
                        "a factory returning an AdapterPlugin (identity_authority and "
                        f"fund_centre methods), got {type(plugin).__name__}",
                    )
                ]
            )
        return plugin


def _callable(name: str, factory: object) -> PluginFactory:
    if not callable(factory):
        raise PluginError([(("name",), name, "a plug-in factory (a class or function)")])
    return factory  # checked callable; what it returns is checked in create()


def _setting_message(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "no such setting (unknown settings are refused)"
    if kind == "missing":
        return "this required setting"
    return message.removeprefix("Value error, ")


def default_registry() -> PluginRegistry:
    """The registry of built-in plug-ins and this environment's entry points."""
    return PluginRegistry()


def resolve(ref: PluginRef, registry: PluginRegistry | None = None) -> AdapterPlugin:
    """The configured plug-in object of ``ref`` (raises PluginError)."""
    return (registry or default_registry()).create(ref)


def plugin_problems(
    adapter: AdapterConfig, registry: PluginRegistry | None = None
) -> list[Problem]:
    """What is wrong with ``[adapter.plugin]`` (not installed, bad settings), at
    key paths below ``[adapter]``; empty when it resolves or there is none."""
    if adapter.plugin is None:
        return []
    try:
        resolve(adapter.plugin, registry)
    except PluginError as exc:
        return [Problem(("plugin", *loc), value, expected) for loc, value, expected in exc.problems]
    return []


def validate_adapter(
    data: Mapping[str, Any], *, registry: PluginRegistry | None = None
) -> AdapterConfig:
    """An ``[adapter]`` table validated as a whole, its plug-in included: the
    mappings against the canonical schema (:class:`~adapters.spec.AdapterConfig`),
    then the plug-in it names looked up in ``registry`` (default: built-in and
    installed). Raises one pydantic ``ValidationError`` naming every key path."""
    adapter = AdapterConfig.model_validate(data)
    problems = plugin_problems(adapter, registry)
    if problems:
        raise problems_error(problems)
    return adapter
