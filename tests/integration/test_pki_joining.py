"""Joining: `pki province` (the new province, on its own machine) and `pki certify`
(the federation CA operator), as commands and as the functions behind them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.tools.pki import RequestRefused, certify, init_province
from gateway.trust import tls
from tests.paths import CA_DIR

CLI = [sys.executable, "-m", "gateway"]
CODE = "360000"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def request(
    names: list[x509.GeneralName],
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A signing request with these subject alternative names."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "a node")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def uri(code: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(tls.PROVINCE_URI_PREFIX + code)


class TestProvince:
    def test_writes_keys_and_a_request_naming_the_province_and_no_ca_key(
        self, tmp_path: Path
    ) -> None:
        folder = tmp_path / CODE
        result = run("pki", "province", CODE, str(folder))
        assert result.returncode == 0, result.stderr
        keys = folder / "keys"
        for stem in ("signing", "eid-issuer", "seal"):
            assert (keys / f"{stem}.key.pem").stat().st_mode & 0o077 == 0
            assert (keys / f"{stem}.pub.pem").exists()
        assert (keys / "tls.key.pem").stat().st_mode & 0o077 == 0
        # Only the province's own material: no CA key, no certificate yet.
        written = sorted(p.name for p in folder.rglob("*") if p.is_file())
        assert written == sorted(
            [
                "eid-issuer.key.pem",
                "eid-issuer.pub.pem",
                "seal.key.pem",
                "seal.pub.pem",
                "signing.key.pem",
                "signing.pub.pem",
                "tls.csr.pem",
                "tls.key.pem",
            ]
        )
        assert result.stdout.count("sha256:") == 3
        assert "send only tls.csr.pem" in result.stdout
        csr = x509.load_pem_x509_csr((keys / "tls.csr.pem").read_bytes())
        assert csr.is_signature_valid
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"urn:yrd:province:{CODE}"
        ]
        assert names.get_values_for_type(x509.DNSName) == [
            "localhost",
            f"yrd-node-{CODE}",
            f"node-{CODE}",
        ]
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        tls_key = serialization.load_pem_private_key(
            (keys / "tls.key.pem").read_bytes(), password=None
        )
        assert csr.public_key() == tls_key.public_key()

    def test_existing_keys_are_kept(self, tmp_path: Path) -> None:
        first = init_province(tmp_path, CODE)
        signing = (tmp_path / "keys" / "signing.key.pem").read_bytes()
        tls_key = (tmp_path / "keys" / "tls.key.pem").read_bytes()
        second = init_province(tmp_path, CODE)
        assert (tmp_path / "keys" / "signing.key.pem").read_bytes() == signing
        assert (tmp_path / "keys" / "tls.key.pem").read_bytes() == tls_key
        assert [k.fingerprint for k in first.keys] == [k.fingerprint for k in second.keys]

    @pytest.mark.parametrize("code", ["360100", "990000", "36000"])
    def test_refuses_a_code_that_is_not_province_level(self, tmp_path: Path, code: str) -> None:
        with pytest.raises(ValueError, match="province-level GB/T 2260"):
            init_province(tmp_path, code)
        assert not (tmp_path / "keys").exists()


class TestCertify:
    def test_the_ca_certifies_the_request_of_pki_province(self, tmp_path: Path) -> None:
        folder = tmp_path / CODE
        assert run("pki", "province", CODE, str(folder)).returncode == 0
        out = tmp_path / "returned" / "tls.crt.pem"
        result = run(
            "pki", "certify", str(folder / "keys" / "tls.csr.pem"), "--ca", str(CA_DIR),
            "--out", str(out),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        pem = out.read_bytes()
        assert f"province {CODE}" in result.stdout
        assert f"sha256:{tls.certificate_fingerprint(pem)}" in result.stdout
        ca_pem = (CA_DIR / "ca.crt.pem").read_bytes()
        assert f"federation CA sha256:{tls.certificate_fingerprint(ca_pem)}" in result.stdout
        certificate = x509.load_pem_x509_certificate(pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
        assert tls.province_of_certificate(pem) == CODE
        assert tls.uris_of(pem) == [f"urn:yrd:province:{CODE}"]
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.DNSName) == [
            "localhost",
            f"yrd-node-{CODE}",
            f"node-{CODE}",
        ]
        key = serialization.load_pem_private_key(
            (folder / "keys" / "tls.key.pem").read_bytes(), password=None
        )
        assert certificate.public_key() == key.public_key()
        assert certificate.not_valid_after_utc <= ca.not_valid_after_utc
        # The certificate and its key make a node's TLS identity, as pki init's do.
        tls.TlsMaterial.load(out, folder / "keys" / "tls.key.pem", CA_DIR / "ca.crt.pem")

    def test_refusals_exit_1_with_a_clear_message_and_write_nothing(self, tmp_path: Path) -> None:
        csr = tmp_path / "no-province.csr.pem"
        csr.write_bytes(request([x509.DNSName("localhost")]))
        out = tmp_path / "cert.pem"
        result = run("pki", "certify", str(csr), "--ca", str(CA_DIR), "--out", str(out))
        assert result.returncode == 1
        assert "refused: the request names no province" in result.stderr
        assert "urn:yrd:province:<code>" in result.stderr
        assert not out.exists()

    @pytest.mark.parametrize(
        ("names", "reason"),
        [
            ([], "names no province"),
            ([x509.UniformResourceIdentifier("urn:yrd:client:office-1")], "names no province"),
            ([uri("360000"), uri("310000")], "names 2 provinces"),
            ([uri("360100")], "expected a province-level GB/T 2260 code"),
            ([uri("990000")], "expected a province-level GB/T 2260 code"),
            ([uri("36000x")], "expected a province-level GB/T 2260 code"),
            (
                [uri("360000"), x509.UniformResourceIdentifier("urn:yrd:client:x")],
                "other URIs besides its province",
            ),
            ([uri("360000"), x509.DNSName("yrd-node-310000")], "another province's node"),
        ],
    )
    def test_refused_requests(
        self, tmp_path: Path, names: list[x509.GeneralName], reason: str
    ) -> None:
        out = tmp_path / "cert.pem"
        with pytest.raises(RequestRefused, match=re.escape(reason)):
            certify(request(names), CA_DIR, out)
        assert not out.exists()

    def test_refuses_an_altered_request(self, tmp_path: Path) -> None:
        pem = request([uri("360000")])
        der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
        # Change one byte of the province code inside the signed part: 360000 -> 310000.
        altered = der.replace(b"urn:yrd:province:360000", b"urn:yrd:province:310000")
        assert altered != der
        altered_pem = x509.load_der_x509_csr(altered).public_bytes(serialization.Encoding.PEM)
        with pytest.raises(RequestRefused, match="signature does not verify"):
            certify(altered_pem, CA_DIR, tmp_path / "cert.pem")

    def test_refuses_a_key_other_than_p256_and_garbage(self, tmp_path: Path) -> None:
        pem = request([uri("360000")], key=ec.generate_private_key(ec.SECP384R1()))
        with pytest.raises(RequestRefused, match="ECDSA P-256"):
            certify(pem, CA_DIR, tmp_path / "cert.pem")
        with pytest.raises(RequestRefused, match="not a PEM certificate signing request"):
            certify(b"not a request", CA_DIR, tmp_path / "cert.pem")

    def test_validity_never_outlives_the_ca(self, tmp_path: Path) -> None:
        now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        issued = certify(request([uri("360000")]), CA_DIR, tmp_path / "c.pem", now=now, days=1e5)
        ca = x509.load_pem_x509_certificate((CA_DIR / "ca.crt.pem").read_bytes())
        assert issued.not_after == ca.not_valid_after_utc
        short = certify(request([uri("360000")]), CA_DIR, tmp_path / "d.pem", now=now, days=30)
        assert short.not_after == now + dt.timedelta(days=30)
