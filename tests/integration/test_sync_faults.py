"""Say what happened, at once: a synchronous exchange is retried only on transport
failures, never on an answer the peer signed, and always leaves a fifth of the
caller's deadline for the verdict."""

from __future__ import annotations

import time

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, ZJ, Wallet
from tests.integration.test_identity_exchange import check, verify
from yrd.identity.v1 import identity_pb2


class TestIssuerFaults:
    """The hotel gets ISSUER_UNREACHABLE with the cause, never DEADLINE_EXCEEDED."""

    async def test_issuer_backend_down_is_said_at_once(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """The issuing node answers (signed) that its e-ID authority is unreachable:
        no federation retry, the verdict in well under a second of a 3 s deadline."""
        qr = await wallet.fresh_qr(ZJ)
        await federation.provinces[ZJ].simulator.stop()
        retries = federation.node(SH).federation_client.retries
        started = time.monotonic()
        response = await verify(federation, SH, qr, timeout=3.0)
        elapsed = time.monotonic() - started
        assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
        assert check(response, "status") == identity_pb2.INDETERMINATE
        detail = next(c.detail for c in response.checks if c.name == "status")
        assert "e-ID authority of 330000" in detail, detail
        assert federation.node(SH).federation_client.retries == retries  # a signed answer
        assert elapsed < 1.0, elapsed

    async def test_issuer_node_stopped_leaves_a_fifth_of_the_deadline(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """Transport failures are retried, but never into the last fifth of the
        caller's deadline: the verdict comes with at least 0.6 s of 3 s to spare."""
        qr = await wallet.fresh_qr(ZJ)
        await federation.stop_node(ZJ)
        for _ in range(3):  # the first call meets a closed breaker, the later an open one
            started = time.monotonic()
            response = await verify(federation, SH, qr, timeout=3.0)
            elapsed = time.monotonic() - started
            assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
            assert 3.0 - elapsed >= 0.6, elapsed
