"""Errors raised by adapters and back-end connectors.

The tree is shallow so that the gateway can map it to gRPC status codes in one
table (the ``retryable`` flag tells its retry layer what is safe to repeat)::

    AdapterError                 root; never raised itself
    ├── TranslationError         a document does not match its mapping (ValueError)
    ├── BackendUnavailable       the back-end could not be reached in time (retryable)
    └── BackendRejected          the back-end refused our request (HTTP 4xx)
        └── WithdrawalNotFound   the fund centre has no withdrawal with that reference

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
    """The back-end did not answer in time, refused the connection or failed (5xx)."""

    retryable = True


class BackendRejected(AdapterError):
    """The back-end answered that our request was bad (HTTP 4xx).

    Not retryable: the same request will be refused again. Usually a mapping
    that does not match what the back-end expects.
    """


class WithdrawalNotFound(BackendRejected):
    """The fund centre has no withdrawal under the reference asked about.

    Distinct so that a deliverer that lost track of whether its submission
    arrived can tell "never arrived, submit (again)" from other refusals;
    submitting is idempotent by reference, so that is always safe.
    """
