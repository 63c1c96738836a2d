"""``yrd-gateway demo``: the local federation playing the exchanges end to end.

Four nodes and four e-ID authority simulators start on loopback ports; a hotel
front desk (a gRPC client with its bearer token) plays each scenario through
the public API exactly as a property-management system would. The demo prints
a table and exits non-zero if any scenario gives another outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from stdnum import luhn

from gateway.core import crypto, logs
from gateway.core.eid_token import issue_token
from gateway.core.identifiers import PROVINCES
from gateway.testing.localfed import LocalFederation, province_configs_dir
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.residents import synthetic_residents

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
HOTEL_DEADLINE = 3.0


@dataclass
class Outcome:
    scenario: str
    expected: str
    got: str
    detail: str
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.expected == self.got


class FrontDesk:
    """A hotel's property-management system talking to its own province's node."""

    def __init__(self, federation: LocalFederation, province: str) -> None:
        self.province = province
        self.stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(province))
        self.metadata = (("authorization", f"Bearer dev-hotel-{province}"),)
        self.client_id = f"hotel-{province}-001"

    async def verify(
        self,
        qr: str,
        *,
        purpose: identity_pb2.Purpose.ValueType = identity_pb2.HOTEL_CHECK_IN,
        timeout: float = HOTEL_DEADLINE,
    ) -> identity_pb2.VerifyIdentityResponse:
        response: identity_pb2.VerifyIdentityResponse = await self.stub.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=qr,
                relying_party_id=self.client_id,
                purpose=purpose,
                client_reference="room-1208",
            ),
            metadata=self.metadata,
            timeout=timeout,
        )
        return response


class Phone:
    """A resident's e-ID wallet: asks its own authority for a fresh QR token."""

    def __init__(self, session: aiohttp.ClientSession, federation: LocalFederation) -> None:
        self.session = session
        self.federation = federation

    async def residents(self, province: str) -> list[dict[str, Any]]:
        url = self.federation.provinces[province].simulator.url + "/residents"
        async with self.session.get(url) as response:
            response.raise_for_status()
            result: list[dict[str, Any]] = await response.json()
            return result

    async def resident(self, province: str, state: str = "CREDENTIAL_ACTIVE") -> str:
        for resident in await self.residents(province):
            if resident["state"] == state:
                return str(resident["credential_id"])
        raise LookupError(f"no {state} resident in {province}")

    async def qr(self, province: str, credential_id: str, **extra: Any) -> str:
        url = self.federation.provinces[province].simulator.url + "/wallet/qr"
        async with self.session.post(url, json={"credential_id": credential_id, **extra}) as r:
            r.raise_for_status()
            return str((await r.json())["qr_payload"])


def flip_one_byte(qr: str) -> str:
    """Change one character in the middle of the signature part."""
    head, claims, signature = qr.split(".")
    i = len(signature) // 2
    replacement = "A" if signature[i] != "A" else "B"
    return ".".join([head, claims, signature[:i] + replacement + signature[i + 1 :]])


def foreign_token() -> str:
    """A well-formed token from Beijing (110000), which is not in the trust store."""
    return issue_token(
        crypto.generate_private_key(),
        key_id="110000-eid-2026",
        issuer="110000",
        credential_id="EID110000000001",
        token_id=str(uuid.uuid4()),
        issued_at=datetime.now(UTC),
    )


