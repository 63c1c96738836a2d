"""Provident fund: withdrawal from a fund held in another province (DESIGN §2),
and the account query.

A withdrawal is a tracked exchange (:mod:`gateway.services.tracked`):
``QUEUED → DELIVERED → UNDER_REVIEW → APPROVED → PAID``, or ``REJECTED`` with a
reason; the fund province's centre reviews and pays it, exactly once per
application, whatever retries and restarts happen in between.
"""

from __future__ import annotations

from typing import Any

import grpc

from adapters.base import FundCentre
from adapters.errors import (
    BackendRejected,
    BackendUnavailable,
    TranslationError,
    WithdrawalNotFound,
)
from gateway.core.errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PeerUnavailable,
)
from gateway.core.identifiers import (
    validate_bank_account,
    validate_fund_account,
    validate_id_number,
    validate_idempotency_key,
    validate_region_code,
    validate_text,
)
from gateway.services.backendcalls import backend_call
from gateway.services.calls import current_correlation_id
from gateway.services.tracked import DEFAULT_TIMEOUT, Flow, TrackedExchange
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

QUERY = "fund.QueryAccount"
S = fund_pb2.WithdrawalStatus
MAX_SUPPORTING = 20


def validate_application(
    app: fund_pb2.WithdrawalApplication, *, prefix: str = "application."
) -> None:
    """Every field check of a withdrawal application (both nodes run it)."""
    validate_idempotency_key(prefix + "idempotency_key", app.idempotency_key)
    validate_id_number(prefix + "applicant.id_number", app.applicant.id_number)
    validate_text(
        prefix + "applicant.full_name", app.applicant.full_name, "the applicant's name", 64
    )
    validate_region_code(prefix + "fund_province", app.fund_province)
    validate_fund_account(prefix + "fund_account", app.fund_account)
    if app.reason not in fund_pb2.WithdrawalReason.values() or app.reason == 0:
        names = [
            n
            for n in fund_pb2.WithdrawalReason.DESCRIPTOR.values_by_name
            if n != "WITHDRAWAL_REASON_UNSPECIFIED"
        ]
        raise InvalidArgument(prefix + "reason", f"one of {', '.join(names)}")
    if app.amount_fen <= 0:
        raise InvalidArgument(
            prefix + "amount_fen", "a positive whole number of fen (1 yuan = 100 fen)"
        )
    if app.amount_fen > 10**12:
        raise InvalidArgument(prefix + "amount_fen", "at most 10^12 fen")
    validate_bank_account(prefix + "payee_account", app.payee_account)
    validate_text(prefix + "payee_bank", app.payee_bank, "the payee's bank name", 100)
    if len(app.supporting_certificates) > MAX_SUPPORTING:
        raise InvalidArgument(
            prefix + "supporting_certificates", f"at most {MAX_SUPPORTING} references"
        )
    for i, reference in enumerate(app.supporting_certificates):
        validate_text(
            f"{prefix}supporting_certificates[{i}]", reference, "a certificate reference", 128
        )


def _normalise(app: fund_pb2.WithdrawalApplication) -> None:
    app.applicant.id_number = app.applicant.id_number.strip().upper()


async def _submit(
    centre: FundCentre, reference: str, app: fund_pb2.WithdrawalApplication, timeout: float
) -> fund_pb2.WithdrawalStatusUpdate:
    return await centre.submit_withdrawal(reference, app, timeout=timeout)


async def _status(
    centre: FundCentre, reference: str, timeout: float
) -> fund_pb2.WithdrawalStatusUpdate:
    return await centre.withdrawal_status(reference, timeout=timeout)


#: A withdrawal: its fund centre, application, status update and public record.
Withdrawals = Flow[
    FundCentre,
    fund_pb2.WithdrawalApplication,
    fund_pb2.WithdrawalStatusUpdate,
    fund_pb2.Withdrawal,
]

