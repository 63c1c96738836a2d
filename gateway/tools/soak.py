"""``yrd-gateway soak``: the chaos soak. Does an accepted exchange survive crashes
and failing disks?

Four nodes and their four simulated back-ends run as separate processes on
loopback (:mod:`gateway.testing.procfed`). While withdrawals and service cases are
submitted across several province pairs with the development tokens, a chaos
thread SIGKILLs nodes and back-ends at random and starts them again, and makes
each node's disk fail for a few seconds (its file-size limit is lowered below
the size of its SQLite files with ``prlimit``: Python ignores SIGXFSZ, so the
writes fail with EFBIG; a probe submission to that node checks that they do).
Then every process is healthy again and the soak waits, a bounded time, until
every accepted exchange is final, parked or in reconciliation, reads the nodes'
stores (read-only) and the fund centres' payments, and prints a table.

The workload is payable by design (small RENT withdrawals from NORMAL accounts
of the applicant; services every province handles, with enough materials), so
any REJECTED withdrawal or REFUSED case is a wrong refusal.

Exit status 0 only when nothing accepted was lost, duplicated or paid twice and
nothing was wrongly refused. See docs/operations.md, "Chaos soak".

With replicas (``soak --replicas 2 --store postgresql``): Shanghai and Jiangsu
each run as several node processes on a PostgreSQL database of their own (on
the server ``--database-server`` names), and only those replicas are SIGKILLed
(one at a time, started again after); hotel check-ins at Shanghai of Jiangsu
e-IDs flow beside the exchanges, and the soak prints how many failed and the
longest time without a verdict. Disks do not fail (the database is another
process). See docs/operations.md, "Several replicas on PostgreSQL".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from stdnum import luhn

from gateway.core.errors import DECISION_CODES
from gateway.server.node import DIRECTORY_HEALTH
from gateway.storage.engines import MESSAGE_LOG_FILE, STATE_FILE, store_location
from gateway.storage.snapshot import StoreView, read_store
from gateway.testing.procfed import (
    NodeProcess,
    ProcessFederation,
    SimulatorProcess,
    restart_simulator,
)
from gateway.tools.interrupt import stop_if_cancelled, terminated_as_interrupt
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.residents import synthetic_residents

PROVINCES = ("310000", "320000", "330000", "340000")
SH, JS = "310000", "320000"
W = fund_pb2.WithdrawalStatus
C = case_pb2.CaseStatus
WITHDRAWAL, CASE = "withdrawal", "case"
FINAL: dict[str, frozenset[int]] = {
    WITHDRAWAL: frozenset({W.PAID, W.REJECTED}),
    CASE: frozenset({C.CASE_COMPLETED, C.CASE_REFUSED}),
}
REFUSED: dict[str, int] = {WITHDRAWAL: W.REJECTED, CASE: C.CASE_REFUSED}
#: Answers to a submission that are a decision about it: not retried.
DECISIONS = DECISION_CODES | {grpc.StatusCode.UNAUTHENTICATED}
#: A file-size limit (bytes) below any SQLite file (pages are 4 KiB): writes fail.
FAILING_DISK_LIMIT = 1024
#: The service every province handles (a person, one material).
SERVICE = "KS0101"
DELAYS = {"review_delay": 0.05, "payment_delay": 0.05, "processing_delay": 0.05}


@dataclass(frozen=True)
class SoakConfig:
    """What the soak does; the defaults take about 5-8 minutes on 2 cores."""

    withdrawals: int = 800
    cases: int = 400
    #: Length of the chaos phase; submissions are spread over its first 80 %.
    seconds: float = 150.0
    #: Mean seconds between two SIGKILLs (of a node or a back-end).
    kill_interval: float = 5.0
    #: Mean seconds between two periods of failing disk (nodes in turn).
    disk_fault_interval: float = 15.0
    #: Length of one period of failing disk (seconds, drawn from 0.75x..1.25x).
    disk_fault_seconds: float = 4.0
    #: Bound of the drain phase (everything healthy) in seconds.
    drain_seconds: float = 150.0
    seed: int = 17
    max_kills: int | None = None
    max_disk_faults: int | None = None
    #: "sqlite" (each node its folder) or "postgresql" (each province a database
    #: on ``database_server``).
    store: str = "sqlite"
    #: Node processes per province; above 1 (PostgreSQL only): Shanghai and
    #: Jiangsu only, each with this many replicas, and only replicas are killed.
    replicas: int = 1
    #: A PostgreSQL server URL (any database on it, as a user who may create
    #: databases) where the soak creates one database per province and run.
    database_server: str | None = None
    #: Hotel check-ins per second at Shanghai (Jiangsu e-IDs) during the chaos.
    checkins_per_second: float = 0.0

    @property
    def provinces(self) -> tuple[str, ...]:
        return (SH, JS) if self.replicas > 1 else PROVINCES

    @classmethod
    def smoke(cls, seed: int = 17) -> SoakConfig:
        """40 exchanges, 2 kills, 1 disk fault: well under a minute."""
        return cls(
            withdrawals=26,
            cases=14,
            seconds=12.0,
            kill_interval=3.0,
            disk_fault_interval=5.0,
            disk_fault_seconds=3.0,
            drain_seconds=25.0,
            seed=seed,
            max_kills=2,
            max_disk_faults=1,
        )

    @classmethod
    def failover(cls, database_server: str, seed: int = 17, seconds: float = 20.0) -> SoakConfig:
        """Two replicas of Shanghai and of Jiangsu on PostgreSQL, a replica
        SIGKILLed every few seconds, check-ins flowing: about a minute."""
        return cls(
            withdrawals=int(3 * seconds),
            cases=int(seconds),
            seconds=seconds,
            kill_interval=3.0,
            drain_seconds=30.0,
            seed=seed,
            max_disk_faults=0,
            store="postgresql",
            replicas=2,
            database_server=database_server,
            checkins_per_second=8.0,
        )


# ---- the workload -------------------------------------------------------------------


@dataclass
class Exchange:
    """One withdrawal or case, submitted at ``submitter`` for ``handler``."""

    domain: str
    key: str
    submitter: str
    handler: str
    request: fund_pb2.SubmitWithdrawalRequest | case_pb2.SubmitCaseRequest
    #: Set once a submission was answered OK (the exchange is accepted).
    case_id: str = ""
    #: A decision code that refused the submission (never for this workload).
    refused: str = ""
    attempts: int = 0


def _payee(i: int) -> str:
    body = f"622202{i:012d}"
    return body + luhn.calc_check_digit(body)


def _admin(url: str, path: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url + path, timeout=timeout) as response:  # noqa: S310 - loopback simulator
        return json.loads(response.read())


def plan_workload(
    federation: ProcessFederation, config: SoakConfig, run: str
) -> tuple[list[Exchange], list[Exchange]]:
    """(exchanges, disk-fault probes): withdrawals from NORMAL accounts the applicant
    holds at another province's centre, for small RENT amounts (payable: the balances
    are at least 50,000 yuan and the rent limit 3,000); cases for the service every
    province handles. Every ordered pair of provinces is used."""
    rng = random.Random(config.seed)  # noqa: S311 - a seeded workload, not secrets
    codes = config.provinces
    names = {code: {r.id_number: r for r in synthetic_residents(code)} for code in codes}
    holders: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for fund in codes:
        accounts = _admin(federation.simulators[fund].fund_url, "/admin/accounts")
        for home in codes:
            if home != fund:
                holders[(home, fund)] = [
                    a
                    for a in accounts
                    if a["id_number"] in names[home] and str(a["status"]).endswith("NORMAL")
                ]
    pairs = sorted(p for p, found in holders.items() if found)
    material = b"%PDF-1.7 soak material"
    attachment = common_pb2.AttachmentRef(
        name="identity.pdf",
        media_type="application/pdf",
        size_bytes=len(material),
        sha256=hashlib.sha256(material).digest(),
        content=material,
    )

    def withdrawal(i: int, home: str, fund: str, tag: str) -> Exchange:
        holder = rng.choice(holders[(home, fund)])
        key = f"soak-{run}-{tag}{i}"
        app = fund_pb2.WithdrawalApplication(
            idempotency_key=key,
            applicant=common_pb2.Person(
                id_number=holder["id_number"], full_name=names[home][holder["id_number"]].full_name
            ),
            fund_province=fund,
            fund_account=holder["account"],
            reason=fund_pb2.RENT,
            amount_fen=rng.randint(100, 2_000),
            payee_account=_payee(i),
            payee_bank="Bank of Communications",
        )
        return Exchange(
            WITHDRAWAL, key, home, fund, fund_pb2.SubmitWithdrawalRequest(application=app)
        )

    def case(i: int) -> Exchange:
        home, handling = pairs[(i * 5) % len(pairs)]
        resident = rng.choice(list(names[home].values()))
        key = f"soak-{run}-c{i}"
        app = case_pb2.CaseApplication(
            idempotency_key=key,
            service_code=SERVICE,
            applicant=common_pb2.Party(
                person=common_pb2.Person(id_number=resident.id_number, full_name=resident.full_name)
            ),
            handling_province=handling,
            description="pension entitlement certification, chaos soak",
            materials=[attachment],
        )
        return Exchange(CASE, key, home, handling, case_pb2.SubmitCaseRequest(application=app))

    exchanges = [withdrawal(i, *pairs[i % len(pairs)], "w") for i in range(config.withdrawals)]
    exchanges += [case(i) for i in range(config.cases)]
    rng.shuffle(exchanges)
    probes = []
    for i, code in enumerate(codes * 64):
        fund = next(f for h, f in pairs[i % len(pairs) :] + pairs if h == code)
        probes.append(withdrawal(i, code, fund, "probe"))
    return exchanges, probes


# ---- processes ----------------------------------------------------------------------


class PipedNode(NodeProcess):
    """A node whose stderr reaches its log file through a pipe, so that a lowered
    file-size limit fails its SQLite writes and not its log lines."""

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.process.stderr is not None
        threading.Thread(
            target=_copy, args=(self.process.stderr, self.log), daemon=True, name="node-log"
        ).start()


def _copy(source: IO[bytes], log: Path) -> None:
    with source, log.open("ab") as sink:
        while chunk := os.read(source.fileno(), 65536):
            sink.write(chunk)
            sink.flush()


@dataclass
class Faults:
    """What the chaos thread did."""

    node_kills: Counter[str] = field(default_factory=Counter)
    backend_kills: Counter[str] = field(default_factory=Counter)
    #: (node, how the probe submission was answered while its disk failed, whether
    #: the node logged a failed write then).
    disk_faults: list[tuple[str, str, bool]] = field(default_factory=list)
    #: Processes found dead that no one killed (restarted).
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    #: Nodes started again (after a SIGKILL or an exit) that served, and those of
    #: them whose peers were not in force (health ``yrd.directory``) within
    #: PEERS_IN_FORCE_SECONDS: a restarted node serves with its cached descriptors.
    restarts: Counter[str] = field(default_factory=Counter)
    restarts_without_peers: Counter[str] = field(default_factory=Counter)
    #: Why the chaos thread stopped early, if it did.
    error: str = ""


#: What a node logs when its store cannot write (its own event, or what SQLite
#: says when a write fails for a lowered file-size limit, EFBIG).
WRITE_FAILED = (
    b"store cannot write",
    b"disk I/O error",
    b"database or disk is full",
    b"File too large",
    b"Errno 27",
    b"StoreUnavailable",
)


#: How long a restarted node may take to have every peer in force again (it
#: reads its cached descriptors at start; no fetch is needed).
PEERS_IN_FORCE_SECONDS = 15.0


def _write_failed(log: Path, offset: int) -> bool:
    """Whether the node logged a failed write after ``offset`` in its log."""
    time.sleep(0.2)  # let the log pipe catch up
    with contextlib.suppress(OSError), log.open("rb") as f:
        f.seek(offset)
        text = f.read(16 * 1024 * 1024)
        return any(needle in text for needle in WRITE_FAILED)
    return False


class Chaos:
    """SIGKILLs and failing disks, one at a time, until told to stop."""

    def __init__(
        self,
        federation: ProcessFederation,
        config: SoakConfig,
        probe: Any,
    ) -> None:
        self.federation = federation
        self.config = config
        self.rng = random.Random(config.seed + 1)  # noqa: S311 - seeded chaos, not secrets
        self.faults = Faults()
        self.stop = threading.Event()
        self._probe = probe  # (node code) -> how a submission there was answered
        self._configs = federation.root / "province_configs"
        self._lock = threading.Lock()
        self._closing = False
        #: Replicas killed and not serving again yet, and the threads starting them.
        self._restarting: set[int] = set()  # id() of each (a NodeProcess is unhashable)
        self._restarts: list[threading.Thread] = []

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the table: the soak did less than planned
            self.faults.error = f"{type(exc).__name__}: {exc}"[:300]

    def close(self) -> None:
        """Stop, and start no process any more (waits for a start under way)."""
        self.stop.set()
        with self._lock:
            self._closing = True

    def _run(self) -> None:
        """Until ``seconds`` have passed; with a fixed number of faults (``max_kills``,
        ``max_disk_faults``), until they are all done too (at most 3x ``seconds``)."""
        config, rng = self.config, self.rng
        started = time.monotonic()
        end, hard_end = started + config.seconds, started + 3 * config.seconds
        next_kill = started + rng.expovariate(1 / config.kill_interval)
        next_disk = started + config.disk_fault_interval * rng.uniform(0.3, 0.8)
        disk_order: list[str] = []
        while not self.stop.is_set():
            kills = sum(self.faults.node_kills.values()) + sum(self.faults.backend_kills.values())
            can_kill = config.max_kills is None or kills < config.max_kills
            can_fail = (
                config.max_disk_faults is None
                or len(self.faults.disk_faults) < config.max_disk_faults
            )
            quota_left = (config.max_kills is not None and can_kill) or (
                config.max_disk_faults is not None and can_fail
            )
            now = time.monotonic()
            if now >= hard_end or (now >= end and not quota_left):
                break
            if now >= end:  # past the planned time: the faults still owed are due now
                next_kill, next_disk = min(next_kill, now), min(next_disk, now)
            self.heal()
            if can_kill and now >= next_kill:
                self.kill_one()
                next_kill = time.monotonic() + rng.expovariate(1 / config.kill_interval)
            elif can_fail and now >= next_disk:
                if not disk_order:
                    disk_order = list(self.config.provinces)
                    rng.shuffle(disk_order)
                self.fail_disk(disk_order.pop())
                next_disk = time.monotonic() + config.disk_fault_interval * rng.uniform(0.5, 1.5)
            else:
                due = min(next_kill if can_kill else end, next_disk if can_fail else end, end)
                self.stop.wait(max(0.05, min(1.0, due - now)))
        for restart in self._restarts:  # replicas killed last serve again first
            restart.join()

    def kill_one(self) -> None:
        code = self.rng.choice(self.config.provinces)
        down = self.rng.uniform(0.2, 1.5)
        if self.config.replicas > 1:
            # Every replica in turn, the provinces alternating (the first replica,
            # where peers bootstrap, included); the others of its province serve on.
            # It starts again in the background, and no other replica of its
            # province is killed before it serves: one always does.
            kills, codes = sum(self.faults.node_kills.values()), self.config.provinces
            code = codes[kills % len(codes)]
            replicas = self.federation.replica_nodes[code]
            while self._restarting.intersection(id(n) for n in replicas):
                if self.stop.wait(0.1):
                    return
            node = replicas[(kills // len(codes)) % len(replicas)]
            node.kill()
            self.faults.node_kills[f"{code}/{node.replica}"] += 1
            self._restarting.add(id(node))
            restart = threading.Thread(
                target=self._restart_replica, args=(node, down), daemon=True, name="restart"
            )
            self._restarts.append(restart)
            restart.start()
        elif self.rng.random() < 0.6:
            node = self.federation.nodes[code]
            node.kill()
            self.faults.node_kills[code] += 1
            self.stop.wait(down)
            self._start_node(node)
        else:
            simulator = self.federation.simulators[code]
            simulator.kill()
            self.faults.backend_kills[code] += 1
            self.stop.wait(down)
            self._restart_simulator(simulator)

    def _restart_replica(self, node: NodeProcess, down: float) -> None:
        try:
            time.sleep(down)
            self._start_node(node)
        finally:
            self._restarting.discard(id(node))

    def fail_disk(self, code: str) -> None:
        """Lower the node's file-size limit below its SQLite files' sizes for a while;
        check with a probe submission that its writes fail; restore the limit."""
        node = self.federation.nodes[code]
        if node.process is None or node.process.poll() is not None:
            return
        pid = node.process.pid
        logged = node.log.stat().st_size if node.log.exists() else 0
        before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (FAILING_DISK_LIMIT, before[1]))
        try:
            answer = self._probe(code)
            length = self.config.disk_fault_seconds * self.rng.uniform(0.75, 1.25)
            self.stop.wait(length)
        finally:
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(pid, resource.RLIMIT_FSIZE, before)
        self.faults.disk_faults.append((code, answer, _write_failed(node.log, logged)))

    def heal(self) -> None:
        """Start again any process that is not running (one that exited by itself is
        counted as an unexpected exit)."""
        for code, replicas in self.federation.replica_nodes.items():
            for node in replicas:
                if id(node) in self._restarting:
                    continue
                if node.process is None or node.process.poll() is not None:
                    self.faults.unexpected_exits[f"{code} node"] += 1
                    self._start_node(node)
        for code, simulator in list(self.federation.simulators.items()):
            if simulator.process.poll() is not None:
                self.faults.unexpected_exits[f"{code} back-end"] += 1
                simulator.kill()
                self._restart_simulator(simulator)

    def _start_node(self, node: NodeProcess) -> None:
        with self._lock:
            if self._closing:
                return
            node.start()
        try:
            node.wait_serving(90)
        except TimeoutError:  # still starting, or exited: heal() looks again
            return
        self.faults.restarts[node.province] += 1
        if len(self.federation.nodes) < len(PROVINCES):
            return  # some peers never run: the directory is never complete
        try:
            node.wait_serving(PEERS_IN_FORCE_SECONDS, service=DIRECTORY_HEALTH)
        except TimeoutError:
            self.faults.restarts_without_peers[node.province] += 1

    def _restart_simulator(self, simulator: SimulatorProcess) -> None:
        with self._lock:
            if self._closing:
                return
            self.federation.simulators[simulator.province] = restart_simulator(
                simulator, self._configs / simulator.province / "keys", **DELAYS
            )


# ---- submitting ---------------------------------------------------------------------


class Submitter:
    """Submits each exchange until it is answered: a submission whose answer was lost
    (a killed node, a failing disk, a deadline) is sent again with the same
    idempotency key, as a real provincial system would."""

    def __init__(self, federation: ProcessFederation, give_up_at: float) -> None:
        self.give_up_at = give_up_at
        self._channels = {code: federation.client_channel(code) for code in federation.nodes}
        self._fund = {c: fund_pb2_grpc.FundServiceStub(ch) for c, ch in self._channels.items()}
        self._case = {c: case_pb2_grpc.CaseServiceStub(ch) for c, ch in self._channels.items()}
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def spawn(self, exchange: Exchange) -> None:
        task = asyncio.get_running_loop().create_task(self.until_answered(exchange))
        self.tasks.add(task)

    async def once(self, exchange: Exchange, timeout: float = 5.0) -> str:
        """One attempt; the answer's code name (``OK`` when accepted)."""
        metadata = (("authorization", f"Bearer dev-office-{exchange.submitter}"),)
        exchange.attempts += 1
        try:
            if isinstance(exchange.request, fund_pb2.SubmitWithdrawalRequest):
                answer: Any = await self._fund[exchange.submitter].SubmitWithdrawal(
                    exchange.request, metadata=metadata, timeout=timeout
                )
            else:
                answer = await self._case[exchange.submitter].SubmitCase(
                    exchange.request, metadata=metadata, timeout=timeout
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in DECISIONS:
                exchange.refused = f"{exc.code().name}: {exc.details()}"[:200]
            return str(exc.code().name)
        exchange.case_id = answer.case_id
        return "OK"

    async def until_answered(self, exchange: Exchange) -> None:
        delay = 0.2
        while True:
            stop_if_cancelled()
            if await self.once(exchange) == "OK" or exchange.refused:
                return
            if time.monotonic() >= self.give_up_at:
                return
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter
            delay = min(3.0, delay * 2)


class CheckinLoad:
    """Hotel check-ins at Shanghai's node (all its replicas, round_robin) of
    Jiangsu e-IDs, at a fixed rate: how many failed, and the longest wait
    without any verdict. Tokens are signed here with Jiangsu's issuer key, as
    its e-ID authority would (the authority checks them by its key).

    Each check-in is a front desk's: a call that gets no answer (UNAVAILABLE,
    DEADLINE_EXCEEDED) or the verdict ISSUER_UNREACHABLE is tried again, up
    to CHECKIN_TRIES times, with the same QR and the same idempotency key, so
    that a try the dead replica had already put to Jiangsu is not REPLAYED.
    Every QR is fresh: a REPLAYED verdict counts as a failure, and fails the
    soak (a retry not recognised as one)."""

    def __init__(self, federation: ProcessFederation, rate: float) -> None:
        from gateway.core import crypto

        self.rate = rate
        self._key = crypto.load_private_key(
            federation.config_dir / JS / "keys" / "eid-issuer.key.pem"
        )
        self._credentials = [
            r.credential_id for r in synthetic_residents(JS) if r.state == "CREDENTIAL_ACTIVE"
        ]
        self._channel = federation.client_channel(SH)
        self._stub = identity_pb2_grpc.IdentityServiceStub(self._channel)
        self.figures = CheckinFigures()
        self._last = 0.0

    def _token(self) -> str:
        from datetime import UTC, datetime, timedelta

        from gateway.core.eid_token import issue_token

        return issue_token(
            self._key,
            key_id=f"{JS}-eid-2026",
            issuer=JS,
            credential_id=random.choice(self._credentials),  # noqa: S311 - test load
            token_id=str(uuid.uuid4()),
            issued_at=datetime.now(UTC),
            ttl=timedelta(minutes=2),
        )

    async def run(self, stop: asyncio.Event) -> CheckinFigures:
        """Until ``stop`` is set; then wait for the calls under way."""
        started = self._last = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        index = 0
        while not stop.is_set():
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
            delay = started + index / self.rate - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))
        if tasks:
            await asyncio.wait(tasks)
        end = time.monotonic()
        self.figures.longest_gap = max(self.figures.longest_gap, end - self._last)
        self.figures.seconds = end - started
        await self._channel.close()
        return self.figures

    async def _one(self) -> None:
        figures = self.figures
        figures.calls += 1
        request = identity_pb2.VerifyIdentityRequest(
            qr_payload=self._token(),
            purpose=identity_pb2.HOTEL_CHECK_IN,
            idempotency_key=f"soak-{uuid.uuid4()}",
        )
        for attempt in range(1, CHECKIN_TRIES + 1):
            last = attempt == CHECKIN_TRIES
            try:
                answer = await self._stub.VerifyIdentity(
                    request,
                    metadata=(("authorization", f"Bearer dev-office-{SH}"),),
                    timeout=CHECKIN_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                no_answer = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not no_answer or last:
                    figures.failed[exc.code().name] += 1
                    return
            else:
                # No verdict on the e-ID itself: the issuer could not be asked.
                if answer.verdict != identity_pb2.ISSUER_UNREACHABLE or last:
                    break
            figures.retries += 1
            await asyncio.sleep(0.5 * attempt)
        if answer.verdict in (identity_pb2.ISSUER_UNREACHABLE, identity_pb2.REPLAYED):
            # Fails closed: the hotel got no verdict on the e-ID itself; or a
            # fresh QR was taken for a replay (a retry not recognised as one).
            figures.failed[identity_pb2.Verdict.Name(answer.verdict)] += 1
            return
        now = time.monotonic()
        figures.verdicts += 1
        figures.longest_gap = max(figures.longest_gap, now - self._last)
        self._last = now


#: A check-in try not answered within this many seconds is tried again, and
#: a check-in whose CHECKIN_TRIES tries all got no answer counts as failed.
CHECKIN_TIMEOUT = 3.0
CHECKIN_TRIES = 3


@dataclass
class CheckinFigures:
    """Check-ins during the chaos: calls, verdicts (on the e-ID itself), failed
    check-ins by status code of the last try, ISSUER_UNREACHABLE (every try)
    or REPLAYED, tries again after no answer or ISSUER_UNREACHABLE, and the
    longest time (seconds) without any verdict arriving."""

    calls: int = 0
    verdicts: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    longest_gap: float = 0.0
    seconds: float = 0.0

    def render(self) -> str:
        return (
            f"  check-ins at {SH} of {JS} e-IDs: {self.calls} calls in {self.seconds:.0f} s, "
            f"{self.verdicts} verdicts, {sum(self.failed.values())} failed "
            f"({_counts(self.failed)}), {self.retries} tries again after no answer "
            f"or ISSUER_UNREACHABLE; "
            f"longest gap without a verdict {self.longest_gap:.2f} s"
        )


# ---- reading the records ------------------------------------------------------------


def read_stores(federation: ProcessFederation) -> dict[str, StoreView]:
    return {
        code: read_store(store_location(node.store_dir, STATE_FILE))
        for code, node in federation.nodes.items()
    }


def count_payments(final: dict[str, list[dict[str, Any]]]) -> Counter[str]:
    """Payments per handling-node reference, over every fund centre's life.

    The one place that knows where payments are recorded. The centres keep their
    state on disk (``--state-dir``), so each one's final ``/admin/payments`` lists
    every payment it made, before and after its kills; a reference listed twice
    was paid twice."""
    paid: Counter[str] = Counter()
    for payments in final.values():
        paid.update(str(p["reference"]) for p in payments)
    return paid


def final_payments(federation: ProcessFederation) -> dict[str, list[dict[str, Any]]]:
    return {
        code: _admin(simulator.fund_url, "/admin/payments")
        for code, simulator in federation.simulators.items()
    }


# ---- the accounting -----------------------------------------------------------------


@dataclass
class Outcome:
    """Where an accepted exchange stands: ``final`` (with its status name), ``parked``,
    ``reconciliation``, ``in progress`` (still moving) or ``lost``."""

    where: str
    status: str = ""
    duplicated: bool = False
    #: The submitting node's status reason.
    reason: str = ""


def _status_name(domain: str, status: int) -> str:
    return W.Name(status) if domain == WITHDRAWAL else C.Name(status)  # type: ignore[arg-type]


def classify(exchange: Exchange, views: dict[str, StoreView]) -> Outcome:
    mine = views[exchange.submitter]
    theirs = views[exchange.handler]
    rows = mine.outgoing.get((exchange.domain, exchange.key), [])
    incoming = theirs.incoming.get((exchange.domain, exchange.key), [])
    duplicated = (
        len(rows) > 1
        or len(incoming) > 1
        or any(case_id != exchange.case_id for case_id, *_ in rows)
    )
    if not rows:
        return Outcome("lost", "missing at the submitting node", duplicated)
    case_id, status, reason = rows[0]
    name = _status_name(exchange.domain, status)
    if status in FINAL[exchange.domain]:
        return Outcome("final", name, duplicated, reason)
    if any(flag for *_, flag in incoming):
        return Outcome("reconciliation", name, duplicated, reason)
    states = mine.outbox.get(case_id, []) + [
        s for reference, *_ in incoming for s in theirs.outbox.get(reference, [])
    ]
    if "parked" in states:
        return Outcome("parked", name, duplicated, reason)
    moving = "pending" in states or any(
        status not in FINAL[exchange.domain] for _, _, status, _ in incoming
    )
    return Outcome("in progress" if moving else "lost", name, duplicated, reason)


@dataclass
class Report:
    config: SoakConfig
    faults: Faults
    exchanges: list[Exchange]
    outcomes: dict[str, Outcome]
    #: Idempotency keys paid more than once (and references not tied to a key).
    paid_twice: list[str]
    #: Accepted withdrawals paid by the centre but not PAID at the applicant's node.
    paid_not_told: int
    chaos_seconds: float
    drain_seconds: float
    #: Each node's message log, verified after the nodes stopped: (intact, what).
    logs: dict[str, tuple[bool, str]] = field(default_factory=dict)
    #: Check-ins during the chaos (with checkins_per_second).
    checkins: CheckinFigures | None = None

    def rows(self) -> dict[str, tuple[int, int]]:
        def count(domain: str, test: Any) -> int:
            return sum(1 for e in self.exchanges if e.domain == domain and test(e))

        def outcome(where: str, status: str | None = None) -> Any:
            def test(e: Exchange) -> bool:
                o = self.outcomes.get(e.key)
                return o is not None and o.where == where and (status is None or o.status == status)

            return test

        table: dict[str, tuple[int, int]] = {}

        def row(label: str, test: Any) -> None:
            table[label] = (count(WITHDRAWAL, test), count(CASE, test))

        row("submitted", lambda e: True)
        row("accepted", lambda e: bool(e.case_id))
        row("refused at submission", lambda e: bool(e.refused))
        row("never answered", lambda e: not e.case_id and not e.refused)
        finals = sorted({o.status for o in self.outcomes.values() if o.where == "final"})
        for name in finals:
            row(f"final {name}", outcome("final", name))
        row("parked", outcome("parked"))
        row("in reconciliation", outcome("reconciliation"))
        row("still in progress", outcome("in progress"))
        row("lost", outcome("lost"))
        row("duplicated", lambda e: bool(self.outcomes.get(e.key, Outcome("")).duplicated))
        paid_twice = set(self.paid_twice)
        row("paid twice", lambda e: e.key in paid_twice)
        row("wrongly REJECTED/REFUSED", self.wrongly_refused)
        return table

    def wrongly_refused(self, exchange: Exchange) -> bool:
        o = self.outcomes.get(exchange.key)
        if exchange.refused:
            return True
        return (
            o is not None
            and o.where == "final"
            and o.status == _status_name(exchange.domain, REFUSED[exchange.domain])
        )

    @property
    def failures(self) -> list[str]:
        rows = self.rows()
        found = [
            label
            for label in ("lost", "duplicated", "paid twice", "wrongly REJECTED/REFUSED")
            if sum(rows[label]) > 0
        ]
        if len(self.paid_twice) > sum(rows["paid twice"]):
            found.append("paid twice (references of no accepted exchange)")
        if self.faults.restarts_without_peers:
            found.append("restarted node without its peers in force")
        if any(not intact for intact, _ in self.logs.values()):
            found.append("message log broken")
        if self.checkins is not None and self.checkins.failed["REPLAYED"]:
            found.append("fresh check-ins answered REPLAYED")
        return found

    def render(self) -> str:
        f = self.faults
        disk = Counter(answer for _, answer, _ in f.disk_faults)
        logged = sum(1 for *_, failed in f.disk_faults if failed)
        config = self.config
        codes = config.provinces
        shape = (
            f"{len(codes)} provinces x {config.replicas} replicas on PostgreSQL"
            if config.replicas > 1
            else f"{len(codes)} nodes ({config.store})"
        )
        lines = [
            f"chaos soak (seed {self.config.seed}): {shape} and {len(codes)} back-ends as "
            f"processes; {self.chaos_seconds:.0f} s of chaos, drain {self.drain_seconds:.0f} s",
            f"  SIGKILLs: {sum(f.node_kills.values())} of nodes "
            f"({_counts(f.node_kills)}), {sum(f.backend_kills.values())} of back-ends "
            f"({_counts(f.backend_kills)})",
            f"  failing disk: {len(f.disk_faults)} periods "
            f"({_counts(Counter(c for c, *_ in f.disk_faults))}); "
            f"probe submission answered: {_counts(disk)}; "
            f"a failed write logged: {logged} of {len(f.disk_faults)}",
            f"  restarted nodes serving with their peers in force (health yrd.directory "
            f"within {PEERS_IN_FORCE_SECONDS:.0f} s): "
            f"{sum(f.restarts.values()) - sum(f.restarts_without_peers.values())} "
            f"of {sum(f.restarts.values())}",
            f"  unexpected exits: {sum(f.unexpected_exits.values())}"
            + (f" ({_counts(f.unexpected_exits)})" if f.unexpected_exits else ""),
            *([f"  the chaos thread stopped early: {f.error}"] if f.error else []),
            *([self.checkins.render()] if self.checkins is not None else []),
            *(
                ["  message logs: " + "; ".join(f"{c} {w}" for c, (_, w) in self.logs.items())]
                if self.logs
                else []
            ),
            "",
            f"  {'':28}{'withdrawals':>12}{'cases':>8}{'total':>8}",
        ]
        for label, (w, c) in self.rows().items():
            lines.append(f"  {label:28}{w:>12}{c:>8}{w + c:>8}")
        lines.append(f"  {'paid, applicant not told':28}{self.paid_not_told:>12}")
        examples = self.examples()
        if examples:
            lines += ["", "  examples (idempotency key, submitting -> handling province: what):"]
            lines += [f"    {line}" for line in examples]
        failures = self.failures
        lines += ["", "PASS" if not failures else "FAIL: " + ", ".join(failures)]
        return "\n".join(lines)

    def examples(self, each: int = 3) -> list[str]:
        """A few of the exchanges behind each failing row, with the node's reason."""
        found: list[str] = []
        paid_twice = set(self.paid_twice)
        for label, test in (
            ("lost", lambda e, o: o.where == "lost"),
            ("duplicated", lambda e, o: o.duplicated),
            ("paid twice", lambda e, o: e.key in paid_twice),
            ("wrongly refused", lambda e, o: self.wrongly_refused(e)),
            ("still in progress", lambda e, o: o.where == "in progress"),
        ):
            hits = [
                e
                for e in self.exchanges
                if test(e, self.outcomes.get(e.key, Outcome("")))
                and (e.case_id or label == "wrongly refused")
            ]
            for e in hits[:each]:
                o = self.outcomes.get(e.key, Outcome(""))
                what = e.refused or f"{o.status} {o.reason!r}".strip()
                found.append(f"{label}: {e.key}, {e.submitter} -> {e.handler}: {what}"[:240])
        return found


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def account(
    config: SoakConfig,
    faults: Faults,
    exchanges: list[Exchange],
    views: dict[str, StoreView],
    paid: Counter[str],
    *,
    earlier: dict[str, StoreView] | None = None,
    chaos_seconds: float,
    drain_seconds: float,
) -> Report:
    outcomes = {e.key: classify(e, views) for e in exchanges if e.case_id}
    for e in exchanges:
        if e.key in outcomes and outcomes[e.key].where == "lost" and earlier is not None:
            before = classify(e, earlier)
            if before.where != "lost":
                outcomes[e.key] = Outcome("in progress", before.status, before.duplicated)
    key_of = {
        reference: key
        for view in views.values()
        for (_, key), rows in view.incoming.items()
        for reference, *_ in rows
    }
    per_key: Counter[str] = Counter()
    for reference, times in paid.items():
        per_key[key_of.get(reference, f"reference {reference}")] += times
    paid_twice = sorted(k for k, times in per_key.items() if times > 1)
    paid_not_told = sum(
        1
        for e in exchanges
        if e.domain == WITHDRAWAL
        and per_key.get(e.key, 0) > 0
        and e.key in outcomes
        and outcomes[e.key].status != "PAID"
    )
    return Report(
        config,
        faults,
        exchanges,
        outcomes,
        paid_twice,
        paid_not_told,
        chaos_seconds,
        drain_seconds,
    )


# ---- the run ------------------------------------------------------------------------


async def _drive(
    federation: ProcessFederation,
    config: SoakConfig,
    exchanges: list[Exchange],
    probes: list[Exchange],
) -> Report:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    submitter = Submitter(federation, started + config.seconds + config.drain_seconds)
    probe_pool = iter(probes)

    def probe(code: str) -> str:
        """From the chaos thread: one submission at a node whose disk fails."""
        exchange = next(e for e in probe_pool if e.submitter == code)
        exchanges.append(exchange)
        answer = asyncio.run_coroutine_threadsafe(submitter.once(exchange, 3.0), loop).result()
        if answer != "OK" and not exchange.refused:
            loop.call_soon_threadsafe(submitter.spawn, exchange)
        return answer

    chaos = Chaos(federation, config, probe)
    thread = threading.Thread(target=chaos.run, name="chaos", daemon=True)
    thread.start()
    checkins_done = asyncio.Event()
    checkins = (
        asyncio.create_task(CheckinLoad(federation, config.checkins_per_second).run(checkins_done))
        if config.checkins_per_second > 0
        else None
    )
    try:
        spread = config.seconds * 0.8 / max(1, len(exchanges))
        for index, exchange in enumerate(list(exchanges)):
            await asyncio.sleep(max(0.0, started + index * spread - time.monotonic()))
            submitter.spawn(exchange)
        await asyncio.to_thread(thread.join)
        chaos_seconds = time.monotonic() - started
        checkins_done.set()
        checkin_figures = await checkins if checkins is not None else None
        # Drain: every process healthy, every submission answered, then wait until
        # every accepted exchange is final, parked or in reconciliation.
        drain_started = time.monotonic()
        earlier: dict[str, StoreView] | None = None
        await asyncio.to_thread(chaos.heal)
        if submitter.tasks:
            await asyncio.wait(submitter.tasks)
        deadline = drain_started + config.drain_seconds
        while True:
            views = await asyncio.to_thread(read_stores, federation)
            moving = [
                e
                for e in exchanges
                if e.case_id and classify(e, views).where in ("in progress", "lost")
            ]
            if not moving or time.monotonic() >= deadline:
                break
            await asyncio.sleep(2.0)
            await asyncio.to_thread(chaos.heal)
        drain_seconds = time.monotonic() - drain_started
        if moving:
            # The stores are read one after the other, not at one instant: an exchange
            # counts as lost only if a second read, a moment later, agrees.
            earlier = views
            await asyncio.sleep(2.0)
            views = await asyncio.to_thread(read_stores, federation)
        paid = count_payments(final_payments(federation))
    finally:
        await asyncio.to_thread(chaos.close)
        checkins_done.set()
        if checkins is not None and not checkins.done():
            checkins.cancel()
        for task in submitter.tasks:
            task.cancel()
        await submitter.close()
    report = account(
        config,
        chaos.faults,
        exchanges,
        views,
        paid,
        earlier=earlier,
        chaos_seconds=chaos_seconds,
        drain_seconds=drain_seconds,
    )
    report.checkins = checkin_figures
    return report


def _signal_all(federation: ProcessFederation) -> None:
    """SIGTERM every node and back-end at once (ProcessFederation.stop then waits)."""
    processes: list[subprocess.Popen[Any]] = [
        node.process
        for replicas in federation.replica_nodes.values()
        for node in replicas
        if node.process is not None
    ]
    processes += [simulator.process for simulator in federation.simulators.values()]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)


