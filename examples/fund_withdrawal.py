"""Provident-fund withdrawal: a Shanghai service centre withdraws a resident's fund
held in Jiangsu, and follows the case until it is paid.

Run it from the repository root while the federation runs (`.venv/bin/yrd-gateway up`
or `make federation`, in another terminal):

    .venv/bin/python examples/fund_withdrawal.py

It picks a Jiangsu fund account held by a Shanghai resident from the Jiangsu fund
centre simulator (and the holder's name from the Shanghai e-ID simulator), reads the
balance through the Shanghai node (QueryFundAccount), submits a withdrawal
(SubmitWithdrawal: answered QUEUED at once), then polls GetWithdrawal until the case
is PAID or REJECTED. Exit 0 when it is PAID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import grpc

from gateway.core.channels import balanced_channel, split_endpoints
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

# A bank card number with a valid Luhn check digit (the node checks it).
PAYEE_ACCOUNT = "6222020200112233446"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gateway",
        "--node",
        dest="gateways",
        action="append",
        metavar="HOST:PORT",
        help="the service centre's node, default 127.0.0.1:7310; repeat it or give a comma list "
        "to reach any of several replicas",
    )
    parser.add_argument("--ca", default="province_configs/federation-ca/ca.crt.pem", help="CA file")
    parser.add_argument("--token", default="dev-office-310000", help="the centre's bearer token")
    parser.add_argument("--fund-province", default="320000", help="where the fund is held")
    parser.add_argument(
        "--fund-url", default="http://127.0.0.1:8321", help="that province's fund centre"
    )
    parser.add_argument(
        "--eid-url", default="http://127.0.0.1:8310", help="the applicant's e-ID authority"
    )
    parser.add_argument("--amount-fen", type=int, default=20_000_00, help="default 20000 yuan")
    args = parser.parse_args()

    # The simulators' data: a normal account held by a resident of the node's province.
    residents = {r["id_number"]: r["full_name"] for r in get_json(f"{args.eid_url}/residents")}
    holder = next(
        a
        for a in get_json(f"{args.fund_url}/admin/accounts")
        if a["status"] == "NORMAL" and a["id_number"] in residents
    )
    applicant = common_pb2.Person(
        id_number=holder["id_number"], full_name=residents[holder["id_number"]]
    )

    metadata = (("authorization", f"Bearer {args.token}"),)
    with open(args.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read())
    gateways = split_endpoints(args.gateways or ["127.0.0.1:7310"])
    with balanced_channel(gateways, credentials) as channel:
        counter = fund_pb2_grpc.FundServiceStub(channel)
        account = counter.QueryFundAccount(
            fund_pb2.QueryFundAccountRequest(
                id_number=applicant.id_number, fund_province=args.fund_province
            ),
            metadata=metadata,
            timeout=5.0,
        )
        print(
            f"fund account {account.fund_account} in {account.fund_province}: "
            f"balance {account.balance_fen / 100:.2f} yuan"
        )
        case = counter.SubmitWithdrawal(
            fund_pb2.SubmitWithdrawalRequest(
                application=fund_pb2.WithdrawalApplication(
                    # One case per key: submitting again with the same key and body
                    # returns the same case, so a retry after a timeout is safe.
                    idempotency_key=f"example-{uuid.uuid4()}",
                    applicant=applicant,
                    fund_province=args.fund_province,
                    fund_account=account.fund_account,
                    reason=fund_pb2.HOUSE_PURCHASE,
                    amount_fen=min(args.amount_fen, account.balance_fen),  # integer fen
                    payee_account=PAYEE_ACCOUNT,
                    payee_bank="Bank of Shanghai",
                    supporting_certificates=["real-estate contract 2026-SH-000123"],
                )
            ),
            metadata=metadata,
            timeout=5.0,
        )
        status = fund_pb2.WithdrawalStatus.Name(case.status)
        print(f"case {case.case_id}: {status}")
        deadline = time.monotonic() + 60
        while case.status not in (fund_pb2.PAID, fund_pb2.REJECTED):
            if time.monotonic() > deadline:
                print("no final status within 60 s")
                return 1
            time.sleep(0.2)
            case = counter.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case.case_id),
                metadata=metadata,
                timeout=5.0,
            )
            if fund_pb2.WithdrawalStatus.Name(case.status) != status:
                status = fund_pb2.WithdrawalStatus.Name(case.status)
                print(f"case {case.case_id}: {status} {case.status_reason}".rstrip())
        print(f"paid: {case.paid_amount_fen / 100:.2f} yuan")
    return 0 if case.status == fund_pb2.PAID else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except urllib.error.URLError as exc:
        sys.exit(f"cannot reach a simulated back-end ({exc.reason}); is `make federation` running?")
    except grpc.RpcError as exc:  # the call's status: code and message
        sys.exit(f"the node answered {exc.code().name}: {exc.details()}")
