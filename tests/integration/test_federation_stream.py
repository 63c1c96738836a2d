"""The federation hop on one long-lived Stream per pair of nodes (issue 16).

Real nodes on loopback: exchanges travel on the stream in batches signed once,
a lone exchange goes at once, a peer killed or drained loses and doubles
nothing, a peer without Stream and ``federation_stream = false`` go unary, and
bad frames get a status naming the field while the node keeps serving. A peer
holding a real key that tampers with one envelope's batch proof or root gets
that envelope refused, naming the field, and the rest of the batch answered.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from gateway.core.channels import balanced_aio_channel
from gateway.core.errors import PeerUnavailable, RemoteError
from gateway.federation import server as federation_server
from gateway.federation.client import (
    CHANNEL_OPTIONS,
    FederationClient,
    StreamBroken,
    StreamLink,
    StreamUnimplemented,
)
from gateway.federation.server import SERVICE_NAME
from gateway.server.node import Node
from gateway.testing.localfed import LocalFederation, free_port
from tests.integration.conftest import JS, SH, ZJ, Wallet
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.integration.test_fuzz import mtls
from tests.integration.test_identity_exchange import verify
from tests.integration.test_replica_balancing import replicas  # noqa: F401 - fixture
from tests.integration.test_replica_balancing import verify as verify_at
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2

pytestmark = pytest.mark.timeout(240)

STREAM = f"/{SERVICE_NAME}/Stream"


def link(federation: LocalFederation, code: str, peer: str) -> StreamLink:
    found = federation.node(code).federation_client.stream_link(peer)
    assert found is not None, f"{code} has no stream to {peer}"
    return found


def batches(node: Node, peer: str, direction: str) -> tuple[float, float]:
    """(frames, envelopes) of yrd_federation_batch_envelopes{peer, direction}."""
    registry = node.metrics.registry
    labels = {"peer": peer, "direction": direction}
    count = registry.get_sample_value("yrd_federation_batch_envelopes_count", labels) or 0.0
    total = registry.get_sample_value("yrd_federation_batch_envelopes_sum", labels) or 0.0
    return count, total


def streams(node: Node, peer: str, direction: str) -> float:
    labels = {"peer": peer, "direction": direction}
    return node.metrics.registry.get_sample_value("yrd_federation_streams", labels) or 0.0


async def many_qrs(wallet: Wallet, province: str, count: int) -> list[str]:
    residents = [r for r in await wallet.residents(province) if r["state"] == "CREDENTIAL_ACTIVE"]
    return list(
        await asyncio.gather(
            *(
                wallet.qr(province, residents[i % len(residents)]["credential_id"])
                for i in range(count)
            )
        )
    )


class TestOnTheStream:
    async def test_check_in_and_withdrawal_travel_on_the_stream(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """A check-in (SH asks ZJ) and a withdrawal (SH delivers to JS, JS sends
        the status back) are carried by streams, batch-signed, not unary."""
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert response.verdict == identity_pb2.VALID
        to_zj = link(federation, SH, ZJ)
        assert to_zj.ended is None
        assert to_zj.envelopes_sent >= 1
        assert streams(federation.node(SH), ZJ, "out") == 1
        assert streams(federation.node(ZJ), SH, "in") == 1
        assert batches(federation.node(ZJ), SH, "in")[1] >= 1  # requests received
        assert batches(federation.node(ZJ), SH, "out")[1] >= 1  # responses sent

        case = await submit(federation, application(federation, amount_fen=1_000))
        final, _ = await until_final(federation, case.case_id)
        assert final.status == fund_pb2.WithdrawalStatus.PAID, final.status_reason
        assert link(federation, SH, JS).envelopes_sent >= 1
        assert link(federation, JS, SH).envelopes_sent >= 1  # status updates back

        # The logged envelopes carry batch proofs (no lone signature), and the
        # logs still verify.
        for code in (SH, ZJ):
            rows = [
                row
                async for row in federation.node(code).message_log.rows()
                if row.entry.correlation_id == response.correlation_id
            ]
            assert len(rows) == 2
            for row in rows:
                envelope = federation_pb2.SignedEnvelope.FromString(row.entry.envelope)
                assert envelope.HasField("batch")
                assert not envelope.signature
            assert (await federation.node(code).message_log.verify()).intact

    async def test_concurrent_verifications_are_batched_and_all_answered(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qrs = await many_qrs(wallet, ZJ, 200)
        zj = federation.node(ZJ)
        roots_before = zj.verifier.roots_verified
        frames_before, envelopes_before = batches(zj, SH, "in")
        answers = await asyncio.gather(*(verify(federation, SH, qr, timeout=30) for qr in qrs))
        assert [a.verdict for a in answers] == [identity_pb2.VALID] * len(qrs)
        frames_after, envelopes_after = batches(zj, SH, "in")
        frames = frames_after - frames_before
        envelopes = envelopes_after - envelopes_before
        assert envelopes == len(qrs)
        assert envelopes / frames > 1, f"{envelopes} requests in {frames} frames"
        roots = zj.verifier.roots_verified - roots_before
        assert roots == frames  # one root verification per batch, not per envelope
        assert roots < envelopes
        # The answers came in batches too.
        out_frames, out_envelopes = batches(federation.node(SH), ZJ, "in")
        assert out_envelopes >= len(qrs)
        assert out_envelopes / out_frames > 1

    async def test_a_lone_call_after_idle_goes_alone_at_once(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        await verify(federation, SH, await wallet.fresh_qr(ZJ))  # the stream is open
        await asyncio.sleep(0.5)
        sent = link(federation, SH, ZJ)
        frames, envelopes = sent.frames_sent, sent.envelopes_sent
        qr = await wallet.fresh_qr(ZJ)
        started = time.monotonic()
        response = await verify(federation, SH, qr)
        assert response.verdict == identity_pb2.VALID
        assert time.monotonic() - started < 2.0  # generous: no batch wait
        assert (sent.frames_sent - frames, sent.envelopes_sent - envelopes) == (1, 1)


class TestFaults:
    async def test_fund_node_killed_mid_load_pays_each_case_exactly_once(
        self, federation: LocalFederation
    ) -> None:
        centre = federation.provinces[JS].fund_centre
        apps = [application(federation, amount_fen=100 + i) for i in range(12)]
        cases = await asyncio.gather(*(submit(federation, app) for app in apps))
        await asyncio.sleep(0.05)
        js = federation.node(JS)
        await js.stop(grace=0)  # streams cut, not drained
        federation.provinces[JS].node = None
        await federation.start_node(JS)
        finals = await asyncio.gather(
            *(until_final(federation, case.case_id, seconds=60) for case in cases)
        )
        for app, (final, _) in zip(apps, finals, strict=True):
            assert final.status == fund_pb2.WithdrawalStatus.PAID, final.status_reason
            paid = [
                p for p in centre.payments if p[1] == app.fund_account and p[2] == app.amount_fen
            ]
            assert len(paid) == 1, app.idempotency_key

    async def test_drain_answers_every_request_it_read(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qrs = await many_qrs(wallet, ZJ, 60)
        await verify(federation, SH, qrs.pop())  # the stream is open
        to_zj = link(federation, SH, ZJ)
        load = asyncio.gather(
            *(verify(federation, SH, qr, timeout=10) for qr in qrs), return_exceptions=True
        )
        await asyncio.sleep(0.05)
        await federation.stop_node(ZJ)  # drains (grace 0.5 s)
        await load
        assert to_zj.ended is not None
        # The draining node said so first: the asker wrote nothing more on
        # the stream, which then ended with OK.
        assert to_zj.draining
        assert to_zj.ended.code == grpc.StatusCode.OK, to_zj.ended.details
        zj = await federation.start_node(ZJ)
        requests: set[str] = set()
        responses: set[str] = set()
        async for row in zj.message_log.rows():
            if row.entry.service != "identity.CheckCredential":
                continue
            if (row.entry.direction, row.entry.kind) == ("in", "request"):
                requests.add(row.entry.message_id)
            elif (row.entry.direction, row.entry.kind) == ("out", "response"):
                responses.add(row.entry.message_id)
        assert len(requests) >= 1
        assert requests == responses  # every request read was answered before the end

    async def test_a_draining_replica_says_so_and_new_exchanges_go_to_its_twin(
        self,
        federation: LocalFederation,
        replicas: list[Node],  # noqa: F811 - the fixture imported above
        wallet: Wallet,
    ) -> None:
        js_desk = federation.channel(JS)
        client = federation.node(JS).federation_client
        for _ in range(6):  # a stream to each replica
            answer = await verify_at(js_desk, JS, await wallet.fresh_qr(SH))
            assert answer.verdict == identity_pb2.VALID
        peer = client._peers[SH]
        draining_endpoint = replicas[1].config.me.node.federation_endpoint
        index = peer.endpoints.index(draining_endpoint)
        to_twin = peer.links[index]
        assert to_twin is not None
        assert to_twin.ended is None
        qrs = [await wallet.fresh_qr(SH) for _ in range(40)]
        retries = client.retries
        load = asyncio.gather(*(verify_at(js_desk, JS, qr) for qr in qrs))
        await asyncio.sleep(0.02)
        await replicas[1].stop(grace=1.0)
        answers = await load
        assert [a.verdict for a in answers] == [identity_pb2.VALID] * len(qrs)
        # The drained replica told the asker, which wrote nothing more on that
        # stream; the stream ended with OK once its answers were written.
        # What was queued for it went to the twin at once: at most a retry or
        # two, of a call that met the replica in its last moments.
        assert client.retries - retries <= 2
        assert to_twin.draining
        assert to_twin.ended is not None
        assert to_twin.ended.code == grpc.StatusCode.OK
        # Later exchanges go to the replica that serves.
        for _ in range(5):
            answer = await verify_at(js_desk, JS, await wallet.fresh_qr(SH))
            assert answer.verdict == identity_pb2.VALID

    async def test_federation_stream_false_goes_unary(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        province = federation.provinces[SH]
        province.config = province.config.model_copy(
            update={"node": province.config.node.model_copy(update={"federation_stream": False})}
        )
        await federation.stop_node(SH)
        sh = await federation.start_node(SH)
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert response.verdict == identity_pb2.VALID
        assert sh.federation_client.stream_link(ZJ) is None
        assert batches(federation.node(ZJ), SH, "in") == (0.0, 0.0)

    async def test_a_peer_without_stream_is_called_unary(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """A node serving only Exchange (Zhejiang's servicer behind a server
        without Stream) answers UNIMPLEMENTED; the exchange goes unary at once."""
        zj = federation.node(ZJ)
        assert zj.federation_server is not None
        exchange = grpc.unary_unary_rpc_method_handler(
            zj.federation_server.exchange_bytes,
            request_deserializer=None,
            response_serializer=federation_pb2.SignedEnvelope.SerializeToString,
        )
        async with fake_zhejiang(federation, {"Exchange": exchange}) as client:
            request = await credential_check(wallet, relying_party_id="no-such-hotel")
            signed = True
            try:
                await client.call(
                    ZJ,
                    "identity.CheckCredential",
                    request,
                    federation_pb2.CredentialCheckResponse,
                    correlation_id=str(uuid.uuid4()),
                    timeout=5,
                )
            except RemoteError as exc:
                signed = exc.signed
            assert signed  # a signed answer came back, over Exchange
            tried = client.stream_link(ZJ)
            assert tried is not None
            assert isinstance(tried.ended, StreamUnimplemented)

    async def test_a_peer_answering_garbage_frames_is_a_fault(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """A peer whose Stream answers bytes that are no StreamFrame: the link
        ends naming it, the exchange fails as a fault (retried until its
        deadline), and the asking node's reader does not die on it."""

        async def garbage(requests: AsyncIterator[bytes], _: object) -> AsyncIterator[bytes]:
            async for _frame in requests:
                yield b"\xff\xff\xff not a frame"

        stream = grpc.stream_stream_rpc_method_handler(
            garbage, request_deserializer=None, response_serializer=None
        )
        async with fake_zhejiang(federation, {"Stream": stream}) as client:
            with pytest.raises(PeerUnavailable):
                await client.call(
                    ZJ,
                    "identity.CheckCredential",
                    await credential_check(wallet),
                    federation_pb2.CredentialCheckResponse,
                    correlation_id=str(uuid.uuid4()),
                    timeout=2,
                )
            tried = client.stream_link(ZJ)
            assert tried is not None
            assert isinstance(tried.ended, StreamBroken)
            assert tried.ended.code == grpc.StatusCode.INTERNAL
            assert "not a yrd.federation.v1.StreamFrame" in tried.ended.details


