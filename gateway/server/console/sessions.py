"""Console sessions: kept in memory, bounded in number, ended when idle.

A session holds the admin bearer token the operator logged in with (every page
calls the node's AdminService with it) and the operator's name (recorded by the
node with each action). Its id is 256 random bits, sent only in an HttpOnly,
Secure, SameSite=Strict cookie; each session has its own CSRF token, which
every POST must carry.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Name of the session cookie.
SESSION_COOKIE = "yrd_console_session"


@dataclass
class Session:
    """One operator logged in to the console."""

    id: str
    token: str
    operator: str
    client: str
    csrf: str
    last_seen: float
    #: A one-line notice shown once on the next page (the outcome of an action).
    notice: str = ""
    notice_ok: bool = True

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionStore:
    """At most ``max_sessions`` sessions; one unused for ``idle_seconds`` is gone.

    Past the bound the least recently used session is ended: memory stays
    bounded whatever the number of logins."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions: expected at least 1")
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def create(self, *, token: str, operator: str, client: str = "") -> Session:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            operator=operator,
            client=client,
            csrf=secrets.token_urlsafe(32),
            last_seen=self._clock(),
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (and it counts as used now), else None."""
        if not session_id:
            return None
        self._expire()
        session = self._sessions.get(session_id)
        if session is None:
            return None
        session.last_seen = self._clock()
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def clear(self) -> None:
        self._sessions.clear()

    def _expire(self) -> None:
        # Ordered by last use: the idle ones are at the front.
        limit = self._clock() - self.idle_seconds
        while self._sessions:
            first = next(iter(self._sessions.values()))
            if first.last_seen > limit:
                break
            self._sessions.popitem(last=False)