def _start_federation(
    stack: contextlib.ExitStack,
    root: Path,
    attempts: int = 3,
    configs: Path | None = None,
    config: SoakConfig | None = None,
) -> ProcessFederation:
    """Start the nodes and back-ends; again in a fresh folder when a port that
    was free when chosen was taken meanwhile (other programs on the machine)."""
    config = config or SoakConfig()
    codes = config.provinces
    for attempt in range(1, attempts + 1):
        began = time.monotonic()
        federation = ProcessFederation(
            root / f"run{attempt}", codes, node_class=PipedNode, configs=configs
        )
        federation.simulator_options = {
            code: ("--state-dir", str(federation.root / "backends" / code)) for code in codes
        }
        if config.store == "postgresql":
            federation.databases = _databases(config, codes)
            federation.replicas = dict.fromkeys(codes, config.replicas)
        stack.callback(federation.stop)
        stack.callback(_signal_all, federation)  # first: every process stops at once
        try:
            federation.start(None, **DELAYS)
        except (TimeoutError, RuntimeError) as exc:
            if attempt == attempts:
                raise
            print(f"  start-up failed ({str(exc).splitlines()[0]}); again", flush=True)
            _signal_all(federation)
            federation.stop()
            continue
        nodes = sum(len(replicas) for replicas in federation.replica_nodes.values())
        print(
            f"  started {nodes} nodes and {len(codes)} back-ends in "
            f"{time.monotonic() - began:.0f} s",
            flush=True,
        )
        return federation
    raise AssertionError("unreachable")


