"""A fifth region joins a running federation as docs/adding-a-province.md says.

The four provinces run as processes, each given only its own folder. The test
follows the guide step by step: the new region ("Penglai", 360000) makes its
keys and a signing request in a folder of its own (``yrd-gateway pki
province``), the federation CA certifies the request (``pki certify`` with the
development CA of ``province_configs/federation-ca/``), the region writes its
config from the guide (its own sections and one ``[[peers]]`` entry per
province; the ``[adapter]`` tables and golden vectors too), checks it
(``config check``, ``adapter test``), starts its simulators and node (which
publishes its descriptor); each of the four adds one ``[[peers]]`` entry to its
own file and reloads (SIGHUP, or the ReloadConfig RPC) without restarting.
Then residents check into hotels each way, a Shanghai resident withdraws a
fund held in the new region, and Shanghai's service map shows the region. No
file of any province is copied to another's folder; nothing in ``gateway/``
or ``adapters/`` knows the region.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from stdnum import luhn

from gateway.server.node import DIRECTORY_HEALTH
from gateway.testing.localfed import free_port
from gateway.testing.procfed import NodeProcess, ProcessFederation
from tests.paths import CA_DIR
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.residents import synthetic_residents

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "adding-a-province.md"
CODE = "360000"
SH = "310000"
FOUR = ("310000", "320000", "330000", "340000")
CLI = [sys.executable, "-m", "gateway"]

pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def guide_block(name: str, language: str) -> str:
    """A marked block of the guide, exactly as the guide gives it."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- begin {name} -->\n```{language}\n(.*?)```\n<!-- end {name} -->", text, re.S
    )
    assert found, f"the guide lost its {name} block"
    return found[1]


def guide_vectors() -> dict[str, str]:
    """The golden vectors of the guide: relative path -> JSON text."""
    text = GUIDE.read_text(encoding="utf-8")
    vectors = dict(re.findall(r"<!-- golden: (\S+) -->\n```json\n(.*?)```", text, re.S))
    assert vectors, "the guide lost its golden vectors"
    return vectors


def digests(folder: Path) -> dict[str, Path]:
    """SHA-256 of every file below ``folder`` -> its path."""
    return {
        hashlib.sha256(path.read_bytes()).hexdigest(): path
        for path in folder.rglob("*")
        if path.is_file()
    }


def set_value(text: str, key: str, value: str) -> str:
    """Set ``key = "..."`` (first occurrence at the start of a line)."""
    return re.sub(rf'^{key} = "[^"]*"', f'{key} = "{value}"', text, count=1, flags=re.M)


def set_peer_endpoint(text: str, code: str, endpoint: str) -> str:
    return re.sub(
        rf'(\[\[peers\]\]\ncode = "{code}"[^\n]*\nendpoint = ")[^"]+"',
        lambda found: f'{found[1]}{endpoint}"',
        text,
    )


