"""Fixtures: a whole federation (four nodes, four e-ID authority simulators) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.testing.localfed import LocalFederation
from tests.paths import CONFIG_DIR

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
ALL = (SH, JS, ZJ, AH)


@pytest_asyncio.fixture
async def federation(tmp_path: Path) -> AsyncIterator[LocalFederation]:
    async with LocalFederation(CONFIG_DIR, tmp_path) as running:
        yield running


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Wallet:
    """A resident's phone: fetches QR tokens from its province's e-ID authority."""

    def __init__(self, federation: LocalFederation, http: aiohttp.ClientSession) -> None:
        self.federation = federation
        self.http = http

    def url(self, province: str, path: str) -> str:
        return self.federation.provinces[province].simulator.url + path

    async def residents(self, province: str) -> list[dict[str, Any]]:
        async with self.http.get(self.url(province, "/residents")) as response:
            response.raise_for_status()
            result: list[dict[str, Any]] = await response.json()
            return result

    async def credential(self, province: str, state: str = "CREDENTIAL_ACTIVE") -> dict[str, Any]:
        for resident in await self.residents(province):
            if resident["state"] == state:
                return resident
        raise LookupError(f"no {state} resident in {province}")

    async def qr(self, province: str, credential_id: str, **extra: Any) -> str:
        async with self.http.post(
            self.url(province, "/wallet/qr"), json={"credential_id": credential_id, **extra}
        ) as response:
            response.raise_for_status()
            return str((await response.json())["qr_payload"])

    async def fresh_qr(self, province: str, state: str = "CREDENTIAL_ACTIVE") -> str:
        return await self.qr(province, (await self.credential(province, state))["credential_id"])


@pytest.fixture
def wallet(federation: LocalFederation, http: aiohttp.ClientSession) -> Wallet:
    return Wallet(federation, http)


def payee_account(seed: int = 0) -> str:
    """A Luhn-valid 19-digit bank card number."""
    from stdnum import luhn

    body = f"622202{seed:012d}"
    return body + luhn.calc_check_digit(body)


def fund_holder(federation: LocalFederation, fund_province: str, home: str) -> tuple[str, str, int]:
    """(account number, ID number, balance) of a NORMAL account at ``fund_province``
    held by a resident registered in ``home``."""
    for number, account in sorted(federation.provinces[fund_province].fund_centre.accounts.items()):
        if account.id_number[:2] == home[:2] and str(account.status).endswith("NORMAL"):
            return number, account.id_number, int(account.balance_fen)
    raise LookupError(f"no NORMAL account of a {home} resident at {fund_province}")


def full_name_of(id_number: str) -> str:
    from yrd_simulators.residents import synthetic_residents

    for province in ALL:
        for resident in synthetic_residents(province):
            if resident.id_number == id_number:
                return resident.full_name
    raise LookupError("unknown synthetic resident")
