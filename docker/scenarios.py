#!/usr/bin/env python3
"""Play the demo's scenarios against the running container federation.

    docker compose -f docker/compose.yaml up -d --wait
    .venv/bin/python docker/scenarios.py              # identity and fund scenarios
    .venv/bin/python docker/scenarios.py --outages    # also stops/starts node containers

``yrd-gateway demo`` starts its own federation in one process; this script
instead calls the nodes of ``docker/compose.yaml`` from the host, as a hotel
front desk and a provincial service centre would: over TLS to a node's
published client endpoint, with the federation CA as trust anchor and the
development bearer tokens (``dev-hotel-<code>``, ``dev-office-<code>``). QR
codes come from the simulated e-ID authorities' wallet endpoint, accounts and
payments from the simulated fund centres' admin endpoints (both published on
the host too). Ports are read from the province configs (``--configs``): the
compose file publishes each node and simulator on the port its config names.

``--outages`` also stops the Zhejiang node (a check-in answers
``ISSUER_UNREACHABLE`` within the hotel's 3 s deadline) and the Jiangsu node
(a withdrawal is ``QUEUED``, then ``PAID`` once the node is back), with
``--stop-cmd`` / ``--start-cmd`` (``docker compose ... stop/start node-{name}``).

Needs the project's environment (grpcio and the generated ``yrd`` stubs):
run it with ``.venv/bin/python`` from the repository root. Exit 0 when every
scenario gives the expected outcome.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stdnum import luhn

from gateway.tools.demo import Outcome, flip_one_byte, foreign_token, render
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
HOTEL_DEADLINE = 3.0
HOTEL_ATTRIBUTES = {"id_number", "full_name", "gender", "ethnicity", "photo"}
S = fund_pb2.WithdrawalStatus


@dataclass(frozen=True)
class Province:
    code: str
    name: str
    slug: str
    endpoint: str
    eid_url: str
    fund_url: str | None


def _port(value: str) -> str:
    return value.rsplit(":", 1)[1].split("/", 1)[0]


def load_provinces(folder: Path, host: str) -> dict[str, Province]:
    provinces = {}
    for path in sorted(folder.glob("*/province.toml")):
        config = tomllib.loads(path.read_text(encoding="utf-8"))
        code = config["province"]["code"]
        fund = config.get("fund", {}).get("centre_url")
        provinces[code] = Province(
            code=code,
            name=config["province"]["name"],
            slug=config["province"]["name"].lower(),
            endpoint=f"{host}:{_port(config['node']['endpoint'])}",
            eid_url=f"http://{host}:{_port(config['eid']['authority_url'])}",
            fund_url=f"http://{host}:{_port(fund)}" if fund else None,
        )
    return provinces


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - http URLs built from the configs
        url, data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


class Federation:
    """The running nodes, seen from the host."""

    def __init__(self, provinces: dict[str, Province], ca: bytes) -> None:
        self.provinces = provinces
        self.credentials = grpc.ssl_channel_credentials(ca)
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, code: str) -> grpc.Channel:
        if code not in self._channels:
            self._channels[code] = grpc.secure_channel(
                self.provinces[code].endpoint, self.credentials
            )
        return self._channels[code]

    def reset(self, code: str) -> None:
        channel = self._channels.pop(code, None)
        if channel is not None:
            channel.close()

    def serving(self, code: str) -> bool:
        try:
            answer = health_pb2_grpc.HealthStub(self.channel(code)).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_serving(self, code: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not self.serving(code):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {code} not SERVING after {seconds:.0f} s")
            time.sleep(0.5)

    # -- a resident's phone: its own authority's wallet --------------------
    def resident(self, code: str, state: str = "CREDENTIAL_ACTIVE") -> str:
        for resident in http_json(self.provinces[code].eid_url + "/residents"):
            if resident["state"] == state:
                return str(resident["credential_id"])
        raise LookupError(f"no {state} resident in {code}")

    def qr(self, code: str, credential_id: str, **extra: Any) -> str:
        url = self.provinces[code].eid_url + "/wallet/qr"
        return str(http_json(url, {"credential_id": credential_id, **extra})["qr_payload"])

    # -- a hotel's front desk ----------------------------------------------
    def verify(
        self, hotel: str, qr: str, requested: tuple[str, ...] = ()
    ) -> identity_pb2.VerifyIdentityResponse:
        stub = identity_pb2_grpc.IdentityServiceStub(self.channel(hotel))
        response: identity_pb2.VerifyIdentityResponse = stub.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=qr,
                relying_party_id=f"hotel-{hotel}-001",
                purpose=identity_pb2.HOTEL_CHECK_IN,
                client_reference="room-1208",
                requested_attributes=list(requested),
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{hotel}"),),
            timeout=HOTEL_DEADLINE,
        )
        return response


def summary(response: identity_pb2.VerifyIdentityResponse) -> tuple[str, str]:
    verdict = identity_pb2.Verdict.Name(response.verdict)
    if response.verdict == identity_pb2.VALID:
        if set(response.disclosed_attributes) != HOTEL_ATTRIBUTES:
            return "OVER_DISCLOSED", ", ".join(response.disclosed_attributes)
        return verdict, f"disclosed {', '.join(response.disclosed_attributes)}"
    failed = [
        c for c in response.checks if c.outcome in (identity_pb2.FAILED, identity_pb2.INDETERMINATE)
    ]
    return verdict, (f"{failed[0].name}: {failed[0].detail}" if failed else "")


Play = Callable[[str, str, Callable[[], tuple[str, str]]], None]


def identity_scenarios(fed: Federation, play: Play) -> None:
    resident = fed.resident(ZJ)
    first = fed.qr(ZJ, resident)
    play(
        "Zhejiang resident checks into a Shanghai hotel",
        "VALID",
        lambda: summary(fed.verify(SH, first)),
    )
    play("the same QR shown again", "REPLAYED", lambda: summary(fed.verify(SH, first)))
    play(
        "a QR with one byte changed",
        "FORGED",
        lambda: summary(fed.verify(SH, flip_one_byte(fed.qr(ZJ, resident)))),
    )
    play(
        "an expired QR",
        "EXPIRED",
        lambda: summary(
            fed.verify(SH, fed.qr(ZJ, resident, issued_at=int(time.time()) - 600, ttl_seconds=120))
        ),
    )
    play(
        "a revoked credential",
        "REVOKED",
        lambda: summary(fed.verify(SH, fed.qr(ZJ, fed.resident(ZJ, "CREDENTIAL_REVOKED")))),
    )
    play(
        "a token from a province not in the trust store",
        "UNKNOWN_ISSUER",
        lambda: summary(fed.verify(SH, foreign_token())),
    )

    def over_asking() -> tuple[str, str]:
        fed.verify(SH, fed.qr(ZJ, resident), requested=("birth_date",))
        return "OK", "not refused"

    play("the hotel asks for more than check-in allows", "PERMISSION_DENIED", over_asking)

    def pair(hotel: str, issuer: str) -> Callable[[], tuple[str, str]]:
        return lambda: summary(fed.verify(hotel, fed.qr(issuer, fed.resident(issuer))))

    for hotel, hotel_province in fed.provinces.items():
        for issuer, issuer_province in fed.provinces.items():
            if hotel != issuer:
                name = f"{issuer_province.name} resident at a hotel in {hotel_province.name}"
                play(name, "VALID", pair(hotel, issuer))


#: Above this, an amount is meant to exceed every balance (the REJECTED scenario).
MORE_THAN_ANY_BALANCE = 10**10


def pick_account(
    accounts: list[dict[str, Any]], names: dict[str, str], used: set[str], amount_fen: int
) -> dict[str, Any] | None:
    """The first account (by number) of a resident in ``names`` that is NORMAL,
    not ``used`` by this run yet, and whose balance covers ``amount_fen`` (any
    balance for an amount meant to exceed it). Accounts paid from before stay
    eligible: a run tells its own payments apart by the case's reference, so
    the same stack can be played again and again, until the balances run low."""
    for account in sorted(accounts, key=lambda a: str(a["account"])):
        if (
            account["id_number"] in names
            and str(account["status"]).endswith("NORMAL")
            and account["account"] not in used
            and (amount_fen > MORE_THAN_ANY_BALANCE or account["balance_fen"] >= amount_fen)
        ):
            return account
    return None


def payments_for(payments: list[dict[str, Any]], reference: str) -> int:
    """How many of the centre's payments were made for the case ``reference``."""
    return sum(1 for p in payments if reference and p["reference"] == reference)


