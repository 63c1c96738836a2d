"""Errors raised by adapters and back-end connectors.

The tree is shallow so that the gateway can map it to gRPC status codes in one
table (the ``retryable`` flag tells its retry layer what is safe to repeat)::

    AdapterError                 root; never raised itself
    ├── TranslationError         a document does not match its mapping (ValueError)
    ├── BackendUnavailable       the back-end could not be reached in time (retryable)
    ├── BackendRejected          the back-end refused our request (HTTP 4xx)
    │   ├── WithdrawalNotFound   the fund centre has no withdrawal with that reference
    │   ├── CertificateNotFound  the library has no such certificate for that holder
    │   ├── ConsentRefused       the library refused: no valid consent (``reason``)
    │   └── CaseNotFound         the case system has no case with that reference
    └── PluginError              a configured adapter plug-in is missing or misconfigured

Messages name the native field path and what was expected, never a resident's
personal data: they end up in logs and in gRPC status messages.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Root of every error raised by :mod:`adapters`."""

    #: True when repeating the same call may succeed (transient failure).
    retryable: bool = False


class TranslationError(AdapterError, ValueError):
    """A native or canonical document does not match the province's mapping.

    ``path`` is the native field path (dotted, from the document root) and
    ``expected`` says what the mapping wanted there; both are in the message.
    """

    def __init__(self, path: str, expected: str, *, message: str = "") -> None:
        self.path = path
        self.expected = expected
        self.message_type = message
        prefix = f"{message}: " if message else ""
        super().__init__(f"{prefix}{path or '<document>'}: expected {expected}")


class BackendUnavailable(AdapterError):
    """The back-end did not answer in time, refused the connection or failed (5xx).

    ``may_have_arrived`` is False only when the request surely never reached
    the back-end (no connection was made); otherwise the back-end may have
    acted on it although its answer was lost.
    """

    retryable = True

    def __init__(self, message: str, *, may_have_arrived: bool = True) -> None:
        super().__init__(message)
        self.may_have_arrived = may_have_arrived


class BackendRejected(AdapterError):
    """The back-end answered that our request was bad (HTTP 4xx).

    Not retryable: the same request will be refused again. Usually a mapping
    that does not match what the back-end expects. ``http_status`` is the
    HTTP status when there was one (a plug-in may react to 401, say).
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class WithdrawalNotFound(BackendRejected):
    """The fund centre has no withdrawal under the reference asked about.

    Distinct so that a deliverer can tell "the centre does not know it" from
    other refusals. For a submission that was (or may have been) made, it means
    the centre lost its state: the gateway then never submits it again on its
    own (money could move twice) but holds it for reconciliation.
    """


class CertificateNotFound(BackendRejected):
    """The certificate library has no certificate of that category (and number) for the holder."""


class ConsentRefused(BackendRejected):
    """The certificate library refused to release a certificate: the consent does not cover it.

    ``reason`` is one of :data:`CONSENT_REASONS`: ``"missing"`` (no consent
    under that reference), ``"expired"``, ``"other_holder"`` (the consent was
    given by someone else) or ``"other_province"`` (it was given for another
    requesting province).
    """

    def __init__(self, reason: str) -> None:
        if reason not in CONSENT_REASONS:
            raise ValueError(f"reason must be one of {CONSENT_REASONS}")
        self.reason = reason
        super().__init__(f"certificate library refused the consent: {reason}")


#: Why a consent was refused (``ConsentRefused.reason``).
CONSENT_REASONS = ("missing", "expired", "other_holder", "other_province")


class CaseNotFound(BackendRejected):
    """The case system has no case under the reference asked about.

    Submitting is idempotent by reference, so a deliverer that sees this may
    always submit (again).
    """


class PluginError(AdapterError):
    """An ``[adapter.plugin]`` cannot be used: not installed, not importable, bad settings.

    A configuration error, found when the config is validated. Each problem is
    ``(key path below [adapter.plugin], value, what was expected)``; the
    expectation of a missing plug-in says what to install.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], object, str]]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(f"{'.'.join(map(str, loc))}: expected {what}" for loc, _, what in problems)
        )
