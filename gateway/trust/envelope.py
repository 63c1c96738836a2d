"""The signed envelope (DESIGN §4): sealing, opening, and every rejection.

The sender serializes an :class:`EnvelopeHeader` once; those exact bytes travel
in ``SignedEnvelope.header`` and are what the Ed25519 signature covers. The
header carries the SHA-256 of the payload bytes, so the signature covers the
payload too without re-serializing anything. A response names the SHA-256 of
the request's header bytes (``request_digest``): a signed receipt.
"""

from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError, Message

from gateway.config.holder import ConfigHolder
from gateway.config.models import FEDERATION_SERVICES, FederationConfig, ProvinceConfig
from gateway.core import crypto
from gateway.core.clock import Clock, set_timestamp
from gateway.core.crypto import load_private_key
from gateway.core.errors import EnvelopeRejected, InvalidArgument
from gateway.core.identifiers import ordered_uuid, random_uuid, time_ordered_bytes
from gateway.trust import batchsig
from gateway.trust.truststore import TrustStore
from yrd.federation.v1 import federation_pb2

#: Largest serialized SignedEnvelope a node accepts (and its gRPC max message size).
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
NONCE_BYTES = 16

#: Bounds on the header strings a peer sends (DESIGN §4, docs/security.md
#: "Envelope header bounds"): each field, the pattern it must match in full and
#: what a refusal says was expected. They are checked right after the header
#: parses, before any value is looked up, logged, cached or stored, so nothing
#: a peer writes there can be large or carry control characters. The values
#: themselves are never echoed.
HEADER_BOUNDS: dict[str, tuple[re.Pattern[str], str]] = {
    "message_id": (
        re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        "a canonical UUID: 36 characters, lower-case hex digits and hyphens",
    ),
    # Empty only in a response that copies an empty one; a request needs one.
    "correlation_id": (
        re.compile(r"[\x20-\x7e]{0,128}"),
        "1..128 printable ASCII characters",
    ),
    "idempotency_key": (
        re.compile(r"[\x20-\x7e]{0,128}"),
        "at most 128 printable ASCII characters",
    ),
    "sender": (re.compile(r"[1-9][0-9]{5}"), "a six-digit GB/T 2260 province code"),
    "receiver": (re.compile(r"[1-9][0-9]{5}"), "a six-digit GB/T 2260 province code"),
    "service": (
        re.compile(r"[A-Za-z0-9_.]{1,64}"),
        "a logical service name: 1..64 characters of [A-Za-z0-9_.]",
    ),
    "payload_type": (
        re.compile(r"[A-Za-z0-9_.]{1,128}"),
        "a protobuf message name: 1..128 characters of [A-Za-z0-9_.]",
    ),
    "key_id": (re.compile(r"[A-Za-z0-9._:-]{1,128}"), "1..128 characters of [A-Za-z0-9._:-]"),
    "algorithm": (
        # Empty or unknown names are refused next, as unsupported algorithms.
        re.compile(r"[A-Za-z0-9._-]{0,32}"),
        "an algorithm name: at most 32 characters of [A-Za-z0-9._-]",
    ),
}
#: Verified batch roots a verifier remembers (an LRU): enough for every batch
#: in flight from every peer, each entry a few hundred bytes.
ROOT_CACHE_ENTRIES = 1024
#: Longest ``status_message`` in a response header, in characters. A sealer cuts
#: its own to this length, so no answer it signs is refused by the asker.
MAX_STATUS_MESSAGE = 1024


def _reject(code: grpc.StatusCode, reason: str, message: str) -> EnvelopeRejected:
    return EnvelopeRejected(code, reason, message)


