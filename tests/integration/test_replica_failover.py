"""Failover under load: two replicas of Shanghai and two of Jiangsu, each
province on its own PostgreSQL database, a replica SIGKILLed every few seconds
(and started again) while withdrawals, service cases and hotel check-ins flow.

After the load stops and the outboxes drain, nothing accepted is lost,
duplicated or paid twice, and each province's one message-log chain verifies.
The check-ins that failed and the longest time without a verdict are printed
(they are figures of this machine, not asserted beyond "verdicts kept coming").
The same run, longer: ``yrd-gateway soak --replicas 2 --store postgresql``."""

from __future__ import annotations

import pytest

from gateway.testing.postgres import PostgresServer
from gateway.tools.soak import SoakConfig, run_soak


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_replicas_survive_sigkills_under_load(postgres: PostgresServer) -> None:
    config = SoakConfig.failover(postgres.url(), seconds=15.0)

    report = run_soak(config)

    print(report.render())
    rows = report.rows()
    # replicas are killed in turn, the provinces alternating: at least one of each
    killed = set(report.faults.node_kills)
    assert killed <= {"310000/1", "310000/2", "320000/1", "320000/2"}
    assert {name[:6] for name in killed} == {"310000", "320000"}, report.render()
    assert sum(report.faults.restarts.values()) == sum(report.faults.node_kills.values())
    accepted = sum(rows["accepted"])
    assert accepted == sum(rows["submitted"]) > 0, report.render()
    for label in ("lost", "duplicated", "paid twice", "never answered", "still in progress"):
        assert sum(rows[label]) == 0, f"{label}\n{report.render()}"
    assert not report.paid_twice, report.render()
    assert report.failures == [], report.render()
    # one serialised chain per province, written by both replicas, verifies
    assert set(report.logs) == {"310000", "320000"}
    assert all(intact for intact, _ in report.logs.values()), report.logs
    checkins = report.checkins
    assert checkins is not None
    assert checkins.verdicts > 0, checkins.render()
    assert checkins.calls == checkins.verdicts + sum(checkins.failed.values())
