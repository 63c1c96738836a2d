"""One holder of the config in force, swapped by a reload."""

from __future__ import annotations

from gateway.config.holder import ConfigHolder
from gateway.config.models import FederationConfig
from tests.unit.conftest import JS


def _provinces(federation: FederationConfig) -> tuple[str, ...]:
    return tuple(sorted([federation.own, *federation.peers]))


class TestConfigHolder:
    """Services read the config in force from the holder; a swap changes it for all."""

    def test_derived_is_built_once_per_version(self, federation: FederationConfig) -> None:
        holder = ConfigHolder(federation)
        built: list[int] = []

        def count(config: FederationConfig) -> int:
            built.append(1)
            return 1 + len(config.peers)

        assert holder.derived(count) == holder.derived(count) == 4
        assert len(built) == 1

    def test_swap_puts_the_new_config_in_force_and_drops_derived(
        self, federation: FederationConfig
    ) -> None:
        holder = ConfigHolder(federation)
        assert holder.derived(_provinces) == ("310000", "320000", "330000", "340000")
        smaller = federation.with_peers({c: p for c, p in federation.peers.items() if c != JS})
        holder.swap(smaller)
        assert holder.version == 2
        assert holder.federation is smaller
        assert JS not in holder.derived(_provinces)
