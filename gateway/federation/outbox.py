"""The outbox: asynchronous deliveries that survive outages and restarts.

A record and its outbox item are written in one transaction before the caller
is answered. The deliverer sends each due item to its peer as a signed
envelope, keeping the item's message id across attempts so that the receiver
can deduplicate, and deletes it only in the same transaction as the effect of
the peer's acknowledgement. Only a peer's signed decision about the request
ends a delivery (:func:`gateway.core.errors.ends_exchange`), handed to the service's
refusal callback; every other failure -- the peer unreachable, overloaded or
failing, this node's own store failing -- is retried with the gateway's one
backoff (:mod:`gateway.core.backoff`). When the store cannot record the next attempt,
the time is kept in memory, so a failing disk does not turn into a retry storm.
An item still failing ``park_after`` seconds after it was written (or after an
operator last retried it) is PARKED with its last error: not delivered until an
operator retries it.

This is the one retry layer for asynchronous work: deliveries call the
federation client with ``retry=False``. Nothing polls faster than the earliest
due item: the deliverer sleeps until then, or until woken by new work or by a
finished delivery (and reads the store at most every 5 ms, only for items it can
start); when a delivery to a peer that had items backing off succeeds, every
item waiting for that peer is made due at once, so a province that comes back
is caught up immediately rather than at each item's next backoff.

Replicas of a province share one outbox (PostgreSQL): each deliverer *claims*
the items it starts (:meth:`~gateway.storage.interfaces.OutboxStore.claim_outbox`,
a lease of ``lease_seconds`` under this process's owner name), renews the
leases of its items in flight every third of that, and finishes an attempt
with writes fenced by its owner name: an item another replica took over (this
one stalled past its lease) is neither removed nor rescheduled by it. A clean
stop releases its leases; a killed replica's items are taken over when their
leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from google.protobuf.message import Message

from gateway.core.backoff import backoff_delay
from gateway.core.clock import Pacer
from gateway.core.errors import GatewayError, ends_exchange
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.storage.interfaces import OutboxStore, StateTransaction
from gateway.storage.records import LEASE_SECONDS, OutboxItem, lease_owner
from yrd.federation.v1 import federation_pb2

log = structlog.get_logger("yrd.outbox")

#: Shortest time between two reads of the due items while deliveries keep
#: finishing (each wakes the deliverer): under a backlog one read serves the
#: many deliveries that finished meanwhile.
READ_INTERVAL = 0.005

#: Run inside the unit of work that deletes the item (no awaiting there): the
#: effect of the peer's answer is committed with the item's removal.
AckCallback = Callable[[StateTransaction, OutboxItem, federation_pb2.DeliveryAck], None]
RefusalCallback = Callable[[StateTransaction, OutboxItem, GatewayError], None]


#: An item whose lease this process no longer holds when it writes the outcome:
#: an earlier write of it committed though the store reported a failure (a
#: failing disk), or another replica took it over after the lease expired. The
#: line's ``found`` says which, from the row (:func:`_found`).
_NOT_OURS = "outbox item no longer leased here"


def _found(tx: StateTransaction, item_id: int) -> str:
    """What the outbox holds of an item whose lease this outbox found gone,
    read in the same transaction."""
    holder = tx.outbox_holder(item_id)
    if holder is None:
        return "finished (no longer in the outbox: delivered, refused or removed)"
    if holder:
        return "leased by another owner (taken over by another replica or worker process)"
    return "not leased (an earlier write of it from here landed though reported failed)"


@dataclass(frozen=True)
class OutboxRoute:
    """How to send items of one logical service and what their outcomes do.

    ``on_acked`` and ``on_refused`` run inside the unit of work that records the
    outcome, which may run twice (its commit group is written again when another
    unit of it fails): they write state and log nothing. The refusal's log line
    (``refused_event`` at ``refused_level``) is written once, after the commit."""

    request_type: type[Message]
    on_acked: AckCallback
    on_refused: RefusalCallback
    refused_event: str = "outbox delivery refused"
    refused_level: Literal["warning", "error"] = "warning"


class Outbox:
    """Delivers outbox items; an async context manager with an idempotent stop."""

    def __init__(
        self,
        store: OutboxStore,
        client: FederationClient,
        routes: dict[str, OutboxRoute],
        *,
        delivery_timeout: float = 5.0,
        base_backoff: float = 0.2,
        max_backoff: float = 5.0,
        per_peer: int = 32,
        metrics: NodeMetrics | None = None,
        idle_poll: float = 1.0,
        park_after: float = 86_400.0,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        #: This process's name in its leases, and how long a lease lasts unless renewed.
        self.owner = owner or lease_owner()
        self.lease_seconds = lease_seconds
        #: Seconds after an item was written past which a failing delivery is parked.
        self.park_after = park_after
        #: Items whose next attempt could not be written: id -> (when, failures,
        #: item). At most one entry per item this deliverer claimed; tried again
        #: from here when due (the claim is this process's: a store that cannot
        #: write cannot claim), dropped once a write about the item succeeds.
        self._held: dict[int, tuple[float, int, OutboxItem]] = {}
        #: Items whose reschedule found their lease gone (an earlier write of it
        #: landed, or another replica holds it): not claimed again here before
        #: the backoff they were given (id -> when). Without it the next pass
        #: takes such an item back at once, one attempt per pass.
        self._cooling: dict[int, float] = {}
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
        self._renewer: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0
        self.retried = 0
        self.refused = 0
        self.parked = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> Outbox:
        self._task = asyncio.create_task(self._run(), name="outbox")
        self._renewer = asyncio.create_task(self._renew(), name="outbox-leases")
        return self

    async def __aenter__(self) -> Outbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop delivering. Items in flight stay in the store and go again later:
        their leases are released, so any replica may take them at once."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        for background in (self._task, self._renewer):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._task is not None:
            try:
                await self._store.release_outbox_leases(self.owner)
            except Exception as exc:  # they expire instead
                log.warning("outbox leases not released; they expire", error=describe(exc))

    async def _renew(self) -> None:
        """Every third of a lease, extend the leases of the items in flight. An
        item no longer ours was taken over by another replica (this one stalled),
        or finished by a write whose commit the store did not report: its
        attempt goes on, but its outcome will not be written here (fenced)."""
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = list(self._inflight)
            if not ids:
                continue
            try:
                ours = await self._store.renew_outbox_leases(
                    ids, owner=self.owner, until=time.time() + self.lease_seconds
                )
            except Exception as exc:  # the next round tries again
                log.warning("outbox leases not renewed", error=describe(exc))
                continue
            lost = [item_id for item_id in ids if item_id not in ours and item_id in self._inflight]
            if lost:
                log.warning(
                    "outbox items no longer leased here (finished by a write whose commit was"
                    " not reported, or taken over by another replica)",
                    items=len(lost),
                )

    async def _run(self) -> None:
        pacer = Pacer(READ_INTERVAL)
        while not self._stopping:
            await pacer.wait()
            self._wake.clear()
            # Items finished after this point are skipped even if the read below
            # still saw them (the read and the finish race).
            self._finished.clear()
            now = time.time()
            waiting, again = [], []
            for item_id, (when, _, held_item) in self._held.items():
                if when > now:
                    waiting.append(item_id)
                elif item_id not in self._inflight:
                    again.append(held_item)
            # Read only what can start: not what is in flight, not for a peer at
            # its limit, no more than the free slots (a backlog is not re-read
            # whole at every finished delivery).
            full = [peer for peer, load in self._peer_load.items() if load >= self._per_peer]
            free = self._per_peer + sum(
                self._per_peer - load for load in self._peer_load.values() if load < self._per_peer
            )
            for item_id in [i for i, until in self._cooling.items() if until <= now]:
                del self._cooling[item_id]
            try:
                claimed = await self._store.claim_outbox(
                    now,
                    min(512, free),
                    owner=self.owner,
                    lease_seconds=self.lease_seconds,
                    skip_ids=(*self._inflight, *self._held, *self._cooling),
                    skip_peers=full,
                )
                upcoming = await self._store.next_outbox_time(after=now)
            except Exception:
                log.exception("outbox read failed")
                claimed, upcoming = [], None
            spare = []
            for item in again:
                self._peer_load[item.peer] += 1
                self._inflight[item.id] = asyncio.create_task(self._deliver(item))
            for item in claimed:
                if (
                    item.id in self._inflight
                    or item.id in self._finished
                    or self._peer_load[item.peer] >= self._per_peer
                ):
                    spare.append(item.id)
                    continue
                self._peer_load[item.peer] += 1
                self._inflight[item.id] = asyncio.create_task(self._deliver(item))
            if spare:
                # Claimed beyond a peer's free slots: free for the other replicas now.
                with contextlib.suppress(Exception):  # else they expire
                    await self._store.release_outbox_leases(self.owner, spare)
            delay = self.idle_poll
            if upcoming is not None:
                delay = min(delay, max(0.0, upcoming - time.time()))
            # What is still held: a delivery that finished during the reads above
            # may have dropped items (an acknowledgement catches its peer up).
            soonest = min(
                (held[0] for item_id in waiting if (held := self._held.get(item_id))),
                default=None,
            )
            if soonest is not None:
                delay = min(delay, max(0.0, soonest - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _deliver(self, item: OutboxItem) -> None:
        """One attempt; its outcome is written, or its next attempt kept in memory.
        Nothing escapes this task (no unretrieved task exception)."""
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - _attempt handles its failures itself
            log.exception("outbox delivery step failed", service=item.service)
        finally:
            self._finished.add(item.id)
            self._inflight.pop(item.id, None)
            self._peer_load[item.peer] -= 1
            self._wake.set()

    async def _attempt(self, item: OutboxItem) -> None:
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
        except Exception as exc:
            if route is not None and isinstance(exc, GatewayError) and ends_exchange(exc):
                try:
                    await self._refused(item, route, exc)
                except Exception as failure:  # the refusal is not written: it comes again
                    await self._retry_later(item, failure)
                return
            await self._retry_later(item, exc)
            return
        try:
            await self._acked(item, route, ack)
        except Exception as failure:  # not written: deliver again (the peer dedupes)
            await self._retry_later(item, failure)

    async def _acked(
        self, item: OutboxItem, route: OutboxRoute, ack: federation_pb2.DeliveryAck
    ) -> None:
        catch_up = item.peer not in self._caught_up
        self._caught_up.add(item.peer)

        def work(tx: StateTransaction) -> str | None:
            if not tx.remove_outbox_item(item.id, owner=self.owner):
                return _found(tx, item.id)  # not ours now: whoever holds it records it
            route.on_acked(tx, item, ack)
            if catch_up:
                # The peer is back: everything waiting out a backoff for it is due now.
                tx.make_peer_due(item.peer, time.time())
            return None

        try:
            gone = await self._store.unit_of_work(work)
        except BaseException:
            self._caught_up.discard(item.peer)
            raise
        if gone is not None:
            self._held.pop(item.id, None)
            log.warning(_NOT_OURS, found=gone, then="its outcome is left as stored")
            return
        self._held.pop(item.id, None)
        if catch_up:
            for held_id, (_, _, held_item) in list(self._held.items()):
                if held_item.peer == item.peer:
                    del self._held[held_id]
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
        def work(tx: StateTransaction) -> str | None:
            if not tx.remove_outbox_item(item.id, owner=self.owner):
                return _found(tx, item.id)  # not ours now: whoever holds it records it
            route.on_refused(tx, item, exc)
            return None

        gone = await self._store.unit_of_work(work)
        self._held.pop(item.id, None)
        if gone is not None:
            log.warning(_NOT_OURS, found=gone, then="its outcome is left as stored")
            return
        self.refused += 1
        (log.error if route.refused_level == "error" else log.warning)(
            route.refused_event,
            peer=item.peer,
            service=item.service,
            correlation_id=item.correlation_id,
            code=exc.code.name,
            reason=exc.message,
        )

    async def _retry_later(self, item: OutboxItem, exc: BaseException) -> None:
        """Schedule the next attempt (or park the item past ``park_after``): one
        log line per item per backoff step, and the schedule kept in memory when
        the store cannot write it."""
        self._caught_up.discard(item.peer)
        held = self._held.get(item.id)
        failures = max(item.attempts, held[1] if held else 0)
        reason = describe(exc)
        now = time.time()
        when = now + backoff_delay(failures, base=self.base_backoff, cap=self.max_backoff)
        park = now - (item.pending_since or item.created_at) >= self.park_after

        def work(tx: StateTransaction) -> str | None:
            if tx.reschedule_outbox_item(
                item.id,
                owner=self.owner,
                attempts=failures + 1,
                next_attempt_at=when,
                last_error=reason,
                parked_at=now if park else None,
            ):
                return None
            return _found(tx, item.id)

        fields = {
            "peer": item.peer,
            "service": item.service,
            "subject": item.subject,
            "attempts": failures + 1,
            "error": reason,
        }
        if self._metrics is not None:
            self._metrics.outbox_retries.labels(item.peer).inc()
        self.retried += 1
        try:
            gone = await self._store.unit_of_work(work)
        except Exception as failure:
            self._held[item.id] = (when, failures + 1, item)
            log.warning(
                "outbox delivery failed; the next attempt is kept in memory (store cannot write)",
                retry_in=round(when - now, 3),
                store_error=describe(failure),
                **fields,
            )
            return
        self._held.pop(item.id, None)
        if gone is not None:
            self._cooling[item.id] = when
            log.warning(_NOT_OURS, found=gone, then="no retry is scheduled here")
            return
        if park:
            self.parked += 1
            if self._metrics is not None:
                self._metrics.outbox_parked.labels(item.peer).inc()
            log.error("outbox item parked for an operator", **fields)
        elif isinstance(exc, GatewayError):
            # The first failure of an item at INFO; the later ones (a peer down
            # for an hour) at DEBUG: the retries metric counts them.
            (log.info if failures == 0 else log.debug)(
                "outbox delivery failed; retrying", retry_in=round(when - now, 3), **fields
            )
        else:  # not a known fault: the traceback says where it came from
            log.warning(
                "outbox delivery failed unexpectedly; retrying",
                retry_in=round(when - now, 3),
                exc_info=exc,
                **fields,
            )


def describe(exc: BaseException) -> str:
    """A failure in one line for the item's ``last_error`` (at most 200 characters)."""
    if isinstance(exc, GatewayError):
        text = f"{exc.code.name}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:200]