async def run_scenarios(
    federation: LocalFederation, session: aiohttp.ClientSession
) -> list[Outcome]:
    phone = Phone(session, federation)
    outcomes: list[Outcome] = []

    async def play(
        name: str, expected: str, action: Callable[[], Awaitable[tuple[str, str]]]
    ) -> None:
        started = time.monotonic()
        try:
            got, detail = await action()
        except grpc.aio.AioRpcError as error:
            got, detail = error.code().name, error.details() or ""
        outcomes.append(Outcome(name, expected, got, detail, (time.monotonic() - started) * 1000))

    def summary(response: identity_pb2.VerifyIdentityResponse) -> tuple[str, str]:
        verdict = identity_pb2.Verdict.Name(response.verdict)
        if response.verdict == identity_pb2.VALID:
            return verdict, "disclosed: " + ", ".join(response.disclosed_attributes)
        failed = [
            c
            for c in response.checks
            if c.outcome in (identity_pb2.FAILED, identity_pb2.INDETERMINATE)
        ]
        return verdict, (f"{failed[0].name}: {failed[0].detail}" if failed else "")

    shanghai = FrontDesk(federation, SH)
    zj_resident = await phone.resident(ZJ)
    first_qr = await phone.qr(ZJ, zj_resident)

    async def valid() -> tuple[str, str]:
        response = await shanghai.verify(first_qr)
        verdict, detail = summary(response)
        expected = {"id_number", "full_name", "gender", "ethnicity", "photo"}
        if (
            response.verdict == identity_pb2.VALID
            and set(response.disclosed_attributes) != expected
        ):
            return "OVER_DISCLOSED", detail
        if response.verdict == identity_pb2.VALID and response.attributes.birth_date:
            return "OVER_DISCLOSED", "birth_date was disclosed"
        return verdict, detail + f"; check-in {response.check_in_id}"

    await play("Zhejiang resident checks into a Shanghai hotel", "VALID", valid)
    await play("the same QR shown again", "REPLAYED", lambda: _verdict(shanghai, first_qr, summary))

    async def forged() -> tuple[str, str]:
        simulator = federation.provinces[ZJ].simulator
        rows_before = await federation.node(SH).message_log.count()
        served_before = simulator.requests_served
        verdict, detail = await _verdict(
            shanghai, flip_one_byte(await phone.qr(ZJ, zj_resident)), summary
        )
        rows_after = await federation.node(SH).message_log.count()
        if rows_after != rows_before or simulator.requests_served != served_before + 1:
            return "FEDERATION_CALL_MADE", detail
        return verdict, detail + "; no federation call"

    await play("a QR with one byte changed", "FORGED", forged)

    async def expired() -> tuple[str, str]:
        issued = int(time.time()) - 600
        qr = await phone.qr(ZJ, zj_resident, issued_at=issued, ttl_seconds=120)
        return await _verdict(shanghai, qr, summary)

    await play("an expired QR", "EXPIRED", expired)

    async def revoked() -> tuple[str, str]:
        qr = await phone.qr(ZJ, await phone.resident(ZJ, "CREDENTIAL_REVOKED"))
        return await _verdict(shanghai, qr, summary)

    await play("a revoked credential", "REVOKED", revoked)
    await play(
        "a token from a province not in the trust store",
        "UNKNOWN_ISSUER",
        lambda: _verdict(shanghai, foreign_token(), summary),
    )

    async def over_asking() -> tuple[str, str]:
        qr = await phone.qr(ZJ, zj_resident)
        await shanghai.stub.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=qr,
                relying_party_id=shanghai.client_id,
                purpose=identity_pb2.HOTEL_CHECK_IN,
                requested_attributes=["birth_date"],
            ),
            metadata=shanghai.metadata,
            timeout=HOTEL_DEADLINE,
        )
        return "OK", "not refused"

    await play("the hotel asks for more than check-in allows", "PERMISSION_DENIED", over_asking)

    for hotel in PROVINCES:
        for issuer in PROVINCES:
            if hotel == issuer:
                continue
            desk = FrontDesk(federation, hotel)

            async def pair(desk: FrontDesk = desk, issuer: str = issuer) -> tuple[str, str]:
                qr = await phone.qr(issuer, await phone.resident(issuer))
                return await _verdict(desk, qr, summary)

            await play(
                f"{PROVINCES[issuer]} resident at a hotel in {PROVINCES[hotel]}", "VALID", pair
            )

    await play_fund(federation, play)
    await play_certificates_and_cases(federation, play)

    async def unreachable() -> tuple[str, str]:
        qr = await phone.qr(ZJ, zj_resident)
        await federation.stop_node(ZJ)
        started = time.monotonic()
        verdict, detail = await _verdict(shanghai, qr, summary)
        elapsed = time.monotonic() - started
        if elapsed > HOTEL_DEADLINE:
            return "DEADLINE_MISSED", f"answered after {elapsed:.2f} s"
        return verdict, detail + f"; answered in {elapsed:.2f} s of {HOTEL_DEADLINE:.0f} s"

    await play("the issuing node (Zhejiang) is stopped", "ISSUER_UNREACHABLE", unreachable)
    return outcomes


OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
S = fund_pb2.WithdrawalStatus


def _payee_account() -> str:
    body = "622202020011223344"
    return body + luhn.calc_check_digit(body)


