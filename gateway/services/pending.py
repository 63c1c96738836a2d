"""Public services whose contract is designed but whose exchange is not built yet.

Each RPC answers UNIMPLEMENTED with a message saying what is missing, rather than
the generated servicer's bare "Method not implemented!".
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from gateway.errors import Unimplemented
from yrd.case.v1 import case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2_grpc
from yrd.fund.v1 import fund_pb2_grpc


def _pending(rpc: str, what: str) -> NoReturn:
    raise Unimplemented(f"{rpc} is part of the v1 contract but not yet served by this node: {what}")


class PendingFundServicer(fund_pb2_grpc.FundServiceServicer):
    async def QueryFundAccount(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("QueryFundAccount", "the provident-fund exchange is being built")

    async def SubmitWithdrawal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("SubmitWithdrawal", "the provident-fund exchange is being built")

    async def GetWithdrawal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("GetWithdrawal", "the provident-fund exchange is being built")


class PendingCertificateServicer(certificate_pb2_grpc.CertificateServiceServicer):
    async def GetCertificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("GetCertificate", "the e-certificate exchange is being built")


class PendingCaseServicer(case_pb2_grpc.CaseServiceServicer):
    async def SubmitCase(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("SubmitCase", "the inter-provincial case exchange is being built")

    async def GetCase(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _pending("GetCase", "the inter-provincial case exchange is being built")