def _databases(config: SoakConfig, codes: tuple[str, ...]) -> dict[str, str]:
    """A fresh database per province on the configured server (code -> URL)."""
    from gateway.storage.pgfile import create_database

    if config.database_server is None:
        raise ValueError("a PostgreSQL store needs a database server (--database-server)")
    run = uuid.uuid4().hex[:10]
    return {code: create_database(config.database_server, f"soak_{run}_{code}") for code in codes}


def run_soak(
    config: SoakConfig, *, keep: Path | None = None, configs: Path | None = None
) -> Report:
    """Run the soak; every process it starts is stopped when it returns or is
    interrupted. ``keep``: a folder for the run's stores and logs (default a
    temporary one, removed); ``configs``: the province configs (default
    ``province_configs_dir()``)."""
    with terminated_as_interrupt(), contextlib.ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="yrd-soak-")))
        else:
            root = keep
            root.mkdir(parents=True, exist_ok=True)
        federation = _start_federation(stack, root, configs=configs, config=config)
        run = uuid.uuid4().hex[:8]
        exchanges, probes = plan_workload(federation, config, run)
        report = asyncio.run(_drive(federation, config, exchanges, probes))
        _signal_all(federation)
        federation.stop()
        report.logs = verify_logs(federation)
        return report


def verify_logs(federation: ProcessFederation) -> dict[str, tuple[bool, str]]:
    """Each stopped node's message log, verified as ``yrd-gateway audit verify`` does
    (hash chain and signed heads)."""
    from gateway.config.loading import load_federation
    from gateway.storage.messagelog import verify_file
    from gateway.trust.truststore import TrustStore

    found = {}
    for code, node in federation.nodes.items():
        try:
            keys = TrustStore(load_federation(node.config)).head_key
            report = asyncio.run(
                verify_file(store_location(node.store_dir, MESSAGE_LOG_FILE), keys)
            )
        except Exception as exc:  # reported: a log that cannot be verified is not intact
            found[code] = (False, f"not verified ({type(exc).__name__}: {exc})"[:200])
            continue
        found[code] = (
            report.intact,
            f"intact ({report.rows_checked} rows)"
            if report.intact
            else f"BROKEN: {report.detail}"[:200],
        )
    return found


def main(config: SoakConfig, keep: Path | None = None, configs: Path | None = None) -> int:
    print(
        f"chaos soak: {config.withdrawals} withdrawals and {config.cases} cases over "
        f"{config.seconds:g} s of chaos (pid {os.getpid()}); Ctrl-C stops it",
        flush=True,
    )
    try:
        report = run_soak(config, keep=keep, configs=configs)
    except KeyboardInterrupt:
        print("interrupted: every process the soak started is stopped", flush=True)
        return 130
    print(report.render(), flush=True)
    return 0 if not report.failures else 1