@dataclass
class Joined:
    """The four provinces' processes, the new region's, and how to reach them."""

    root: Path
    four: ProcessFederation
    folder: Path  # the new region's own folder, on "its own machine"
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    eid_urls: dict[str, str] = field(default_factory=dict)
    fund_urls: dict[str, str] = field(default_factory=dict)
    node: NodeProcess | None = None
    #: Process id of each of the four nodes before the new region was added.
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.folder / "province.toml"

    def ca(self, code: str) -> Path:
        return (self.folder if code == CODE else self.four.config_dir / code) / "keys/ca.crt.pem"

    def endpoint(self, code: str) -> str:
        assert self.node is not None
        return self.node.endpoint if code == CODE else self.four.nodes[code].endpoint

    def channel(self, code: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(self.ca(code).read_bytes())
        return grpc.aio.secure_channel(self.endpoint(code), credentials)

    def stop(self) -> None:
        if self.node is not None:
            self.node.terminate()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.four.stop()


def make_keys_and_certificate(joined: Joined) -> None:
    """Steps 1 and 2: the region's keys; the CA certifies its request."""
    _keys_and_certificate(joined.folder, joined.root)


def _keys_and_certificate(folder: Path, root: Path) -> None:
    keys = cli("pki", "province", CODE, str(folder))
    assert keys.returncode == 0, keys.stderr
    request = folder / "keys" / "tls.csr.pem"
    # Only the request travels to the CA, and only the certificate comes back.
    at_ca = root / "federation-ca-inbox" / f"{CODE}-tls.csr.pem"
    at_ca.parent.mkdir()
    at_ca.write_bytes(request.read_bytes())
    issued = at_ca.with_name(f"{CODE}-tls.crt.pem")
    certified = cli("pki", "certify", str(at_ca), "--ca", str(CA_DIR), "--out", str(issued))
    assert certified.returncode == 0, certified.stderr
    assert f"province {CODE}" in certified.stdout
    (folder / "keys" / "tls.crt.pem").write_bytes(issued.read_bytes())
    (folder / "keys" / "ca.crt.pem").write_bytes((CA_DIR / "ca.crt.pem").read_bytes())
    assert not list(folder.rglob("ca.key.pem"))


def write_config(joined: Joined) -> None:
    """Steps 3-5: the config from the guide, its adapter and its golden vectors."""
    _config_and_vectors(joined.folder)


def _config_and_vectors(folder: Path) -> None:
    text = guide_block("penglai-config", "toml") + "\n" + guide_block("penglai-adapter", "toml")
    (folder / "province.toml").write_text(text, encoding="utf-8")
    for name, body in guide_vectors().items():
        path = folder / "golden" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")


def make_region(root: Path) -> Path:
    """Steps 1-5 of the guide in a folder of the region's own (no running
    federation); the new province.toml (for the adapter CLI tests)."""
    folder = root / CODE
    folder.mkdir(parents=True)
    _keys_and_certificate(folder, root)
    _config_and_vectors(folder)
    return folder / "province.toml"


def start_simulator(joined: Joined) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "yrd_simulators", "--config", str(joined.file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    joined.processes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "the region's simulator did not start"
    info = json.loads(line)
    assert info["province"] == CODE
    joined.eid_urls[CODE], joined.fund_urls[CODE] = info["eid_url"], info["fund_url"]


def start_node(joined: Joined) -> None:
    """Step 8: the addresses of this run (the guide's ports may be taken), then serve."""
    text = joined.file.read_text(encoding="utf-8")
    endpoint = f"127.0.0.1:{free_port()}"
    text = set_value(text, "endpoint", endpoint)
    text = set_value(text, "federation_endpoint", f"127.0.0.1:{free_port()}")
    text = set_value(text, "store", str(joined.root / "var" / CODE))
    text = set_value(text, "authority_url", joined.eid_urls[CODE])
    text = set_value(text, "centre_url", joined.fund_urls[CODE])
    for code in FOUR:  # each province's federation endpoint, as it told the region
        text = set_peer_endpoint(text, code, peer_federation_endpoint(joined.four, code))
    joined.file.write_text(text, encoding="utf-8")
    joined.node = NodeProcess(
        CODE, joined.file, endpoint, joined.root / f"{CODE}.log", joined.ca(CODE)
    )
    joined.node.start()
    joined.node.wait_serving(30)


def peer_federation_endpoint(four: ProcessFederation, code: str) -> str:
    text = four.nodes[code].config.read_text(encoding="utf-8")
    found = re.search(r'^federation_endpoint = "([^"]+)"', text, re.M)
    assert found
    return found[1]


async def reload_by_rpc(joined: Joined, code: str) -> None:
    async with joined.channel(code) as channel:
        answer = await admin_pb2_grpc.AdminServiceStub(channel).ReloadConfig(
            admin_pb2.ReloadConfigRequest(),
            metadata=(("authorization", f"Bearer dev-office-{code}"),),
            timeout=10,
        )
    assert answer.reloaded, answer.detail


def add_the_region(joined: Joined) -> None:
    """Step 9: each of the four adds one [[peers]] entry and reloads, no restart."""
    assert joined.node is not None
    text = joined.file.read_text(encoding="utf-8")
    found = re.search(r'^federation_endpoint = "([^"]+)"', text, re.M)
    assert found
    entry = f'\n[[peers]]\ncode = "{CODE}"   # Penglai\nendpoint = "{found[1]}"\n'
    for code in FOUR:
        node = joined.four.nodes[code]
        assert node.process is not None
        joined.pids[code] = node.process.pid
        file = node.config
        before = file.read_text(encoding="utf-8")
        # [[peers]] entries are tables of an array: the entry goes before the
        # next top-level table after the existing peers ([signing]).
        file.write_text(before.replace("\n[signing]\n", entry + "\n[signing]\n", 1))
        if code == SH:
            asyncio.run(reload_by_rpc(joined, code))
        else:
            node.process.send_signal(signal.SIGHUP)


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joined]:
    root = tmp_path_factory.mktemp("fifth-region")
    four = ProcessFederation(root / "federation", FOUR)
    joined = Joined(root, four, root / "penglai-machine" / CODE)
    try:
        four.start()
        for code in FOUR:
            simulator = four.simulators[code]
            joined.eid_urls[code], joined.fund_urls[code] = simulator.eid_url, simulator.fund_url
        make_keys_and_certificate(joined)
        write_config(joined)
        start_simulator(joined)
        start_node(joined)
        add_the_region(joined)
        assert joined.node is not None
        joined.node.wait_serving(30, service=DIRECTORY_HEALTH)  # it holds the four
        for code in FOUR:
            joined.four.nodes[code].wait_serving(30, service=DIRECTORY_HEALTH)  # and they it
        yield joined
    finally:
        joined.stop()


class TestTheGuideChecks:
    """Steps 6 and 7: the new file passes both checks."""

    def test_config_check(self, joined: Joined) -> None:
        result = cli("config", "check", str(joined.file))
        assert result.returncode == 0, result.stdout
        assert "1 file(s) valid" in result.stdout

    def test_adapter_test(self, joined: Joined) -> None:
        result = cli("adapter", "test", str(joined.file), "--examples", "20")
        assert result.returncode == 0, result.stdout
        assert " 0 failed" in result.stdout
        assert "identity/person.json" in result.stdout


class TestJoining:
    def test_the_four_reloaded_without_restarting(self, joined: Joined) -> None:
        for code in FOUR:
            node = joined.four.nodes[code]
            assert node.process is not None
            assert node.process.poll() is None
            assert node.process.pid == joined.pids[code]
            assert node.starts == 1
        for code in FOUR[1:]:
            log = joined.four.node_log(code).read_text(encoding="utf-8", errors="replace")
            assert "config reloaded" in log

    async def test_shanghai_sees_the_region_in_its_service_map(self, joined: Joined) -> None:
        async with joined.channel(SH) as channel:
            answer = await admin_pb2_grpc.AdminServiceStub(channel).GetServiceMap(
                admin_pb2.GetServiceMapRequest(),
                metadata=(("authorization", f"Bearer dev-office-{SH}"),),
                timeout=5,
            )
        provinces = {p.province: p for p in answer.provinces}
        assert set(provinces) == {*FOUR, CODE}
        region = provinces[CODE]
        assert region.state == "held"
        assert region.name == "Penglai"
        assert region.operator_contact == "gateway-operations@360000.yrd.example"
        assert {s.service for s in region.services} == {
            "identity.CheckCredential",
            "fund.QueryAccount",
            "fund.DeliverWithdrawal",
            "fund.WithdrawalStatus",
        }

    def test_no_file_of_a_province_was_copied_to_another(self, joined: Joined) -> None:
        ca_certificate = hashlib.sha256((CA_DIR / "ca.crt.pem").read_bytes()).hexdigest()
        folders = {code: joined.four.config_dir / code for code in FOUR}
        folders[CODE] = joined.folder
        held = {code: set(digests(folder)) - {ca_certificate} for code, folder in folders.items()}
        for code, files in held.items():
            for other, other_files in held.items():
                if other != code:
                    shared = files & other_files
                    assert not shared, (code, other, [digests(folders[code])[d] for d in shared])
        # Nothing of the region's (no key, no config) is in the four's folders, and
        # the four's files name it only in their one [[peers]] entry.
        for code in FOUR:
            text = (folders[code] / "province.toml").read_text(encoding="utf-8")
            assert text.count(CODE) == 1
            assert not list(folders[code].rglob(f"*{CODE}*"))
        assert not list(joined.folder.rglob("ca.key.pem"))


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def _qr(joined: Joined, code: str) -> tuple[str, str]:
    """(QR payload, ID number) of an active resident of ``code``, from its wallet."""
    residents = await _get(joined.eid_urls[code] + "/residents")
    resident = next(r for r in residents if r["state"] == "CREDENTIAL_ACTIVE")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            joined.eid_urls[code] + "/wallet/qr", json={"credential_id": resident["credential_id"]}
        ) as response,
    ):
        response.raise_for_status()
        return str((await response.json())["qr_payload"]), str(resident["id_number"])