class ServiceCentre:
    """Shanghai's government service centre withdrawing funds held in Jiangsu."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.centre = fed.provinces[JS].fund_url or ""
        self.metadata = (("authorization", f"Bearer dev-office-{SH}"),)
        self.names = {
            r["id_number"]: r["full_name"]
            for r in http_json(fed.provinces[SH].eid_url + "/residents")
        }
        self.used: set[str] = set()

    @property
    def stub(self) -> fund_pb2_grpc.FundServiceStub:
        return fund_pb2_grpc.FundServiceStub(self.fed.channel(SH))

    def payments(self, case: fund_pb2.Withdrawal) -> int:
        """Payments the centre made for this case (its reference at the centre)."""
        return payments_for(http_json(self.centre + "/admin/payments"), case.remote_reference)

    def application(self, amount_fen: int) -> fund_pb2.WithdrawalApplication:
        """For a Shanghai resident with a normal Jiangsu account that covers the amount."""
        account = pick_account(
            http_json(self.centre + "/admin/accounts"), self.names, self.used, amount_fen
        )
        if account is None:
            raise LookupError(
                "no Shanghai-held account in the Jiangsu fund centre covers "
                f"{amount_fen / 100:.2f} yuan"
            )
        self.used.add(account["account"])
        body = "622202020011223344"
        return fund_pb2.WithdrawalApplication(
            idempotency_key=f"docker-{uuid.uuid4().hex}",
            applicant=common_pb2.Person(
                id_number=account["id_number"], full_name=self.names[account["id_number"]]
            ),
            fund_province=JS,
            fund_account=account["account"],
            reason=fund_pb2.HOUSE_PURCHASE,
            amount_fen=amount_fen,
            payee_account=body + luhn.calc_check_digit(body),
            payee_bank="Bank of Shanghai",
            supporting_certificates=["real-estate contract 2026-SH-000123"],
        )

    def submit(self, application: fund_pb2.WithdrawalApplication) -> fund_pb2.Withdrawal:
        answer: fund_pb2.Withdrawal = self.stub.SubmitWithdrawal(
            fund_pb2.SubmitWithdrawalRequest(application=application),
            metadata=self.metadata,
            timeout=5,
        )
        return answer

    def final(self, case_id: str, seconds: float = 60) -> fund_pb2.Withdrawal:
        deadline = time.monotonic() + seconds
        while True:
            case: fund_pb2.Withdrawal = self.stub.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=self.metadata, timeout=5
            )
            if case.status in (S.PAID, S.REJECTED) or time.monotonic() > deadline:
                return case
            time.sleep(0.1)


def fund_scenarios(fed: Federation, play: Play) -> ServiceCentre:
    office = ServiceCentre(fed)

    def house_purchase() -> tuple[str, str]:
        app = office.application(20_000_00)
        case = office.final(office.submit(app).case_id)
        return S.Name(case.status), (
            f"case {case.case_id}: {app.amount_fen / 100:.2f} yuan paid "
            f"{office.payments(case)} time(s)"
        )

    def twice() -> tuple[str, str]:
        app = office.application(5_000_00)
        first, second = office.submit(app), office.submit(app)
        case = office.final(first.case_id)
        count = office.payments(case)
        one = first.case_id == second.case_id and count == 1
        return ("ONE_CASE_ONE_PAYMENT" if one else "TWICE"), (
            f"case {case.case_id} {S.Name(case.status)}, {count} payment(s)"
        )

    def too_much() -> tuple[str, str]:
        too_much = office.application(MORE_THAN_ANY_BALANCE * 10)
        case = office.final(office.submit(too_much).case_id)
        return S.Name(case.status), case.status_reason

    play("Shanghai resident withdraws Jiangsu fund for a house", "PAID", house_purchase)
    play("the same withdrawal submitted twice", "ONE_CASE_ONE_PAYMENT", twice)
    play("a withdrawal of more than the balance", "REJECTED", too_much)
    return office


def outage_scenarios(
    fed: Federation, office: ServiceCentre, play: Play, stop_cmd: str, start_cmd: str
) -> None:
    def run(template: str, code: str) -> None:
        command = template.format(name=fed.provinces[code].slug, code=code)
        subprocess.run(shlex.split(command), check=True, stdout=subprocess.DEVNULL)  # noqa: S603

    def unreachable() -> tuple[str, str]:
        qr = fed.qr(ZJ, fed.resident(ZJ))
        run(stop_cmd, ZJ)
        try:
            started = time.monotonic()
            verdict, detail = summary(fed.verify(SH, qr))
            elapsed = time.monotonic() - started
        finally:
            run(start_cmd, ZJ)
            fed.reset(ZJ)
            fed.wait_serving(ZJ)
        if elapsed > HOTEL_DEADLINE:
            return "DEADLINE_MISSED", f"answered after {elapsed:.2f} s"
        return verdict, f"{detail}; answered in {elapsed:.2f} s of {HOTEL_DEADLINE:.0f} s"

    def queued() -> tuple[str, str]:
        run(stop_cmd, JS)
        try:
            case = office.submit(office.application(1_000_00))
            queued = S.Name(case.status)
            time.sleep(1.0)
        finally:
            run(start_cmd, JS)
            fed.reset(JS)
            fed.wait_serving(JS)
        done = office.final(case.case_id, seconds=90)
        return f"{queued}->{S.Name(done.status)}", "accepted while Jiangsu was down"

    play("the issuing node (Zhejiang) is stopped", "ISSUER_UNREACHABLE", unreachable)
    play("Jiangsu node stopped during a withdrawal", "QUEUED->PAID", queued)


def main(argv: list[str] | None = None) -> int:
    compose = "docker compose -f docker/compose.yaml"
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="where the ports are published")
    parser.add_argument("--configs", type=Path, default=Path("province_configs"))
    parser.add_argument(
        "--ca", type=Path, default=Path("province_configs/federation-ca/ca.crt.pem")
    )
    parser.add_argument("--outages", action="store_true", help="also stop and start nodes")
    parser.add_argument("--stop-cmd", default=f"{compose} stop node-{{name}}")
    parser.add_argument("--start-cmd", default=f"{compose} start node-{{name}}")
    args = parser.parse_args(argv)

    fed = Federation(load_provinces(args.configs, args.host), args.ca.read_bytes())
    for code, province in sorted(fed.provinces.items()):
        state = "SERVING" if fed.serving(code) else "NOT SERVING"
        print(
            f"  {code} {province.name:<9} node {province.endpoint} {state}; "
            f"e-ID authority {province.eid_url}"
        )
    print()
    outcomes = play_scenarios(
        fed, outages=args.outages, stop_cmd=args.stop_cmd, start_cmd=args.start_cmd
    )
    print(render(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def play_scenarios(
    fed: Federation, *, outages: bool = False, stop_cmd: str = "", start_cmd: str = ""
) -> list[Outcome]:
    """Play every scenario once against ``fed``; their outcomes."""
    outcomes: list[Outcome] = []

    def play(name: str, expected: str, action: Callable[[], tuple[str, str]]) -> None:
        started = time.monotonic()
        try:
            got, detail = action()
        except grpc.RpcError as error:
            got, detail = error.code().name, error.details() or ""
        except (OSError, LookupError, subprocess.CalledProcessError) as error:
            got, detail = "ERROR", str(error)
        outcomes.append(Outcome(name, expected, got, detail, (time.monotonic() - started) * 1000))

    identity_scenarios(fed, play)
    office = fund_scenarios(fed, play)
    if outages:
        outage_scenarios(fed, office, play, stop_cmd, start_cmd)
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
