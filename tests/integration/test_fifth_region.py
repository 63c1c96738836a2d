"""A fifth region joins from config and generated keys only, as docs/adding-a-province.md says.

The test follows the guide: copies the shipped configs to a temporary folder,
makes the new region's keys with ``yrd-gateway pki init``, writes its config
from Shanghai's (top sections edited as the guide's table says, the
``[adapter]`` tables and golden vectors taken verbatim from the guide), checks
it with ``config check`` and ``adapter test``, then starts the region's
simulators (``python -m yrd_simulators --config``) and node
(``yrd-gateway serve``) beside Shanghai's, as separate processes, and plays a
hotel check-in each way and a withdrawal of a Shanghai resident's fund held in
the new region. Nothing in ``gateway/`` or ``adapters/`` knows the region.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stdnum import luhn

from gateway.config.loading import parse_province_file
from gateway.testing.localfed import free_port
from tests.paths import CONFIG_DIR, config_file
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.residents import synthetic_residents

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "adding-a-province.md"
CODE = "360000"
SH = "310000"
CLI = [sys.executable, "-m", "gateway"]
SERVICES = (
    '["identity.CheckCredential", "fund.QueryAccount", "fund.DeliverWithdrawal", '
    '"fund.WithdrawalStatus"]'
)

pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def guide_adapter() -> str:
    """The region's ``[adapter]`` tables, exactly as the guide gives them."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- begin penglai-adapter -->\n```toml\n(.*?)```\n<!-- end penglai-adapter -->",
        text,
        re.S,
    )
    assert found, "the guide lost its adapter block"
    return found[1]


def guide_vectors() -> dict[str, str]:
    """The golden vectors of the guide: relative path -> JSON text."""
    text = GUIDE.read_text(encoding="utf-8")
    vectors = dict(re.findall(r"<!-- golden: (\S+) -->\n```json\n(.*?)```", text, re.S))
    assert vectors, "the guide lost its golden vectors"
    return vectors


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_region(root: Path) -> Path:
    """Steps 1-4 of the guide in a copy of province_configs; returns the new file."""
    folder = root / "province_configs"
    shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("var"))
    keys = cli("pki", "init", str(folder), "--provinces", CODE)
    assert keys.returncode == 0, keys.stderr
    office = re.search(rf"{CODE}\s+office\s+\S+\s+certificate sha256:([0-9a-f]{{64}})", keys.stdout)
    head = config_file(SH, folder).read_text(encoding="utf-8").split("# ---- Adapter", 1)[0]
    for kind in ("hotel", "office"):
        head = head.replace(sha256_hex(f"dev-{kind}-{SH}"), sha256_hex(f"dev-{kind}-{CODE}"))
    head = head.replace(SH, CODE)
    head = re.sub(r'^name = "[^"]*"', 'name = "Penglai"', head, count=1, flags=re.M)
    head = re.sub(r'^local_name = "[^"]*"', 'local_name = "蓬莱省"', head, count=1, flags=re.M)
    head = re.sub(r"^(offers|calls) = \[[^\]]*\]", rf"\1 = {SERVICES}", head, flags=re.M)
    if office is not None:
        head = re.sub(
            r'certificate_sha256 = "[0-9a-f]{64}"',
            f'certificate_sha256 = "{office[1]}"',
            head,
        )
    else:  # a pki without office certificates: the client keeps its token only
        head = re.sub(r"^certificate_sha256 = .*\n", "", head, flags=re.M)
    file = config_file(CODE, folder)
    file.write_text(head + guide_adapter(), encoding="utf-8")
    for name, body in guide_vectors().items():
        path = folder / CODE / "golden" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return file