async def play_fund(
    federation: LocalFederation,
    play: Callable[[str, str, Callable[[], Awaitable[tuple[str, str]]]], Awaitable[None]],
) -> None:
    """Withdrawals by a Shanghai service centre from funds held in Jiangsu."""
    counter = fund_pb2_grpc.FundServiceStub(federation.channel(SH))
    centre = federation.provinces[JS].fund_centre
    holders = iter(
        (number, account)
        for number, account in sorted(centre.accounts.items())
        if account.id_number.startswith("31") and str(account.status).endswith("NORMAL")
    )
    names = {r.id_number: r.full_name for r in synthetic_residents(SH)}

    def application(amount_fen: int | None = None) -> fund_pb2.WithdrawalApplication:
        number, account = next(holders)
        return fund_pb2.WithdrawalApplication(
            idempotency_key=f"demo-{uuid.uuid4().hex}",
            applicant=common_pb2.Person(
                id_number=account.id_number, full_name=names[account.id_number]
            ),
            fund_province=JS,
            fund_account=number,
            reason=fund_pb2.HOUSE_PURCHASE,
            amount_fen=amount_fen if amount_fen is not None else 20_000_00,
            payee_account=_payee_account(),
            payee_bank="Bank of Shanghai",
            supporting_certificates=["real-estate contract 2026-SH-000123"],
        )

    async def submit(app: fund_pb2.WithdrawalApplication) -> fund_pb2.Withdrawal:
        answer: fund_pb2.Withdrawal = await counter.SubmitWithdrawal(
            fund_pb2.SubmitWithdrawalRequest(application=app), metadata=OFFICE, timeout=5
        )
        return answer

    async def final(case_id: str, seconds: float = 30) -> fund_pb2.Withdrawal:
        deadline = time.monotonic() + seconds
        while True:
            case: fund_pb2.Withdrawal = await counter.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=5
            )
            if case.status in (S.PAID, S.REJECTED) or time.monotonic() > deadline:
                return case
            await asyncio.sleep(0.05)

    def payments(account: str) -> int:
        return sum(1 for p in centre.payments if p[1] == account)

    async def house_purchase() -> tuple[str, str]:
        app = application()
        case = await final((await submit(app)).case_id)
        return S.Name(case.status), (
            f"case {case.case_id}: {app.amount_fen / 100:.2f} yuan paid "
            f"{payments(app.fund_account)} time(s)"
        )

    await play("Shanghai resident withdraws Jiangsu fund for a house", "PAID", house_purchase)

    async def twice() -> tuple[str, str]:
        app = application(5_000_00)
        first, second = await submit(app), await submit(app)
        case = await final(first.case_id)
        count = payments(app.fund_account)
        got = "ONE_CASE_ONE_PAYMENT" if first.case_id == second.case_id and count == 1 else "TWICE"
        return got, f"case {case.case_id} {S.Name(case.status)}, {count} payment(s)"

    await play("the same withdrawal submitted twice", "ONE_CASE_ONE_PAYMENT", twice)

    async def too_much() -> tuple[str, str]:
        app = application(10**11)
        case = await final((await submit(app)).case_id)
        return S.Name(case.status), case.status_reason

    await play("a withdrawal of more than the balance", "REJECTED", too_much)

    async def outage() -> tuple[str, str]:
        await federation.stop_node(JS)
        case = await submit(application(1_000_00))
        queued = S.Name(case.status)
        await asyncio.sleep(0.5)
        await federation.start_node(JS)
        done = await final(case.case_id)
        return (
            f"{queued}->{S.Name(done.status)}",
            "accepted while Jiangsu was down, delivered when it returned",
        )

    await play("Jiangsu node stopped during a withdrawal", "QUEUED->PAID", outage)


