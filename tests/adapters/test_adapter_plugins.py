"""Adapter plug-ins: the registry (built in, then entry points), its errors, and the
built-in ``anhui-session`` plug-in against Anhui's simulated e-ID authority."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from adapters import (
    AdapterPlugin,
    BackendRejected,
    HttpIdentityAuthority,
    PluginError,
    build_fund_centre,
    build_identity_authority,
)
from adapters.fund import HttpFundCentre
from adapters.plugins import ENTRY_POINT_GROUP, PluginRegistry, validate_adapter
from adapters.session import SessionIdentityAuthority
from adapters.spec import AdapterConfig, PluginRef
from yrd.federation.v1 import federation_pb2
from yrd_simulators.eid_authority import EidAuthoritySimulator

Table = Callable[[str], dict[str, Any]]

_PLUGIN_MODULE = """
from adapters.identity import HttpIdentityAuthority


class ExamplePlugin:
    def __init__(self, settings):
        unknown = set(settings) - {"greeting"}
        if unknown:
            raise ValueError(f"no such settings {sorted(unknown)}")
        self.settings = settings

    def identity_authority(self, adapter, base_url, *, clock):
        return HttpIdentityAuthority(adapter, base_url, clock=clock)

    def fund_centre(self, adapter, base_url, *, clock):
        return None


def not_a_plugin(settings):
    return object()
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real distribution on sys.path that registers two entry points."""
    (tmp_path / "yrd_example_plugin.py").write_text(_PLUGIN_MODULE, encoding="utf-8")
    dist = tmp_path / "yrd_example_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: yrd-example-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "example = yrd_example_plugin:ExamplePlugin\n"
        "broken = yrd_example_plugin:not_a_plugin\n"
        "missing-module = yrd_no_such_module:Plugin\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _with_plugin(table: dict[str, Any], plugin: dict[str, Any]) -> dict[str, Any]:
    return {**table, "plugin": plugin}


class TestRegistry:
    """Built-in names first, then installed entry points; every failure names its key."""

    def test_builtin_resolves(self) -> None:
        plugin = PluginRegistry().create(
            PluginRef(name="anhui-session", settings={"app_id": "YRD-GW-340000"})
        )
        assert isinstance(plugin, AdapterPlugin)

    def test_entry_point_resolves(self, installed: Path) -> None:
        registry = PluginRegistry()
        assert "example" in registry.names()
        plugin = registry.create(PluginRef(name="example", settings={"greeting": "hi"}))
        assert isinstance(plugin, AdapterPlugin)

    def test_builtin_wins_over_an_entry_point_of_the_same_name(self, installed: Path) -> None:
        registry = PluginRegistry(builtin={"example": "adapters.session:AnhuiSessionPlugin"})
        with pytest.raises(PluginError, match=r"settings\.app_id"):
            registry.create(PluginRef(name="example"))

    def test_missing_plugin_says_what_to_install(self) -> None:
        with pytest.raises(PluginError) as info:
            PluginRegistry().create(PluginRef(name="fujian-soap"))
        (loc, value, expected), *_ = info.value.problems
        assert (loc, value) == (("name",), "fujian-soap")
        assert "pip install yrd-gateway-adapter-fujian-soap" in expected
        assert ENTRY_POINT_GROUP in expected
        assert "anhui-session" in expected  # what is available

    def test_missing_plugin_names_the_configured_package(self) -> None:
        with pytest.raises(PluginError, match="pip install yrd-fujian"):
            PluginRegistry().create(PluginRef(name="fujian-soap", package="yrd-fujian"))

    def test_unimportable_entry_point(self, installed: Path) -> None:
        with pytest.raises(PluginError, match=r"failed to load.*ModuleNotFoundError"):
            PluginRegistry().create(PluginRef(name="missing-module"))

    def test_factory_must_return_a_plugin(self, installed: Path) -> None:
        with pytest.raises(PluginError, match="AdapterPlugin"):
            PluginRegistry().create(PluginRef(name="broken"))

    def test_settings_refused_by_the_plugin(self, installed: Path) -> None:
        with pytest.raises(PluginError, match="no such settings"):
            PluginRegistry().create(PluginRef(name="example", settings={"colour": "red"}))

    def test_settings_errors_have_key_paths(self) -> None:
        with pytest.raises(PluginError) as info:
            PluginRegistry().create(
                PluginRef(name="anhui-session", settings={"app_id": "x y", "colour": "red"})
            )
        locs = {loc for loc, _, _ in info.value.problems}
        assert locs == {("settings", "app_id"), ("settings", "colour")}


class TestConfigValidation:
    """A plug-in problem is a config error at ``plugin.…``, found before a node starts."""

    def test_missing_plugin_is_a_config_error(self, adapter_table: Table) -> None:
        table = _with_plugin(adapter_table("jiangsu"), {"name": "jiangsu-magic"})
        with pytest.raises(ValidationError) as info:
            validate_adapter(table)
        (error,) = info.value.errors()
        assert error["loc"] == ("plugin", "name")
        assert "pip install yrd-gateway-adapter-jiangsu-magic" in error["msg"]

    def test_bad_setting_is_a_config_error(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        table["plugin"]["settings"]["app_idd"] = "YRD-GW-340000"
        with pytest.raises(ValidationError) as info:
            validate_adapter(table)
        assert [e["loc"] for e in info.value.errors()] == [("plugin", "settings", "app_idd")]

    def test_registry_from_the_validation_context(self, adapter_table: Table) -> None:
        # A test (or an embedding application) may validate against its own registry.
        table = adapter_table("anhui")
        with pytest.raises(ValidationError, match="available: none"):
            validate_adapter(table, registry=PluginRegistry(builtin={}))


class TestBuild:
    """The connectors a node gets: the plug-in's where it builds one, else declarative."""

    def test_anhui_identity_goes_through_the_session_plugin(
        self, province: tuple[str, AdapterConfig]
    ) -> None:
        code, config = province
        authority = build_identity_authority(config, "http://127.0.0.1:9")
        expected = SessionIdentityAuthority if code == "340000" else HttpIdentityAuthority
        assert type(authority) is expected

    def test_fund_stays_declarative(self, province: tuple[str, AdapterConfig]) -> None:
        _, config = province
        assert type(build_fund_centre(config, "http://127.0.0.1:9")) is HttpFundCentre