@dataclass
class Running:
    """Simulator and node processes of the two regions, and how to reach them."""

    root: Path
    files: dict[str, Path]
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    eid_urls: dict[str, str] = field(default_factory=dict)
    fund_urls: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def start_simulator(self, code: str) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "yrd_simulators", "--config", str(self.files[code])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"simulator {code} did not start"
        info = json.loads(line)
        assert info["province"] == code
        self.eid_urls[code], self.fund_urls[code] = info["eid_url"], info["fund_url"]

    def configure_node(self, code: str) -> None:
        file = self.files[code]
        text = file.read_text(encoding="utf-8")
        self.endpoints[code] = f"127.0.0.1:{free_port()}"
        text = re.sub(
            r'^endpoint = "[^"]+"', f'endpoint = "{self.endpoints[code]}"', text, flags=re.M
        )
        text = re.sub(
            r'^federation_endpoint = "[^"]+"',
            f'federation_endpoint = "127.0.0.1:{free_port()}"',
            text,
            flags=re.M,
        )
        text = re.sub(
            r'^store = "[^"]+"', f'store = "{self.root / "var" / code}"', text, flags=re.M
        )
        text = re.sub(r'authority_url = "[^"]+"', f'authority_url = "{self.eid_urls[code]}"', text)
        text = re.sub(r'centre_url = "[^"]+"', f'centre_url = "{self.fund_urls[code]}"', text)
        file.write_text(text, encoding="utf-8")

    def start_node(self, code: str) -> None:
        log = (self.root / f"{code}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [*CLI, "serve", "--config", str(self.files[code]), "--grace", "1"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
        log.close()

    def credentials(self, code: str) -> grpc.ChannelCredentials | None:
        tls = parse_province_file(self.files[code]).tls
        return None if tls is None else grpc.ssl_channel_credentials(tls.ca.read_bytes())

    def wait_serving(self, code: str, seconds: float = 30) -> None:
        credentials = self.credentials(code)
        endpoint = self.endpoints[code]
        deadline = time.monotonic() + seconds
        with (
            grpc.insecure_channel(endpoint)
            if credentials is None
            else grpc.secure_channel(endpoint, credentials)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        log = (self.root / f"{code}.log").read_text(errors="replace")[-2000:]
        raise TimeoutError(f"node {code} not serving after {seconds} s:\n{log}")

    def channel(self, code: str) -> grpc.aio.Channel:
        credentials = self.credentials(code)
        if credentials is None:
            return grpc.aio.insecure_channel(self.endpoints[code])
        return grpc.aio.secure_channel(self.endpoints[code], credentials)

    def stop(self) -> None:
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


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fifth-region")
    penglai = make_region(root)
    running = Running(root, {CODE: penglai, SH: config_file(SH, penglai.parent.parent)})
    try:
        for code in (CODE, SH):
            running.start_simulator(code)
            running.configure_node(code)
        for code in (CODE, SH):
            running.start_node(code)
        for code in (CODE, SH):
            running.wait_serving(code)
        yield running
    finally:
        running.stop()


class TestTheGuideChecks:
    """Steps 5 and 6: the new file passes both checks."""

    def test_config_check(self, region: Running) -> None:
        result = cli("config", "check", str(region.files[CODE]))
        assert result.returncode == 0, result.stdout
        assert "1 file(s) valid" in result.stdout

    def test_adapter_test(self, region: Running) -> None:
        result = cli("adapter", "test", str(region.files[CODE]), "--examples", "20")
        assert result.returncode == 0, result.stdout
        assert " 0 failed" in result.stdout
        assert "identity/person.json" in result.stdout


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def _qr(region: Running, code: str) -> tuple[str, str]:
    """(QR payload, ID number) of an active resident of ``code``, from its wallet."""
    residents = await _get(region.eid_urls[code] + "/residents")
    resident = next(r for r in residents if r["state"] == "CREDENTIAL_ACTIVE")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            region.eid_urls[code] + "/wallet/qr", json={"credential_id": resident["credential_id"]}
        ) as response,
    ):
        response.raise_for_status()
        return str((await response.json())["qr_payload"]), str(resident["id_number"])


async def _check_in(region: Running, hotel: str, guest: str) -> None:
    qr, id_number = await _qr(region, guest)
    async with region.channel(hotel) as channel:
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
    """The federation exchanges with the new region."""

    async def test_penglai_resident_checks_into_a_shanghai_hotel(self, region: Running) -> None:
        await _check_in(region, hotel=SH, guest=CODE)

    async def test_shanghai_resident_checks_into_a_penglai_hotel(self, region: Running) -> None:
        await _check_in(region, hotel=CODE, guest=SH)

    async def test_shanghai_resident_withdraws_fund_held_in_penglai(self, region: Running) -> None:
        accounts = await _get(region.fund_urls[CODE] + "/admin/accounts")
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
        async with region.channel(SH) as channel:
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
        payments = await _get(region.fund_urls[CODE] + "/admin/payments")
        assert [p["amount_fen"] for p in payments if p["account"] == account["account"]] == [
            1_000_000
        ]
