"""Province descriptors: what they carry, and every reason a peer refuses one."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config.loading import parse_province_file
from gateway.config.models import ProvinceConfig
from gateway.core.clock import FrozenClock
from gateway.federation.directory import Publisher
from gateway.storage.descriptors import DescriptorCache
from gateway.trust import descriptor as descriptors
from gateway.trust import tls
from gateway.trust.descriptor import DescriptorRefused
from tests.paths import CA_DIR, config_file
from yrd.directory.v1 import directory_pb2

SH, JS, ZJ = "310000", "320000", "330000"
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def _config(code: str) -> ProvinceConfig:
    return parse_province_file(config_file(code))


def _ca() -> bytes:
    return (CA_DIR / "ca.crt.pem").read_bytes()


def _signed(
    code: str,
    *,
    serial: int = 5,
    issued: datetime = NOW,
    days: float = 7,
    signer: str | None = None,
) -> directory_pb2.SignedDescriptor:
    me = _config(code)
    assert me.tls is not None
    body = descriptors.describe(
        me,
        serial=serial,
        issued_at=issued,
        not_after=issued + timedelta(days=days),
        since={},
        tls_certificate=me.tls.certificate.read_bytes(),
    )
    key_of = _config(signer or code).tls
    assert key_of is not None
    return descriptors.sign(body, key_of.private_key.read_bytes(), key_of.certificate.read_bytes())


def _verify(signed: directory_pb2.SignedDescriptor, **options: object) -> object:
    options.setdefault("now", NOW)
    return descriptors.verify(signed, ca=descriptors.load_ca(_ca()), **options)  # type: ignore[arg-type]  # test helper passes keywords through


class TestWhatADescriptorSays:
    def test_public_facts_and_nothing_else(self) -> None:
        signed = _signed(ZJ)
        facts = descriptors.verify(
            signed, ca=descriptors.load_ca(_ca()), now=NOW, expected_province=ZJ
        )
        me = _config(ZJ)
        assert facts.code == ZJ
        assert facts.name == me.province.name
        assert facts.endpoints == (me.node.peer_endpoint,)
        assert {k.key_id for k in facts.signing_keys} == {k.key_id for k in me.signing.public_keys}
        assert {k.key_id for k in facts.eid_issuer_keys} == {k.key_id for k in me.eid.issuer_keys}
        assert {o.service for o in facts.offers} == set(me.services.offers)
        assert all(o.version == "v1" for o in facts.offers)
        assert facts.disclosure == me.disclosure
        assert facts.serial == 5
        assert facts.not_after == NOW + timedelta(days=7)
        # No back-end URL, client credential, or key path is ever published.
        body = signed.descriptor
        for secret in (
            me.eid.authority_url,
            *(c.token_sha256 or "" for c in me.clients),
            *(c.id for c in me.clients),
            "keys/",
            ".pem",
        ):
            assert secret
            assert secret.encode() not in body, secret


class TestRefusals:
    def _reason(self, signed: directory_pb2.SignedDescriptor, **options: object) -> str:
        with pytest.raises(DescriptorRefused) as caught:
            _verify(signed, **options)
        return caught.value.reason

    def test_signed_by_another_province(self) -> None:
        # Shanghai's node signs a descriptor claiming to be Jiangsu's.
        assert self._reason(_signed(JS, signer=SH)) == "wrong_province"

    def test_not_the_province_expected(self) -> None:
        assert self._reason(_signed(JS), expected_province=ZJ) == "wrong_province"

    def test_certificate_of_another_ca(self, tmp_path: Path) -> None:
        rogue = tls.create_ca(
            not_before=datetime(2026, 1, 1, tzinfo=UTC), not_after=datetime(2030, 1, 1, tzinfo=UTC)
        )
        node = tls.node_certificate(
            rogue, JS, datetime(2026, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
        )
        me = _config(JS)
        assert me.tls is not None
        body = descriptors.describe(
            me,
            serial=9,
            issued_at=NOW,
            not_after=NOW + timedelta(days=1),
            since={},
            tls_certificate=node.certificate_pem,
        )
        signed = descriptors.sign(body, node.key_pem, node.certificate_pem)
        assert self._reason(signed) == "untrusted_certificate"

    def test_tampered(self) -> None:
        signed = _signed(ZJ)
        descriptor = descriptors.read(signed)
        descriptor.federation_endpoints[0] = "203.0.113.9:7331"
        signed.descriptor = descriptor.SerializeToString()
        assert self._reason(signed) == "bad_signature"

    def test_expired(self) -> None:
        signed = _signed(ZJ, issued=NOW - timedelta(days=8), days=7)
        assert self._reason(signed) == "expired"

    def test_issued_in_the_future(self) -> None:
        assert self._reason(_signed(ZJ, issued=NOW + timedelta(hours=1))) == "not_yet_valid"

    def test_rollback(self) -> None:
        assert self._reason(_signed(ZJ, serial=5), held_serial=6) == "rollback"
        assert _verify(_signed(ZJ, serial=6), held_serial=6) is not None  # the same serial again

    def test_certificate_outside_its_validity(self) -> None:
        late = datetime(2031, 1, 1, tzinfo=UTC)  # the development certificates end in 2030
        signed = _signed(ZJ, issued=late - timedelta(hours=1))
        assert self._reason(signed, now=late) == "certificate_not_valid"

    @pytest.mark.parametrize("data", [b"", b"\xff\x00garbage", b"\x0a" + b"\xff" * 10])
    def test_malformed(self, data: bytes) -> None:
        def check() -> None:
            _verify(descriptors.parse_signed(data))

        with pytest.raises(DescriptorRefused) as caught:
            check()
        assert caught.value.reason in {"malformed", "untrusted_certificate"}

    @pytest.mark.parametrize("field", ["not_after", "issued_at"])
    def test_a_timestamp_out_of_any_dates_range(self, field: str) -> None:
        # Signed correctly, but a time no datetime can hold: refused, never a crash.
        me = _config(ZJ)
        assert me.tls is not None
        body = descriptors.read(_signed(ZJ))
        getattr(body, field).seconds = 10**15
        signed = descriptors.sign(
            body, me.tls.private_key.read_bytes(), me.tls.certificate.read_bytes()
        )
        assert self._reason(signed) == "malformed"

    def test_oversized(self) -> None:
        with pytest.raises(DescriptorRefused) as caught:
            descriptors.parse_signed(b"\x0a" * (descriptors.MAX_SIGNED_BYTES + 1))
        assert caught.value.reason == "malformed"


class TestPublisher:
    def test_serial_moves_only_when_something_changed(self, tmp_path: Path) -> None:
        clock = FrozenClock(NOW)
        publisher = Publisher(DescriptorCache(tmp_path), clock)
        me = _config(SH)
        first = descriptors.read(descriptors.parse_signed(publisher.current(me)))
        clock.advance(dt.timedelta(hours=1))
        again = descriptors.read(descriptors.parse_signed(publisher.current(me)))
        assert again.serial == first.serial  # nothing changed: the same one
        fewer = me.services.model_copy(update={"offers": me.services.offers[:-1]})
        changed = descriptors.read(
            descriptors.parse_signed(publisher.current(me.model_copy(update={"services": fewer})))
        )
        assert changed.serial > first.serial
        # A service offered since the first descriptor keeps its "since".
        since = {s.service: s.since.ToDatetime(tzinfo=UTC) for s in changed.services}
        assert set(since.values()) == {NOW}

    def test_issued_again_at_half_validity(self, tmp_path: Path) -> None:
        clock = FrozenClock(NOW)
        publisher = Publisher(DescriptorCache(tmp_path), clock)
        me = _config(SH)
        first = descriptors.read(descriptors.parse_signed(publisher.current(me)))
        clock.advance(timedelta(days=me.directory.validity_days / 2 + 0.01))
        later = descriptors.read(descriptors.parse_signed(publisher.current(me)))
        assert later.serial > first.serial
        assert later.not_after.ToDatetime(tzinfo=UTC) > first.not_after.ToDatetime(tzinfo=UTC)


class TestPublishedEndpoints:
    """A node bound to every interface publishes where peers can reach it."""

    def test_published_endpoints_are_what_peers_get(self) -> None:
        me = _config(ZJ)
        node = me.node.model_copy(
            update={"published_endpoints": ("yrd-node-330000:7331", "10.0.3.2:7331")}
        )
        me = me.model_copy(update={"node": node})
        assert me.tls is not None
        body = descriptors.describe(
            me,
            serial=1,
            issued_at=NOW,
            not_after=NOW + timedelta(days=1),
            since={},
            tls_certificate=me.tls.certificate.read_bytes(),
        )
        assert list(body.federation_endpoints) == ["yrd-node-330000:7331", "10.0.3.2:7331"]

    @pytest.mark.parametrize(
        ("node", "needle"),
        [
            ({"federation_endpoint": "0.0.0.0:7331"}, "published_endpoints"),
            (
                {"federation_endpoint": "0.0.0.0:7331", "published_endpoints": ["0.0.0.0:7331"]},
                "not a wildcard address",
            ),
        ],
    )
    def test_a_wildcard_bind_needs_a_published_endpoint(
        self, node: dict[str, object], needle: str
    ) -> None:
        import tomllib

        from gateway.config.loading import validate_province
        from gateway.core.errors import ConfigError

        path = config_file(ZJ)
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        raw["node"].update(node)
        with pytest.raises(ConfigError) as caught:
            validate_province(raw, path)
        assert needle in caught.value.message
        assert "node" in caught.value.message
