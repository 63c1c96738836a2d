"""The directory at work in a node: publish its own descriptor, hold its peers'.

- **Publishing** (:class:`Publisher`): the node describes its province from its
  own config and signs the descriptor with its TLS key. It issues a new one
  (serial up) only when the content changed, its TLS certificate changed, or
  half its validity has passed; otherwise every worker, and every restart,
  serves the same one from ``<store>/directory/own.descriptor``.
- **Holding** (:class:`Directory`): for each peer its own config names, the
  node fetches the peer's descriptor (``DirectoryService.GetDescriptor`` on the
  peer's federation endpoint, with the serial it holds, so an unchanged one
  costs no transfer) at start and every ``directory.refresh_seconds``, from the
  endpoints the held descriptor lists and then the bootstrap endpoint. Each one
  is verified (:func:`gateway.trust.descriptor.verify`), kept on disk as the
  last good copy, and put in force. A node starts from its copies when a peer
  is down. A refused one changes nothing and is logged and counted by reason.
- **In force**: the peers whose descriptor is current. When that set changes
  (a new serial, a peer's descriptor expiring, a peer added to the config) the
  node's config holder is swapped, as a reload does; a peer whose descriptor is
  past its ``not_after`` is not in force: its keys are not trusted and no call
  goes to it; the node reports itself degraded.
- **On demand**: an envelope, token or seal under a key id this node does not
  know makes it ask that peer at once (at most every few seconds), so a key
  published moments ago verifies without waiting for the next refresh.
- **Several workers**: each watches the descriptor files; what one fetched or
  an operator imported (``yrd-gateway directory import``) the others read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509

from gateway.config.holder import ConfigHolder
from gateway.config.models import FederationConfig, ProvinceConfig
from gateway.config.peers import PeerFacts
from gateway.core.clock import Clock
from gateway.core.metrics import NodeMetrics
from gateway.storage.descriptors import DescriptorCache
from gateway.trust import descriptor as descriptors
from gateway.trust.descriptor import DescriptorRefused
from yrd.directory.v1 import directory_pb2, directory_pb2_grpc

log = structlog.get_logger("yrd.directory")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How long one descriptor fetch may take.
FETCH_TIMEOUT = 5.0
#: Shortest time between two on-demand fetches of one peer.
ON_DEMAND_INTERVAL = 2.0
#: Longest wait before fetching again a peer whose fetch failed.
MAX_RETRY = 30.0
#: ... and of a peer of which nothing is held yet.
MAX_RETRY_MISSING = 2.0
#: How often the loop wakes to notice expiry and other workers' files.
TICK = 0.5


def _content(descriptor: directory_pb2.ProvinceDescriptor) -> bytes:
    """What a descriptor says, without its serial and times (to see a change)."""
    copy = directory_pb2.ProvinceDescriptor()
    copy.CopyFrom(descriptor)
    copy.ClearField("serial")
    copy.ClearField("issued_at")
    copy.ClearField("not_after")
    return copy.SerializeToString(deterministic=True)


class Publisher:
    """Issues this node's own signed descriptor, at most once per change."""

    def __init__(self, cache: DescriptorCache, clock: Clock) -> None:
        self.cache = cache
        self.clock = clock

    def current(self, me: ProvinceConfig) -> bytes:
        """The signed descriptor to publish now (a SignedDescriptor, serialised):
        the one on disk if it still says the same and is not half-way through its
        validity, else a new one with a higher serial, written before returned."""
        if me.tls is None:
            raise ValueError("a node without [tls] cannot sign a descriptor")
        certificate = me.tls.certificate.read_bytes()
        private_key = me.tls.private_key.read_bytes()
        now = self.clock.now()
        own = self.cache.own  # a file of the node, or a row of the province's database
        with own.lock():
            stored = own.read()
            previous = signed = None
            since: dict[str, datetime] = {}
            issued = not_after = EPOCH
            if stored is not None:
                try:  # a damaged own file is only replaced by a new descriptor
                    signed = descriptors.parse_signed(stored)
                    previous = descriptors.read(signed)
                    since = {
                        s.service: descriptors.instant(s.since, "since") for s in previous.services
                    }
                    issued = descriptors.instant(previous.issued_at, "issued_at")
                    not_after = descriptors.instant(previous.not_after, "not_after")
                except DescriptorRefused:
                    previous = signed = None
                    since = {}
            draft = descriptors.describe(
                me,
                serial=1,
                issued_at=EPOCH,
                not_after=EPOCH,
                since=since,
                tls_certificate=certificate,
            )
            if (
                stored is not None
                and previous is not None
                and signed is not None
                and (
                    _content(previous) == _content(draft)
                    and signed.certificate == descriptors.tls_certificate_der(certificate)
                    and issued <= now < issued + (not_after - issued) / 2
                )
            ):
                return stored
            serial = max(previous.serial + 1 if previous else 1, int(now.timestamp() * 1000))
            fresh = descriptors.describe(
                me,
                serial=serial,
                issued_at=now,
                not_after=now + timedelta(days=me.directory.validity_days),
                since=since,
                tls_certificate=certificate,
            )
            data = descriptors.sign(fresh, private_key, certificate).SerializeToString()
            own.write(data, serial)
        log.info(
            "descriptor published",
            province=me.code,
            serial=serial,
            not_after=fresh.not_after.ToDatetime(tzinfo=UTC).isoformat(),
        )
        return data


