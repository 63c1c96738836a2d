"""A node whose disk fails, on either side of a withdrawal: no accepted exchange is
refused, lost or stuck because of it.

Nodes run as separate processes; a node's writes are made to fail by lowering
its file-size limit (RLIMIT_FSIZE, with ``prlimit`` on the running process:
Python ignores SIGXFSZ, so SQLite's writes fail with EFBIG) and healed by raising
it again. A node's stderr goes through a FIFO (not subject to the limit) into a
file of the test, so that its log lines can be counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.testing.procfed import NodeProcess, ProcessFederation
from tests.integration.conftest import JS, SH, payee_account
from tests.integration.test_audit import cli
from tests.integration.test_fund_faults import OFFICE, S, admin, wait_final
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd_simulators.residents import synthetic_residents

N = 12


class NodeLog:
    """Reads a node's stderr from a FIFO (again after each restart) into a file."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.copy = fifo.with_suffix(".copy.log")
        os.mkfifo(fifo)
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self.copy.open("ab") as out:
            while not self._stop:
                with self.fifo.open("rb") as source:
                    for line in source:
                        out.write(line)
                        out.flush()

    def text(self) -> str:
        return self.copy.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):  # unblock a reader waiting for a writer
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        self._thread.join(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[ProcessFederation, dict[str, NodeLog]]]:
    logs = {code: NodeLog(tmp_path / f"{code}.log") for code in (SH, JS)}
    federation = ProcessFederation(tmp_path, (SH, JS))
    try:
        yield federation.start(review_delay=0.02, payment_delay=0.02), logs
    finally:
        federation.stop()
        for log in logs.values():
            log.close()


def disk(node: NodeProcess, *, failing: bool) -> None:
    """Make every write of the node's process beyond its first byte fail (EFBIG), or heal it."""
    assert node.process is not None
    _, hard = resource.prlimit(node.process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(node.process.pid, resource.RLIMIT_FSIZE, (1 if failing else hard, hard))


def health(node: NodeProcess) -> int:
    credentials = grpc.ssl_channel_credentials(node.ca.read_bytes())
    with grpc.secure_channel(node.endpoint, credentials) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(answer.status)


def wait_health(node: NodeProcess, status: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while health(node) != status:
        assert time.monotonic() < deadline, f"node {node.province} health never became {status}"
        time.sleep(0.1)


def applications(processes: ProcessFederation, count: int) -> list[fund_pb2.WithdrawalApplication]:
    accounts = admin(processes.simulators[JS].fund_url, "/admin/accounts")
    assert isinstance(accounts, list)
    names = {r.id_number: r.full_name for r in synthetic_residents(SH)}
    holders = [a for a in accounts if a["id_number"] in names and a["status"].endswith("NORMAL")]
    return [
        fund_pb2.WithdrawalApplication(
            idempotency_key=f"disk-{i}-{uuid.uuid4().hex[:8]}",
            applicant=common_pb2.Person(
                id_number=holders[i % len(holders)]["id_number"],
                full_name=names[holders[i % len(holders)]["id_number"]],
            ),
            fund_province=JS,
            fund_account=holders[i % len(holders)]["account"],
            reason=fund_pb2.RENT,
            amount_fen=100 + i,
            payee_account=payee_account(i),
            payee_bank="Bank of Shanghai",
        )
        for i in range(count)
    ]


async def submit(
    processes: ProcessFederation, apps: list[fund_pb2.WithdrawalApplication]
) -> list[str]:
    async with processes.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)
        cases = [
            await stub.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=app), metadata=OFFICE, timeout=5
            )
            for app in apps
        ]
    return [case.case_id for case in cases]


async def statuses(processes: ProcessFederation, case_ids: list[str]) -> dict[str, int]:
    async with processes.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)
        return {
            case_id: (
                await stub.GetWithdrawal(
                    fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=5
                )
            ).status
            for case_id in case_ids
        }


def assert_all_paid_once(processes: ProcessFederation, case_ids: list[str]) -> None:
    finals = asyncio.run(wait_final(processes, case_ids, seconds=90))
    assert {k: S.Name(v.status) for k, v in finals.items() if v.status != S.PAID} == {}
    payments = admin(processes.simulators[JS].fund_url, "/admin/payments")
    assert isinstance(payments, list)
    references = [p["reference"] for p in payments]
    assert len(references) == len(set(references)) == len(case_ids)


