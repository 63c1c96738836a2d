"""HttpIdentityAuthority against each province's simulator: real servers, no mocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import (
    BackendRejected,
    BackendUnavailable,
    HttpIdentityAuthority,
    IdentityAuthority,
    TranslationError,
    build_identity_authority,
)
from adapters.spec import AdapterConfig
from gateway.core.clock import FrozenClock
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2
from yrd_simulators.eid_authority import EidAuthoritySimulator

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
Table = Callable[[str], dict[str, Any]]


@pytest.fixture
async def running(
    province: tuple[str, AdapterConfig], config_dir: Path
) -> AsyncIterator[tuple[EidAuthoritySimulator, IdentityAuthority]]:
    code, config = province
    simulator = EidAuthoritySimulator(
        code,
        config_dir / code / "keys" / "eid-issuer.key.pem",
        f"{code}-eid-2026",
        clock=FrozenClock(NOW),
    )
    url = await simulator.start()
    authority = build_identity_authority(config, url)
    yield simulator, authority
    await authority.aclose()
    await simulator.stop()


async def _qr(simulator: EidAuthoritySimulator, credential_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(simulator.url + "/wallet/qr", json={"credential_id": credential_id}) as r,
    ):
        r.raise_for_status()
        answer: dict[str, Any] = await r.json()
        return answer


class TestCheckCredential:
    """Each province's native exchange, end to end."""

    async def test_active_then_replayed(
        self, running: tuple[EidAuthoritySimulator, IdentityAuthority]
    ) -> None:
        simulator, authority = running
        resident = next(r for r in simulator.residents if r.state == "CREDENTIAL_ACTIVE")
        qr = await _qr(simulator, resident.credential_id)

        first = await authority.check_credential(resident.credential_id, qr["token_id"], timeout=5)
        assert first.state == federation_pb2.CREDENTIAL_ACTIVE
        assert first.token_already_used is False
        assert first.checked_at == NOW
        assert first.holder == common_pb2.Person(
            id_number=resident.id_number,
            full_name=resident.full_name,
            gender=common_pb2.Gender.Value(resident.gender),
            birth_date=resident.birth_date.isoformat(),
            ethnicity=resident.ethnicity,
            address=resident.address,
            registered_region=resident.registered_region,
            nationality="CHN",
            photo=resident.photo,
        )

        second = await authority.check_credential(resident.credential_id, qr["token_id"], timeout=5)
        assert second.token_already_used is True
        assert second.state == federation_pb2.CREDENTIAL_ACTIVE

    async def test_revoked(self, running: tuple[EidAuthoritySimulator, IdentityAuthority]) -> None:
        simulator, authority = running
        resident = next(r for r in simulator.residents if r.state == "CREDENTIAL_REVOKED")
        qr = await _qr(simulator, resident.credential_id)
        check = await authority.check_credential(resident.credential_id, qr["token_id"], timeout=5)
        assert check.state == federation_pb2.CREDENTIAL_REVOKED
        assert check.token_already_used is False

    async def test_state_changed_by_admin(
        self, running: tuple[EidAuthoritySimulator, IdentityAuthority]
    ) -> None:
        simulator, authority = running
        simulator.set_state("EID" + simulator.province + "000001", "CREDENTIAL_LOST")
        check = await authority.check_credential(
            "EID" + simulator.province + "000001", "tok-1", timeout=5
        )
        assert check.state == federation_pb2.CREDENTIAL_LOST

    async def test_unknown_credential(
        self, running: tuple[EidAuthoritySimulator, IdentityAuthority]
    ) -> None:
        _simulator, authority = running
        check = await authority.check_credential("EID000000000000", "tok-2", timeout=5)
        assert check.state == federation_pb2.CREDENTIAL_UNKNOWN
        assert check.holder is None

    async def test_concurrent_uses_of_one_token(
        self, running: tuple[EidAuthoritySimulator, IdentityAuthority]
    ) -> None:
        simulator, authority = running
        credential = "EID" + simulator.province + "000002"
        checks = await asyncio.gather(
            *(authority.check_credential(credential, "tok-3", timeout=5) for _ in range(8))
        )
        assert sorted(c.token_already_used for c in checks) == [False] + [True] * 7

    async def test_is_an_identity_authority(
        self, running: tuple[EidAuthoritySimulator, IdentityAuthority]
    ) -> None:
        _, authority = running
        assert isinstance(authority, IdentityAuthority)
        assert isinstance(authority, HttpIdentityAuthority)


class TestFailures:
    """Transport failures, refusals and mismatched answers are told apart."""

    async def test_connection_refused(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        # Bind and release a port so that nothing listens on it.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with HttpIdentityAuthority(config, f"http://127.0.0.1:{port}") as authority:
            with pytest.raises(BackendUnavailable, match="unreachable") as info:
                await authority.check_credential("EID1", "tok", timeout=2)
        assert info.value.retryable

    async def test_timeout(self, adapter_table: Table) -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="{}")

        url, stop = await _serve(web.post("/eid/v1/credential-status", slow))
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        try:
            async with HttpIdentityAuthority(config, url) as authority:
                with pytest.raises(BackendUnavailable, match=r"within 0\.200 s"):
                    await authority.check_credential("EID1", "tok", timeout=0.2)
        finally:
            release.set()
            await stop()

    @pytest.mark.parametrize(
        ("status", "error"), [(400, BackendRejected), (503, BackendUnavailable)]
    )
    async def test_http_errors(
        self, adapter_table: Table, status: int, error: type[Exception]
    ) -> None:
        async def failing(request: web.Request) -> web.Response:
            return web.Response(status=status, text="no")

        url, stop = await _serve(web.post("/eid/v1/credential-status", failing))
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        try:
            async with HttpIdentityAuthority(config, url) as authority:
                with pytest.raises(error, match=f"HTTP {status}"):
                    await authority.check_credential("EID1", "tok", timeout=2)
        finally:
            await stop()

    async def test_mapping_that_does_not_match_the_back_end(
        self, adapter_table: Table, config_dir: Path
    ) -> None:
        # Configure Zhejiang's birth date as yyyyMMdd: the simulator (its real
        # system) sends epoch milliseconds, so translation must fail, naming the path.
        table = adapter_table("zhejiang")
        for rule in table["identity"]["person"]["fields"]:
            if rule["canonical"] == "birth_date":
                rule["format"] = "yyyyMMdd"
        config = AdapterConfig.model_validate(table)
        simulator = EidAuthoritySimulator(
            "330000", config_dir / "330000" / "keys" / "eid-issuer.key.pem", "330000-eid-2026"
        )
        async with simulator, HttpIdentityAuthority(config, simulator.url) as authority:
            with pytest.raises(TranslationError, match=r"resident\.birth_millis: expected"):
                await authority.check_credential("EID330000000001", "tok", timeout=2)

    async def test_closed_connector(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("anhui"))
        authority = HttpIdentityAuthority(config, "http://127.0.0.1:9")
        await authority.aclose()
        await authority.aclose()
        with pytest.raises(BackendUnavailable, match="closed"):
            await authority.check_credential("EID1", "tok", timeout=1)

    def test_bad_base_url(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("anhui"))
        with pytest.raises(ValueError, match="http"):
            HttpIdentityAuthority(config, "127.0.0.1:8340")


async def _serve(route: web.RouteDef) -> tuple[str, Callable[[], Any]]:
    """A one-route aiohttp server on a free loopback port: (base URL, stop)."""
    app = web.Application()
    app.add_routes([route])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}", runner.cleanup