@asynccontextmanager
async def fake_zhejiang(
    federation: LocalFederation, methods: dict[str, grpc.RpcMethodHandler]
) -> AsyncIterator[FederationClient]:
    """A server with Zhejiang's TLS identity serving only ``methods`` of the
    federation service, and a federation client of Shanghai's pointed at it."""
    sh, zj = federation.node(SH), federation.node(ZJ)
    assert sh.tls is not None
    assert zj.tls is not None
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, methods),))
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, zj.tls.mutual_server_credentials())
    await server.start()
    tls = sh.tls
    client = FederationClient(
        sh.config,
        sh.signer,
        sh.verifier,
        sh.message_log,
        channel_factory=lambda _: balanced_aio_channel(
            (address,), tls.channel_credentials(), options=CHANNEL_OPTIONS
        ),
    )
    try:
        yield client
    finally:
        await client.close()
        await server.stop(0)


async def credential_check(wallet: Wallet, **fields: str) -> federation_pb2.CredentialCheckRequest:
    """A check of a real Zhejiang credential for a hotel check-in (a new token id)."""
    resident = await wallet.credential(ZJ)
    return federation_pb2.CredentialCheckRequest(
        token_id=str(uuid.uuid4()),
        credential_id=resident["credential_id"],
        purpose=identity_pb2.HOTEL_CHECK_IN,
        **fields,
    )


