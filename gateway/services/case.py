"""Inter-provincial service cases ("handled in another province", DESIGN §2).

A case is a tracked exchange (:mod:`gateway.services.tracked`):
``CASE_QUEUED → CASE_DELIVERED → CASE_ACCEPTED → CASE_IN_PROGRESS →
CASE_COMPLETED``, or ``CASE_REFUSED`` with a reason. Materials travel by digest
(and optionally with their content); both nodes check them against the limits
of :mod:`adapters.case` — at most 20 materials, each at most 20 MiB declared, a
PDF/OFD/JPEG/PNG media type, a 32-byte SHA-256, content (when sent) matching
its declared size and digest, at most 4 MiB of content per case — so a
material altered on the way is refused on arrival.
"""

from __future__ import annotations

import grpc

from adapters.base import CaseSystem
from adapters.case import check_application
from adapters.errors import CaseNotFound, TranslationError
from gateway.core.errors import InvalidArgument
from gateway.core.identifiers import validate_idempotency_key, validate_region_code
from gateway.services.tracked import Flow, TrackedExchange
from yrd.case.v1 import case_pb2, case_pb2_grpc

C = case_pb2.CaseStatus


def validate_case(app: case_pb2.CaseApplication, *, prefix: str = "application.") -> None:
    validate_idempotency_key(prefix + "idempotency_key", app.idempotency_key)
    validate_region_code(prefix + "handling_province", app.handling_province)
    try:
        check_application(app)
    except TranslationError as exc:
        raise InvalidArgument(prefix + exc.path, exc.expected) from exc


def _normalise(app: case_pb2.CaseApplication) -> None:
    if app.applicant.WhichOneof("party") == "person":
        app.applicant.person.id_number = app.applicant.person.id_number.strip().upper()
    elif app.applicant.WhichOneof("party") == "organisation":
        app.applicant.organisation.credit_code = (
            app.applicant.organisation.credit_code.strip().upper()
        )


async def _submit(
    system: CaseSystem, reference: str, app: case_pb2.CaseApplication, timeout: float
) -> case_pb2.CaseStatusUpdate:
    return await system.submit_case(reference, app, timeout=timeout)


async def _status(system: CaseSystem, reference: str, timeout: float) -> case_pb2.CaseStatusUpdate:
    return await system.case_status(reference, timeout=timeout)


#: A service case: its case system, application, status update and public record.
ServiceCases = Flow[CaseSystem, case_pb2.CaseApplication, case_pb2.CaseStatusUpdate, case_pb2.Case]

SERVICE_CASE: ServiceCases = Flow(
    domain="case",
    case_prefix="CS",
    reference_prefix="HC",
    deliver_service="case.DeliverCase",
    status_service="case.CaseStatus",
    application_type=case_pb2.CaseApplication,
    update_type=case_pb2.CaseStatusUpdate,
    public_type=case_pb2.Case,
    queued=C.CASE_QUEUED,
    delivered=C.CASE_DELIVERED,
    rejected=C.CASE_REFUSED,
    progression=(C.CASE_ACCEPTED, C.CASE_IN_PROGRESS, C.CASE_COMPLETED),
    status_name=lambda status: C.Name(status),  # type: ignore[arg-type]
    origin_field="submitting_province",
    target_field="handling_province",
    validate=validate_case,
    normalise=_normalise,
    backend_name="case_system",
    backend_submit=_submit,
    backend_status=_status,
    backend_not_found=CaseNotFound,
)


#: Service cases, both halves.
CaseExchange = TrackedExchange[
    CaseSystem, case_pb2.CaseApplication, case_pb2.CaseStatusUpdate, case_pb2.Case
]


class CaseServicer(case_pb2_grpc.CaseServiceServicer):
    def __init__(self, exchange: CaseExchange) -> None:
        self._exchange = exchange

    async def SubmitCase(  # noqa: N802 - gRPC method name
        self, request: case_pb2.SubmitCaseRequest, context: grpc.aio.ServicerContext
    ) -> case_pb2.Case:
        application = request.application if request.HasField("application") else None
        return await self._exchange.submit_call(application, "a CaseApplication")

    async def GetCase(  # noqa: N802 - gRPC method name
        self, request: case_pb2.GetCaseRequest, context: grpc.aio.ServicerContext
    ) -> case_pb2.Case:
        return await self._exchange.get_call(request.case_id)