@dataclass(frozen=True)
class OpenedEnvelope:
    """An envelope whose every check passed."""

    header: federation_pb2.EnvelopeHeader
    payload: bytes
    signed: federation_pb2.SignedEnvelope

    @property
    def header_digest(self) -> bytes:
        return crypto.sha256(self.signed.header)

    @property
    def fingerprint(self) -> bytes:
        return request_fingerprint(self.header)

    def parse(self, message_type: type[Message]) -> Message:
        message = message_type()
        try:
            message.ParseFromString(self.payload)
        except DecodeError as exc:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_payload",
                f"payload: expected a serialized {message_type.DESCRIPTOR.full_name}",
            ) from exc
        return message


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class SigningKeys:
    """A node's envelope keys: ``signing.key_id`` as fallback and the rotation
    (newest window first)."""

    province: str
    default: tuple[str, Ed25519PrivateKey]
    rotation: tuple[SigningKey, ...] = ()

    @classmethod
    def of(
        cls,
        province: str,
        key_id: str,
        private_key: Ed25519PrivateKey,
        rotation: tuple[SigningKey, ...] = (),
    ) -> SigningKeys:
        newest_first = tuple(sorted(rotation, key=lambda k: k.not_before, reverse=True))
        return cls(province, (key_id, private_key), newest_first)

    @classmethod
    def from_config(cls, me: ProvinceConfig) -> SigningKeys:
        """Every configured key with its private part; ``signing.key_id`` as fallback."""
        if me.signing.private_key is None:
            raise ValueError(f"{me.source}: signing.private_key is required to sign")
        default = load_private_key(me.signing.private_key)
        rotation = []
        for published in me.signing.public_keys:
            if published.private_key is not None:
                key = load_private_key(published.private_key)
            elif published.key_id == me.signing.key_id:
                key = default
            else:
                continue
            rotation.append(
                SigningKey(published.key_id, key, published.not_before, published.not_after)
            )
        return cls.of(me.code, me.signing.key_id, default, tuple(rotation))

    def current(self, now: datetime) -> tuple[str, Ed25519PrivateKey]:
        for key in self.rotation:
            if key.not_before <= now < key.not_after:
                return key.key_id, key.private_key
        return self.default

    def by_id(self, key_id: str) -> Ed25519PrivateKey | None:
        """The private key published as ``key_id``, if this node holds it."""
        for key in self.rotation:
            if key.key_id == key_id:
                return key.private_key
        return self.default[1] if self.default[0] == key_id else None


def signing_keys(federation: FederationConfig) -> SigningKeys:
    """This node's signing keys in ``federation`` (built once per config version
    through :meth:`ConfigHolder.derived <gateway.config.holder.ConfigHolder.derived>`)."""
    return SigningKeys.from_config(federation.me)


