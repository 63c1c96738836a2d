"""`yrd-gateway serve` as an operator meets it when something is wrong: it
refuses at once, with one line naming the cause, a port it cannot bind, a store
another node holds, a key it cannot read, a message log that does not verify
(unless told to continue past the break, which the log then records)."""

from __future__ import annotations

import fcntl
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.testing.localfed import LocalFederation, free_port
from tests.integration.conftest import SH, Wallet
from tests.integration.test_audit import three_check_ins
from tests.integration.test_cli import copy_configs
from tests.paths import config_file

CLI = [sys.executable, "-m", "gateway"]
REFUSED = 3


def serve(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A `serve` expected to refuse: it must exit by itself."""
    return subprocess.run(
        [*CLI, "serve", "--config", str(config), "--grace", "1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def endpoint_of(config: Path) -> str:
    found = re.search(r'\nendpoint = "([^"]+)"', config.read_text(encoding="utf-8"))
    assert found is not None
    return found.group(1)


def health(folder: Path, endpoint: str, deadline: float = 30) -> int | None:
    """The node's overall health status, waiting up to ``deadline`` for it to answer."""
    ca = folder / "federation-ca" / "ca.crt.pem"
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    until = time.monotonic() + deadline
    with grpc.secure_channel(endpoint, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            try:
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
            except grpc.RpcError:
                time.sleep(0.2)
    return None


@dataclass
class Served:
    folder: Path
    config: Path
    process: subprocess.Popen[str]

    @property
    def store(self) -> Path:
        return self.folder / "var"

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        return stderr


def start(folder: Path, *args: str) -> Served:
    config = config_file("310000", folder)
    process = subprocess.Popen(
        [*CLI, "serve", "--config", str(config), "--grace", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(folder, config, process)
    if health(folder, endpoint_of(config)) != health_pb2.HealthCheckResponse.SERVING:
        stderr = served.stop()
        raise AssertionError(f"node did not come up: {stderr}")
    return served


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Served]:
    served = start(copy_configs(tmp_path))
    try:
        yield served
    finally:
        served.stop()


def snapshot(store: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every store file: a refused node must not touch them."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(store.iterdir())
        if p.name != "node.lock"
    }


def same_ports_other_store(served: Served) -> Path:
    """Another copy of the node's config folder: same ports, its own store."""
    folder = served.folder.parent / "other_configs"
    shutil.copytree(served.folder, folder, ignore=shutil.ignore_patterns("var"))
    return folder / served.config.relative_to(served.folder)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


class TestServeFailsFast:
    """A node that cannot start says why in one line, exits non-zero at once,
    and leaves nothing behind: no listener, no store written, no other node's
    stores touched."""

    def test_busy_port(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            address = f"127.0.0.1:{taken.getsockname()[1]}"
            began = time.monotonic()
            result = serve(config_file("310000", folder), "--listen", address)
            elapsed = time.monotonic() - began
        assert result.returncode == REFUSED
        line = one_line(result.stderr)
        assert f"cannot listen on {address}" in line
        assert "in use" in line
        # Python's start-up is most of this; the refusal itself comes before
        # any store is opened (generous bound for a loaded machine).
        assert elapsed < 20
        assert not (folder / "var" / "messages.db").exists()
        assert not (folder / "var" / "state.db").exists()

    def test_busy_port_of_a_running_node_leaves_its_stores_untouched(self, running: Served) -> None:
        other = same_ports_other_store(running)
        before = snapshot(running.store)
        result = serve(other)
        assert result.returncode == REFUSED
        assert f"cannot listen on {endpoint_of(running.config)}" in one_line(result.stderr)
        assert not (other.parent.parent / "var" / "messages.db").exists()
        assert snapshot(running.store) == before
        assert health(running.folder, endpoint_of(running.config), 5) == (
            health_pb2.HealthCheckResponse.SERVING
        )

    def test_second_node_on_the_same_store_is_refused(self, running: Served) -> None:
        before = snapshot(running.store)
        result = serve(running.config, "--listen", f"127.0.0.1:{free_port()}")
        assert result.returncode == REFUSED
        line = one_line(result.stderr)
        assert "is in use by another node" in line
        assert f"pid {running.process.pid}" in line
        assert snapshot(running.store) == before
        assert health(running.folder, endpoint_of(running.config), 5) == (
            health_pb2.HealthCheckResponse.SERVING
        )

    def test_second_node_is_refused_by_a_node_of_several_workers(self, tmp_path: Path) -> None:
        served = start(copy_configs(tmp_path), "--workers", "2")
        try:
            result = serve(served.config, "--listen", f"127.0.0.1:{free_port()}")
            assert result.returncode == REFUSED
            assert "is in use by another node" in one_line(result.stderr)
            # Same ports, another store: found although the workers share them.
            result = serve(same_ports_other_store(served), "--workers", "2")
            assert result.returncode == REFUSED
            assert "cannot listen on" in one_line(result.stderr)
        finally:
            stderr = served.stop()
        assert served.process.returncode == 0, stderr

    def test_workers_of_a_killed_supervisor_stop_and_free_the_store(self, tmp_path: Path) -> None:
        served = start(copy_configs(tmp_path), "--workers", "2")
        served.process.kill()
        served.process.communicate(timeout=30)
        # The orphaned workers notice, drain and exit; the lock goes with them.
        deadline = time.monotonic() + 30
        with (served.store / "node.lock").open("rb") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "the workers still hold the store"
                    time.sleep(0.2)
        again = start(served.folder)
        stderr = again.stop()
        assert again.process.returncode == 0, stderr

    @pytest.mark.parametrize(
        ("key", "config_key"),
        [("signing.key.pem", "signing.private_key"), ("tls.key.pem", "tls.private_key")],
    )
    def test_unreadable_key(self, tmp_path: Path, key: str, config_key: str) -> None:
        folder = copy_configs(tmp_path)
        (folder / SH / "keys" / key).write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
        result = serve(config_file("310000", folder))
        assert result.returncode == REFUSED
        line = one_line(result.stderr)
        assert f"cannot read {config_key}" in line
        assert key in line
        assert not (folder / "var").exists()

    def test_store_it_cannot_open(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        (folder / "var").mkdir()
        (folder / "var" / "messages.db").write_bytes(b"not a database, " * 512)
        result = serve(config_file("310000", folder))
        assert result.returncode == REFUSED
        line = one_line(result.stderr)
        assert "cannot open the message log" in line
        assert "not a database" in line
        assert not (folder / "var" / "state.db").exists()


@pytest.fixture
async def logged_store(federation: LocalFederation, wallet: Wallet, tmp_path: Path) -> Path:
    """A config folder whose Shanghai store holds a message log of three
    check-ins, written by a real node that was then stopped."""
    await three_check_ins(federation, wallet)
    database = federation.node(SH).message_log.path
    await federation.stop_node(SH)
    folder = copy_configs(tmp_path)
    (folder / "var").mkdir()
    shutil.copy(database, folder / "var" / "messages.db")
    return folder


def flip_one_byte_of_row(database: Path, seq: int) -> None:
    """Flip one byte in the middle of a row's envelope, in the file itself (as a
    failing disk or a hand with a hex editor would)."""
    with sqlite3.connect(database) as db:
        (envelope,) = db.execute(
            "SELECT envelope FROM message_log WHERE seq = ?", (seq,)
        ).fetchone()
    db.close()
    needle = bytes(envelope[:48])  # its start: on the row's own page, not an overflow page
    data = bytearray(database.read_bytes())
    at = data.find(needle)
    assert at >= 0, "the row is not in the file"
    assert data.find(needle, at + 1) < 0, "the row is in the file more than once"
    data[at + 24] ^= 0x01
    database.write_bytes(bytes(data))


def rows_of(database: Path) -> list[tuple[object, ...]]:
    """Every row of the message log and every signed head, as stored."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT * FROM message_log ORDER BY seq").fetchall()
        rows += db.execute("SELECT * FROM chain_heads ORDER BY id").fetchall()
    db.close()
    return rows


def audit(database: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "audit", "verify", str(database), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestIntegrityAtStart:
    """A node verifies its message log before serving and will not serve on a
    broken one, unless told to continue past the break, which it records in a
    new signed segment that audit verify reports and verifies."""

    def test_intact_log_starts(self, logged_store: Path) -> None:
        served = start(logged_store)
        stderr = served.stop()
        assert served.process.returncode == 0, stderr

    def test_tampered_log_is_refused_then_continued_past_with_the_flag(
        self, logged_store: Path
    ) -> None:
        database = logged_store / "var" / "messages.db"
        config = config_file("310000", logged_store)
        flip_one_byte_of_row(database, 2)
        before = rows_of(database)

        result = serve(config)
        assert result.returncode == REFUSED
        line = one_line(result.stderr)
        assert "broken at row 2" in line
        assert "row 2: content does not match its hash (edited)" in line
        assert "--continue-past-break" in line
        assert rows_of(database) == before  # nothing logged past a refusal

        served = start(logged_store, "--continue-past-break")
        stderr = served.stop()
        assert served.process.returncode == 0, stderr
        assert "continued past a break in the message log" in stderr

        report = audit(database, config)
        assert report.returncode == 1, report.stdout
        assert "BROKEN" in report.stdout
        assert "row 2: content does not match its hash (edited)" in report.stdout
        found = re.search(r"continued past it in a new segment at row (\d+)", report.stdout)
        assert found is not None, report.stdout
        segment = int(found.group(1))
        assert f"the segment from row {segment} to row" in report.stdout
        assert "its signed heads verify" in report.stdout
        with sqlite3.connect(database) as db:
            kind, service = db.execute(
                "SELECT kind, service FROM message_log WHERE seq = ?", (segment,)
            ).fetchone()
            signed_after = db.execute(
                "SELECT COUNT(*) FROM chain_heads WHERE head_seq >= ?", (segment,)
            ).fetchone()[0]
        db.close()
        assert (kind, service) == ("segment", "log.continue-past-break")
        assert signed_after >= 1

        # The break is acknowledged: the next start needs no flag.
        served = start(logged_store)
        stderr = served.stop()
        assert served.process.returncode == 0, stderr

    def test_a_break_after_the_continuation_is_refused_again(self, logged_store: Path) -> None:
        database = logged_store / "var" / "messages.db"
        flip_one_byte_of_row(database, 2)
        served = start(logged_store, "--continue-past-break")
        served.stop()
        with sqlite3.connect(database) as db:
            (segment,) = db.execute("SELECT seq FROM message_log WHERE kind = 'segment'").fetchone()
            db.execute("UPDATE message_log SET logged_at = 'x' WHERE seq = ?", (segment,))
        db.close()
        result = serve(config_file("310000", logged_store))
        assert result.returncode == REFUSED
        assert f"broken at row {segment}: row {segment}: content does not match" in one_line(
            result.stderr
        )
