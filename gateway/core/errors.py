"""The exception tree of the gateway.

::

    GatewayError                      (retryable = False, status INTERNAL)
    ├── ConfigError                   a config file is wrong (file, key path, value, expected)
    ├── InvalidArgument               a request field is wrong      -> INVALID_ARGUMENT
    ├── NotFound                                                    -> NOT_FOUND
    ├── AlreadyExists                                               -> ALREADY_EXISTS
    ├── FailedPrecondition                                          -> FAILED_PRECONDITION
    ├── Unauthenticated                                             -> UNAUTHENTICATED
    ├── PermissionDenied                                            -> PERMISSION_DENIED
    ├── ResourceExhausted             (retryable)                   -> RESOURCE_EXHAUSTED
    ├── EnvelopeRejected              a signed envelope failed a check (carries its code)
    ├── PeerUnavailable               (retryable) a peer or back-end could not be reached
    │   │                                                           -> UNAVAILABLE
    │   └── PeerDown                  the peer's circuit breaker is open (not retried)
    ├── StoreUnavailable              (retryable) this node cannot write its stores
    │                                                               -> UNAVAILABLE + RetryInfo
    └── RemoteError                   a peer answered non-OK (its code; signed or not)

What ends an exchange is decided in one place, :func:`ends_exchange` (DESIGN §5):
only a peer's *signed* decision about the request. Every other failure is retried.
Domain errors become gRPC statuses in exactly one place
(:mod:`gateway.server.interceptors`); ``grpc.RpcError`` becomes a domain error in
exactly one place on the client side (:mod:`gateway.federation.client`).
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(GatewayError):
    """A province config is wrong. The message names file, key path, value, expectation."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    @classmethod
    def one(cls, file: object, key: str, value: object, expected: str) -> ConfigError:
        return cls([format_problem(file, key, value, expected)])


def format_problem(file: object, key: str, value: object, expected: str) -> str:
    shown = repr(value)
    if len(shown) > 80:
        # Keep the end: for paths it is the file name, for lists the newest entry.
        shown = "..." + shown[-77:]
    return f"{file}: {key}: got {shown}, expected {expected}"


def shown(value: object, limit: int = 64) -> str:
    """A non-personal value as an error message may show it: ``repr`` (control
    characters escaped), cut to ``limit`` characters with a trailing ``…``.

    The one renderer of echoed values. Never pass it a personal value (ID
    numbers, names, accounts, free text): name the field and what was expected
    instead.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"


class InvalidArgument(GatewayError):
    """A request field is missing or ill-formed."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, expected: str) -> None:
        self.field = field
        self.expected = expected
        super().__init__(f"{field}: expected {expected}")


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GatewayError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GatewayError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which a retry may succeed (sent as google.rpc.RetryInfo).
        self.retry_after = retry_after


class Unimplemented(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class EnvelopeRejected(GatewayError):
    """A received envelope failed one of the checks of DESIGN §4."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        self.code = code
        #: Short machine-readable reason, e.g. "bad_signature", "replayed_nonce".
        self.reason = reason
        super().__init__(message)


class PeerUnavailable(GatewayError):
    """A peer node or back-end could not be reached in time."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class PeerDown(PeerUnavailable):
    """The peer's circuit breaker is open: fail fast, do not retry now."""

    retryable = False


class StoreUnavailable(GatewayError):
    """This node cannot write its state store or message log (disk full, file-size
    limit, I/O error, read-only): a fault that passes, answered UNAVAILABLE with
    RetryInfo, never INTERNAL."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which a retry may succeed (sent as google.rpc.RetryInfo).
        self.retry_after = retry_after


class RemoteError(GatewayError):
    """A peer answered a request with a non-OK status.

    ``signed`` is True when the status came in a response envelope the peer
    signed (its decision, or a fault it vouches for); False for a bare gRPC error
    (a transport failure, or the peer's verifier refusing the envelope).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, signed: bool = False) -> None:
        self.code = code
        self.signed = signed
        self.retryable = code in RETRYABLE_CODES
        super().__init__(message)


#: gRPC codes on which a call may be retried safely (DESIGN §5).
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


#: Codes by which a peer decides about a request itself: signed, they end the
#: exchange (the request is wrong, not permitted, conflicts, or names nothing).
DECISION_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def ends_exchange(exc: BaseException) -> bool:
    """The one rule of what ends an exchange (DESIGN §5): a peer's signed decision.

    True only for a :class:`RemoteError` the peer signed whose code is one of
    :data:`DECISION_CODES`. Everything else -- INTERNAL, UNKNOWN, DATA_LOSS,
    ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, unsigned
    errors, transport errors, this node's own store failures -- is a fault
    and is retried with backoff.
    """
    return isinstance(exc, RemoteError) and exc.signed and exc.code in DECISION_CODES


def status_from_int(code: int) -> grpc.StatusCode:
    """The StatusCode for its integer value (UNKNOWN if none)."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN
