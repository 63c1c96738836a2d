"""The outbox: asynchronous deliveries that survive outages and restarts.

A record and its outbox item are written in one transaction before the caller
is answered. The deliverer sends each due item to its peer as a signed
envelope, keeping the item's message id across attempts so that the receiver
can deduplicate, and deletes it only in the same transaction as the effect of
the peer's acknowledgement. Failures that may pass (peer unreachable, overloaded,
breaker open) are retried with exponential backoff and full jitter up to a cap;
a refusal (the peer answered no) is final and handed to the service's callback.

This is the one retry layer for asynchronous work: deliveries call the
federation client with ``retry=False``. Nothing polls faster than the earliest
due item: the deliverer sleeps until then, or until woken by new work or by a
finished delivery (and reads the store at most every 5 ms, only for items it can
start); when a delivery to a peer that had items backing off succeeds, every
item waiting for that peer is made due at once, so a province that comes back
is caught up immediately rather than at each item's next backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from google.protobuf.message import Message

from gateway.clock import Pacer
from gateway.errors import GatewayError, PeerUnavailable
from gateway.federation.client import FederationClient
from gateway.metrics import NodeMetrics
from gateway.store import OutboxItem, StateStore
from yrd.federation.v1 import federation_pb2

log = structlog.get_logger("yrd.outbox")

#: Shortest time between two reads of the due items while deliveries keep
#: finishing (each wakes the deliverer): under a backlog one read serves the
#: many deliveries that finished meanwhile.
READ_INTERVAL = 0.005

#: Run inside the write transaction that deletes the item (no awaiting there).
AckCallback = Callable[[sqlite3.Connection, OutboxItem, federation_pb2.DeliveryAck], None]
RefusalCallback = Callable[[sqlite3.Connection, OutboxItem, GatewayError], None]


@dataclass(frozen=True)
class OutboxRoute:
    """How to send items of one logical service and what their outcomes do."""

    request_type: type[Message]
    on_acked: AckCallback
    on_refused: RefusalCallback


class Outbox:
    """Delivers outbox items; an async context manager with an idempotent stop."""

    def __init__(
        self,
        store: StateStore,
        client: FederationClient,
        routes: dict[str, OutboxRoute],
        *,
        delivery_timeout: float = 5.0,
        base_backoff: float = 0.2,
        max_backoff: float = 5.0,
        per_peer: int = 32,
        metrics: NodeMetrics | None = None,
        idle_poll: float = 1.0,
    ) -> None:
        #: Longest sleep with nothing due: items written by another worker process
        #: of the node (which cannot wake this one) wait at most this long.
        self.idle_poll = idle_poll
        self._metrics = metrics
        self._store = store
        self._client = client
        self._routes = routes
        self.delivery_timeout = delivery_timeout
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._per_peer = per_peer
        self._wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._finished: set[int] = set()
        self._peer_load: defaultdict[str, int] = defaultdict(int)
        #: Peers with no item known to be waiting out a backoff since the last
        #: catch-up (empty at start: the first acknowledgement catches up).
        self._caught_up: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0
        self.retried = 0
        self.refused = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> Outbox:
        self._task = asyncio.create_task(self._run(), name="outbox")
        return self

    async def __aenter__(self) -> Outbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop delivering. Items in flight stay in the store and go again later."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        pacer = Pacer(READ_INTERVAL)
        while not self._stopping:
            await pacer.wait()
            self._wake.clear()
            # Items finished after this point are skipped even if the read below
            # still saw them (the read and the finish race).
            self._finished.clear()
            now = time.time()
            # Read only what can start: not what is in flight, not for a peer at
            # its limit, no more than the free slots (a backlog is not re-read
            # whole at every finished delivery).
            full = [peer for peer, load in self._peer_load.items() if load >= self._per_peer]
            free = self._per_peer + sum(
                self._per_peer - load for load in self._peer_load.values() if load < self._per_peer
            )
            try:
                due = await self._store.due_outbox(
                    now, limit=min(512, free), skip_ids=tuple(self._inflight), skip_peers=full
                )
                taken: Counter[str] = Counter()
                chosen = []
                for item_id, peer in due:
                    if item_id not in self._finished and (
                        self._peer_load[peer] + taken[peer] < self._per_peer
                    ):
                        taken[peer] += 1
                        chosen.append(item_id)
                items = await self._store.outbox_items(chosen)
                upcoming = await self._store.fetchone(
                    "SELECT MIN(next_attempt_at) FROM outbox WHERE next_attempt_at > ?", (now,)
                )
            except Exception:
                log.exception("outbox read failed")
                items, upcoming = [], None
            for item in items:
                if (
                    item.id in self._inflight
                    or item.id in self._finished
                    or self._peer_load[item.peer] >= self._per_peer
                ):
                    continue
                self._peer_load[item.peer] += 1
                self._inflight[item.id] = asyncio.create_task(self._deliver(item))
            delay = self.idle_poll
            if upcoming and upcoming[0] is not None:
                delay = min(delay, max(0.0, float(upcoming[0]) - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _deliver(self, item: OutboxItem) -> None:
        route = self._routes.get(item.service)
        try:
            if route is None:
                raise GatewayError(f"no outbox route for {item.service}")
            request = route.request_type()
            request.ParseFromString(item.payload)
            ack, _ = await self._client.call(
                item.peer,
                item.service,
                request,
                federation_pb2.DeliveryAck,
                correlation_id=item.correlation_id,
                timeout=self.delivery_timeout,
                idempotency_key=item.idempotency_key,
                message_id=item.message_id,
                retry=False,
            )
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            if isinstance(exc, PeerUnavailable) or exc.retryable or route is None:
                await self._reschedule(item, exc.message)
            else:
                await self._refused(item, route, exc)
        except Exception as exc:  # never lose an item to an unexpected error: retry later
            log.exception("outbox delivery failed unexpectedly", service=item.service)
            await self._reschedule(item, type(exc).__name__)
        else:
            await self._acked(item, route, ack)
        finally:
            self._finished.add(item.id)
            self._inflight.pop(item.id, None)
            self._peer_load[item.peer] -= 1
            self._wake.set()

    async def _acked(
        self, item: OutboxItem, route: OutboxRoute, ack: federation_pb2.DeliveryAck
    ) -> None:
        catch_up = item.peer not in self._caught_up
        self._caught_up.add(item.peer)

        def op(db: sqlite3.Connection) -> None:
            route.on_acked(db, item, ack)
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            if catch_up:
                # The peer is back: everything waiting out a backoff for it is due now.
                db.execute(
                    "UPDATE outbox SET next_attempt_at = ? WHERE peer = ? AND next_attempt_at > ?",
                    (time.time(), item.peer, time.time()),
                )

        await self._store.write(op)
        self.delivered += 1
        # The exchange itself has its own log line; this one matters when the
        # delivery took retries or the peer had it already.
        (log.info if item.attempts or ack.duplicate else log.debug)(
            "outbox delivered",
            peer=item.peer,
            service=item.service,
            correlation_id=item.correlation_id,
            attempts=item.attempts + 1,
            duplicate=ack.duplicate,
        )

    async def _refused(self, item: OutboxItem, route: OutboxRoute, exc: GatewayError) -> None:
        def op(db: sqlite3.Connection) -> None:
            route.on_refused(db, item, exc)
            db.execute("DELETE FROM outbox WHERE id = ?", (item.id,))

        await self._store.write(op)
        self.refused += 1
        log.warning(
            "outbox delivery refused",
            peer=item.peer,
            service=item.service,
            correlation_id=item.correlation_id,
            code=exc.code.name,
            reason=exc.message,
        )

    async def _reschedule(self, item: OutboxItem, reason: str) -> None:
        self._caught_up.discard(item.peer)
        backoff = min(self.max_backoff, self.base_backoff * 2 ** min(item.attempts, 20))
        when = time.time() + random.uniform(backoff / 2, backoff)  # noqa: S311 - jitter, not crypto

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (when, reason[:200], item.id),
            )

        await self._store.write(op)
        self.retried += 1
        if self._metrics is not None:
            self._metrics.outbox_retries.labels(item.peer).inc()
