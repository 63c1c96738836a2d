"""Single use is kept by the issuing node too: a token it has answered "first
use" for is REPLAYED the second time, even when its e-ID authority lost its
memory (restarted), and of concurrent checks of one token at most one is VALID."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from structlog.testing import capture_logs

from adapters import build_identity_authority
from adapters.base import CredentialCheck, IdentityAuthority
from gateway.core.errors import InvalidArgument
from gateway.federation import server as federation_server
from gateway.federation.payloads import validate_payload
from gateway.services.identity import claim_key_of
from gateway.storage.records import TokenClaim
from gateway.storage.state import StateStore
from gateway.testing.localfed import LocalFederation
from gateway.trust.envelope import OpenedEnvelope
from tests.integration.conftest import JS, SH, ZJ, Wallet
from tests.integration.test_fuzz import mtls
from tests.integration.test_identity_exchange import credential_check
from tests.integration.test_operator_metrics import set_status_answer
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.eid_authority import EidAuthoritySimulator


async def verify(
    federation: LocalFederation, relying: str, qr: str, key: str = "", caller: str = "hotel"
) -> identity_pb2.VerifyIdentityResponse:
    """Verify ``qr`` for a hotel check-in at ``relying``, as its client ``caller``
    (the hotel, or the service office), with idempotency key ``key``."""
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(relying))
    answer: identity_pb2.VerifyIdentityResponse = await stub.VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(
            qr_payload=qr, purpose=identity_pb2.HOTEL_CHECK_IN, idempotency_key=key
        ),
        metadata=(("authorization", f"Bearer dev-{caller}-{relying}"),),
        timeout=5,
    )
    return answer


def single_use(answer: identity_pb2.VerifyIdentityResponse) -> identity_pb2.Check:
    return next(c for c in answer.checks if c.name == "single_use")


async def restart_authority(federation: LocalFederation, code: str) -> EidAuthoritySimulator:
    """Stop the province's e-ID authority and start a new one on the same port:
    the used tokens it remembered (in memory) are gone, as after a real restart."""
    province = federation.provinces[code]
    port = urlsplit(province.simulator.url).port
    assert port is not None
    await province.simulator.stop()
    eid = province.config.eid
    assert eid.issuer_private_key is not None
    fresh = EidAuthoritySimulator(
        code, eid.issuer_private_key, eid.issuer_keys[-1].key_id, clock=federation.clock
    )
    await fresh.start("127.0.0.1", port)
    province.simulator = fresh
    return fresh


class HeldAuthority:
    """The province's real e-ID authority adapter, holding its answer (after the
    authority marked the token used) while ``hold`` is set: the check is still
    under way when the relying replica dies and its handling is cancelled."""

    def __init__(self, inner: IdentityAuthority) -> None:
        self._inner = inner
        self.hold = True
        self.answered = asyncio.Event()
        self._released = asyncio.Event()
        #: Checks the authority was asked (and answered).
        self.asked = 0

    def release(self) -> None:
        """Give the held answers, and hold no more."""
        self.hold = False
        self._released.set()

    async def check_credential(
        self, credential_id: str, token_id: str, *, timeout: float
    ) -> CredentialCheck:
        check = await self._inner.check_credential(credential_id, token_id, timeout=timeout)
        self.asked += 1
        self.answered.set()
        if self.hold:
            await self._released.wait()  # until released, or cancelled
        return check

    async def aclose(self) -> None:
        await self._inner.aclose()


class ForgetfulAuthority:
    """The province's real e-ID authority adapter, answering as an authority
    that keeps no memory of used tokens would: every token "not used"."""

    def __init__(self, inner: IdentityAuthority) -> None:
        self._inner = inner

    async def check_credential(
        self, credential_id: str, token_id: str, *, timeout: float
    ) -> CredentialCheck:
        check = await self._inner.check_credential(credential_id, token_id, timeout=timeout)
        return dataclasses.replace(check, token_already_used=False)

    async def aclose(self) -> None:
        await self._inner.aclose()


class TestSingleUseAtTheIssuingNode:
    async def test_replay_after_the_authority_restarted_is_replayed(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        first = await verify(federation, SH, qr)
        assert first.verdict == identity_pb2.VALID

        fresh = await restart_authority(federation, ZJ)
        again = await verify(federation, SH, qr)
        assert again.verdict == identity_pb2.REPLAYED
        assert single_use(again).outcome == identity_pb2.FAILED
        assert not again.disclosed_attributes
        assert not again.check_in_id
        # The restarted authority was asked and did not remember the token.
        assert fresh.status_queries == 1

        # From another relying province too: the issuing node remembers.
        from_js = await verify(federation, JS, qr)
        assert from_js.verdict == identity_pb2.REPLAYED

    async def test_a_fresh_token_is_still_valid_after_the_restart(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        assert (await verify(federation, SH, await wallet.fresh_qr(ZJ))).verdict == (
            identity_pb2.VALID
        )
        await restart_authority(federation, ZJ)
        assert (await verify(federation, SH, await wallet.fresh_qr(ZJ))).verdict == (
            identity_pb2.VALID
        )

    async def test_concurrent_checks_of_one_token_give_at_most_one_valid(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        config = federation.provinces[ZJ].config
        await federation.stop_node(ZJ)
        await federation.start_node(
            ZJ,
            authority=ForgetfulAuthority(
                build_identity_authority(config.adapter, config.eid.authority_url)
            ),
        )
        qr = await wallet.fresh_qr(ZJ)
        answers = await asyncio.gather(*(verify(federation, SH, qr) for _ in range(12)))
        verdicts = sorted(identity_pb2.Verdict.Name(a.verdict) for a in answers)
        assert verdicts == ["REPLAYED"] * 11 + ["VALID"], verdicts
        # And one by one, with the authority forgetting every time.
        assert (await verify(federation, JS, qr)).verdict == identity_pb2.REPLAYED


def check_of(qr: str, message_id: str, claim_key: str = "") -> OpenedEnvelope:
    """The credential check of ``qr`` as Shanghai's exchange ``message_id`` brings it
    (for the caller's verification ``claim_key``, if given)."""
    request = credential_check(qr)
    request.claim_key = claim_key
    header = federation_pb2.EnvelopeHeader(
        sender=SH, receiver=ZJ, message_id=message_id, service="identity.CheckCredential"
    )
    return OpenedEnvelope(header, request.SerializeToString(), federation_pb2.SignedEnvelope())


class TestAnAnswerLostIsNotAReplay:
    """The issuing node claims a token for the exchange that asks (sender and
    message id) before its authority, which marks the token used, is asked."""

    async def test_a_retry_of_the_same_exchange_gets_first_use_again(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        identity = federation.node(ZJ).identity
        qr = await wallet.fresh_qr(ZJ)
        exchange = str(uuid.uuid4())
        first = await identity.handle_federated(check_of(qr, exchange), timeout=5)
        assert first.state == federation_pb2.CREDENTIAL_ACTIVE
        assert not first.token_already_used
        # Its answer was lost (the node crashed before logging it, or could not
        # log it): Shanghai sends the same exchange again. The authority now
        # says "used" -- because of that very exchange.
        again = await identity.handle_federated(check_of(qr, exchange), timeout=5)
        assert not again.token_already_used
        assert again.claims.holder.full_name == first.claims.holder.full_name
        # Any other exchange with the token is a replay.
        other = await identity.handle_federated(check_of(qr, str(uuid.uuid4())), timeout=5)
        assert other.token_already_used
        assert not other.HasField("claims")

    async def test_an_authority_that_gave_no_answer_leaves_the_token_unspent(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        await set_status_answer(federation, ZJ, "fail")
        try:
            failed = await verify(federation, SH, qr)
        finally:
            await set_status_answer(federation, ZJ, "normal")
        assert failed.verdict == identity_pb2.ISSUER_UNREACHABLE
        # The hotel tries again (a new exchange): the claim of the first was withdrawn.
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.VALID
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.REPLAYED


async def check_ins(federation: LocalFederation, code: str) -> int:
    row = await federation.node(code).state.fetchone("SELECT COUNT(*) FROM check_ins")
    assert row is not None
    return int(row[0])


class TestACallersRetryIsNotAReplay:
    """A caller whose answer was lost (the connection broke, its deadline passed,
    the replica it called died) tries again with the same idempotency key and the
    same QR: the same verdict and the same check-in, not REPLAYED. Without the
    key, or with another, the token stays single-use."""

    async def test_the_same_key_gets_the_same_check_in(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        key = f"ci-{uuid.uuid4()}"
        before = await check_ins(federation, SH)
        first = await verify(federation, SH, qr, key)
        assert first.verdict == identity_pb2.VALID
        again = await verify(federation, SH, qr, key)
        assert again.verdict == identity_pb2.VALID
        assert single_use(again).outcome == identity_pb2.PASSED
        assert again.check_in_id == first.check_in_id
        assert again.attributes == first.attributes
        assert await check_ins(federation, SH) == before + 1  # recorded once
        # A call without the key, or with another, is another verification: a replay.
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.REPLAYED
        assert (await verify(federation, SH, qr, f"ci-{uuid.uuid4()}")).verdict == (
            identity_pb2.REPLAYED
        )
        # Another relying party with the same key, at the same node or another.
        assert (await verify(federation, SH, qr, key, caller="office")).verdict == (
            identity_pb2.REPLAYED
        )
        assert (await verify(federation, JS, qr, key)).verdict == identity_pb2.REPLAYED
        assert await check_ins(federation, SH) == before + 1

    async def test_tries_at_once_with_one_key_record_one_check_in(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        key = f"ci-{uuid.uuid4()}"
        before = await check_ins(federation, SH)
        answers = await asyncio.gather(*(verify(federation, SH, qr, key) for _ in range(6)))
        assert {a.verdict for a in answers} == {identity_pb2.VALID}
        assert len({a.check_in_id for a in answers}) == 1
        assert await check_ins(federation, SH) == before + 1

    async def test_a_token_of_the_nodes_own_province(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(SH)
        key = f"ci-{uuid.uuid4()}"
        first = await verify(federation, SH, qr, key)
        assert first.verdict == identity_pb2.VALID
        again = await verify(federation, SH, qr, key)
        assert (again.verdict, again.check_in_id) == (identity_pb2.VALID, first.check_in_id)
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.REPLAYED

    async def test_a_try_cut_off_after_the_authority_answered_keeps_its_claim(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        # The relying replica died while the issuer was asking its authority:
        # the issuer's handling is cancelled after the authority marked the
        # token used. The caller's retry, with the same key, is still "first use".
        config = federation.provinces[ZJ].config
        await federation.stop_node(ZJ)
        held = HeldAuthority(build_identity_authority(config.adapter, config.eid.authority_url))
        await federation.start_node(ZJ, authority=held)
        identity = federation.node(ZJ).identity
        qr = await wallet.fresh_qr(ZJ)
        key = claim_key_of(f"hotel-{SH}-001", f"ci-{uuid.uuid4()}")
        first = asyncio.create_task(
            identity.handle_federated(check_of(qr, str(uuid.uuid4()), key), timeout=5)
        )
        await asyncio.wait_for(held.answered.wait(), 5)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.2)  # whatever the cancelled check leaves behind is done
        held.hold = False
        again = await identity.handle_federated(check_of(qr, str(uuid.uuid4()), key), timeout=5)
        assert again.state == federation_pb2.CREDENTIAL_ACTIVE
        assert not again.token_already_used
        # Without the key the token is spent.
        other = await identity.handle_federated(check_of(qr, str(uuid.uuid4())), timeout=5)
        assert other.token_already_used

    async def test_a_key_of_the_wrong_form_is_refused_naming_the_field(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        for bad in ("short", "x" * 129, "key with spaces", "ключ-ключ-ключ"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await verify(federation, SH, qr, bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "idempotency_key" in (caught.value.details() or "")
        # Nothing was asked of the issuer: the QR is still unused.
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.VALID

    async def test_the_issuer_refuses_a_claim_key_of_the_wrong_form(self, wallet: Wallet) -> None:
        request = check_of(await wallet.fresh_qr(ZJ), str(uuid.uuid4()))
        request.header.payload_type = federation_pb2.CredentialCheckRequest.DESCRIPTOR.full_name
        check = federation_pb2.CredentialCheckRequest.FromString(request.payload)
        for bad in ("A" * 64, "a" * 63, "g" * 64, "a" * 65):
            check.claim_key = bad
            opened = OpenedEnvelope(request.header, check.SerializeToString(), request.signed)
            with pytest.raises(InvalidArgument, match="claim_key"):
                validate_payload(opened)
        check.claim_key = "a" * 64
        validate_payload(OpenedEnvelope(request.header, check.SerializeToString(), request.signed))


async def held_zhejiang(federation: LocalFederation) -> HeldAuthority:
    """Restart Zhejiang's node with its authority's answers held until released."""
    config = federation.provinces[ZJ].config
    await federation.stop_node(ZJ)
    held = HeldAuthority(build_identity_authority(config.adapter, config.eid.authority_url))
    await federation.start_node(ZJ, authority=held)
    return held


def sealed_check(federation: LocalFederation, qr: str, message_id: str) -> bytes:
    """Shanghai's envelope of the check of ``qr`` as exchange ``message_id`` (each
    call a new envelope: a new nonce, the same message id, payload and correlation id)."""
    envelope = federation.node(SH).signer.seal(
        receiver=ZJ,
        service="identity.CheckCredential",
        payload=credential_check(qr),
        correlation_id=str(uuid.uuid5(uuid.NAMESPACE_URL, message_id)),
        message_id=message_id,
    )
    return envelope.SerializeToString()


def unary_exchange(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        "/yrd.federation.v1.FederationService/Exchange",
        request_serializer=None,
        response_deserializer=federation_pb2.SignedEnvelope.FromString,
    )


async def cancelled_while_held(
    channel: grpc.aio.Channel, held: HeldAuthority, envelope: bytes
) -> None:
    """Send ``envelope`` over unary Exchange and cancel the call once Zhejiang's
    authority has answered (its answer still held)."""
    call = unary_exchange(channel)(envelope, timeout=10)
    await asyncio.wait_for(held.answered.wait(), 5)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call


async def carrying_on(federation: LocalFederation, streams: int | None = None) -> int:
    """Zhejiang's requests carried on, once there are some (and, if given, once
    it serves ``streams`` streams), within 2 s."""
    zhejiang = federation.node(ZJ).federation_server
    assert zhejiang is not None
    for _ in range(100):
        if zhejiang.carried_on and streams in (None, zhejiang.streams):
            break
        await asyncio.sleep(0.02)
    return zhejiang.carried_on


class TestAnExchangeCutOffIsNotAReplay:
    """The issuing node handles a request to its end even when its asker goes
    away meanwhile (the stream between the nodes broke, the call was
    cancelled): the asker's retry of the exchange (the same message id, on a
    new stream) gets that handling's answer. Handled again, it would find the
    token spent by its own first handling and answer REPLAYED."""

    async def test_a_stream_broken_while_the_authority_answers(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        held = await held_zhejiang(federation)
        qr = await wallet.fresh_qr(ZJ)
        before = await check_ins(federation, SH)
        # A front desk without an idempotency key: the exchange's own retry
        # is all that can save it.
        verifying = asyncio.create_task(verify(federation, SH, qr))
        await asyncio.wait_for(held.answered.wait(), 5)
        link = federation.node(SH).federation_client.stream_link(ZJ)
        assert link is not None
        assert link.in_flight == 1
        await link.close(grace=0)  # the stream breaks under the exchange
        # Zhejiang sees its stream end; its request goes on.
        assert await carrying_on(federation, streams=0) == 1
        zhejiang = federation.node(ZJ).federation_server
        assert zhejiang is not None
        await asyncio.sleep(0.3)  # Shanghai's retry comes on a new stream and waits
        held.release()
        answer = await verifying
        assert answer.verdict == identity_pb2.VALID
        assert single_use(answer).outcome == identity_pb2.PASSED
        assert held.asked == 1  # the retry was given the first handling's answer
        assert zhejiang.carried_on == 0
        assert await check_ins(federation, SH) == before + 1
        # The token is spent: any later verification is a replay.
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.REPLAYED

    async def test_a_unary_call_cancelled_while_the_authority_answers(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        held = await held_zhejiang(federation)
        qr = await wallet.fresh_qr(ZJ)
        message_id = str(uuid.uuid4())
        channel = mtls(federation)
        try:
            envelope = sealed_check(federation, qr, message_id)
            await cancelled_while_held(channel, held, envelope)
            assert await carrying_on(federation) == 1
            retry = asyncio.ensure_future(
                unary_exchange(channel)(sealed_check(federation, qr, message_id), timeout=10)
            )
            await asyncio.sleep(0.3)
            held.release()
            answer = federation_pb2.CredentialCheckResponse.FromString((await retry).payload)
        finally:
            await channel.close()
        assert answer.state == federation_pb2.CREDENTIAL_ACTIVE
        assert not answer.token_already_used
        assert answer.claims.holder.full_name
        assert held.asked == 1

    async def test_past_the_bound_a_request_is_cut_off_with_its_asker(
        self, federation: LocalFederation, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Requests carried on are bounded (a peer that breaks its calls in a loop
        cannot make the node hold more): past the bound the handling is
        cancelled, its claim withdrawn, and the node says so."""
        monkeypatch.setattr(federation_server, "CARRIED_ON", 0)
        held = await held_zhejiang(federation)
        qr = await wallet.fresh_qr(ZJ)
        channel = mtls(federation)
        try:
            with capture_logs() as logs:
                envelope = sealed_check(federation, qr, str(uuid.uuid4()))
                await cancelled_while_held(channel, held, envelope)
                await asyncio.sleep(0.2)
        finally:
            await channel.close()
        cut = [e for e in logs if e["event"] == "requests cut off with their asker"]
        assert [(e["reason"], e["limit"], e["cut_off"]) for e in cut] == [
            ("too_many_carried_on", 0, 1)
        ]
        zhejiang = federation.node(ZJ).federation_server
        assert zhejiang is not None
        assert zhejiang.carried_on == 0

    async def test_the_node_stops_within_its_grace_with_requests_carried_on(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        held = await held_zhejiang(federation)
        channel = mtls(federation)
        try:
            envelope = sealed_check(federation, await wallet.fresh_qr(ZJ), str(uuid.uuid4()))
            await cancelled_while_held(channel, held, envelope)
        finally:
            await channel.close()
        assert await carrying_on(federation) == 1
        zhejiang = federation.node(ZJ).federation_server
        assert zhejiang is not None
        started = time.monotonic()
        with capture_logs() as logs:
            await federation.stop_node(ZJ)  # grace 0.5 s: the held check is then cut off
        assert time.monotonic() - started < 3
        assert zhejiang.carried_on == 0
        cut = [e for e in logs if e["event"] == "requests cut off with their asker"]
        assert [(e["reason"], e["cut_off"]) for e in cut] == [("stopping", 1)]


class TestAnsweredTokens:
    """The issuing node's record of answered tokens: atomic, and bounded by the
    tokens' validity windows."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> StateStore:
        return await StateStore(tmp_path / "state.db").open()

    async def test_one_claim_wins(self, store: StateStore) -> None:
        try:
            now = time.time()
            claims = await asyncio.gather(
                *(store.claim_token("t-1", keep_until=now + 60, now=now) for _ in range(20))
            )
            assert sorted(claims) == [False] * 19 + [True]
        finally:
            await store.close()

    async def test_a_claim_knows_its_claimant(self, store: StateStore) -> None:
        try:
            now = time.time()

            async def claim(token: str, claimant: str) -> TokenClaim:
                return await store.claim_token_for(
                    token, claimant=claimant, keep_until=now + 60, now=now
                )

            assert await claim("t-1", "310000/m-1") is TokenClaim.NEW
            assert await claim("t-1", "310000/m-1") is TokenClaim.OURS
            assert await claim("t-1", "310000/m-2") is TokenClaim.TAKEN
            assert not await store.claim_token("t-1", keep_until=now + 60, now=now)
            # An empty claimant (the node's own verifications) is nobody's twin.
            assert await claim("t-2", "") is TokenClaim.NEW
            assert await claim("t-2", "") is TokenClaim.TAKEN
            # Only the claimant's own claim is withdrawn.
            await store.release_token("t-1", claimant="310000/m-2")
            assert await claim("t-1", "310000/m-3") is TokenClaim.TAKEN
            await store.release_token("t-1", claimant="310000/m-1")
            assert await claim("t-1", "310000/m-3") is TokenClaim.NEW
        finally:
            await store.close()

    async def test_expired_rows_are_pruned(self, store: StateStore) -> None:
        try:
            now = time.time()
            for i in range(50):
                assert await store.claim_token(f"old-{i}", keep_until=now + 10, now=now)
            assert await store.answered_token_count() == 50
            # Past their window: the next claim prunes them; the id may be used
            # again only once no token with it can still be valid.
            later = now + 11
            assert await store.claim_token("old-0", keep_until=later + 10, now=later)
            assert await store.answered_token_count() == 1
        finally:
            await store.close()

    @pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
    async def test_claims_committed_together_each_get_their_own_answer(
        self, engine: str, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        """Claims queued together are one group (one commit, no savepoint); each
        gets its own answer: new, taken by another (before, or earlier in the
        same group), its own claimant's again, or new over a row past its time."""
        where = tmp_path / "state.db" if engine == "sqlite" else request.getfixturevalue("pg_url")
        store = await StateStore(where).open()
        try:
            now = time.time()
            await store.claim_token_for("held", claimant="310000/x", keep_until=now + 60, now=now)
            await store.claim_token_for("mine", claimant="310000/m", keep_until=now + 60, now=now)
            await store.claim_token_for("old", claimant="310000/x", keep_until=now - 1, now=now)
            commits = store.commits
            claims = [
                ("a", "310000/1"),
                ("b", "310000/2"),
                ("a", "310000/3"),  # a second claimant of "a" in the same group
                ("a", "310000/1"),  # the first claimant of "a" again
                ("held", "310000/4"),
                ("mine", "310000/m"),
                ("old", "310000/5"),
                ("c", ""),
                ("c", ""),  # an empty claimant is nobody's twin
            ]
            results = await asyncio.gather(
                *(
                    store.claim_token_for(t, claimant=c, keep_until=now + 60, now=now)
                    for t, c in claims
                )
            )
            assert results == [
                TokenClaim.NEW,
                TokenClaim.NEW,
                TokenClaim.TAKEN,
                TokenClaim.OURS,
                TokenClaim.TAKEN,
                TokenClaim.OURS,
                TokenClaim.NEW,
                TokenClaim.NEW,
                TokenClaim.TAKEN,
            ]
            assert store.commits == commits + 1
            rows = await store.fetchall("SELECT token_id, claimant FROM answered_tokens")
            assert dict(rows) == {
                "a": "310000/1",
                "b": "310000/2",
                "held": "310000/x",
                "mine": "310000/m",
                "old": "310000/5",
                "c": "",
            }
        finally:
            await store.close()

    async def test_a_claim_past_its_time_is_no_claim_between_sweeps(
        self, store: StateStore
    ) -> None:
        """Rows past their time are deleted at most once a second (a statement
        per claim was a hand-off of the interpreter lock per claim); until then
        such a row is replaced by a new claim, and a live one still holds."""
        try:
            now = time.time()
            statements: list[str] = []
            await store.write(lambda db: db.set_trace_callback(statements.append))
            assert await store.claim_token("short", keep_until=now + 0.5, now=now)
            assert await store.claim_token("long", keep_until=now + 60, now=now)
            soon = now + 0.6  # past "short"'s time, within a second of the sweep
            assert await store.claim_token("short", keep_until=soon + 60, now=soon)
            assert not await store.claim_token("long", keep_until=soon + 60, now=soon)
            deletes = [s for s in statements if s.startswith("DELETE FROM answered_tokens")]
            assert len(deletes) == 1  # the first claim's sweep only
            assert await store.answered_token_count() == 2
        finally:
            await store.close()
