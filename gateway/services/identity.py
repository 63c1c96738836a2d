"""Identity: out-of-region e-ID verification (DESIGN §2, hotel check-in).

The relying party's node checks the QR token offline (issuer known, key
published and valid, signature, validity window), then asks the issuing
province's node (``identity.CheckCredential``) whether the credential is
active and the token unused. The issuing node asks its e-ID authority through
its adapter, and releases only the attributes its disclosure policy gives the
purpose. The verdict fails closed: no answer, or a stale one, is never VALID.

The relying party's side is a list of named checks (:meth:`IdentityExchange.checks`),
each returning its :class:`Outcome`; the first one with a verdict ends it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeAlias

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp

from adapters.base import IdentityAuthority
from adapters.errors import AdapterError, BackendUnavailable, TranslationError
from gateway.config.holder import ConfigHolder
from gateway.config.models import PURPOSES, ClientSection, FederationConfig
from gateway.core.clock import Clock, set_timestamp
from gateway.core.eid_token import (
    MAX_LIFETIME,
    MAX_TOKEN_BYTES,
    EidToken,
    TokenMalformed,
    parse_token,
)
from gateway.core.errors import (
    GatewayError,
    InvalidArgument,
    NotFound,
    PeerUnavailable,
    PermissionDenied,
    RemoteError,
    shown,
)
from gateway.core.identifiers import is_plain_text, random_uuid_hex, validate_idempotency_key
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.services.backendcalls import backend_call
from gateway.services.calls import current_correlation_id, require_client
from gateway.storage.interfaces import IdentityRecords
from gateway.storage.records import TokenClaim
from gateway.trust.envelope import OpenedEnvelope
from gateway.trust.truststore import KeyLookupError, TrustStore
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

log = structlog.get_logger("yrd.identity")

SERVICE = "identity.CheckCredential"
CHECK_NAMES = ("signature", "validity_window", "status", "single_use", "disclosure_policy")
#: Leeway for a token issued "in the future" by a clock slightly ahead.
ISSUE_LEEWAY = timedelta(seconds=30)
#: Deadline used when the caller sets none.
DEFAULT_TIMEOUT = 5.0

V = identity_pb2.Verdict
O = identity_pb2.CheckOutcome  # noqa: E741 - short alias for the outcome enum
STATE_NAMES = federation_pb2.CredentialState
#: Check-in ids as this node assigns them (see ``verify``), a little looser.
_CHECK_IN_ID = re.compile(r"CI-[0-9]{6}-[0-9a-f]{1,32}")


def claim_key_of(relying_party: str, idempotency_key: str) -> str:
    """The claim key a relying node sends its issuer for a caller's retries of one
    verification (``CredentialCheckRequest.claim_key``): SHA-256 of the relying
    party and its key, hex; empty without a key. A hash: the issuer learns
    neither, and keys of two relying parties never meet."""
    if not idempotency_key:
        return ""
    return hashlib.sha256(f"{relying_party}\x00{idempotency_key}".encode()).hexdigest()


def claimant_of(sender: str, claim_key: str, message_id: str) -> str:
    """Who claims a token at its issuer: the asking province's verification named
    by its claim key (a retry with the same key is the same claimant), or else
    the exchange (``<sender>/<message id>``)."""
    return f"{sender}/key:{claim_key}" if claim_key else f"{sender}/{message_id}"


_ATTRIBUTE_NAMES = frozenset({*common_pb2.Person.DESCRIPTOR.fields_by_name, "age_over_18"})

# Enum values resolved once (``O.PASSED`` is a lookup by name on every use).
_PASSED, _FAILED, _INDETERMINATE, _SKIPPED = O.PASSED, O.FAILED, O.INDETERMINATE, O.SKIPPED
_VALID, _FORGED, _EXPIRED = V.VALID, V.FORGED, V.EXPIRED
_REVOKED, _REPLAYED = V.REVOKED, V.REPLAYED
_ISSUER_UNREACHABLE, _UNKNOWN_ISSUER = V.ISSUER_UNREACHABLE, V.UNKNOWN_ISSUER
_CREDENTIAL_ACTIVE = STATE_NAMES.CREDENTIAL_ACTIVE
_VERDICT_NAMES = {value: name for name, value in V.items()}
#: The purposes a caller may name (every value but PURPOSE_UNSPECIFIED = 0), by value.
_PURPOSE_NAMES = {value: name for name, value in identity_pb2.Purpose.items() if value != 0}
_NOT_RUN = (_SKIPPED, "")


@dataclass(slots=True)
class _Checks:
    results: dict[str, tuple[identity_pb2.CheckOutcome.ValueType, str]] = field(
        default_factory=dict
    )

    def set(
        self, name: str, outcome: identity_pb2.CheckOutcome.ValueType, detail: str = ""
    ) -> None:
        self.results[name] = (outcome, detail)

    def add_to(self, response: identity_pb2.VerifyIdentityResponse) -> None:
        """Append them to ``response.checks`` in CHECK_NAMES order, a check that
        did not run as SKIPPED (each made in place: none built and then copied)."""
        results, checks = self.results, response.checks
        for name in CHECK_NAMES:
            outcome, detail = results.get(name, _NOT_RUN)
            checks.add(name=name, outcome=outcome, detail=detail)


@dataclass(frozen=True)
class Outcome:
    """What one check of :meth:`IdentityExchange.verify` found: the check it
    reports under (one of CHECK_NAMES), PASSED/FAILED/INDETERMINATE with a
    detail, and the verdict that ends the verification (None: the next check runs)."""

    check: str
    outcome: identity_pb2.CheckOutcome.ValueType
    detail: str
    verdict: identity_pb2.Verdict.ValueType | None = None


# The outcomes that say the same every time, made once.
_ACTIVE = Outcome("status", _PASSED, "credential active")
_ALREADY_USED = Outcome("single_use", _FAILED, "token already used", _REPLAYED)
_FIRST_USE = Outcome("single_use", _PASSED, "first use of this token")
_WITHIN_POLICY = {
    purpose: Outcome("disclosure_policy", _PASSED, f"{purpose} policy")
    for purpose in _PURPOSE_NAMES.values()
}


@dataclass(slots=True)
class _Verification:
    """One verification as its checks fill it in: the request, the config it
    started with, and what each check learnt (token, issuer key, issuer's answer)."""

    request: identity_pb2.VerifyIdentityRequest
    payload: str
    purpose: str
    relying_party: str
    correlation_id: str
    timeout: float
    federation: FederationConfig
    trust: TrustStore
    response: identity_pb2.VerifyIdentityResponse
    token: EidToken | None = None
    key: Ed25519PublicKey | None = None
    now: datetime | None = None
    answer: federation_pb2.CredentialCheckResponse | None = None
    #: :func:`claim_key_of` the caller's idempotency key ("" without one).
    claim_key: str = ""

    def require_token(self) -> EidToken:
        if self.token is None:  # pragma: no cover - the checks run in order
            raise AssertionError("the token is parsed by the first check")
        return self.token

    def require_answer(self) -> federation_pb2.CredentialCheckResponse:
        if self.answer is None:  # pragma: no cover - the checks run in order
            raise AssertionError("the issuer's answer comes before the checks that read it")
        return self.answer


#: A check: reads and fills in the verification, returns its outcome (None:
#: nothing to report yet, the next check runs).
Check: TypeAlias = "Callable[[_Verification], Awaitable[Outcome | None]]"


def _age_on(birth_date: str, today: date) -> int | None:
    try:
        born = date.fromisoformat(birth_date)
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def disclose(
    holder: common_pb2.Person, attributes: tuple[str, ...], today: date
) -> identity_pb2.IdentityClaims:
    """Claims carrying only ``attributes`` of ``holder`` (and derived claims)."""
    claims = identity_pb2.IdentityClaims()
    for name in attributes:
        if name == "age_over_18":
            age = _age_on(holder.birth_date, today)
            claims.age_over_18 = age is not None and age >= 18
            claims.disclosed_attributes.append(name)
        elif getattr(holder, name, None):
            setattr(claims.holder, name, getattr(holder, name))
            claims.disclosed_attributes.append(name)
    return claims


class IdentityExchange:
    """Both halves of the exchange: the relying party's node and the issuer's node."""

    def __init__(
        self,
        *,
        config: ConfigHolder,
        client: FederationClient,
        authority: IdentityAuthority,
        store: IdentityRecords,
        clock: Clock,
    ) -> None:
        #: The config in force: policies, clients, peers and keys are read from
        #: it when a call starts (a reload swaps it).
        self._config = config
        self._client = client
        self._authority = authority
        self._store = store
        self._clock = clock
        #: Claims being withdrawn after a cancelled check (held until done).
        self._releasing: set[asyncio.Task[None]] = set()

    #: Set by the node: back-end latency goes to its metrics.
    metrics: NodeMetrics | None = None

    # ---- issuer side -------------------------------------------------------------

    async def check_credential(
        self,
        request: federation_pb2.CredentialCheckRequest,
        timeout: float,
        *,
        claimant: str = "",
    ) -> federation_pb2.CredentialCheckResponse:
        """Ask this province's e-ID authority; disclose per this province's policy.

        Single use: the token is claimed for ``claimant`` (the exchange asking,
        ``<sender>/<message id>``; empty for this node's own verifications)
        before the authority is asked, which marks it used when it answers. A
        retry of the same exchange whose first answer was lost (the node
        crashed, or could not log it) finds its own claim and gets the same
        "first use" answer, where the authority alone would say "used"; any
        other exchange finds the token taken. When the authority gives no
        answer the claim is withdrawn: the token was not answered for. A check
        with a claim key (a caller's verification it may retry) keeps its claim
        instead: the authority may have marked the token used before the
        answer was lost or the check cut off, and the caller's retry, the same
        claimant, must still find it its own."""
        purpose = (
            identity_pb2.Purpose.Name(request.purpose)
            if request.purpose in (identity_pb2.Purpose.values())
            else "PURPOSE_UNSPECIFIED"
        )
        federation = self._config.federation
        policy = federation.me.disclosure.get(purpose)
        if policy is None:
            raise PermissionDenied(
                f"purpose: {purpose} has no disclosure policy at {federation.own}"
            )
        extra = [a for a in request.requested_attributes if a not in policy]
        if extra:
            raise PermissionDenied(
                f"requested_attributes: {', '.join(extra)} not disclosed for {purpose} "
                f"(allowed: {', '.join(policy)})"
            )
        attributes = tuple(request.requested_attributes) or policy
        # Single use is kept here too: an authority that lost its memory
        # (restarted) must not make a replay VALID. The claim is atomic.
        claim = await self._claim_token(request, federation, claimant)
        # What is withdrawn if the authority gives no answer: this attempt's new
        # claim, unless the caller may retry the check (a claim key).
        withdraw = claim is TokenClaim.NEW and not request.claim_key
        try:
            async with backend_call(self.metrics, "eid_authority"):
                check = await self._authority.check_credential(
                    request.credential_id, request.token_id, timeout=timeout
                )
        except BackendUnavailable as exc:
            await self._release(request.token_id, withdraw, claimant)
            raise PeerUnavailable(f"e-ID authority of {federation.own}: {exc}") from exc
        except (TranslationError, AdapterError) as exc:
            await self._release(request.token_id, withdraw, claimant)
            # The back-end answered, but not in a way this province's adapter can
            # use (a mapping mismatch, a refusal): a clear status, a logged event.
            log.error("e-ID authority answer unusable", error=str(exc))
            raise GatewayError(
                f"the e-ID authority of {federation.own} gave an answer its adapter "
                f"cannot use: {exc}"
            ) from exc
        except asyncio.CancelledError:
            self._release_soon(request.token_id, withdraw, claimant)
            raise
        if claim is TokenClaim.TAKEN:
            used = True  # answered for another exchange before: a replay
        elif claim is TokenClaim.OURS:
            used = False  # this exchange's earlier attempt marked it used at the authority
        else:
            used = check.token_already_used
        response = federation_pb2.CredentialCheckResponse(
            state=federation_pb2.CredentialState.ValueType(check.state),
            token_already_used=used,
        )
        set_timestamp(response.checked_at, check.checked_at)
        if check.state == STATE_NAMES.CREDENTIAL_ACTIVE and not used and check.holder is not None:
            response.claims.CopyFrom(disclose(check.holder, attributes, self._clock.now().date()))
        return response

    async def _claim_token(
        self,
        request: federation_pb2.CredentialCheckRequest,
        federation: FederationConfig,
        claimant: str,
    ) -> TokenClaim:
        """Record the token as answered for by ``claimant``; whether the claim is
        new, was this claimant's already, or is another's.

        Kept until the token's expiry (capped at the longest lifetime a token
        may have from now) plus the federation's allowed clock skew: a relying
        node whose clock is behind still accepts the token that long."""
        if not request.token_id or len(request.token_id) > 128:
            raise InvalidArgument("token_id", "the token's id (jti), 1..128 characters")
        now = self._clock.now().timestamp()
        longest = now + (MAX_LIFETIME + ISSUE_LEEWAY).total_seconds()
        expires = request.token_expires_at.seconds if request.HasField("token_expires_at") else 0
        skew = federation.me.node.max_clock_skew_seconds
        keep_until = min(expires or longest, longest) + skew
        return await self._store.claim_token_for(
            request.token_id, claimant=claimant, keep_until=keep_until, now=now
        )

    async def _release(self, token_id: str, withdraw: bool, claimant: str) -> None:
        """The authority gave no answer: withdraw a claim this attempt made, if
        ``withdraw`` (one an earlier attempt of the exchange made stays: that
        attempt may have had one; so does a claim the caller may retry)."""
        if withdraw:
            await self._store.release_token(token_id, claimant=claimant)

    def _release_soon(self, token_id: str, withdraw: bool, claimant: str) -> None:
        """:meth:`_release` from a check that is being cancelled (the node stops,
        or its asker went away when the node could carry no more on)."""
        if not withdraw:
            return
        task = asyncio.create_task(self._store.release_token(token_id, claimant=claimant))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def handle_federated(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.CredentialCheckResponse:
        request = opened.parse(federation_pb2.CredentialCheckRequest)
        assert isinstance(request, federation_pb2.CredentialCheckRequest)
        header = opened.header
        return await self.check_credential(
            request,
            timeout,
            claimant=claimant_of(header.sender, request.claim_key, header.message_id),
        )

    # ---- relying party side ----------------------------------------------------

    @staticmethod
    def _authorise(
        request: identity_pb2.VerifyIdentityRequest,
        client: ClientSection,
        federation: FederationConfig,
    ) -> tuple[str, str]:
        purpose = _PURPOSE_NAMES.get(request.purpose)
        if purpose is None:
            raise InvalidArgument("purpose", f"one of {', '.join(sorted(PURPOSES))}")
        relying_party = request.relying_party_id or client.id
        if relying_party != client.id:
            raise PermissionDenied(
                f"relying_party_id: expected the caller's own id {shown(client.id)} (or empty)"
            )
        if purpose not in client.purposes:
            raise PermissionDenied(f"purpose: {client.id} is not registered for {purpose}")
        policy = federation.me.disclosure.get(purpose, ())
        extra = [a for a in request.requested_attributes if a not in policy]
        if extra:
            # Only a real attribute name is repeated; anything else the caller sent is not.
            first = shown(extra[0]) if extra[0] in _ATTRIBUTE_NAMES else "an unknown name"
            raise PermissionDenied(
                f"requested_attributes: {len(extra)} attribute(s) beyond what {purpose} allows, "
                f"first {first}; expected some of {', '.join(policy)}"
            )
        reference = request.client_reference
        if len(reference) > 64 or not is_plain_text(reference):
            raise InvalidArgument(
                "client_reference", "at most 64 characters, no control characters"
            )
        if request.idempotency_key:
            validate_idempotency_key(
                "idempotency_key",
                request.idempotency_key,
                use="one per verification, repeated by its retries (or empty)",
            )
        return purpose, relying_party

    async def verify(
        self,
        request: identity_pb2.VerifyIdentityRequest,
        *,
        client: ClientSection,
        correlation_id: str,
        timeout: float,
    ) -> identity_pb2.VerifyIdentityResponse:
        """Run :meth:`checks` in order; the first outcome with a verdict ends the
        verification, and a token that passes them all is VALID."""
        federation = self._config.federation
        purpose, relying_party = self._authorise(request, client, federation)
        payload = request.qr_payload.strip()
        if len(payload.encode()) > MAX_TOKEN_BYTES:
            raise InvalidArgument("qr_payload", f"an e-ID token of at most {MAX_TOKEN_BYTES} bytes")
        if not payload or payload.count(".") != 2:
            raise InvalidArgument(
                "qr_payload", "an e-ID token: three base64url parts separated by '.'"
            )
        v = _Verification(
            request=request,
            payload=payload,
            purpose=purpose,
            relying_party=relying_party,
            correlation_id=correlation_id,
            timeout=timeout,
            federation=federation,
            trust=self._config.derived(TrustStore),
            response=identity_pb2.VerifyIdentityResponse(correlation_id=correlation_id),
            claim_key=claim_key_of(relying_party, request.idempotency_key),
        )
        checks = _Checks()
        verdict: identity_pb2.Verdict.ValueType = _VALID
        for check in self.checks():
            outcome = await check(v)
            if outcome is None:
                continue
            checks.set(outcome.check, outcome.outcome, outcome.detail)
            if outcome.verdict is not None:
                verdict = outcome.verdict
                break
        else:
            await self._record_check_in(v)
        response = v.response
        response.verdict = verdict
        checks.add_to(response)
        log.debug(
            "identity verified",
            verdict=_VERDICT_NAMES[verdict],
            issuer=response.issuer_province,
            purpose=purpose,
        )
        return response

    # ---- the checks, in order (each returns its outcome; None: nothing to report yet)

    async def _token_well_formed(self, v: _Verification) -> Outcome | None:
        try:
            v.token = parse_token(v.payload)
        except TokenMalformed as exc:
            return Outcome("signature", _FAILED, f"token not well formed: {exc}", _FORGED)
        v.response.issuer_province = v.token.issuer
        return None

    async def _issuer_key_trusted(self, v: _Verification) -> Outcome | None:
        token = v.require_token()
        try:
            v.key = v.trust.eid_issuer_key(token.issuer, token.key_id, token.issued_at)
        except KeyLookupError as exc:
            if exc.reason != "key_not_valid" and await self._config.refreshed(token.issuer):
                # The issuer published a key moments ago: its new descriptor is in force.
                v.trust = self._config.derived(TrustStore)
                return await self._issuer_key_trusted(v)
            if exc.reason == "key_not_valid":
                return Outcome("signature", _FAILED, str(exc), _FORGED)
            if token.issuer in v.federation.peer_codes and token.issuer not in v.federation.peers:
                # A province of this federation whose descriptor is not current: it
                # is unavailable (fail closed), not unknown.
                return Outcome(
                    "signature",
                    _INDETERMINATE,
                    f"no current descriptor of the issuing province {token.issuer}",
                    _ISSUER_UNREACHABLE,
                )
            return Outcome("signature", _INDETERMINATE, str(exc), _UNKNOWN_ISSUER)
        return None

    async def _signature_verifies(self, v: _Verification) -> Outcome | None:
        token = v.require_token()
        if v.key is None or not token.signature_valid(v.key):
            return Outcome(
                "signature", _FAILED, f"does not verify with key {token.key_id}", _FORGED
            )
        return Outcome("signature", _PASSED, f"Ed25519 key {token.key_id} of {token.issuer}")

    async def _within_validity_window(self, v: _Verification) -> Outcome | None:
        token = v.require_token()
        v.now = self._clock.now()
        problem = token.window_check(v.now, ISSUE_LEEWAY)
        if problem == "expired":
            return Outcome(
                "validity_window",
                _FAILED,
                f"expired at {token.expires_at.isoformat()}",
                _EXPIRED,
            )
        if problem is not None:
            return Outcome(
                "validity_window",
                _FAILED,
                problem,
                _EXPIRED if problem == "not yet valid" else _FORGED,
            )
        return Outcome("validity_window", _PASSED, f"valid until {token.expires_at.isoformat()}")

    async def _issuer_answers(self, v: _Verification) -> Outcome | None:
        """Ask the issuing node (or this node, for its own tokens) about the credential.

        A refusal of the disclosure asked for is the caller's error (raised); an
        issuer that cannot give a usable answer fails closed, saying why."""
        token, request = v.require_token(), v.request
        check_request = federation_pb2.CredentialCheckRequest(
            token_id=token.token_id,
            credential_id=token.credential_id,
            purpose=request.purpose,
            relying_party_id=v.relying_party,
            requested_attributes=request.requested_attributes,
        )
        # What FromDatetime sets for a whole second in UTC (a token's times are epoch seconds).
        check_request.token_expires_at.seconds = int(token.expires_at.timestamp())
        check_request.claim_key = v.claim_key
        try:
            if token.issuer == v.federation.own:
                # This node's own token: a caller's retry claims it as the same
                # verification; without a key every check is a claimant of its own.
                claimant = claimant_of(v.federation.own, v.claim_key, "") if v.claim_key else ""
                v.answer = await self.check_credential(check_request, v.timeout, claimant=claimant)
            else:
                v.answer, _ = await self._client.call(
                    token.issuer,
                    SERVICE,
                    check_request,
                    federation_pb2.CredentialCheckResponse,
                    correlation_id=v.correlation_id,
                    timeout=v.timeout,
                )
        except RemoteError as exc:
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"issuer {token.issuer} refused: {exc.message}") from exc
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # The issuer could not give a usable answer (its back-end failed, it
            # refused the envelope): fail closed, saying why.
            return Outcome(
                "status",
                _INDETERMINATE,
                f"issuer {token.issuer}: {exc.message}",
                _ISSUER_UNREACHABLE,
            )
        except PeerUnavailable as exc:
            return Outcome("status", _INDETERMINATE, exc.message, _ISSUER_UNREACHABLE)
        v.response.status_checked_at.CopyFrom(v.answer.checked_at)
        return None

    async def _status_fresh(self, v: _Verification) -> Outcome | None:
        answer = v.require_answer()
        now = self._clock.now() if v.now is None else v.now
        checked_at = answer.checked_at.ToDatetime(tzinfo=now.tzinfo)
        max_age = timedelta(seconds=v.federation.me.node.status_max_age_seconds)
        if not answer.HasField("checked_at") or abs(self._clock.now() - checked_at) > max_age:
            return Outcome(
                "status",
                _INDETERMINATE,
                f"issuer's status answer is stale (older than {int(max_age.total_seconds())} s)",
                _ISSUER_UNREACHABLE,
            )
        return None

    async def _credential_active(self, v: _Verification) -> Outcome | None:
        answer = v.require_answer()
        if answer.state != _CREDENTIAL_ACTIVE:
            return Outcome(
                "status", _FAILED, f"credential is {STATE_NAMES.Name(answer.state)}", _REVOKED
            )
        return _ACTIVE

    async def _first_use(self, v: _Verification) -> Outcome | None:
        if v.require_answer().token_already_used:
            return _ALREADY_USED
        return _FIRST_USE

    async def _disclosure_within_policy(self, v: _Verification) -> Outcome | None:
        """Keep only what this node's policy lets the caller see (the issuer may
        have released more: it is dropped), and put it in the response."""
        answer, request = v.require_answer(), v.request
        claims = answer.claims
        disclosed = claims.disclosed_attributes
        allowed = set(request.requested_attributes) or set(
            v.federation.me.disclosure.get(v.purpose, ())
        )
        extra = [a for a in disclosed if a not in allowed]
        for name in extra:
            if name != "age_over_18":
                claims.holder.ClearField(name)  # type: ignore[arg-type]
        v.response.attributes.CopyFrom(claims.holder)
        if extra:
            v.response.disclosed_attributes.extend([a for a in disclosed if a in allowed])
            return Outcome(
                "disclosure_policy",
                _PASSED,
                f"withheld {len(extra)} attribute(s) beyond the {v.purpose} policy",
            )
        v.response.disclosed_attributes.extend(disclosed)  # every one is allowed
        return _WITHIN_POLICY[v.purpose]

    def checks(self) -> tuple[Check, ...]:
        """The checks of a verification, in order (a method, not a class
        attribute of functions: mypyc compiles this class; see gateway/compiled.py)."""
        return (
            self._token_well_formed,
            self._issuer_key_trusted,
            self._signature_verifies,
            self._within_validity_window,
            self._issuer_answers,
            self._status_fresh,
            self._credential_active,
            self._first_use,
            self._disclosure_within_policy,
        )

    async def _record_check_in(self, v: _Verification) -> None:
        """A VALID hotel check-in is recorded (guest registration) before it is answered."""
        if v.purpose != "HOTEL_CHECK_IN":
            return
        response = v.response
        token = v.require_token()
        # A caller's retry of this verification (same key, same token) is
        # recorded once: the first try's check-in id is the answer's.
        retry_key = (
            hashlib.sha256(
                f"{v.claim_key}\x00{token.issuer}\x00{token.token_id}".encode()
            ).hexdigest()
            if v.claim_key
            else ""
        )
        response.check_in_id = await self._store.record_check_in(
            check_in_id=f"CI-{v.federation.own}-{random_uuid_hex()[:16]}",
            relying_party_id=v.relying_party,
            issuer_province=token.issuer,
            guest=response.attributes.SerializeToString(),
            client_reference=v.request.client_reference,
            recorded_at=self._clock.now(),
            correlation_id=v.correlation_id,
            retry_key=retry_key,
        )

    async def get_check_in(self, check_in_id: str, client: ClientSection) -> identity_pb2.CheckIn:
        if not _CHECK_IN_ID.fullmatch(check_in_id):
            raise InvalidArgument(
                "check_in_id", "the id VerifyIdentity returned (CI-<province>-<16 hex digits>)"
            )
        row = await self._store.get_check_in(check_in_id)
        if row is None or row[0] != client.id:
            raise NotFound(f"check_in_id: no check-in {shown(check_in_id)} for {client.id}")
        relying_party, issuer, guest, reference, recorded_at, correlation_id = row
        record = identity_pb2.CheckIn(
            check_in_id=check_in_id,
            relying_party_id=relying_party,
            issuer_province=issuer,
            client_reference=reference,
            correlation_id=correlation_id,
        )
        record.guest.ParseFromString(guest)
        stamp = Timestamp()
        stamp.FromDatetime(datetime.fromisoformat(recorded_at))
        record.recorded_at.CopyFrom(stamp)
        return record


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, exchange: IdentityExchange) -> None:
        self._exchange = exchange

    async def VerifyIdentity(  # noqa: N802 - gRPC method name
        self, request: identity_pb2.VerifyIdentityRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.VerifyIdentityResponse:
        remaining = context.time_remaining()
        timeout = DEFAULT_TIMEOUT if remaining is None else remaining
        return await self._exchange.verify(
            request,
            client=require_client(),
            correlation_id=current_correlation_id.get(),
            timeout=timeout,
        )

    async def GetCheckIn(  # noqa: N802 - gRPC method name
        self, request: identity_pb2.GetCheckInRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CheckIn:
        return await self._exchange.get_check_in(request.check_in_id, require_client())
