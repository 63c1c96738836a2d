"""docker/scenarios.py can be played again and again on one running federation.

The script calls the nodes and simulators from outside, as it calls the
compose stack's published ports; here the same code is pointed at a
LocalFederation on loopback (no Docker daemon needed) and played several times
in a row. Every run must give every expected outcome, as the first did: a
withdrawal's payments are counted by its case's reference at the centre, not
by account, so accounts paid from before stay usable while they cover the
amount (the script used to need an account never paid from, and the fifth run
found none left).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from types import ModuleType
from typing import Any

from gateway.testing.localfed import LocalFederation
from tests.paths import CA_DIR, REPOSITORY

#: The Jiangsu centre holds 13 NORMAL accounts of Shanghai residents and a run
#: pays from two (three with --outages): picked by "never paid from", the
#: seventh run (the fifth with outages) found none left.
RUNS = 8


def scenarios_module() -> ModuleType:
    path = REPOSITORY / "docker" / "scenarios.py"
    spec = importlib.util.spec_from_file_location("docker_scenarios", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def provinces_of(federation: LocalFederation, scenarios: ModuleType) -> dict[str, Any]:
    """What load_provinces reads from the configs, for the running local nodes."""
    found = {}
    for code, province in sorted(federation.provinces.items()):
        config = province.config
        found[code] = scenarios.Province(
            code=code,
            name=config.province.name,
            slug=config.province.name.lower(),
            endpoint=config.node.endpoint,
            eid_url=province.simulator.url,
            fund_url=province.fund_centre.url,
        )
    return found


async def test_the_scenarios_pass_run_after_run_on_one_federation(
    federation: LocalFederation,
) -> None:
    scenarios = scenarios_module()
    fed = scenarios.Federation(
        provinces_of(federation, scenarios), (CA_DIR / "ca.crt.pem").read_bytes()
    )
    centre = federation.provinces["320000"].fund_centre
    try:
        for run in range(1, RUNS + 1):
            outcomes = await asyncio.to_thread(scenarios.play_scenarios, fed)
            failed = [(o.scenario, o.expected, o.got, o.detail) for o in outcomes if not o.ok]
            assert not failed, f"run {run}: {failed}"
            assert len(outcomes) >= 20
            # Each run pays two withdrawals (the house, the one submitted twice), once each.
            assert len(centre.payments) == 2 * run
    finally:
        for code in list(fed.provinces):
            fed.reset(code)


def test_an_account_paid_from_before_is_picked_again_while_it_covers_the_amount() -> None:
    scenarios = scenarios_module()
    names = {"ID-A": "A", "ID-B": "B"}
    accounts = [
        {"account": "32002", "id_number": "ID-B", "balance_fen": 9_000, "status": "NORMAL"},
        {"account": "32001", "id_number": "ID-A", "balance_fen": 5_000, "status": "NORMAL"},
        {"account": "32000", "id_number": "ID-X", "balance_fen": 99_000, "status": "NORMAL"},
        {"account": "31999", "id_number": "ID-A", "balance_fen": 99_000, "status": "FROZEN"},
    ]
    pick = scenarios.pick_account
    assert pick(accounts, names, set(), 4_000)["account"] == "32001"
    assert pick(accounts, names, {"32001"}, 4_000)["account"] == "32002"  # used in this run
    assert pick(accounts, names, set(), 6_000)["account"] == "32002"  # 32001 cannot cover it
    assert pick(accounts, names, {"32002"}, 6_000) is None
    assert pick(accounts, names, {"32001"}, 10**11)["account"] == "32002"  # any balance
    payments = [
        {"reference": "FW-1", "account": "32001", "amount_fen": 1},
        {"reference": "FW-2", "account": "32001", "amount_fen": 1},
    ]
    assert scenarios.payments_for(payments, "FW-2") == 1
    assert scenarios.payments_for(payments, "FW-3") == 0
    assert scenarios.payments_for(payments, "") == 0