def sealed_check(
    node: Node, credential_id: str, *, batched: bool = False
) -> federation_pb2.SignedEnvelope:
    """A hotel check-in's credential check from ``node`` to Zhejiang (a new token
    id), sealed with the node's real key; ``batched``: left for sign_batch."""
    return node.signer.seal(
        receiver=ZJ,
        service="identity.CheckCredential",
        payload=federation_pb2.CredentialCheckRequest(
            token_id=str(uuid.uuid4()),
            credential_id=credential_id,
            purpose=identity_pb2.HOTEL_CHECK_IN,
        ),
        correlation_id=str(uuid.uuid4()),
        batched=batched,
    )


async def stream_status(
    federation: LocalFederation, frames: list[bytes]
) -> tuple[grpc.StatusCode, str, list[federation_pb2.StreamFrame]]:
    """Open a Stream to Zhejiang with Shanghai's certificate and send ``frames``:
    the stream's status and details, and every frame it answered."""
    channel = mtls(federation)
    try:
        call = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)

        async def requests() -> AsyncIterator[bytes]:
            for frame in frames:
                yield frame

        answers: list[federation_pb2.StreamFrame] = []
        try:
            async for raw in call(requests(), timeout=10):
                answers.append(federation_pb2.StreamFrame.FromString(raw))
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", answers
        return grpc.StatusCode.OK, "", answers
    finally:
        await channel.close()