WITHDRAWAL: Withdrawals = Flow(
    domain="withdrawal",
    case_prefix="WD",
    reference_prefix="FW",
    deliver_service="fund.DeliverWithdrawal",
    status_service="fund.WithdrawalStatus",
    application_type=fund_pb2.WithdrawalApplication,
    update_type=fund_pb2.WithdrawalStatusUpdate,
    public_type=fund_pb2.Withdrawal,
    queued=S.QUEUED,
    delivered=S.DELIVERED,
    rejected=S.REJECTED,
    progression=(S.UNDER_REVIEW, S.APPROVED, S.PAID),
    status_name=lambda status: S.Name(status),  # type: ignore[arg-type]
    origin_field="applicant_province",
    target_field="fund_province",
    validate=validate_application,
    normalise=_normalise,
    backend_name="fund_centre",
    backend_submit=_submit,
    backend_status=_status,
    backend_not_found=WithdrawalNotFound,
    amount_field="paid_amount_fen",
    moves_money=True,
    applied_amount_field="amount_fen",
)


class FundExchange(
    TrackedExchange[
        FundCentre,
        fund_pb2.WithdrawalApplication,
        fund_pb2.WithdrawalStatusUpdate,
        fund_pb2.Withdrawal,
    ]
):
    """Withdrawals (a tracked flow) and the synchronous account query."""

    async def query_account(
        self, request: fund_pb2.QueryFundAccountRequest, correlation_id: str, timeout: float
    ) -> fund_pb2.FundAccount:
        request = fund_pb2.QueryFundAccountRequest(
            id_number=validate_id_number("id_number", request.id_number),
            fund_province=request.fund_province,
        )
        validate_region_code("fund_province", request.fund_province)
        federation = self._config.federation
        if request.fund_province == federation.own:
            return await self.local_account(request, timeout)
        federation.require_peer("fund_province", request.fund_province, QUERY)
        account, _ = await self._client.call(
            request.fund_province,
            QUERY,
            request,
            fund_pb2.FundAccount,
            correlation_id=correlation_id,
            timeout=timeout,
        )
        return account

    async def local_account(
        self, request: fund_pb2.QueryFundAccountRequest, timeout: float
    ) -> fund_pb2.FundAccount:
        if self.backend is None:
            raise FailedPrecondition(f"node {self.own} has no fund centre configured")
        try:
            async with backend_call(self.metrics, self.flow.backend_name):
                account = await self.backend.query_account(request.id_number, timeout=timeout)
        except BackendUnavailable as exc:
            raise PeerUnavailable(f"fund centre of {self.own}: {exc}") from exc
        except (BackendRejected, TranslationError) as exc:
            raise GatewayError(f"fund centre of {self.own} answered unexpectedly: {exc}") from exc
        if account is None:
            raise NotFound(f"id_number: no provident-fund account at {self.own} for this person")
        account.fund_province = self.own
        return account

    async def handle_query(self, opened: Any, timeout: float) -> fund_pb2.FundAccount:
        request = opened.parse(fund_pb2.QueryFundAccountRequest)
        validate_id_number("id_number", request.id_number)
        if request.fund_province != self.own:
            raise InvalidArgument("fund_province", f"{self.own}, the receiving province")
        return await self.local_account(request, timeout)

    def handlers(self) -> dict[str, Any]:
        return {**super().handlers(), QUERY: self.handle_query}


class FundServicer(fund_pb2_grpc.FundServiceServicer):
    def __init__(self, exchange: FundExchange) -> None:
        self._exchange = exchange

    async def SubmitWithdrawal(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.SubmitWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.Withdrawal:
        application = request.application if request.HasField("application") else None
        return await self._exchange.submit_call(application, "a WithdrawalApplication")

    async def GetWithdrawal(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.GetWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.Withdrawal:
        return await self._exchange.get_call(request.case_id)

    async def QueryFundAccount(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.QueryFundAccountRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.FundAccount:
        remaining = context.time_remaining()
        return await self._exchange.query_account(
            request,
            current_correlation_id.get(),
            DEFAULT_TIMEOUT if remaining is None else remaining,
        )