@dataclass
class PeerState:
    """What this node holds of one peer."""

    code: str
    facts: PeerFacts | None = None
    signed: bytes = b""
    #: (mtime, size) of the cache file when last read or written by this process.
    stamp: tuple[int, int] | None = None
    last_refusal: str = ""
    failures: int = 0
    next_fetch: float = 0.0
    last_on_demand: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class MapEntry:
    """One province of the service map as this node sees it."""

    province: str
    name: str
    state: str  # own, held, expired, missing
    facts: PeerFacts | None
    last_refusal: str = ""


class Directory:
    """This node's own descriptor and its peers', kept current (see module doc)."""

    def __init__(
        self,
        config: ConfigHolder,
        cache: DescriptorCache,
        *,
        clock: Clock,
        apply: Callable[[dict[str, PeerFacts]], Awaitable[None]],
        channel_factory: Callable[[tuple[str, ...]], grpc.aio.Channel],
        metrics: NodeMetrics | None = None,
        fetching: bool = True,
        on_contact: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.clock = clock
        self.publisher = Publisher(cache, clock)
        self._apply = apply
        self._channel_factory = channel_factory
        #: One round-robin channel per list of endpoints (a descriptor's, a bootstrap's).
        self._channels: dict[tuple[str, ...], grpc.aio.Channel] = {}
        self.metrics = metrics
        #: False in all but one worker of a node: the others read the files it writes.
        self.fetching = fetching
        #: Told (peer, "") when a fetch got an answer, (peer, why) when none did
        #: (the federation client's peer health).
        self._on_contact = on_contact
        self.peers: dict[str, PeerState] = {}
        self._own = b""
        self._own_serial = 0
        self._own_not_after = EPOCH
        self._own_stamp: object | None = None
        self._in_force: dict[str, PeerFacts] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- own descriptor -------------------------------------------------

    def publish(self) -> None:
        """Issue (or reuse) the own descriptor for the config in force."""
        self._set_own(self.publisher.current(self.config.me))

    def _set_own(self, data: bytes) -> None:
        self._own = data
        descriptor = descriptors.read(descriptors.parse_signed(data))
        self._own_serial = descriptor.serial
        self._own_not_after = descriptors.instant(descriptor.not_after, "not_after")
        self._own_stamp = self.cache.own.stamp()

    def own(self) -> tuple[int, bytes]:
        """(serial, signed descriptor) to serve: the newest another worker wrote, too."""
        stamp = self.cache.own.stamp()
        if stamp is not None and stamp != self._own_stamp:
            data = self.cache.own.latest()
            with contextlib.suppress(DescriptorRefused):
                if (
                    data is not None
                    and descriptors.read(descriptors.parse_signed(data)).serial >= self._own_serial
                ):
                    self._set_own(data)
        return self._own_serial, self._own

    # -- life -------------------------------------------------------------

    def _sync_peers(self) -> None:
        """One state per configured peer (a reload may add or remove some)."""
        configured = {peer.code for peer in self.config.me.peers}
        for code in configured - set(self.peers):
            self.peers[code] = PeerState(code)
        for code in set(self.peers) - configured:
            del self.peers[code]

    async def start(self) -> None:
        """Publish, put the copies on disk in force, then keep everything current."""
        self.publish()
        self._sync_peers()
        for state in self.peers.values():
            self._read_file(state)
        await self._reapply()
        self._task = asyncio.create_task(self._run(), name="directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()

    async def config_changed(self) -> None:
        """After a reload of this node's own config: publish again if it changed
        what the descriptor says; follow added and removed peers."""
        self.publish()
        self._sync_peers()
        # A shorter refresh_seconds applies now, not after the fetch it already planned.
        soonest = asyncio.get_running_loop().time() + self.config.me.directory.refresh_seconds
        for state in self.peers.values():
            state.next_fetch = min(state.next_fetch, soonest)
            if state.facts is None:
                self._read_file(state)
                state.next_fetch = 0.0
        await self._reapply()
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._tick(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the directory die; log and go on
                log.error("directory work failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()

    async def _tick(self, now_loop: float) -> None:
        me = self.config.me
        # Own descriptor: issue again at half its validity (all workers may; one does).
        issued_half = self._own_not_after - timedelta(days=me.directory.validity_days) / 2
        if self.clock.now() >= issued_half:
            # In a thread: the own descriptor may be a row of a database.
            self._set_own(await asyncio.to_thread(self.publisher.current, me))
        # Another replica's newer own descriptor (kept in the database): serve it too.
        await asyncio.to_thread(self.cache.own.poll)
        due = []
        for state in self.peers.values():
            changed = self.cache.stamp(self.cache.path(state.code))
            if changed is not None and changed != state.stamp:
                self._read_file(state)
            if self.fetching and state.next_fetch <= now_loop:
                due.append(state)
        if due:
            await asyncio.gather(*(self._fetch(state) for state in due))
        await self._reapply()

    # -- peers ------------------------------------------------------------

    def _read_file(self, state: PeerState) -> None:
        """Take the copy on disk (written by this node before, another worker, or
        an import) if it verifies and is newer than what is held."""
        path = self.cache.path(state.code)
        state.stamp = self.cache.stamp(path)
        data = self.cache.read(path)
        if data is None or data == state.signed:
            return
        self._consider(state, data, source=str(path), write=False)

    def _consider(self, state: PeerState, data: bytes, *, source: str, write: bool) -> bool:
        """Verify ``data`` as the descriptor of ``state.code``; hold it if it is
        newer. True if it was taken."""
        held = state.facts.serial if state.facts is not None else 0
        try:
            signed = descriptors.parse_signed(data)
            facts = descriptors.verify(
                signed,
                ca=self.config.derived(_federation_ca),
                now=self.clock.now(),
                expected_province=state.code,
                held_serial=held,
            )
        except DescriptorRefused as exc:
            state.last_refusal = exc.reason
            if self.metrics is not None:
                self.metrics.descriptor_refusals.labels(state.code, exc.reason).inc()
            log.warning(
                "descriptor refused",
                province=state.code,
                reason=exc.reason,
                detail=str(exc),
                source=source,
            )
            return False
        if facts.serial == held and state.facts is not None:
            return False  # the same serial again
        if write:
            try:
                self.cache.write(self.cache.path(state.code), data)
                state.stamp = self.cache.stamp(self.cache.path(state.code))
            except OSError as exc:  # kept in memory; the disk copy is only for restarts
                log.warning(
                    "descriptor not saved", province=state.code, error=exc.strerror or str(exc)
                )
        state.facts = facts
        state.signed = data
        state.last_refusal = ""
        log.info(
            "descriptor held",
            province=state.code,
            serial=facts.serial,
            not_after=facts.not_after.isoformat(),
            source=source,
        )
        return True

    def _endpoints(self, state: PeerState) -> list[tuple[str, ...]]:
        """Where to ask, in turn: the descriptor's endpoints, then the bootstrap
        endpoints of the config (each list one channel over its replicas)."""
        groups = [state.facts.endpoints] if state.facts is not None else []
        for peer in self.config.me.peers:
            if peer.code == state.code and peer.endpoints not in groups:
                groups.append(peer.endpoints)
        return groups

    def _channel(self, endpoints: tuple[str, ...]) -> grpc.aio.Channel:
        channel = self._channels.get(endpoints)
        if channel is None:
            channel = self._channels[endpoints] = self._channel_factory(endpoints)
        return channel

    async def _fetch(self, state: PeerState) -> bool:
        """Ask the peer for its descriptor; True if a newer one is now held."""
        async with state.lock:
            loop_now = asyncio.get_running_loop().time()
            outcome, taken, failure = "failed", False, "no endpoint to fetch from"
            for endpoints in self._endpoints(state):
                held = state.facts.serial if state.facts is not None else 0
                try:
                    stub = directory_pb2_grpc.DirectoryServiceStub(self._channel(endpoints))
                    answer = await stub.GetDescriptor(
                        directory_pb2.GetDescriptorRequest(known_serial=held),
                        timeout=FETCH_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as exc:
                    # A fresh channel next time: a failed one waits out gRPC's
                    # reconnect backoff and would fail the next fetch at once.
                    stale = self._channels.pop(endpoints, None)
                    if stale is not None:
                        await stale.close(grace=None)
                    (log.info if state.failures == 0 else log.debug)(
                        "descriptor fetch failed",
                        province=state.code,
                        endpoint=",".join(endpoints),
                        code=exc.code().name,
                    )
                    failure = f"{exc.code().name}: descriptor fetch failed"
                    continue
                if answer.serial == held and not answer.HasField("descriptor"):
                    outcome = "unchanged"
                    break
                taken = self._consider(
                    state,
                    answer.descriptor.SerializeToString(),
                    source=",".join(endpoints),
                    write=True,
                )
                outcome = "updated" if taken else "refused"
                if taken:
                    break
            if outcome in ("updated", "unchanged"):
                state.failures = 0
                state.next_fetch = loop_now + self.config.me.directory.refresh_seconds
            else:
                state.failures += 1
                # Soon while nothing is held (a peer starting up), then backing off.
                state.next_fetch = loop_now + min(
                    self.config.me.directory.refresh_seconds,
                    MAX_RETRY if state.facts is not None else MAX_RETRY_MISSING,
                    0.25 * 2 ** min(state.failures, 8),
                )
            if self.metrics is not None:
                self.metrics.descriptor_fetches.labels(state.code, outcome).inc()
            if self._on_contact is not None:  # "refused": it answered, with a bad descriptor
                self._on_contact(state.code, "" if outcome != "failed" else failure)
            if taken:
                await self._close_unused_channels()
            return taken

    async def _close_unused_channels(self) -> None:
        """Channels only to endpoints some peer still lists or names (a peer that
        moved leaves none behind)."""
        wanted = {e for state in self.peers.values() for e in self._endpoints(state)}
        for endpoint in [e for e in self._channels if e not in wanted]:
            await self._channels.pop(endpoint).close(grace=None)

    async def refresh(self, codes: list[str] | None = None) -> None:
        """Fetch now (every configured peer, or ``codes``) and put in force."""
        self._sync_peers()
        states = [s for c, s in self.peers.items() if codes is None or c in codes]
        await asyncio.gather(*(self._fetch(state) for state in states))
        await self._reapply()

    async def refresh_peer(self, code: str) -> bool:
        """A key id of ``code`` was not known: fetch its descriptor now (at most every
        ON_DEMAND_INTERVAL seconds). True if a newer descriptor is now in force."""
        state = self.peers.get(code)
        if state is None:
            return False
        loop_now = asyncio.get_running_loop().time()
        if loop_now - state.last_on_demand < ON_DEMAND_INTERVAL:
            return False
        state.last_on_demand = loop_now
        taken = await self._fetch(state)
        if taken:
            await self._reapply()
        return taken

    # -- in force ---------------------------------------------------------

    def in_force(self) -> dict[str, PeerFacts]:
        """Configured peers whose held descriptor is current now."""
        now = self.clock.now()
        return {
            code: state.facts
            for code, state in sorted(self.peers.items())
            if state.facts is not None and state.facts.current_at(now)
        }

    async def _reapply(self) -> None:
        current = self.in_force()
        before = {c: f.serial for c, f in self._in_force.items()}
        after = {c: f.serial for c, f in current.items()}
        if before != after:
            for code in sorted(set(before) - set(after)):
                state = self.peers.get(code)
                if state is not None and state.facts is not None:
                    log.error(
                        "descriptor expired; peer treated as unavailable",
                        province=code,
                        not_after=state.facts.not_after.isoformat(),
                    )
            self._in_force = current
            await self._apply(current)
            self.export_metrics()  # between scrapes too: the gauges follow at once

    def degraded_reasons(self) -> list[str]:
        """One line per configured peer without a current descriptor."""
        now = self.clock.now()
        reasons = []
        for code, state in sorted(self.peers.items()):
            if state.facts is None:
                why = f"refused ({state.last_refusal})" if state.last_refusal else "not fetched yet"
                reasons.append(f"{code}: no descriptor held ({why})")
            elif not state.facts.current_at(now):
                reasons.append(
                    f"{code}: descriptor expired at {state.facts.not_after.isoformat()}; "
                    "treated as unavailable"
                )
        return reasons

    def export_metrics(self) -> None:
        """The directory's gauges, as of now: at each scrape, and when the peers
        in force change."""
        metrics = self.metrics
        if metrics is None:
            return
        now = self.clock.now()
        metrics.descriptor_expiry.clear()
        metrics.descriptor_expiry.labels(self.config.me.code).set(
            round((self._own_not_after - now).total_seconds() / 86400, 4)
        )
        metrics.peer_current.clear()
        for code, state in self.peers.items():
            current = state.facts is not None and state.facts.current_at(now)
            metrics.peer_current.labels(code).set(1 if current else 0)
            if state.facts is not None:
                days = (state.facts.not_after - now).total_seconds() / 86400
                metrics.descriptor_expiry.labels(code).set(round(days, 4))
        metrics.degraded.set(1 if self.degraded_reasons() else 0)

    def service_map(self) -> list[MapEntry]:
        """This node first, then each configured peer: the federation's service map."""
        me = self.config.me
        own = descriptors.facts_of(descriptors.read(descriptors.parse_signed(self._own)))
        entries = [MapEntry(me.code, me.province.name, "own", own)]
        names = {peer.code: peer.name for peer in me.peers}
        now = self.clock.now()
        for code, state in sorted(self.peers.items()):
            facts = state.facts
            if facts is None:
                entries.append(
                    MapEntry(code, names.get(code, ""), "missing", None, state.last_refusal)
                )
            else:
                entries.append(
                    MapEntry(
                        code,
                        facts.name,
                        "held" if facts.current_at(now) else "expired",
                        facts,
                        state.last_refusal,
                    )
                )
        return entries


def _federation_ca(federation: FederationConfig) -> x509.Certificate:
    """The federation CA of the config in force (read once per config version)."""
    tls = federation.me.tls
    if tls is None:
        raise ValueError("a node without [tls] has no federation CA to check descriptors")
    return descriptors.load_ca(tls.ca.read_bytes())


class DirectoryServicer(directory_pb2_grpc.DirectoryServiceServicer):
    """``GetDescriptor``: this node's own signed descriptor."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def GetDescriptor(  # noqa: N802  # gRPC method name
        self,
        request: directory_pb2.GetDescriptorRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> directory_pb2.GetDescriptorResponse:
        serial, data = self._directory.own()
        if request.known_serial == serial:
            return directory_pb2.GetDescriptorResponse(serial=serial)
        signed = directory_pb2.SignedDescriptor()
        signed.ParseFromString(data)
        return directory_pb2.GetDescriptorResponse(serial=serial, descriptor=signed)


def install(me: ProvinceConfig, cache: DescriptorCache, data: bytes, now: datetime) -> PeerFacts:
    """``yrd-gateway directory import``: check a descriptor file as a fetched one
    is checked (for a configured peer, newer than the copy held) and write it
    where the node reads it. Raises DescriptorRefused or ValueError."""
    if me.tls is None:
        raise ValueError("a node without [tls] has no federation CA to check descriptors")
    signed = descriptors.parse_signed(data)
    code = descriptors.read(signed).code
    if code not in {peer.code for peer in me.peers}:
        raise DescriptorRefused(
            "unknown_province",
            f"code: {code or '(none)'} is not a peer of this node's config (add a [[peers]] "
            "entry first)",
        )
    held = 0
    existing = cache.read(cache.path(code))
    if existing is not None:
        with contextlib.suppress(DescriptorRefused):
            held = descriptors.read(descriptors.parse_signed(existing)).serial
    facts = descriptors.verify(
        signed,
        ca=descriptors.load_ca(me.tls.ca.read_bytes()),
        now=now,
        expected_province=code,
        held_serial=held,
    )
    cache.write(cache.path(code), data)
    return facts


def held_descriptors(me: ProvinceConfig, folder: Path | None = None) -> dict[str, PeerFacts]:
    """The peers' descriptors kept in this node's store, for offline tools
    (``audit export``): each checked against the federation CA as it stood when
    the descriptor was issued, so an expired one still says which keys were the
    peer's then. A file that does not verify is left out. ``folder``: another
    copy of the store's ``directory/`` folder."""
    if me.tls is None:
        return {}
    ca = descriptors.load_ca(me.tls.ca.read_bytes())
    cache = DescriptorCache(folder or me.node.local_folder / "directory")
    found = {}
    for code, path in cache.peers().items():
        data = cache.read(path)
        if data is None:
            continue
        try:
            signed = descriptors.parse_signed(data)
            found[code] = descriptors.verify_as_issued(signed, ca=ca, expected_province=code)
        except DescriptorRefused as exc:
            log.warning("descriptor file ignored", province=code, reason=exc.reason)
    return found


def stored_service_map(
    me: ProvinceConfig, now: datetime, folder: Path | None = None
) -> list[MapEntry]:
    """The service map from this node's store, for offline tools (``directory list
    --config``): its own published descriptor, then each configured peer's copy,
    each checked against the federation CA as it stood when issued (a copy past
    its ``not_after`` is ``expired``; one that does not verify, ``missing`` with
    the reason). An own descriptor not published yet: ``own`` without facts."""
    cache = DescriptorCache(folder or me.node.local_folder / "directory")
    ca = descriptors.load_ca(me.tls.ca.read_bytes()) if me.tls is not None else None

    def stored(code: str, path: Path) -> tuple[PeerFacts | None, str]:
        return checked(code, cache.read(path))

    def checked(code: str, data: bytes | None) -> tuple[PeerFacts | None, str]:
        if data is None or ca is None:
            return None, ""
        try:
            signed = descriptors.parse_signed(data)
            return descriptors.verify_as_issued(signed, ca=ca, expected_province=code), ""
        except DescriptorRefused as exc:
            return None, exc.reason

    if me.node.store_is_database:
        # Replicas keep the province's own descriptor in their database.
        from gateway.storage.shared_descriptor import SharedDescriptor, SharedDescriptorError

        shared = SharedDescriptor(str(me.node.store), me.code)
        try:
            data = shared.read()
        except SharedDescriptorError:
            data = None
        finally:
            shared.close()
        own, refusal = checked(me.code, data)
    else:
        own, refusal = stored(me.code, cache.own_path)
    entries = [MapEntry(me.code, me.province.name, "own", own, refusal)]
    for peer in sorted(me.peers, key=lambda p: p.code):
        facts, refusal = stored(peer.code, cache.path(peer.code))
        if facts is None:
            entries.append(MapEntry(peer.code, peer.name, "missing", None, refusal))
        else:
            state = "held" if facts.current_at(now) else "expired"
            entries.append(MapEntry(peer.code, facts.name, state, facts, refusal))
    return entries