# ---- anhui-session against Anhui's simulated authority -----------------------------------


@pytest.fixture
async def anhui(
    adapter_table: Table, config_dir: Path
) -> AsyncIterator[tuple[EidAuthoritySimulator, SessionIdentityAuthority]]:
    simulator = EidAuthoritySimulator(
        "340000", config_dir / "340000" / "keys" / "eid-issuer.key.pem", "340000-eid-2026"
    )
    url = await simulator.start()
    authority = build_identity_authority(AdapterConfig.model_validate(adapter_table("anhui")), url)
    assert isinstance(authority, SessionIdentityAuthority)
    yield simulator, authority
    await authority.aclose()
    await simulator.stop()


def _active(simulator: EidAuthoritySimulator) -> str:
    return next(r.credential_id for r in simulator.residents if r.state == "CREDENTIAL_ACTIVE")


class TestAnhuiSession:
    """Anhui answers within a session only; the plug-in opens, reuses and renews it."""

    async def test_a_query_without_a_session_is_refused(
        self, anhui: tuple[EidAuthoritySimulator, SessionIdentityAuthority]
    ) -> None:
        simulator, _ = anhui
        body = b"<StatusQuery><CredentialNo>EID1</CredentialNo><TokenId>t</TokenId></StatusQuery>"
        async with (
            aiohttp.ClientSession() as http,
            http.post(simulator.url + simulator.status_path, data=body) as response,
        ):
            assert response.status == 401
        assert simulator.status_queries == 0  # nothing was marked used

    async def test_one_session_for_many_queries(
        self, anhui: tuple[EidAuthoritySimulator, SessionIdentityAuthority]
    ) -> None:
        simulator, authority = anhui
        credential = _active(simulator)
        checks = await asyncio.gather(
            *(authority.check_credential(credential, f"t{i}", timeout=3) for i in range(8))
        )
        assert {c.state for c in checks} == {federation_pb2.CREDENTIAL_ACTIVE}
        assert authority.sessions_opened == 1  # concurrent queries waited for one login

    async def test_a_dropped_session_is_reopened_and_the_query_repeated(
        self, anhui: tuple[EidAuthoritySimulator, SessionIdentityAuthority]
    ) -> None:
        simulator, authority = anhui
        credential = _active(simulator)
        await authority.check_credential(credential, "first", timeout=3)
        simulator.expire_sessions()  # the authority restarted
        check = await authority.check_credential(credential, "second", timeout=3)
        assert not check.token_already_used  # the refused attempt marked nothing
        assert authority.sessions_opened == 2

    async def test_a_refused_application_id_is_a_rejection(
        self, adapter_table: Table, config_dir: Path
    ) -> None:
        table = adapter_table("anhui")
        table["plugin"]["settings"]["app_id"] = "SOMEONE-ELSE"
        config = AdapterConfig.model_validate(table)
        async with EidAuthoritySimulator(
            "340000", config_dir / "340000" / "keys" / "eid-issuer.key.pem", "340000-eid-2026"
        ) as simulator:
            authority = build_identity_authority(config, simulator.url)
            with pytest.raises(BackendRejected, match="app_id") as info:
                await authority.check_credential("EID1", "t", timeout=3)
            assert "SOMEONE-ELSE" in str(info.value)  # the config's value, not personal data
            await authority.aclose()

    async def test_session_expiry_is_renewed_before_it_lapses(
        self, adapter_table: Table, config_dir: Path
    ) -> None:
        table = adapter_table("anhui")
        table["plugin"]["settings"]["refresh_margin_seconds"] = 3600
        config = AdapterConfig.model_validate(table)
        async with EidAuthoritySimulator(
            "340000", config_dir / "340000" / "keys" / "eid-issuer.key.pem", "340000-eid-2026"
        ) as simulator:
            authority = build_identity_authority(config, simulator.url)
            assert isinstance(authority, SessionIdentityAuthority)
            for token in ("a", "b"):
                await authority.check_credential(_active(simulator), token, timeout=3)
            # Lifetime 600 s minus a 3600 s margin: every query opens a fresh session.
            assert authority.sessions_opened == 2
            await authority.aclose()
