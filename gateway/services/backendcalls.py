"""Calls to this province's back-ends, as the node's metrics count them.

Every call through an adapter ends in one of four outcomes, the ``outcome``
label of ``yrd_backend_calls_total`` and ``yrd_backend_duration_seconds``:

- ``ok``: the back-end answered and the adapter mapped the answer;
- ``refused``: the back-end's own decision about the request (HTTP 4xx:
  :class:`~adapters.errors.BackendRejected` and its kinds, e.g. not found or
  consent refused);
- ``translation_error``: the adapter could not map the message, either way
  (:class:`~adapters.errors.TranslationError`, or an adapter that failed
  unexpectedly);
- ``unavailable``: the back-end could not be reached, timed out or failed (5xx),
  or the call was given up before it answered.

Only the metric is decided here; what the exchange answers its caller is each
service's own business, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from gateway.core.metrics import NodeMetrics

OK, REFUSED, TRANSLATION_ERROR, UNAVAILABLE = "ok", "refused", "translation_error", "unavailable"
#: Every value of the outcome label.
OUTCOMES = (OK, REFUSED, TRANSLATION_ERROR, UNAVAILABLE)


def outcome_of(exc: BaseException | None) -> str:
    """The outcome label of a back-end call that raised ``exc`` (None: it returned)."""
    if exc is None:
        return OK
    if isinstance(exc, BackendUnavailable | asyncio.CancelledError | TimeoutError):
        return UNAVAILABLE
    if isinstance(exc, BackendRejected):
        return REFUSED
    if isinstance(exc, TranslationError):
        return TRANSLATION_ERROR
    # Anything else came out of the adapter itself (a plug-in's bug, a mapping
    # it did not foresee): it could not turn the exchange into a call and back.
    return TRANSLATION_ERROR


@contextlib.asynccontextmanager
async def backend_call(metrics: NodeMetrics | None, backend: str) -> AsyncIterator[None]:
    """Count the call made in the ``async with`` block and its latency, by outcome;
    exceptions pass through unchanged."""
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        if metrics is not None:
            metrics.observe_backend(backend, outcome_of(exc), started)
        raise
    if metrics is not None:
        metrics.observe_backend(backend, OK, started)
