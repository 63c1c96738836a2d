"""The metrics operators alert on (issue 18), scraped over HTTP from real nodes:

- calls to a back-end by outcome: ok, refused (the back-end's decision),
  translation_error (the adapter could not read the answer), unavailable --
  each shown with the e-ID authority simulator told to answer so, while the
  exchange answers its caller as it always did;
- refusals by origin and reason: refused federation envelopes by the province
  they claim to come from, refused local client calls as ``client``;
- received money-moving cases in reconciliation, per sender, in
  ``yrd_outbox_items{state="reconciliation"}`` (the store read on SQLite and
  PostgreSQL);
- days to expiry of every peer's TLS certificate, from its descriptor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.config.models import FederationConfig
from gateway.storage.state import StateStore
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import AH, JS, SH, ZJ, Wallet
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.integration.test_fuzz import mtls, send_raw, wrong_envelope
from tests.integration.test_operations import samples, scrape
from tests.integration.test_reconciliation import status_of
from tests.paths import keys_dir
from tests.unit.test_leases import FINAL, incoming, receive
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
V = identity_pb2.Verdict


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the node has not exported it (a counter never increased)."""
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- back-end calls by outcome --------------------------------------------------------


async def set_status_answer(federation: LocalFederation, code: str, answer: str) -> None:
    """Through the simulator's harness endpoint, as an operator's test would."""
    simulator = federation.provinces[code].simulator
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{simulator.url}/admin/faults", json={"status_answer": answer}) as response,
    ):
        assert response.status == 200, await response.text()


#: How the Zhejiang e-ID authority answers -> the outcome its node counts, and
#: the verdict the Shanghai hotel gets (what it got before outcomes were told apart).
#: the verdict the Shanghai hotel gets and the outcome of Zhejiang's side of the
#: exchange -- both what they were before the outcomes were told apart (all
#: three faults were the outcome "error", or "unavailable").
BACKEND_CASES = {
    "normal": ("ok", V.VALID, "OK"),
    "refuse": ("refused", V.ISSUER_UNREACHABLE, "INTERNAL"),
    "malformed": ("translation_error", V.ISSUER_UNREACHABLE, "INTERNAL"),
    "fail": ("unavailable", V.ISSUER_UNREACHABLE, "UNAVAILABLE"),
}


class TestBackendOutcomes:
    @pytest.mark.parametrize("answer", list(BACKEND_CASES))
    async def test_each_outcome_is_counted_and_the_caller_answer_is_unchanged(
        self, federation: LocalFederation, wallet: Wallet, answer: str
    ) -> None:
        outcome, verdict, exchange_outcome = BACKEND_CASES[answer]
        qr = await wallet.fresh_qr(ZJ)  # the wallet's own call; the authority answers normally
        await set_status_answer(federation, ZJ, answer)
        stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        answered = await stub.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(qr_payload=qr, purpose=identity_pb2.HOTEL_CHECK_IN),
            metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
            timeout=20,
        )
        assert answered.verdict == verdict
        found = samples(await scrape(federation, ZJ))
        exchanges = {
            dict(labels)["outcome"]: n
            for (name, labels), n in found.items()
            if name == "yrd_exchanges_total" and ("direction", "in") in labels
        }
        assert set(exchanges) == {exchange_outcome}, exchanges
        calls = {
            o: value(found, "yrd_backend_calls_total", backend="eid_authority", outcome=o)
            for o in ("ok", "refused", "translation_error", "unavailable", "error")
        }
        assert calls[outcome] >= 1, calls
        assert sum(calls.values()) == calls[outcome], calls  # only that outcome
        assert (
            value(
                found,
                "yrd_backend_duration_seconds_count",
                backend="eid_authority",
                outcome=outcome,
            )
            == calls[outcome]
        )


# ---- refusals by origin and reason ------------------------------------------------------


def refusals(found: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["origin"], dict(labels)["reason"]): n
        for (name, labels), n in found.items()
        if name == "yrd_refusals_total"
    }