async def play_certificates_and_cases(
    federation: LocalFederation,
    play: Callable[[str, str, Callable[[], Awaitable[tuple[str, str]]]], Awaitable[None]],
) -> None:
    """A Shanghai window fetches an Anhui marriage certificate; a Jiangsu system
    submits a case handled in Zhejiang."""
    library = federation.provinces[AH].certificate_library
    assert library is not None
    bad = {c.licence_id for c in library.forged} | {c.licence_id for c in library.expired}
    marriage = next(
        c for c in library.certificates if c.category_code == "11100000" and c.licence_id not in bad
    )
    holder = marriage.holder.person.id_number
    window = certificate_pb2_grpc.CertificateServiceStub(federation.channel(SH))

    async def fetch(cert: certificate_pb2.Certificate, consent: str) -> tuple[str, str]:
        answer = await window.GetCertificate(
            certificate_pb2.GetCertificateRequest(
                category_code=cert.category_code,
                holder_id=cert.holder.person.id_number,
                issuer_province=AH,
                certificate_number=cert.certificate_number,
                consent_reference=consent,
                purpose="MARRIAGE_REGISTRATION",
            ),
            metadata=OFFICE,
            timeout=5,
        )
        return certificate_pb2.SealVerdict.Name(answer.seal_verdict), (
            f"licence {answer.certificate.licence_id[:30]}..., Shanghai category code "
            f"{answer.local_category_code}"
        )

    def consent(person: str) -> str:
        expires = datetime.now(UTC) + timedelta(days=30)
        return str(library.add_consent(person, SH, expires, "婚姻登记"))

    await play(
        "Anhui marriage certificate fetched in Shanghai",
        "SEAL_VALID",
        lambda: fetch(marriage, consent(holder)),
    )
    forged = library.forged[0]
    await play(
        "a certificate with a forged e-stamp",
        "SEAL_FORGED",
        lambda: fetch(forged, consent(forged.holder.person.id_number)),
    )
    await play(
        "a certificate without the holder's consent",
        "PERMISSION_DENIED",
        lambda: fetch(marriage, "CONSENT-340000-9999"),
    )

    cases = case_pb2_grpc.CaseServiceStub(federation.channel(JS))
    jiangsu_office = (("authorization", f"Bearer dev-office-{JS}"),)
    resident = synthetic_residents(JS)[2]
    material = b"%PDF-1.7 pension entitlement certification form"

    async def case_round_trip() -> tuple[str, str]:
        case = await cases.SubmitCase(
            case_pb2.SubmitCaseRequest(
                application=case_pb2.CaseApplication(
                    idempotency_key=f"demo-case-{uuid.uuid4().hex}",
                    service_code="KS0101",
                    applicant=common_pb2.Party(
                        person=common_pb2.Person(
                            id_number=resident.id_number, full_name=resident.full_name
                        )
                    ),
                    handling_province=ZJ,
                    description="pension entitlement certification",
                    materials=[
                        common_pb2.AttachmentRef(
                            name="form.pdf",
                            media_type="application/pdf",
                            size_bytes=len(material),
                            sha256=hashlib.sha256(material).digest(),
                            content=material,
                        )
                    ],
                )
            ),
            metadata=jiangsu_office,
            timeout=5,
        )
        trail = [case_pb2.CaseStatus.Name(case.status)]
        deadline = time.monotonic() + 30
        while case.status not in (case_pb2.CASE_COMPLETED, case_pb2.CASE_REFUSED) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
            case = await cases.GetCase(
                case_pb2.GetCaseRequest(case_id=case.case_id), metadata=jiangsu_office, timeout=5
            )
            name = case_pb2.CaseStatus.Name(case.status)
            if name != trail[-1]:
                trail.append(name)
        return trail[-1], " -> ".join(t.removeprefix("CASE_") for t in trail)

    await play("Jiangsu case handled in Zhejiang", "CASE_COMPLETED", case_round_trip)


async def _verdict(
    desk: FrontDesk,
    qr: str,
    summary: Callable[[identity_pb2.VerifyIdentityResponse], tuple[str, str]],
) -> tuple[str, str]:
    return summary(await desk.verify(qr))


def render(outcomes: list[Outcome]) -> str:
    out = io.StringIO()
    widths = (
        max(len(o.scenario) for o in outcomes),
        max(18, *(len(o.expected) for o in outcomes)),
        max(18, *(len(o.got) for o in outcomes)),
    )
    header = (
        f"{'scenario':<{widths[0]}}  {'expected':<{widths[1]}}  {'got':<{widths[2]}}  {'ms':>6}  ok"
    )
    out.write(header + "\n" + "-" * len(header) + "\n")
    for o in outcomes:
        out.write(
            f"{o.scenario:<{widths[0]}}  {o.expected:<{widths[1]}}  {o.got:<{widths[2]}}  "
            f"{o.elapsed_ms:6.1f}  {'yes' if o.ok else 'NO'}\n"
        )
        if o.detail:
            out.write(f"{'':<{widths[0]}}    {o.detail[:110]}\n")
    passed = sum(o.ok for o in outcomes)
    out.write(f"\n{passed} of {len(outcomes)} scenarios gave the expected outcome\n")
    return out.getvalue()


async def run_demo(config_dir: Path | None = None, *, log_file: Path | None = None) -> int:
    """Play every scenario; print the table; return the process exit code."""
    config_dir = config_dir or province_configs_dir()
    with tempfile.TemporaryDirectory(prefix="yrd-demo-") as tmp:
        log_path = log_file or Path(tmp) / "nodes.log"
        with log_path.open("w", encoding="utf-8") as log_stream:
            logs.configure(os.environ.get("YRD_LOG_LEVEL", "INFO"), log_stream)
            async with (
                LocalFederation(config_dir, Path(tmp), console=True) as federation,
                aiohttp.ClientSession() as session,
            ):
                print(
                    f"YRD Gateway demo: {len(federation.provinces)} nodes and e-ID authority "
                    "simulators on loopback"
                )
                for code, province in sorted(federation.provinces.items()):
                    print(
                        f"  {code} {province.config.province.name:<9} node "
                        f"{province.config.node.endpoint}  e-ID authority "
                        f"{province.simulator.url}"
                    )
                    console = federation.node(code).console
                    if console is not None:
                        print(f"         web console {console.url} (while the demo runs)")
                print()
                outcomes = await run_scenarios(federation, session)
        print(render(outcomes))
        if log_file:
            print(f"node logs (JSON lines): {log_file}")
    return 0 if all(o.ok for o in outcomes) else 1


def main(config_dir: Path | None = None, log_file: Path | None = None) -> int:
    return asyncio.run(run_demo(config_dir, log_file=log_file))