class EnvelopeSigner:
    """Seals payloads into signed envelopes with this node's current key.

    With several keys configured (a rotation), the current key is the one whose
    validity window holds now and began last: a new key published ahead with a
    later ``not_before`` takes over by itself at that instant, while peers keep
    accepting the old one until its window ends.

    A node's signer follows its config (:meth:`for_config`): the keys are those
    of the config in force when an envelope is sealed, so a reload changes them
    with nothing to update here.
    """

    def __init__(
        self,
        province: str,
        key_id: str,
        private_key: Ed25519PrivateKey,
        clock: Clock,
        *,
        rotation: tuple[SigningKey, ...] = (),
    ) -> None:
        self._fixed = SigningKeys.of(province, key_id, private_key, rotation)
        self._config: ConfigHolder | None = None
        self._clock = clock

    @classmethod
    def from_config(cls, me: ProvinceConfig, clock: Clock) -> EnvelopeSigner:
        """A signer with the keys of ``me`` as they are now (tools, start-up checks)."""
        keys = SigningKeys.from_config(me)
        return cls(keys.province, *keys.default, clock, rotation=keys.rotation)

    @classmethod
    def for_config(cls, config: ConfigHolder, clock: Clock) -> EnvelopeSigner:
        """A node's signer: the keys of the config in force at each seal."""
        keys = config.derived(signing_keys)
        signer = cls(keys.province, *keys.default, clock, rotation=keys.rotation)
        signer._config = config
        return signer

    def _keys(self) -> SigningKeys:
        return self._fixed if self._config is None else self._config.derived(signing_keys)

    @property
    def province(self) -> str:
        return self._keys().province

    def current(self) -> tuple[str, Ed25519PrivateKey]:
        return self._keys().current(self._clock.now())

    @property
    def key_id(self) -> str:
        return self.current()[0]

    def seal(
        self,
        *,
        receiver: str,
        service: str,
        payload: Message,
        correlation_id: str,
        payload_bytes: bytes | None = None,
        message_id: str | None = None,
        idempotency_key: str = "",
        request_digest: bytes = b"",
        status_code: int = 0,
        status_message: str = "",
        batched: bool = False,
    ) -> federation_pb2.SignedEnvelope:
        """The payload sealed for ``receiver``; signed with the current key, or,
        with ``batched=True``, left unsigned (empty ``signature``) for
        :meth:`sign_batch` to sign together with others. ``payload_bytes``: the
        payload already serialized, if the caller has it (not serialized again)."""
        if payload_bytes is None:
            payload_bytes = payload.SerializeToString()
        keys = self._keys()
        now = self._clock.now()
        key_id, private_key = keys.current(now)
        now_ms = int(now.timestamp() * 1000)
        header = federation_pb2.EnvelopeHeader(
            message_id=message_id or ordered_uuid(now_ms),
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            sender=keys.province,
            receiver=receiver,
            service=service,
            nonce=time_ordered_bytes(NONCE_BYTES, now_ms),
            payload_type=payload.DESCRIPTOR.full_name,
            key_id=key_id,
            algorithm=crypto.ED25519,
            payload_digest=crypto.sha256(payload_bytes),
            request_digest=request_digest,
            status_code=status_code,
            status_message=status_message[:MAX_STATUS_MESSAGE],
        )
        set_timestamp(header.created_at, now)
        header_bytes = header.SerializeToString()
        if batched:
            return federation_pb2.SignedEnvelope(header=header_bytes, payload=payload_bytes)
        return federation_pb2.SignedEnvelope(
            header=header_bytes, payload=payload_bytes, signature=private_key.sign(header_bytes)
        )

    def sign_batch(
        self, envelopes: Sequence[federation_pb2.SignedEnvelope], *, receiver: str
    ) -> batchsig.BatchRoot:
        """Sign envelopes sealed with ``batched=True`` once, over a hash tree.

        One tree over the envelopes' ``header`` bytes (in the given order), one
        Ed25519 signature over its root with the key their headers name, and on
        each envelope, in place, ``batch`` = its inclusion proof and the signed
        root. Every header must come from this node, be addressed to
        ``receiver`` and name the same key id, one this node holds; 1..1024
        envelopes, none carrying a signature already. ValueError otherwise.
        """
        if not 1 <= len(envelopes) <= batchsig.MAX_BATCH:
            raise ValueError(f"sign_batch: expected 1..{batchsig.MAX_BATCH} envelopes")
        keys = self._keys()
        key_ids = set()
        for envelope in envelopes:
            if envelope.signature:
                raise ValueError("sign_batch: expected envelopes sealed with batched=True")
            header = federation_pb2.EnvelopeHeader.FromString(envelope.header)
            if header.sender != keys.province or header.receiver != receiver:
                raise ValueError("sign_batch: expected headers from this node to the receiver")
            key_ids.add(header.key_id)
        if len(key_ids) != 1:
            raise ValueError("sign_batch: expected every header to name the same key id")
        (key_id,) = key_ids
        private_key = keys.by_id(key_id)
        if private_key is None:
            raise ValueError("sign_batch: the headers name a key this node does not hold")
        proofs = batchsig.sign_batch(
            [envelope.header for envelope in envelopes],
            sender=keys.province,
            receiver=receiver,
            batch_id=random_uuid(),
            signed_at_ms=int(self._clock.now().timestamp() * 1000),
            key_id=key_id,
            private_key=private_key,
        )
        for envelope, proof in zip(envelopes, proofs, strict=True):
            envelope.batch.CopyFrom(proof.to_proto())
        return proofs[0].root


def request_fingerprint(header: federation_pb2.EnvelopeHeader) -> bytes:
    """What makes a request the same request: SHA-256 over its service, payload
    type, idempotency key, correlation id and payload digest.

    A retry is a freshly sealed envelope (new nonce, new created_at, new
    signature) of the same message: its fingerprint is the original's, while a
    different request reusing the message id has another one.
    """
    parts = (
        header.service.encode(),
        header.payload_type.encode(),
        header.idempotency_key.encode(),
        header.correlation_id.encode(),
        bytes(header.payload_digest),
    )
    return crypto.sha256(
        b"yrd-request/v1" + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    )


