"""The e-ID authority simulator: synthetic residents and its endpoints, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from stdnum.cn import ric

from gateway.core.clock import FrozenClock
from gateway.core.eid_token import parse_token
from gateway.core.identifiers import make_id_number
from yrd_simulators.eid_authority import DIALECTS, EidAuthoritySimulator
from yrd_simulators.residents import synthetic_residents

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def simulator(config_dir: Path) -> AsyncIterator[EidAuthoritySimulator]:
    sim = EidAuthoritySimulator(
        "330000",
        config_dir / "330000" / "keys" / "eid-issuer.key.pem",
        "330000-eid-2026",
        clock=FrozenClock(NOW),
    )
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestResidents:
    """Synthetic residents are valid, deterministic and varied."""

    @pytest.mark.parametrize("code", sorted(DIALECTS))
    def test_valid_id_numbers(self, code: str) -> None:
        residents = synthetic_residents(code)
        assert len(residents) == 40
        for r in residents:
            assert ric.is_valid(r.id_number), r.credential_id
            assert r.id_number[:2] == code[:2]
            assert r.id_number[:6] == r.registered_region
            assert r.id_number[6:14] == r.birth_date.strftime("%Y%m%d")
            assert (int(r.id_number[16]) % 2 == 1) == (r.gender == "GENDER_MALE")
            assert 1950 <= r.birth_date.year <= 2005
            assert r.credential_id.startswith(f"EID{code}")

    def test_deterministic_by_seed(self) -> None:
        assert synthetic_residents("310000", 7) == synthetic_residents("310000", 7)
        assert synthetic_residents("310000", 7) != synthetic_residents("310000", 8)

    def test_some_not_active(self) -> None:
        states = {r.state for r in synthetic_residents("340000")}
        assert states == {
            "CREDENTIAL_ACTIVE",
            "CREDENTIAL_REVOKED",
            "CREDENTIAL_LOST",
            "CREDENTIAL_SUSPENDED",
        }

    def test_check_character(self) -> None:
        # The example of GB 11643-1999 itself.
        assert make_id_number("110105", date(1949, 12, 31), 2) == "11010519491231002X"


class TestWallet:
    """POST /wallet/qr issues signed, short-lived tokens."""

    async def test_issues_token(
        self, simulator: EidAuthoritySimulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.post(
            simulator.url + "/wallet/qr", json={"credential_id": "EID330000000001"}
        ) as response:
            assert response.status == 200
            answer = await response.json()
        token = parse_token(answer["qr_payload"])
        assert (token.issuer, token.key_id) == ("330000", "330000-eid-2026")
        assert token.credential_id == "EID330000000001"
        assert token.token_id == answer["token_id"]
        assert token.issued_at == NOW
        assert token.expires_at == NOW + timedelta(seconds=120)
        assert answer["expires_at"] == int(token.expires_at.timestamp())

    async def test_explicit_issue_time_and_ttl(
        self, simulator: EidAuthoritySimulator, http: aiohttp.ClientSession
    ) -> None:
        issued = int(NOW.timestamp()) - 1000
        async with http.post(
            simulator.url + "/wallet/qr",
            json={"credential_id": "EID330000000002", "ttl_seconds": 300, "issued_at": issued},
        ) as response:
            answer = await response.json()
        assert answer["expires_at"] == issued + 300

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ({"credential_id": "EID330000000001", "ttl_seconds": 301}, 400),
            ({"credential_id": "EID330000000001", "ttl_seconds": 0}, 400),
            ({"credential_id": "EID330000000001", "issued_at": "now"}, 400),
            ({"credential_id": "EID330000999999"}, 404),
        ],
    )
    async def test_refusals(
        self,
        simulator: EidAuthoritySimulator,
        http: aiohttp.ClientSession,
        body: dict[str, object],
        status: int,
    ) -> None:
        async with http.post(simulator.url + "/wallet/qr", json=body) as response:
            assert response.status == status


class TestHarness:
    """GET /residents and the admin state endpoint."""

    async def test_residents_and_state_change(
        self, simulator: EidAuthoritySimulator, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(simulator.url + "/residents") as response:
            residents = await response.json()
        assert len(residents) == 40
        assert set(residents[0]) == {"credential_id", "id_number", "full_name", "gender", "state"}
        url = simulator.url + "/admin/credentials/EID330000000001/state"
        async with http.post(url, json={"state": "CREDENTIAL_SUSPENDED"}) as response:
            assert response.status == 200
        assert simulator.residents[0].state == "CREDENTIAL_SUSPENDED"
        async with http.post(url, json={"state": "GONE"}) as response:
            assert response.status == 400
        missing = simulator.url + "/admin/credentials/EID0/state"
        async with http.post(missing, json={"state": "CREDENTIAL_ACTIVE"}) as response:
            assert response.status == 404

    async def test_requests_counted(
        self, simulator: EidAuthoritySimulator, http: aiohttp.ClientSession
    ) -> None:
        before = simulator.requests_served
        async with http.get(simulator.url + "/residents"):
            pass
        async with http.get(simulator.url + "/nothing-here"):
            pass
        assert simulator.requests_served == before + 2


class TestNativeStatus:
    """The native endpoint refuses malformed requests with HTTP 400."""

    async def test_bad_native_request(
        self, simulator: EidAuthoritySimulator, http: aiohttp.ClientSession
    ) -> None:
        url = simulator.url + simulator.status_path
        async with http.post(url, json={"credential_no": "EID330000000001"}) as response:
            assert response.status == 400
            assert "token_no" in (await response.json())["result"]["msg"]
        assert simulator.status_queries == 0

    async def test_stop_is_idempotent(self, config_dir: Path) -> None:
        sim = EidAuthoritySimulator(
            "340000", config_dir / "340000" / "keys" / "eid-issuer.key.pem", "340000-eid-2026"
        )
        async with sim:
            assert sim.url.startswith("http://127.0.0.1:")
        await sim.stop()
        with pytest.raises(RuntimeError):
            _ = sim.url
