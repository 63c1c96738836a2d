"""Hotel check-in: a Shanghai hotel verifies a Zhejiang resident's e-ID QR code.

Run it from the repository root while the federation runs (`.venv/bin/yrd-gateway up`
or `make federation`, in another terminal):

    .venv/bin/python examples/hotel_checkin.py

It takes a fresh QR code from the Zhejiang e-ID simulator (its wallet endpoint, as
the resident's phone would), asks the Shanghai node to verify it (VerifyIdentity),
then reads the guest registration the node recorded (GetCheckIn). Pass --qr to
verify a QR code you got yourself. Exit 0 when the verdict is VALID.

A call that gets no answer (the node's replica died, the deadline passed) is
tried again, as a front desk would, with the same idempotency key: if the first
try was verified after all, the second gets the same verdict and the same
check-in, not REPLAYED.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import grpc

from gateway.core.channels import balanced_channel, split_endpoints
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc


def fresh_qr(eid_url: str) -> str:
    """A new QR code for the first active resident of an e-ID authority simulator."""
    with urllib.request.urlopen(f"{eid_url}/residents", timeout=5) as answer:
        residents = json.load(answer)
    resident = next(r for r in residents if r["state"] == "CREDENTIAL_ACTIVE")
    request = urllib.request.Request(
        f"{eid_url}/wallet/qr",
        data=json.dumps({"credential_id": resident["credential_id"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        qr: str = json.load(answer)["qr_payload"]
    return qr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gateway",
        "--node",
        dest="gateways",
        action="append",
        metavar="HOST:PORT",
        help="the hotel's node (Shanghai), default 127.0.0.1:7310; repeat it or give a comma list "
        "to reach any of several replicas",
    )
    parser.add_argument("--ca", default="province_configs/federation-ca/ca.crt.pem", help="CA file")
    parser.add_argument("--token", default="dev-hotel-310000", help="the hotel's bearer token")
    parser.add_argument("--client-id", default="hotel-310000-001", help="the hotel's client id")
    parser.add_argument(
        "--eid-url", default="http://127.0.0.1:8330", help="the issuing province's e-ID authority"
    )
    parser.add_argument("--qr", help="a QR payload to verify (default: a fresh one)")
    args = parser.parse_args()

    qr = args.qr or fresh_qr(args.eid_url)
    metadata = (("authorization", f"Bearer {args.token}"),)
    with open(args.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read())
    gateways = split_endpoints(args.gateways or ["127.0.0.1:7310"])
    with balanced_channel(gateways, credentials) as channel:
        desk = identity_pb2_grpc.IdentityServiceStub(channel)
        request = identity_pb2.VerifyIdentityRequest(
            qr_payload=qr,
            relying_party_id=args.client_id,
            purpose=identity_pb2.HOTEL_CHECK_IN,
            client_reference="room 1208",
            idempotency_key=f"checkin-{uuid.uuid4()}",  # one key per check-in, kept on retries
        )
        for attempt in range(1, 4):
            try:
                answer = desk.VerifyIdentity(
                    request,
                    metadata=metadata,
                    timeout=3.0,  # every call has a deadline; the hotel waits at most 3 s
                )
                break
            except grpc.RpcError as exc:
                no_answer = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if exc.code() not in no_answer or attempt == 3:
                    raise
                print(f"no answer ({exc.code().name}); trying again with the same key")
                time.sleep(0.5 * attempt)
        verdict = identity_pb2.Verdict.Name(answer.verdict)
        print(f"verdict: {verdict} (issuer {answer.issuer_province})")
        for check in answer.checks:
            outcome = identity_pb2.CheckOutcome.Name(check.outcome)
            print(f"  {check.name}: {outcome} {check.detail}")
        print(f"disclosed: {', '.join(answer.disclosed_attributes)}")
        if answer.verdict != identity_pb2.VALID:
            return 1
        check_in = desk.GetCheckIn(
            identity_pb2.GetCheckInRequest(check_in_id=answer.check_in_id),
            metadata=metadata,
            timeout=3.0,
        )
        print(
            f"check-in {check_in.check_in_id}: guest {check_in.guest.full_name}, "
            f"{check_in.client_reference}, recorded {check_in.recorded_at.ToJsonString()}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except urllib.error.URLError as exc:
        sys.exit(f"cannot reach a simulated back-end ({exc.reason}); is `make federation` running?")
    except grpc.RpcError as exc:  # the call's status: code and message
        sys.exit(f"the node answered {exc.code().name}: {exc.details()}")