def check_header_bounds(header: federation_pb2.EnvelopeHeader) -> None:
    """Refuse a header with any string outside its bound (:data:`HEADER_BOUNDS`).

    Every bounded field must match its pattern in full. Raises EnvelopeRejected
    (INVALID_ARGUMENT, reason ``malformed``) naming the field, never its value.
    """
    for field, (pattern, expected) in HEADER_BOUNDS.items():
        value: str = getattr(header, field)
        if len(value) > 256 or not pattern.fullmatch(value):
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"header.{field}: expected {expected}",
            )
    if len(header.status_message) > MAX_STATUS_MESSAGE:
        raise _reject(
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed",
            f"header.status_message: expected at most {MAX_STATUS_MESSAGE} characters",
        )
    if len(header.payload_digest) != 32 or len(header.request_digest) not in (0, 32):
        raise _reject(
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed",
            "header.payload_digest and header.request_digest: expected SHA-256 digests "
            "(32 bytes; request_digest empty in a request)",
        )


class NonceCache:
    """Nonces seen within the skew window (older envelopes are refused by time anyway).

    Compact, as it holds every nonce of the last minutes (hundreds of thousands
    under load): one bytes key (sender + nonce) and its expiry per entry, in a
    plain dict, with a FIFO of keys to forget the oldest first.
    """

    def __init__(self, ttl: timedelta, max_entries: int = 1_000_000) -> None:
        self._ttl = ttl.total_seconds()
        self._max = max_entries
        self._expiry: dict[bytes, float] = {}
        self._order: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._order)

    @property
    def max_entries(self) -> int:
        return self._max

    def nbytes(self) -> int:
        """Bytes the cache holds, estimated: keys, expiry floats, dict and deque slots."""
        per_entry = sys.getsizeof(0.0) + 3 * 8 + 8  # float, dict slot (hash, key, value), deque
        return sum(sys.getsizeof(key) + per_entry for key in self._order)

    def add(self, sender: str, nonce: bytes) -> bool:
        """Record a nonce; False if it was already seen (a replay)."""
        now = time.monotonic()
        order, expiry = self._order, self._expiry
        while order and (expiry[order[0]] <= now or len(order) >= self._max):
            del expiry[order.popleft()]
        key = sender.encode() + b"\0" + nonce
        if key in expiry:
            return False
        expiry[key] = now + self._ttl
        order.append(key)
        return True


#: Rejections that a newer descriptor of the sender may cure (a key just published).
REFRESHABLE = frozenset({"unknown_key", "unknown_province"})


