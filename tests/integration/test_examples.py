"""The README's way in, end to end: ``yrd-gateway up`` starts the four provinces as
separate processes (on free ports via ``--base-port``), every client example under
``examples/`` runs against it as a newcomer would run it, and Ctrl-C stops it all
with exit 0. So the examples cannot rot."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing.localfed import pick_range
from gateway.testing.procfed import busy_ports, ports_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Up:
    """A running ``yrd-gateway up`` and what it printed until it was ready."""

    process: subprocess.Popen[str]
    base: int
    run_dir: Path
    printed: str

    def node(self, code: str) -> str:
        return f"127.0.0.1:{ports_for(code, self.base).public}"

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


#: Ports an ``up`` layout spans above its base (ports_for: up to BASE+1043).
UP_SPAN = 1100


def free_base() -> int:
    """A base port whose whole ``up`` layout is free now, within the ports this
    pytest worker picks from (free_port's slice, below the ephemeral range): the
    other worker's servers, and outgoing connections, never take one of them
    between this check and the nodes' start."""
    start, stop = pick_range()
    if stop - start < 2 * UP_SPAN:  # many workers: a thin slice each
        start, stop = 20_000, 32_768
    for _ in range(50):
        base = random.randrange(start // 100 * 100 + 100, stop - UP_SPAN, 100)
        if not busy_ports(base):
            return base
    raise RuntimeError("no free port layout found")


def _up(run_dir: Path, base: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "up",
            "--base-port",
            str(base),
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    run_dir = tmp_path_factory.mktemp("federation")
    base = free_base()
    process = _up(run_dir, base)
    assert process.stdout is not None
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            if line.startswith("ready:"):
                break
        else:
            pytest.fail("yrd-gateway up exited before ready:\n" + "".join(printed))
        yield Up(process, base, run_dir, "".join(printed))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()


def example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, f"examples/{name}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


class TestUp:
    """``yrd-gateway up`` prints what a newcomer needs: every endpoint, back-end, log
    and store, at the ports the layout promises."""

    def test_prints_endpoints_backends_logs_and_stores(self, up: Up) -> None:
        for code in ("310000", "320000", "330000", "340000"):
            ports = ports_for(code, up.base)
            assert f"127.0.0.1:{ports.public}" in up.printed
            assert f"127.0.0.1:{ports.federation}" in up.printed
            for port in ports.backends():
                assert up.url(port) in up.printed
            assert str(up.run_dir / code / "node.log") in up.printed
            assert str(up.run_dir / code / "store") in up.printed
            assert (up.run_dir / code / "node.log").exists()


class TestExamples:
    """Each example, run as a script with the node and back-end addresses of this
    federation, exits 0 and prints its outcome."""

    def test_hotel_check_in(self, up: Up) -> None:
        run = example(
            "hotel_checkin.py",
            "--node",
            up.node("310000"),
            "--eid-url",
            up.url(ports_for("330000", up.base).eid),
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "verdict: VALID (issuer 330000)" in run.stdout
        assert "check-in CI-310000-" in run.stdout

    def test_fund_withdrawal_is_paid(self, up: Up) -> None:
        run = example(
            "fund_withdrawal.py",
            "--node",
            up.node("310000"),
            "--fund-url",
            up.url(ports_for("320000", up.base).fund),
            "--eid-url",
            up.url(ports_for("310000", up.base).eid),
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert ": QUEUED" in run.stdout
        assert ": PAID" in run.stdout
        assert "paid: 20000.00 yuan" in run.stdout

    def test_certificate_fetch_with_a_valid_seal(self, up: Up) -> None:
        run = example(
            "certificate_fetch.py",
            "--node",
            up.node("310000"),
            "--library-url",
            up.url(ports_for("340000", up.base).cert),
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "seal: SEAL_VALID" in run.stdout
        assert "in this province's code 0201" in run.stdout

    def test_service_case_completes(self, up: Up) -> None:
        run = example(
            "service_case.py",
            "--node",
            up.node("320000"),
            "--eid-url",
            up.url(ports_for("320000", up.base).eid),
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert ": CASE_QUEUED" in run.stdout
        assert ": CASE_COMPLETED" in run.stdout


class TestStop:
    """Ctrl-C drains the nodes and stops the back-ends: exit 0, stores kept. (Runs
    last: it stops the module's federation.)"""

    def test_ctrl_c_stops_everything_with_exit_0(self, up: Up) -> None:
        assert up.process.stdout is not None
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == 0
        rest = up.process.stdout.read()
        assert "stopped; logs and stores kept" in rest
        for code in ("310000", "320000", "330000", "340000"):
            assert (up.run_dir / code / "store" / "messages.db").exists()
            assert '"event":"node stopped"' in (up.run_dir / code / "node.log").read_text()
        assert not busy_ports(up.base)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    base = free_base()
    taken = ports_for("330000", base).fund
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        process = _up(tmp_path / "run", base)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"ports already in use: {taken}" in out
    assert "--base-port" in out
    assert not (tmp_path / "run" / "330000").exists()