def assert_quiet(log: NodeLog, seconds: float) -> None:
    """No unretrieved task exception; at most a few log lines per item per second."""
    text = log.text()
    print(
        f"node log {log.fifo.stem}: {text.count(chr(10))} lines, "
        f"{text.count('kept in memory')} 'kept in memory', "
        f"{text.count('delivery failed')} 'delivery failed'"
    )
    assert "Task exception was never retrieved" not in text
    assert "exception was never retrieved" not in text
    assert "cannot rollback" not in text
    assert text.count("\n") < N * 4 * seconds + 200, "a retry storm in the log"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_withdrawals_when_the_fund_node_cannot_write(
    processes: tuple[ProcessFederation, dict[str, NodeLog]],
) -> None:
    """The fund province's node fails its writes: it answers UNAVAILABLE and reports
    NOT_SERVING; the applicant's node keeps every case QUEUED (none REJECTED) and
    delivers them all once the disk is healed; each is paid once."""
    federation, logs = processes
    fund_node = federation.nodes[JS]
    disk(fund_node, failing=True)
    case_ids = asyncio.run(submit(federation, applications(federation, N)))
    wait_health(fund_node, health_pb2.HealthCheckResponse.NOT_SERVING)
    time.sleep(2.0)
    seen = asyncio.run(statuses(federation, case_ids))
    assert {S.Name(s) for s in seen.values()} == {"QUEUED"}
    disk(fund_node, failing=False)
    assert_all_paid_once(federation, case_ids)
    wait_health(fund_node, health_pb2.HealthCheckResponse.SERVING)
    assert_quiet(logs[SH], 10)
    assert_quiet(logs[JS], 10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_withdrawals_when_the_applicant_node_cannot_write(
    processes: tuple[ProcessFederation, dict[str, NodeLog]],
) -> None:
    """The applicant's node fails its writes while the fund centre pays: the status
    updates are retried, not dropped, and every case reaches PAID once it heals.
    Meanwhile a new application is answered UNAVAILABLE, never INTERNAL."""
    federation, logs = processes
    applicant = federation.nodes[SH]
    apps = applications(federation, N + 1)
    case_ids = asyncio.run(submit(federation, apps[:N]))
    disk(applicant, failing=True)  # its outbox still sends (then fails to log the answer)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(submit(federation, apps[N:]))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_health(applicant, health_pb2.HealthCheckResponse.NOT_SERVING)
    before = asyncio.run(statuses(federation, case_ids))
    assert sum(status != S.PAID for status in before.values()) >= 1  # some still on their way
    deadline = time.monotonic() + 30
    while len(admin(federation.simulators[JS].fund_url, "/admin/payments")) < N:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the fund centre should pay meanwhile"
        time.sleep(0.2)
    time.sleep(1.0)  # the status updates of the payments cannot be stored
    assert asyncio.run(statuses(federation, case_ids)) == before  # nothing could be stored
    assert S.REJECTED not in before.values()
    disk(applicant, failing=False)
    assert_all_paid_once(federation, case_ids)
    wait_health(applicant, health_pb2.HealthCheckResponse.SERVING)
    assert_quiet(logs[SH], 10)
    assert_quiet(logs[JS], 10)
    assert "status update refused" not in logs[JS].text()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_parked_after_its_age_and_retried_by_an_operator(
    processes: tuple[ProcessFederation, dict[str, NodeLog]],
) -> None:
    """Deliveries failing past node.park_after_seconds are PARKED with their last
    error, listed by `outbox list --parked`, and `outbox retry` (logged in the
    message log with the operator's name) brings each to PAID."""
    federation, _ = processes
    applicant, fund_node = federation.nodes[SH], federation.nodes[JS]
    applicant.terminate()
    text = applicant.config.read_text(encoding="utf-8")
    applicant.config.write_text(
        text.replace("[node]\n", "[node]\npark_after_seconds = 1.5\n", 1), encoding="utf-8"
    )
    applicant.start()
    applicant.wait_serving()
    disk(fund_node, failing=True)
    case_ids = asyncio.run(submit(federation, applications(federation, 3)))
    config = str(applicant.config)
    deadline = time.monotonic() + 30
    while True:
        listed = cli("outbox", "list", "--parked", "--config", config)
        assert listed.returncode == 0, listed.stderr
        if all(case_id in listed.stdout for case_id in case_ids):
            break
        assert time.monotonic() < deadline, listed.stdout
        time.sleep(0.5)
    assert "parked" in listed.stdout
    assert "UNAVAILABLE" in listed.stdout
    for name in ("id_number", "full_name"):  # no personal data in the listing
        assert name not in listed.stdout
    disk(fund_node, failing=False)
    time.sleep(2.0)
    seen = asyncio.run(statuses(federation, case_ids))
    assert {S.Name(s) for s in seen.values()} == {"QUEUED"}, "parked items wait for an operator"
    for case_id in case_ids:
        done = cli("outbox", "retry", case_id, "--config", config, "--operator", "op-wang")
        assert done.returncode == 0, done.stderr
    assert_all_paid_once(federation, case_ids)
    assert cli("outbox", "list", "--parked", "--config", config).stdout.count("\n") == 1
    verify = cli("audit", "verify", str(federation.root / "var" / SH / "messages.db"))
    assert verify.returncode == 0, verify.stdout
    again = cli("outbox", "retry", case_ids[0], "--config", config)
    assert again.returncode == 1  # nothing parked for it any more