class EnvelopeVerifier:
    """Opens envelopes addressed to this node; raises EnvelopeRejected on any failure.

    Peers, services, keys (``config.derived(TrustStore)``) and the allowed clock
    skew are those of the config in force when an envelope is opened; the nonces
    seen stay remembered across reloads.
    """

    def __init__(self, config: ConfigHolder, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        skew = timedelta(seconds=config.me.node.max_clock_skew_seconds)
        self._nonces = NonceCache(2 * skew)
        # Batch roots whose signature verified: (sender, key_id, public key,
        # SHA-256 of the statement, signature) -> None, least recently used first.
        self._roots: OrderedDict[tuple[str, str, bytes, bytes, bytes], None] = OrderedDict()
        self._roots_verified = 0

    @property
    def roots_verified(self) -> int:
        """Batch-root signatures actually verified so far (the rest came from the cache)."""
        return self._roots_verified

    @property
    def roots_cached(self) -> int:
        """Verified batch roots remembered now (at most :data:`ROOT_CACHE_ENTRIES`)."""
        return len(self._roots)

    @property
    def own(self) -> str:
        return self._config.federation.own

    @property
    def nonces(self) -> NonceCache:
        """The nonces seen (read-only use: sizes, for tests and metrics)."""
        return self._nonces

    def _authentic(self, signed: federation_pb2.SignedEnvelope) -> federation_pb2.EnvelopeHeader:
        if signed.ByteSize() > MAX_ENVELOPE_BYTES:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "too_large",
                f"envelope: expected at most {MAX_ENVELOPE_BYTES} bytes",
            )
        if not signed.header:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "header: expected a serialized EnvelopeHeader, got nothing",
            )
        header = federation_pb2.EnvelopeHeader()
        try:
            header.ParseFromString(signed.header)
        except DecodeError as exc:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "header: expected a serialized EnvelopeHeader",
            ) from exc
        check_header_bounds(header)
        if header.algorithm not in crypto.SUPPORTED_ALGORITHMS:
            raise _reject(
                grpc.StatusCode.UNAUTHENTICATED,
                "unsupported_algorithm",
                f"header.algorithm: expected one of {sorted(crypto.SUPPORTED_ALGORITHMS)}",
            )
        if not header.HasField("created_at"):
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "header.created_at: expected a timestamp",
            )
        try:
            created = header.created_at.ToDatetime(tzinfo=self._clock.now().tzinfo)
        except (ValueError, OverflowError) as exc:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "header.created_at: expected a valid timestamp",
            ) from exc
        batched = signed.HasField("batch")
        if batched == bool(signed.signature):
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "signature, batch: expected exactly one of them",
            )
        if batched:
            self._check_batch(signed, header, created)
        else:
            key = self._config.derived(TrustStore).envelope_key(
                header.sender, header.key_id, created
            )
            if not crypto.verify(key, signed.signature, signed.header):
                raise _reject(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "bad_signature",
                    f"signature: does not verify with key {header.key_id!r} of {header.sender}",
                )
        if crypto.sha256(signed.payload) != header.payload_digest:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "digest_mismatch",
                "payload: SHA-256 does not match header.payload_digest",
            )
        now = self._clock.now()
        skew = timedelta(seconds=self._config.me.node.max_clock_skew_seconds)
        if abs(now - created) > skew:
            raise _reject(
                grpc.StatusCode.FAILED_PRECONDITION,
                "clock_skew",
                f"header.created_at: expected within {int(skew.total_seconds())} s "
                f"of the receiver's clock, off by {int((created - now).total_seconds())} s",
            )
        if len(header.nonce) != NONCE_BYTES:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"header.nonce: expected {NONCE_BYTES} bytes",
            )
        return header

    def _check_batch(
        self,
        signed: federation_pb2.SignedEnvelope,
        header: federation_pb2.EnvelopeHeader,
        created: datetime,
    ) -> None:
        """The header is a leaf of a batch root its sender signed for this
        header's receiver with the header's key (docs/security.md "Batch
        signatures (hash tree)"): fields, inclusion, then the root's signature,
        verified once per root (:data:`ROOT_CACHE_ENTRIES`)."""
        try:
            proof = batchsig.check_proof(signed.header, header, signed.batch)
        except InvalidArgument as exc:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"batch.{exc.field}: expected {exc.expected}",
            ) from exc
        except batchsig.ProofMismatch as exc:
            raise _reject(grpc.StatusCode.UNAUTHENTICATED, "bad_proof", str(exc)) from exc
        root = proof.root
        key = self._config.derived(TrustStore).envelope_key(header.sender, header.key_id, created)
        if not self._root_verifies(root, key):
            raise _reject(
                grpc.StatusCode.UNAUTHENTICATED,
                "bad_signature",
                "batch.root.signature: does not verify with the key the header names",
            )

    def _root_verifies(self, root: batchsig.BatchRoot, key: Ed25519PublicKey) -> bool:
        """True when the root's signature holds under ``key``: remembered when
        it did (never when it did not), so each root is verified once."""
        statement = root.statement
        entry = (
            root.sender,
            root.key_id,
            key.public_bytes_raw(),
            crypto.sha256(statement),
            root.signature,
        )
        if entry in self._roots:
            self._roots.move_to_end(entry)
            return True
        self._roots_verified += 1
        if not crypto.verify(key, root.signature, statement):
            return False
        self._roots[entry] = None
        if len(self._roots) > ROOT_CACHE_ENTRIES:
            self._roots.popitem(last=False)
        return True

    async def refreshed_for(
        self, signed: federation_pb2.SignedEnvelope, exc: EnvelopeRejected
    ) -> bool:
        """After ``exc``: if it was a key of a configured peer this node does not
        trust (yet), ask the directory for that peer's descriptor now. True if the
        config changed, so that opening the envelope again may succeed."""
        if exc.reason not in REFRESHABLE:
            return False
        header = federation_pb2.EnvelopeHeader()
        try:
            header.ParseFromString(signed.header)
        except DecodeError:
            return False
        if header.sender not in self._config.federation.peer_codes:
            return False
        return await self._config.refreshed(header.sender)

    async def open_request_fresh(self, signed: federation_pb2.SignedEnvelope) -> OpenedEnvelope:
        """:meth:`open_request`, once more after fetching the sender's descriptor
        when its key was not known (a key it published moments ago)."""
        try:
            return self.open_request(signed)
        except EnvelopeRejected as exc:
            if not await self.refreshed_for(signed, exc):
                raise
        return self.open_request(signed)

    def open_request(self, signed: federation_pb2.SignedEnvelope) -> OpenedEnvelope:
        header = self._authentic(signed)
        if header.receiver != self.own:
            raise _reject(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_receiver",
                f"header.receiver: expected {self.own}, got {header.receiver}",
            )
        expected = FEDERATION_SERVICES.get(header.service)
        if expected is None:
            raise _reject(
                grpc.StatusCode.PERMISSION_DENIED,
                "unknown_service",
                f"header.service: expected one of {sorted(FEDERATION_SERVICES)}",
            )
        federation = self._config.federation
        if (
            header.service not in federation.me.services.offers
            or federation.peer(header.sender) is None
        ):
            raise _reject(
                grpc.StatusCode.PERMISSION_DENIED,
                "service_not_allowed",
                f"header.service: {header.service} is not allowed from {header.sender} "
                f"to {self.own}",
            )
        if header.payload_type != expected[0]:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "wrong_payload_type",
                f"header.payload_type: expected {expected[0]} for {header.service}",
            )
        if not header.correlation_id:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                f"header.correlation_id: expected {HEADER_BOUNDS['correlation_id'][1]}",
            )
        if not self._nonces.add(header.sender, header.nonce):
            raise _reject(
                grpc.StatusCode.ALREADY_EXISTS,
                "replayed_nonce",
                "header.nonce: already seen from this sender (replay)",
            )
        return OpenedEnvelope(header, signed.payload, signed)

    def open_response(
        self,
        signed: federation_pb2.SignedEnvelope,
        *,
        peer: str,
        request_header: bytes,
        service: str | None = None,
    ) -> OpenedEnvelope:
        header = self._authentic(signed)
        if service is not None and header.service != service:
            raise _reject(
                grpc.StatusCode.UNAUTHENTICATED,
                "wrong_service",
                f"response header.service: expected {service}",
            )
        expected = FEDERATION_SERVICES.get(header.service)
        if header.status_code == 0 and expected is not None and header.payload_type != expected[1]:
            raise _reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                "wrong_payload_type",
                f"response header.payload_type: expected {expected[1]}",
            )
        if header.sender != peer:
            raise _reject(
                grpc.StatusCode.UNAUTHENTICATED,
                "wrong_sender",
                f"response header.sender: expected {peer}, got {header.sender!r}",
            )
        if header.receiver != self.own:
            raise _reject(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_receiver",
                f"response header.receiver: expected {self.own}",
            )
        if header.request_digest != crypto.sha256(request_header):
            raise _reject(
                grpc.StatusCode.UNAUTHENTICATED,
                "wrong_receipt",
                "response header.request_digest: does not name this request",
            )
        if not self._nonces.add(header.sender, header.nonce):
            raise _reject(
                grpc.StatusCode.ALREADY_EXISTS,
                "replayed_nonce",
                "response header.nonce: already seen (replay)",
            )
        return OpenedEnvelope(header, signed.payload, signed)
