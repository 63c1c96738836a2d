"""Inter-provincial service case: a Jiangsu office submits a pension-certification
case handled in Zhejiang, with its material, and follows it to the end.

Run it from the repository root while the federation runs (`.venv/bin/yrd-gateway up`
or `make federation`, in another terminal):

    .venv/bin/python examples/service_case.py

It takes a Jiangsu resident from the Jiangsu e-ID simulator as the applicant, submits
the case with one PDF material (its SHA-256 digest, and here its content) to the
Jiangsu node (SubmitCase: answered CASE_QUEUED at once), then polls GetCase until the
case is CASE_COMPLETED or CASE_REFUSED. Exit 0 when it is completed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import grpc

from gateway.core.channels import balanced_channel, split_endpoints
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.common.v1 import common_pb2

FINAL = (case_pb2.CASE_COMPLETED, case_pb2.CASE_REFUSED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gateway",
        "--node",
        dest="gateways",
        action="append",
        metavar="HOST:PORT",
        help="the office's node (Jiangsu), default 127.0.0.1:7320; repeat it or give a comma list "
        "to reach any of several replicas",
    )
    parser.add_argument("--ca", default="province_configs/federation-ca/ca.crt.pem", help="CA file")
    parser.add_argument("--token", default="dev-office-320000", help="the office's bearer token")
    parser.add_argument("--handling-province", default="330000", help="where it is handled")
    parser.add_argument(
        "--eid-url", default="http://127.0.0.1:8320", help="the applicant's e-ID authority"
    )
    args = parser.parse_args()

    with urllib.request.urlopen(f"{args.eid_url}/residents", timeout=5) as answer:
        resident = json.load(answer)[0]
    material = b"%PDF-1.7 pension entitlement certification form"

    metadata = (("authorization", f"Bearer {args.token}"),)
    with open(args.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read())
    gateways = split_endpoints(args.gateways or ["127.0.0.1:7320"])
    with balanced_channel(gateways, credentials) as channel:
        cases = case_pb2_grpc.CaseServiceStub(channel)
        case = cases.SubmitCase(
            case_pb2.SubmitCaseRequest(
                application=case_pb2.CaseApplication(
                    idempotency_key=f"example-case-{uuid.uuid4()}",  # one case per key
                    service_code="KS0101",  # pension entitlement certification
                    applicant=common_pb2.Party(
                        person=common_pb2.Person(
                            id_number=resident["id_number"], full_name=resident["full_name"]
                        )
                    ),
                    handling_province=args.handling_province,
                    description="pension entitlement certification",
                    materials=[
                        common_pb2.AttachmentRef(
                            name="form.pdf",
                            media_type="application/pdf",
                            size_bytes=len(material),
                            sha256=hashlib.sha256(material).digest(),
                            content=material,  # optional: the digest alone also works
                        )
                    ],
                )
            ),
            metadata=metadata,
            timeout=5.0,
        )
        status = case_pb2.CaseStatus.Name(case.status)
        print(f"case {case.case_id}: {status}")
        deadline = time.monotonic() + 60
        while case.status not in FINAL:
            if time.monotonic() > deadline:
                print("no final status within 60 s")
                return 1
            time.sleep(0.2)
            case = cases.GetCase(
                case_pb2.GetCaseRequest(case_id=case.case_id), metadata=metadata, timeout=5.0
            )
            if case_pb2.CaseStatus.Name(case.status) != status:
                status = case_pb2.CaseStatus.Name(case.status)
                print(f"case {case.case_id}: {status} {case.status_reason}".rstrip())
    return 0 if case.status == case_pb2.CASE_COMPLETED else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except urllib.error.URLError as exc:
        sys.exit(f"cannot reach a simulated back-end ({exc.reason}); is `make federation` running?")
    except grpc.RpcError as exc:  # the call's status: code and message
        sys.exit(f"the node answered {exc.code().name}: {exc.details()}")