async def _check_in(joined: Joined, hotel: str, guest: str) -> None:
    qr, id_number = await _qr(joined, guest)
    async with joined.channel(hotel) as channel:
        answer = await identity_pb2_grpc.IdentityServiceStub(channel).VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=qr, purpose=identity_pb2.HOTEL_CHECK_IN, client_reference="room 8"
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{hotel}"),),
            timeout=5,
        )
    assert identity_pb2.Verdict.Name(answer.verdict) == "VALID", answer
    assert set(answer.disclosed_attributes) == {
        "id_number",
        "full_name",
        "gender",
        "ethnicity",
        "photo",
    }
    assert answer.attributes.id_number == id_number
    assert id_number[:2] == guest[:2]


class TestExchanges:
    """The federation exchanges with the new joined."""

    async def test_penglai_resident_checks_into_a_shanghai_hotel(self, joined: Joined) -> None:
        await _check_in(joined, hotel=SH, guest=CODE)

    async def test_shanghai_resident_checks_into_a_penglai_hotel(self, joined: Joined) -> None:
        await _check_in(joined, hotel=CODE, guest=SH)

    async def test_shanghai_resident_withdraws_fund_held_in_penglai(self, joined: Joined) -> None:
        accounts = await _get(joined.fund_urls[CODE] + "/admin/accounts")
        account = next(
            a for a in accounts if a["id_number"].startswith("31") and a["status"] == "NORMAL"
        )
        name = next(
            r.full_name for r in synthetic_residents(SH) if r.id_number == account["id_number"]
        )
        payee = "622202" + "000000000042"
        application = fund_pb2.WithdrawalApplication(
            idempotency_key=f"fifth-{uuid.uuid4().hex}",
            applicant=common_pb2.Person(id_number=account["id_number"], full_name=name),
            fund_province=CODE,
            fund_account=account["account"],
            reason=fund_pb2.HOUSE_PURCHASE,
            amount_fen=1_000_000,
            payee_account=payee + luhn.calc_check_digit(payee),
            payee_bank="Bank of Shanghai",
            supporting_certificates=["1.2.156.3005.2.11100000001.example"],
        )
        office = (("authorization", f"Bearer dev-office-{SH}"),)
        async with joined.channel(SH) as channel:
            stub = fund_pb2_grpc.FundServiceStub(channel)
            case = await stub.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=application),
                metadata=office,
                timeout=5,
            )
            deadline = time.monotonic() + 30
            while case.status not in (fund_pb2.PAID, fund_pb2.REJECTED):
                assert time.monotonic() < deadline, f"still {case.status} after 30 s"
                await asyncio.sleep(0.1)
                case = await stub.GetWithdrawal(
                    fund_pb2.GetWithdrawalRequest(case_id=case.case_id), metadata=office, timeout=5
                )
        assert fund_pb2.WithdrawalStatus.Name(case.status) == "PAID", case
        payments = await _get(joined.fund_urls[CODE] + "/admin/payments")
        assert [p["amount_fen"] for p in payments if p["account"] == account["account"]] == [
            1_000_000
        ]
