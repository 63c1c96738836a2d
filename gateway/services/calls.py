"""The current call as the services see it: who called and under which
correlation id. The server's interceptor sets both (it authenticates first);
the services only read them, so they need nothing of the server layer."""

from __future__ import annotations

import contextvars

from gateway.config.models import ClientSection
from gateway.core.errors import Unauthenticated

#: The authenticated local client of the current call (None on the federation service).
current_client: contextvars.ContextVar[ClientSection | None] = contextvars.ContextVar(
    "current_client", default=None
)
#: The correlation id of the current call.
current_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_correlation_id", default=""
)


def require_client() -> ClientSection:
    """The authenticated local client of the current call (public services only)."""
    client = current_client.get()
    if client is None:  # pragma: no cover - the interceptor authenticates first
        raise Unauthenticated("no authenticated client")
    return client
