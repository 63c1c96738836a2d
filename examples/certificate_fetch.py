"""E-certificate fetch: a Shanghai window fetches an Anhui resident's marriage
certificate, with the holder's consent, and checks its e-stamp.

Run it from the repository root while the federation runs (`.venv/bin/yrd-gateway up`
or `make federation`, in another terminal):

    .venv/bin/python examples/certificate_fetch.py

It picks a marriage certificate from the Anhui certificate library simulator and
records the holder's consent there (as the holder would, in Anhui's app), then asks
the Shanghai node for the certificate (GetCertificate). The answer carries the seal
verdict and the category in Shanghai's own code. Exit 0 when the seal is valid.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from gateway.core.channels import balanced_channel, split_endpoints
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc

MARRIAGE = "11100000"  # national category code of the marriage certificate (结婚证)


def call_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gateway",
        "--node",
        dest="gateways",
        action="append",
        metavar="HOST:PORT",
        help="the window's node (Shanghai), default 127.0.0.1:7310; repeat it or give a comma list "
        "to reach any of several replicas",
    )
    parser.add_argument("--ca", default="province_configs/federation-ca/ca.crt.pem", help="CA file")
    parser.add_argument("--token", default="dev-office-310000", help="the window's bearer token")
    parser.add_argument("--province", default="310000", help="the node's province")
    parser.add_argument("--issuer-province", default="340000", help="where it was issued")
    parser.add_argument(
        "--library-url", default="http://127.0.0.1:8342", help="that province's library"
    )
    args = parser.parse_args()

    # The simulator's data: a marriage certificate with an intact seal, still valid.
    certificate = next(
        c
        for c in call_json(f"{args.library_url}/admin/certificates")
        if c["category_code"] == MARRIAGE and not c["forged"] and not c["expired"]
    )
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    consent = call_json(
        f"{args.library_url}/admin/consents",
        {
            "holder_id": certificate["holder_id"],
            "requesting_province": args.province,
            "expires_at": expires,
            "purpose": "婚姻登记",
        },
    )["reference"]
    print(f"consent {consent} recorded at the issuing province's library")

    metadata = (("authorization", f"Bearer {args.token}"),)
    with open(args.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read())
    gateways = split_endpoints(args.gateways or ["127.0.0.1:7310"])
    with balanced_channel(gateways, credentials) as channel:
        window = certificate_pb2_grpc.CertificateServiceStub(channel)
        answer = window.GetCertificate(
            certificate_pb2.GetCertificateRequest(
                category_code=certificate["category_code"],
                holder_id=certificate["holder_id"],
                issuer_province=args.issuer_province,
                certificate_number=certificate["certificate_number"],
                consent_reference=consent,
                purpose="MARRIAGE_REGISTRATION",  # one the client is registered for
            ),
            metadata=metadata,
            timeout=5.0,
        )
    verdict = certificate_pb2.SealVerdict.Name(answer.seal_verdict)
    cert = answer.certificate
    print(f"seal: {verdict}")
    print(
        f"certificate {cert.certificate_number} ({cert.licence_id}), issued {cert.issue_date} "
        f"by {cert.issuer_name}; category {cert.category_code}, "
        f"in this province's code {answer.local_category_code}"
    )
    return 0 if answer.seal_verdict == certificate_pb2.SEAL_VALID else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except urllib.error.URLError as exc:
        sys.exit(f"cannot reach a simulated back-end ({exc.reason}); is `make federation` running?")
    except grpc.RpcError as exc:  # the call's status: code and message
        sys.exit(f"the node answered {exc.code().name}: {exc.details()}")
