"""The two primitives every exchange calls: Ed25519 verification (libsodium)
and the random bytes of ids and nonces (read from the OS in blocks)."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core import crypto, identifiers
from gateway.core.identifiers import (
    ordered_uuid,
    random_bytes,
    random_uuid,
    random_uuid_hex,
    time_ordered_bytes,
)

# RFC 8032, section 7.1, TEST 2 (one-byte message) and TEST 3 (two bytes).
_RFC8032 = [
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


class TestVerify:
    @pytest.mark.parametrize(("public", "message", "signature"), _RFC8032)
    def test_the_standards_vectors_verify(self, public: str, message: str, signature: str) -> None:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
        assert crypto.verify(key, bytes.fromhex(signature), bytes.fromhex(message))
        spoiled = bytearray(bytes.fromhex(signature))
        spoiled[0] ^= 1
        assert not crypto.verify(key, bytes(spoiled), bytes.fromhex(message))
        assert not crypto.verify(key, bytes.fromhex(signature), bytes.fromhex(message) + b"\0")

    def test_what_the_node_signs_it_verifies(self) -> None:
        private = crypto.generate_private_key()
        data = b"header bytes" * 20
        signature = private.sign(data)
        assert crypto.verify(private.public_key(), signature, data)
        # bytes-like data and signatures are taken as cryptography took them
        assert crypto.verify(private.public_key(), bytearray(signature), memoryview(data))
        other = crypto.generate_private_key().public_key()
        assert not crypto.verify(other, signature, data)

    @pytest.mark.parametrize("length", [0, 1, 63, 65, 128])
    def test_a_signature_of_the_wrong_length_is_false_not_an_error(self, length: int) -> None:
        private = crypto.generate_private_key()
        assert not crypto.verify(private.public_key(), b"\x01" * length, b"data")

    def test_a_small_order_key_verifies_nothing(self) -> None:
        # The neutral point (y = 1): under it, the all-zero-scalar signature
        # (R = neutral point, S = 0) satisfies the cofactorless equation for any
        # message. libsodium refuses such keys outright.
        neutral = bytes([1]) + bytes(31)
        key = Ed25519PublicKey.from_public_bytes(neutral)
        assert not crypto.verify(key, neutral + bytes(32), b"any message")


class TestRandomBytes:
    def test_no_byte_is_handed_out_twice(self) -> None:
        # Across a refill too: draw more than a pool's worth in odd sizes.
        drawn = [random_bytes(n) for n in (7, 16, 33) * 200]
        assert sum(map(len, drawn)) > identifiers.RANDOM_POOL_BYTES
        assert [len(d) for d in drawn] == [7, 16, 33] * 200
        # 16-byte draws are unique (a repeat would be a 2^-128 event)...
        sixteens = drawn[1::3]
        assert len(set(sixteens)) == len(sixteens)
        # ...and consecutive draws are not overlapping slices of one block.
        joined = b"".join(drawn)
        for chunk in sixteens[:50]:
            assert joined.count(chunk) == 1

    def test_more_than_a_pool_at_once(self) -> None:
        big = random_bytes(identifiers.RANDOM_POOL_BYTES * 3 + 1)
        assert len(big) == identifiers.RANDOM_POOL_BYTES * 3 + 1
        assert len(set(big)) > 200  # random, not a filler

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
    def test_a_forked_child_does_not_repeat_its_parents_bytes(self) -> None:
        random_bytes(16)  # the parent holds a partly used pool
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(write, random_bytes(16) + random_bytes(16))
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 64)
        os.close(read)
        os.waitpid(pid, 0)
        parent = random_bytes(16) + random_bytes(16)
        assert len(child) == 32
        assert child[:16] not in parent
        assert child[16:] not in parent

    def test_uuids_keep_their_form(self) -> None:
        for _ in range(100):
            assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", random_uuid_hex())
            assert re.fullmatch(
                r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                random_uuid(),
            )


class TestTimeOrderedIds:
    """Message ids, nonces and correlation ids a node makes sort in the order
    they were made (their index entries go at the end of the B-tree)."""

    def test_a_uuid_of_version_7_with_the_time_in_front(self) -> None:
        at_ms = 1_764_000_000_123  # 2025-11-24T15:20:00.123Z
        made = ordered_uuid(at_ms)
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", made
        )
        assert int(made.replace("-", "")[:12], 16) == at_ms
        assert uuid.UUID(made).version == 7

    def test_made_later_sorts_later_and_the_same_millisecond_stays_unique(self) -> None:
        at_ms = 1_764_000_000_000
        same = [ordered_uuid(at_ms) for _ in range(2000)]
        assert len(set(same)) == len(same)  # 74 random bits apart
        later = [ordered_uuid(at_ms + step) for step in range(1, 200)]
        assert later == sorted(later)
        assert max(same) < min(later)
        # Made now, one after another: never out of order across milliseconds.
        now = [ordered_uuid() for _ in range(2000)]
        assert [u[:13] for u in now] == sorted(u[:13] for u in now)

    def test_nonces_keep_their_size_and_order(self) -> None:
        at_ms = 1_764_000_000_000
        nonces = [time_ordered_bytes(16, at_ms + i // 10) for i in range(1000)]
        assert {len(n) for n in nonces} == {16}
        assert len(set(nonces)) == len(nonces)
        assert [n[:6] for n in nonces] == sorted(n[:6] for n in nonces)
        assert int.from_bytes(nonces[0][:6], "big") == at_ms
        with pytest.raises(ValueError, match="more than 6 bytes"):
            time_ordered_bytes(6)