class TestRefusals:
    async def test_refused_envelopes_by_claimed_sender_and_reason(
        self, federation: LocalFederation
    ) -> None:
        channel = mtls(federation, as_province=SH)
        try:
            assert await send_raw(channel, b"\xff\xfe not an envelope") != grpc.StatusCode.OK
            bad = wrong_envelope(federation, "bad_signature", b"")
            assert await send_raw(channel, bad) == grpc.StatusCode.UNAUTHENTICATED
            # A header claiming a sender that is no province code (and a value no
            # label may carry): counted as "unknown".
            envelope = federation_pb2.SignedEnvelope.FromString(bad)
            header = federation_pb2.EnvelopeHeader.FromString(envelope.header)
            header.sender = "<script>"
            envelope.header = header.SerializeToString()
            assert await send_raw(channel, envelope.SerializeToString()) != grpc.StatusCode.OK
        finally:
            await channel.close()
        text = await scrape(federation, ZJ)
        assert "<script>" not in text
        found = refusals(samples(text))
        assert found[("unknown", "malformed")] >= 1
        assert found[(SH, "bad_signature")] == 1
        assert sum(n for (origin, _), n in found.items() if origin == "unknown") == 2
        assert {origin for origin, _ in found} == {"unknown", SH}
        # Only this node counts what it refused; the others saw nothing.
        assert refusals(samples(await scrape(federation, AH))) == {}

    async def test_refused_client_calls_by_reason(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        identity = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        fund = fund_pb2_grpc.FundServiceStub(federation.channel(SH))
        request = identity_pb2.VerifyIdentityRequest(
            qr_payload=await wallet.fresh_qr(ZJ), purpose=identity_pb2.HOTEL_CHECK_IN
        )
        hotel = (("authorization", f"Bearer dev-hotel-{SH}"),)
        calls: list[tuple[Awaitable[Any], grpc.StatusCode]] = [
            (identity.VerifyIdentity(request, timeout=5), grpc.StatusCode.UNAUTHENTICATED),
            (
                identity.VerifyIdentity(
                    request, metadata=(("authorization", "Bearer not-a-token"),), timeout=5
                ),
                grpc.StatusCode.UNAUTHENTICATED,
            ),
            (
                fund.QueryFundAccount(
                    fund_pb2.QueryFundAccountRequest(fund_province=JS), metadata=hotel, timeout=5
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (
                identity.VerifyIdentity(
                    identity_pb2.VerifyIdentityRequest(qr_payload="x"), metadata=hotel, timeout=5
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for call, code in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == code
        # The hotel's rate limit cut to one call: the second within the second is refused.
        node = federation.node(SH)
        me = node.federation.me
        clients = tuple(
            c.model_copy(update={"rate_per_second": 0.01, "burst": 1})
            if c.id.startswith("hotel-")
            else c
            for c in me.clients
        )
        await node.reload(FederationConfig(me=me.model_copy(update={"clients": clients})))
        limited = 0
        for _ in range(3):
            try:
                await identity.VerifyIdentity(request, metadata=hotel, timeout=5)
            except grpc.aio.AioRpcError as error:
                limited += error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited >= 2
        found = refusals(samples(await scrape(federation, SH)))
        assert found == {
            ("client", "unauthenticated"): 2,
            ("client", "permission_denied"): 1,
            ("client", "invalid_argument"): 1,
            ("client", "rate_limited"): limited,
        }


# ---- received cases in reconciliation, per sender ------------------------------------------


async def into_reconciliation(store: StateStore, *references: str, at: datetime) -> None:
    """Claim the cases and move them to reconciliation, as the processor does."""
    await store.claim_incoming(
        "withdrawal", now=time.time(), final=FINAL, limit=10, owner="1/1/t", lease_seconds=60
    )
    for reference in references:
        assert await store.unit_of_work(
            lambda tx, r=reference: tx.incoming_to_reconciliation(r, owner="1/1/t", at=at)
        )


async def reconciliation_by_sender_on(store: StateStore) -> None:
    assert await store.reconciliation_by_sender() == []
    cases = [
        incoming(1),
        dataclasses.replace(incoming(2), sender=ZJ),
        dataclasses.replace(incoming(3), sender=ZJ),
        incoming(4),  # received, not in reconciliation: not counted
    ]
    await receive(store, *cases)
    early = datetime(2027, 6, 1, 9, tzinfo=UTC)
    await into_reconciliation(store, "FW-310000-1", "FW-310000-2", at=early)
    await into_reconciliation(store, "FW-310000-3", at=early + timedelta(hours=2))
    assert sorted(await store.reconciliation_by_sender()) == [(JS, 1, early), (ZJ, 2, early)]


class TestReconciliationStore:
    async def test_on_sqlite(self, tmp_path: Path) -> None:
        store = await StateStore(tmp_path / "state.db").open()
        try:
            await reconciliation_by_sender_on(store)
        finally:
            await store.close()

    async def test_on_postgresql(self, pg_url: str) -> None:
        store = await StateStore(pg_url).open()
        try:
            await reconciliation_by_sender_on(store)
        finally:
            await store.close()


async def test_a_withdrawal_in_reconciliation_is_shown_per_sender(
    federation: LocalFederation,
) -> None:
    """The fund centre pays a withdrawal, then loses its cases while the fund node
    is down: the node holds the withdrawal for reconciliation, and its metrics
    show it under the sender, with its age."""
    centre = federation.provinces[JS].fund_centre
    centre.review_delay = 1.0  # seen UNDER_REVIEW first
    case_id = (await submit(federation, application(federation, amount_fen=12_345))).case_id
    assert case_id

    async def under_review() -> bool:  # the node has recorded the centre's answer
        return (await status_of(federation, case_id)).status == fund_pb2.UNDER_REVIEW

    await until(under_review, "the withdrawal UNDER_REVIEW")
    await federation.stop_node(JS)
    await centre.wait_idle()
    assert await centre.forget() == 1
    started = datetime.now(UTC)
    await federation.start_node(JS)

    async def held() -> bool:
        found = samples(await scrape(federation, JS))
        return value(found, "yrd_outbox_items", peer=SH, state="reconciliation") == 1

    await until(held, "the withdrawal in reconciliation")
    await asyncio.sleep(0.3)
    found = samples(await scrape(federation, JS))
    age = value(found, "yrd_outbox_items_oldest_age_seconds", peer=SH, state="reconciliation")
    assert 0.2 <= age <= (datetime.now(UTC) - started).total_seconds() + 1
    assert value(found, "yrd_reconciliation_cases", domain="withdrawal") == 1
    assert not any(
        dict(labels).get("state") == "reconciliation" and dict(labels)["peer"] != SH
        for (name, labels), _ in found.items()
        if name == "yrd_outbox_items"
    )


# ---- every peer's TLS certificate -------------------------------------------------------


async def test_days_to_expiry_of_every_peer_tls_certificate(federation: LocalFederation) -> None:
    found = samples(await scrape(federation, SH))
    exported = {
        (dict(labels)["province"], dict(labels)["key_id"]): days
        for (name, labels), days in found.items()
        if name == "yrd_key_expiry_days" and dict(labels)["kind"] == "tls_certificate"
    }
    now = datetime.now(UTC)
    for code in (JS, ZJ, AH):
        certificate = x509.load_pem_x509_certificate((keys_dir(code) / "tls.crt.pem").read_bytes())
        der = certificate.public_bytes(serialization.Encoding.DER)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        key_id = digest.finalize().hex()[:16]
        days = (certificate.not_valid_after_utc - now).total_seconds() / 86400
        assert exported[(code, key_id)] == pytest.approx(days, abs=0.1), code
    tls = federation.node(SH).federation.me.tls
    assert tls is not None
    assert (SH, tls.certificate.name) in exported  # its own, by file name
    assert len(exported) == 4


async def test_an_unreadable_fund_centre_answer_is_a_translation_error(
    federation: LocalFederation,
) -> None:
    """The background processor's calls are counted too: a submit answer the
    adapter cannot read is a translation error (not a refusal), the withdrawal
    is still paid once, as before."""
    centre = federation.provinces[JS].fund_centre
    centre.garble_submit_answers = True
    case_id = (await submit(federation, application(federation, amount_fen=23_456))).case_id

    async def taken() -> bool:
        return len(centre.cases) == 1

    await until(taken, "the centre taking the withdrawal")
    centre.garble_submit_answers = False
    final, _ = await until_final(federation, case_id)
    assert (final.status, final.paid_amount_fen) == (fund_pb2.PAID, 23_456)
    found = samples(await scrape(federation, JS))
    assert (
        value(found, "yrd_backend_calls_total", backend="fund_centre", outcome="translation_error")
        >= 1
    )
    assert value(found, "yrd_backend_calls_total", backend="fund_centre", outcome="ok") >= 1
    assert value(found, "yrd_backend_calls_total", backend="fund_centre", outcome="refused") == 0