class TestBadFrames:
    async def test_garbage_and_oversized_frames_name_the_field(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        code, details, _ = await stream_status(federation, [b"\xff\xff\xff garbage"])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamFrame" in details
        assert "expected" in details

        too_many = federation_pb2.StreamFrame(
            requests=[federation_pb2.StreamRequest(timeout_ms=1000)] * 1025
        )
        code, details, _ = await stream_status(federation, [too_many.SerializeToString()])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamFrame.requests" in details
        assert "1024" in details

        # The node keeps serving.
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert response.verdict == identity_pb2.VALID

    @pytest.mark.parametrize("timeout_ms", [0, 300_001])
    async def test_bad_timeout_is_refused_naming_the_field(
        self, federation: LocalFederation, timeout_ms: int
    ) -> None:
        envelope = federation_pb2.SignedEnvelope(header=b"\x0a\x01x", payload=b"")
        frame = federation_pb2.StreamFrame(
            requests=[federation_pb2.StreamRequest(envelope=envelope, timeout_ms=timeout_ms)]
        )
        code, _, answers = await stream_status(federation, [frame.SerializeToString()])
        assert code == grpc.StatusCode.OK  # the stream ends cleanly when the asker is done
        refusals = [r for a in answers for r in a.refusals]
        assert len(refusals) == 1
        assert refusals[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "StreamRequest.timeout_ms" in refusals[0].message
        assert len(refusals[0].request_digest) == 32

    async def test_a_province_past_its_open_streams_is_refused_and_the_node_serves_on(
        self, federation: LocalFederation, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Streams of one province beyond STREAMS_PER_PEER (3 here) end at once
        RESOURCE_EXHAUSTED; those within it are served, and once they close the
        province's own node opens a stream again."""
        monkeypatch.setattr(federation_server, "STREAMS_PER_PEER", 3)
        zj = federation.node(ZJ)
        already = int(streams(zj, SH, "in"))  # Shanghai's node may hold one from earlier
        assert already < 3
        hold = asyncio.Event()

        async def silent() -> AsyncIterator[bytes]:
            await hold.wait()
            return
            yield b""  # an async generator that sends nothing

        channel = mtls(federation)
        try:
            open_stream = channel.stream_stream(
                STREAM, request_serializer=None, response_deserializer=None
            )
            with capture_logs() as logs:
                calls = [open_stream(silent(), timeout=60) for _ in range(5)]
                ends = [asyncio.ensure_future(call.code()) for call in calls]
                refused = 5 - (3 - already)
                for _ in range(200):  # 10 s at most
                    if sum(end.done() for end in ends) >= refused and streams(zj, SH, "in") == 3:
                        break
                    await asyncio.sleep(0.05)
            # One line for the window, however many were refused in it.
            lines = [e for e in logs if e["event"] == "streams refused: too many open"]
            assert [(e["peer"], e["refused"]) for e in lines] == [(SH, 1)]
            assert [end.result() for end in ends if end.done()] == (
                [grpc.StatusCode.RESOURCE_EXHAUSTED] * refused
            )
            assert streams(zj, SH, "in") == 3
            details = [await c.details() for c, end in zip(calls, ends, strict=True) if end.done()]
            assert all("at most 3 streams of one province" in d for d in details)
            labels = {"origin": SH, "reason": "too_many_streams"}
            assert zj.metrics.registry.get_sample_value("yrd_refusals_total", labels) == refused
            hold.set()
            assert set(await asyncio.gather(*ends)) == {
                grpc.StatusCode.OK,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            }
        finally:
            hold.set()
            await channel.close()
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert response.verdict == identity_pb2.VALID

    async def test_streams_of_one_province_share_its_in_flight_bound(
        self, federation: LocalFederation, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PEER_IN_FLIGHT (1 here) bounds the requests handled at once over all
        of a province's streams, and a stream that ends under its requests gives
        its share back (else, at 1, the last verification would never be handled)."""
        monkeypatch.setattr(federation_server, "PEER_IN_FLIGHT", 1)
        zj = federation.node(ZJ)
        handlers = zj.federation_server._handlers
        check = handlers["identity.CheckCredential"]
        running, most = 0, 0

        async def slow_check(opened: Any, timeout: float) -> Any:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await asyncio.sleep(0.3)
                return await check(opened, timeout)
            finally:
                running -= 1

        monkeypatch.setitem(handlers, "identity.CheckCredential", slow_check)

        def frame() -> bytes:
            envelope = sealed_check(federation.node(SH), "no-such-credential")
            return federation_pb2.StreamFrame(
                requests=[federation_pb2.StreamRequest(envelope=envelope, timeout_ms=10_000)]
            ).SerializeToString()

        channel = mtls(federation)
        try:
            open_stream = channel.stream_stream(
                STREAM, request_serializer=None, response_deserializer=None
            )

            async def one_frame(data: bytes) -> AsyncIterator[bytes]:
                yield data

            async def raw_stream() -> list[bytes]:
                return [raw async for raw in open_stream(one_frame(frame()), timeout=30)]

            answers, verified = await asyncio.gather(
                raw_stream(), verify(federation, SH, await wallet.fresh_qr(ZJ))
            )
            assert len(answers) == 1
            assert verified.verdict == identity_pb2.VALID
            assert most == 1  # two streams of Shanghai, one request handled at a time

            # A stream cut while its request is handled gives its slot back.
            cut = open_stream(one_frame(frame()), timeout=30)
            for _ in range(100):
                if running:
                    break
                await asyncio.sleep(0.02)
            cut.cancel()
        finally:
            await channel.close()
        verified = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert verified.verdict == identity_pb2.VALID

    async def test_envelope_of_another_province_than_the_certificate_is_refused(
        self, federation: LocalFederation
    ) -> None:
        """Jiangsu's signer, Shanghai's certificate: refused per envelope."""
        js = federation.node(JS)
        envelope = js.signer.seal(
            receiver=ZJ,
            service="identity.CheckCredential",
            payload=federation_pb2.CredentialCheckRequest(token_id="t", credential_id="c"),
            correlation_id=str(uuid.uuid4()),
        )
        frame = federation_pb2.StreamFrame(
            requests=[federation_pb2.StreamRequest(envelope=envelope, timeout_ms=5000)]
        )
        code, _, answers = await stream_status(federation, [frame.SerializeToString()])
        assert code == grpc.StatusCode.OK
        refusals = [r for a in answers for r in a.refusals]
        assert [r.code for r in refusals] == [grpc.StatusCode.PERMISSION_DENIED.value[0]]
        assert "certificate" in refusals[0].message


def signed_batch(node: Node, count: int) -> list[federation_pb2.SignedEnvelope]:
    """``count`` credential checks from ``node`` to Zhejiang, signed as one batch
    with the node's real key, as its stream would send them."""
    envelopes = [sealed_check(node, "EID-TAMPER-0001", batched=True) for _ in range(count)]
    node.signer.sign_batch(envelopes, receiver=ZJ)
    return envelopes


def _set(field: str, value: Any) -> Any:
    return lambda e, _: setattr(e.batch.root, field, value)


#: A tampering of the first envelope of a batch of four (the envelope, another
#: batch of the same sender), and the field its refusal names first.
TAMPERINGS: dict[str, tuple[Any, str]] = {
    "leaf index of another leaf": (
        lambda e, _: setattr(e.batch, "leaf_index", 1),
        "batch.audit_path: expected a path",
    ),
    "leaf index past the tree": (
        lambda e, _: setattr(e.batch, "leaf_index", 2**32 - 1),
        "batch.leaf_index: expected below root.tree_size",
    ),
    "a sibling hash replaced": (
        lambda e, _: e.batch.audit_path.__setitem__(0, b"\x00" * 32),
        "batch.audit_path: expected a path",
    ),
    "a sibling hash of 31 bytes": (
        lambda e, _: e.batch.audit_path.__setitem__(0, b"\x00" * 31),
        "batch.audit_path: expected entries of 32 bytes",
    ),
    "a path longer than any tree": (
        lambda e, _: e.batch.audit_path.extend([b"\x00" * 32] * 12),
        "batch.audit_path: expected at most 10 entries",
    ),
    "tree size 0": (_set("tree_size", 0), "batch.root.tree_size: expected 1..1024"),
    "another root": (_set("root", b"\x07" * 32), "batch.audit_path: expected a path"),
    "another root signature": (
        _set("signature", b"\x07" * 64),
        "batch.root.signature: does not verify",
    ),
    "another batch id": (
        _set("batch_id", str(uuid.uuid4())),
        "batch.root.signature: does not verify",
    ),
    "a root of another sender": (
        _set("sender", JS),
        "batch.root.sender: expected the header's sender",
    ),
    "a root for another receiver": (
        _set("receiver", "340000"),
        "batch.root.receiver: expected the header's receiver",
    ),
    "a root naming another key": (
        _set("key_id", "310000-sig-1999"),
        "batch.root.key_id: expected the header's key_id",
    ),
    "no root": (lambda e, _: e.batch.ClearField("root"), "batch.root: expected"),
    "a signature as well as a proof": (
        lambda e, _: setattr(e, "signature", b"\x07" * 64),
        "signature, batch: expected exactly one of them",
    ),
    "the proof of another batch": (
        lambda e, other: e.batch.CopyFrom(other[0].batch),
        "batch.audit_path: expected a path",
    ),
}

#: Codes no input from a peer may get: they would say the node itself failed.
NODE_FAULTS = {grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]}


class TestTamperedBatches:
    """A peer holding Shanghai's real key and certificate sends batches signed
    as its stream would, each with one envelope's proof or root tampered."""

    async def test_each_tampering_is_refused_naming_the_field_and_the_rest_answered(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        sh = federation.node(SH)
        for name, (tamper, field) in TAMPERINGS.items():
            envelopes = signed_batch(sh, 4)
            tamper(envelopes[0], signed_batch(sh, 2))
            frame = federation_pb2.StreamFrame(
                requests=[
                    federation_pb2.StreamRequest(envelope=e, timeout_ms=5000) for e in envelopes
                ]
            )
            code, details, answers = await stream_status(federation, [frame.SerializeToString()])
            assert code == grpc.StatusCode.OK, (name, details)
            refusals = [r for a in answers for r in a.refusals]
            responses = [
                federation_pb2.EnvelopeHeader.FromString(r.header)
                for a in answers
                for r in a.responses
            ]
            assert [r.message[: len(field)] for r in refusals] == [field], name
            assert refusals[0].code not in NODE_FAULTS, name
            assert len(responses) == 3, name  # the untouched three, each answered
            assert not {h.status_code for h in responses} & NODE_FAULTS, name

        # The node serves on.
        verified = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert verified.verdict == identity_pb2.VALID

    async def test_bit_flips_of_a_signed_frame_never_fault_the_node(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """Random bits of a whole signed frame flipped: whatever each frame gets
        (a bare INVALID_ARGUMENT for a frame that does not parse, a refusal or a
        signed answer per envelope), it is never the node's own fault."""
        rng = random.Random(16)
        sh = federation.node(SH)
        for _ in range(60):
            frame = bytearray(
                federation_pb2.StreamFrame(
                    requests=[
                        federation_pb2.StreamRequest(envelope=e, timeout_ms=5000)
                        for e in signed_batch(sh, rng.choice((1, 3, 5)))
                    ]
                ).SerializeToString()
            )
            for _ in range(rng.randint(1, 4)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            code, details, answers = await stream_status(federation, [bytes(frame)])
            assert code.value[0] not in NODE_FAULTS, details
            assert not {r.code for a in answers for r in a.refusals} & NODE_FAULTS
            codes = {
                federation_pb2.EnvelopeHeader.FromString(r.header).status_code
                for a in answers
                for r in a.responses
            }
            assert not codes & NODE_FAULTS

        verified = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert verified.verdict == identity_pb2.VALID
