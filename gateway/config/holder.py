"""The one place a node's configuration lives while it runs.

A reload swaps the federation config here, once; every service reads
``holder.federation`` (or something derived from it) when a call starts,
instead of keeping its own copy that a reload must remember to update. A
call in flight keeps the config it read; the next call sees the new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.config.models import FederationConfig, ProvinceConfig

T = TypeVar("T")


class ConfigHolder:
    """The federation config in force, and what is derived from it, per version.

    ``derived(build)`` returns ``build(federation)``, built once per config
    version and per ``build`` (a class or a module-level function, so that the
    same key is passed every time): a trust store, a signer. A swap drops them
    all, so nothing derived from an old config outlives it.
    """

    def __init__(self, federation: FederationConfig) -> None:
        self._federation = federation
        self._version = 1
        self._derived: dict[Callable[[FederationConfig], Any], Any] = {}
        #: Set by the node's directory: fetch a peer's descriptor now.
        self.refresh_peer: Callable[[str], Awaitable[bool]] | None = None

    @property
    def federation(self) -> FederationConfig:
        return self._federation

    @property
    def me(self) -> ProvinceConfig:
        return self._federation.me

    @property
    def version(self) -> int:
        """1 at start, one more at each swap."""
        return self._version

    def swap(self, federation: FederationConfig) -> None:
        """Put a new, already validated config in force for every call from now on."""
        self._federation = federation
        self._derived = {}
        self._version += 1

    def derived(self, build: Callable[[FederationConfig], T]) -> T:
        """``build(federation)`` of the config in force, built once per version."""
        cache = self._derived
        if build not in cache:
            cache[build] = build(self._federation)
        value: T = cache[build]
        return value

    async def refreshed(self, province: str) -> bool:
        """A key id of ``province`` is not known: ask the directory to fetch that
        peer's descriptor now (a key published moments ago). True if the config
        in force changed, so that a lookup is worth trying again."""
        hook = self.refresh_peer
        return await hook(province) if hook is not None else False
