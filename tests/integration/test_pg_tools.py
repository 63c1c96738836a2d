"""The operator's tools on a PostgreSQL store: ``audit verify|export|check`` on a
database (read only, two writers on one chain, tampering found at its row),
``store migrate`` from a real node's SQLite stores (everything moved, the
chain verifies, ids continue; refused on a database with rows and while the
node runs), ``store info``, and the outbox commands on a database."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.server.node import StoreLock
from gateway.storage.interfaces import StateTransaction
from gateway.storage.messagelog import LogEntry, MessageLog
from gateway.storage.records import OutboxItem
from gateway.storage.state import StateStore
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, Wallet
from tests.integration.test_audit import three_check_ins
from tests.paths import CONFIG_DIR, config_file

CONFIG = str(config_file("310000"))
#: Every table of the two stores that holds data.
TABLES = (
    "message_log",
    "chain_heads",
    "check_ins",
    "answered_tokens",
    "outgoing_cases",
    "incoming_cases",
    "outbox",
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rows_of(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def outbox_item(subject: str) -> OutboxItem:
    now = time.time()
    return OutboxItem(
        0,
        "320000",
        "fund.DeliverWithdrawal",
        str(uuid.uuid4()),
        "c",
        "k",
        b"p",
        subject,
        0,
        now,
        now,
    )


def enqueue(item: OutboxItem) -> Callable[[StateTransaction], None]:
    return lambda tx: tx.enqueue(item)


@pytest.fixture
async def node_store(federation: LocalFederation, wallet: Wallet, tmp_path: Path) -> Path:
    """Shanghai's store folder after three check-ins, the node stopped (its last
    head signed), copied aside; plus outbox items written through the state
    store's API, one of them delivered (removed), so the ids have a gap."""
    await three_check_ins(federation, wallet)
    folder = Path(federation.node(SH).message_log.path).parent
    await federation.stop_node(SH)
    copy = tmp_path / "store"
    shutil.copytree(folder, copy)
    async with StateStore(copy / "state.db") as state:
        for n in range(4):
            await state.unit_of_work(enqueue(outbox_item(f"WD-{n}")))
        entries = await state.outbox_entries()
        # Delivered as the outbox does it: claimed, removed by its owner.
        await state.claim_outbox(time.time() + 60, 10, owner="test", lease_seconds=60)
        await state.unit_of_work(lambda tx: tx.remove_outbox_item(entries[1].id, owner="test"))
        await state.release_outbox_leases("test")
    return copy


async def table_rows(location: Path | str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every data table, in key order, through the stores' own reads."""
    found: dict[str, list[tuple[object, ...]]] = {}
    async with StateStore(
        location / "state.db" if isinstance(location, Path) else location
    ) as state:
        for table in TABLES[2:]:
            found[table] = await state.fetchall(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - our table names
    log = MessageLog(location / "messages.db" if isinstance(location, Path) else location)
    await log.open_for_reading()
    try:
        found["message_log"] = [
            (r.seq, r.logged_at, r.entry, r.prev_hash, r.row_hash) async for r in log.rows()
        ]
        found["chain_heads"] = [tuple(vars(h).values()) for h in await log.heads()]
    finally:
        await log.close()
    return found


class TestMigrate:
    """`store migrate` moves a real node's stores into PostgreSQL, whole."""

    async def test_a_real_store_moves_whole(self, pg_url: str, node_store: Path) -> None:
        result = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url, "--config", CONFIG
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "signatures verified" in result.stdout
        assert "moved: schema versions" in result.stdout
        assert "DIFF" not in result.stdout
        assert "FAIL" not in result.stdout
        source, target = await table_rows(node_store), await table_rows(pg_url)
        assert len(source["message_log"]) >= 6  # three exchanges, both directions
        assert source["chain_heads"]
        assert source["check_ins"]
        assert source["outbox"]
        for table in TABLES:
            assert target[table] == source[table], table
        # The outbox ids were kept (with their gap) and new ones continue after them.
        ids = [int(str(row[0])) for row in source["outbox"]]
        assert ids != list(range(1, len(ids) + 1))
        async with StateStore(pg_url) as state:
            await state.unit_of_work(lambda tx: tx.enqueue(outbox_item("WD-new")))
            new = [e.id for e in await state.outbox_entries() if e.subject == "WD-new"]
        assert new == [max(ids) + 1]
        # The moved log verifies as the node's own, signatures included.
        verified = await asyncio.to_thread(cli, "audit", "verify", pg_url, "--config", CONFIG)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "signed heads match" in verified.stdout

    async def test_a_database_with_rows_is_refused(self, pg_url: str, node_store: Path) -> None:
        first = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
        )
        assert first.returncode == 0, first.stdout + first.stderr
        before = rows_of(pg_url, "SELECT COUNT(*) FROM message_log")
        again = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
        )
        assert again.returncode == 2
        assert "already holds rows" in again.stderr
        assert "nothing was copied" in again.stderr
        assert "Traceback" not in again.stderr
        assert rows_of(pg_url, "SELECT COUNT(*) FROM message_log") == before

    async def test_refused_while_the_node_holds_its_store(
        self, pg_url: str, node_store: Path
    ) -> None:
        lock = StoreLock.acquire(node_store)  # as a running node holds it
        try:
            result = await asyncio.to_thread(
                cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
            )
        finally:
            lock.release()
        assert result.returncode == 2
        assert "stop the node first" in result.stderr
        assert "in use by another node" in result.stderr
        # Nothing was written to the target, not even the tables.
        assert rows_of(pg_url, "SELECT to_regclass('message_log')") == [(None,)]

    async def test_store_info(self, pg_url: str, node_store: Path) -> None:
        moved = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
        )
        assert moved.returncode == 0, moved.stderr
        on_sqlite = await asyncio.to_thread(cli, "store", "info", str(node_store))
        on_pg = await asyncio.to_thread(cli, "store", "info", pg_url)
        assert on_sqlite.returncode == 0, on_sqlite.stderr
        assert on_pg.returncode == 0, on_pg.stderr
        assert "engine    SQLite" in on_sqlite.stdout
        assert "engine    PostgreSQL" in on_pg.stdout
        counts = re.compile(r"^rows +(\w+): (\d+)$", re.M)
        assert dict(counts.findall(on_pg.stdout)) == dict(counts.findall(on_sqlite.stdout))
        assert "message log: version" in on_pg.stdout


def _keys() -> tuple[Ed25519PrivateKey, object]:
    key = Ed25519PrivateKey.generate()

    def head_key(province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        return key.public_key() if (province, key_id) == ("310000", "k1") else None

    return key, head_key


async def two_replicas(url: str, key: Ed25519PrivateKey, groups: int) -> int:
    """Two message logs ("replicas") on one database appending at once: single
    rows and groups, interleaved; each signs heads. Returns the rows written."""

    def sign(statement: bytes) -> tuple[str, bytes]:
        return "k1", key.sign(statement)

    replicas = [
        MessageLog(url, province="310000", head_signer=sign, head_interval=0.0) for _ in range(2)
    ]
    for log in replicas:
        await log.open()

    def entry(replica: int, n: int) -> LogEntry:
        return LogEntry(
            "in",
            "request",
            str(uuid.uuid4()),
            f"c{replica}",
            "320000",
            "identity.VerifyIdentity",
            f"replica {replica} envelope {n}".encode(),
        )

    async def write(replica: int) -> int:
        log, written = replicas[replica], 0
        for n in range(groups):
            if n % 2:
                await log.append_all(tuple(entry(replica, n * 10 + k) for k in range(3)))
                written += 3
            else:
                await asyncio.gather(*(log.append(entry(replica, n * 10 + k)) for k in range(2)))
                written += 2
        return written

    try:
        written = sum(await asyncio.gather(write(0), write(1)))
    finally:
        for log in replicas:
            await log.close()
    return written


class TestAuditOnDatabase:
    """`audit verify|export|check` on a PostgreSQL message log."""

    async def test_two_writers_one_chain_and_tampering_found(self, pg_url: str) -> None:
        key, head_key = _keys()
        written = await two_replicas(pg_url, key, groups=12)
        seqs = [r[0] for r in rows_of(pg_url, "SELECT seq FROM message_log ORDER BY seq")]
        assert seqs == list(range(1, written + 1))
        replicas = {
            r[0] for r in rows_of(pg_url, "SELECT DISTINCT correlation_id FROM message_log")
        }
        assert replicas == {"c0", "c1"}
        log = MessageLog(pg_url)
        await log.open_for_reading()
        try:
            report = await log.verify(head_key)  # type: ignore[arg-type]  # the HeadKeys callable
        finally:
            await log.close()
        assert report.intact, report.detail
        assert "signatures verified" in report.detail
        intact = await asyncio.to_thread(cli, "audit", "verify", pg_url)
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert f"{written} rows chain intact" in intact.stdout
        # Someone with write access edits one row's envelope.
        target = written // 2
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE message_log SET envelope = %s WHERE seq = %s", (b"edited", target))
        broken = await asyncio.to_thread(cli, "audit", "verify", pg_url)
        assert broken.returncode == 1
        assert "BROKEN" in broken.stdout
        assert f"row {target}: content does not match its hash" in broken.stdout

    async def test_a_read_only_role_verifies_and_exports(
        self, pg_url: str, node_store: Path, tmp_path: Path
    ) -> None:
        moved = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
        )
        assert moved.returncode == 0, moved.stderr
        role = f"auditor_{uuid.uuid4().hex[:8]}"
        database = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN")
            conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
            conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
            first = conn.execute(
                "SELECT message_id FROM message_log ORDER BY seq LIMIT 1"
            ).fetchone()
        assert first is not None
        message_id = str(first[0])
        scheme, rest = pg_url.split("://", 1)
        reader = f"{scheme}://{role}@{rest.split('@', 1)[1]}"
        verified = await asyncio.to_thread(cli, "audit", "verify", reader, "--config", CONFIG)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "signed heads match" in verified.stdout
        out = tmp_path / "evidence.json"
        exported = await asyncio.to_thread(
            cli,
            "audit",
            "export",
            message_id,
            "--config",
            CONFIG,
            "--db",
            reader,
            "--directory",
            str(node_store / "directory"),
            "--out",
            str(out),
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        # Another machine: only the file.
        moved_file = tmp_path / "elsewhere" / "evidence.json"
        moved_file.parent.mkdir()
        shutil.move(out, moved_file)
        checked = await asyncio.to_thread(cli, "audit", "check", str(moved_file))
        assert checked.returncode == 0, checked.stdout
        assert "evidence holds" in checked.stdout
        # The role could not have written anything: the database says so.
        with psycopg.connect(reader, autocommit=True) as conn, pytest.raises(psycopg.Error):
            conn.execute("DELETE FROM write_probe")

    async def test_an_unreachable_database_is_one_line(self) -> None:
        result = await asyncio.to_thread(
            cli, "audit", "verify", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "cannot be read" in result.stderr


class TestOutboxOnDatabase:
    """The outbox commands open the store the config names, a database included."""

    async def test_list_and_park_on_a_database(
        self, pg_url: str, node_store: Path, tmp_path: Path
    ) -> None:
        moved = await asyncio.to_thread(
            cli, "store", "migrate", "--from", str(node_store), "--to", pg_url
        )
        assert moved.returncode == 0, moved.stderr
        folder = tmp_path / "province_configs"
        shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("var"))
        config = config_file("310000", folder)
        text = re.sub(r'store = "[^"]+"', f'store = "{pg_url}"', config.read_text("utf-8"))
        config.write_text(text, encoding="utf-8")
        from gateway.config.loading import parse_province_file

        assert str(parse_province_file(config).node.store) == pg_url
        listed = await asyncio.to_thread(cli, "outbox", "list", "--config", str(config))
        assert listed.returncode == 0, listed.stderr
        assert "WD-0" in listed.stdout
        assert "WD-3" in listed.stdout
        parked = await asyncio.to_thread(
            cli, "outbox", "park", "WD-0", "--config", str(config), "--operator", "ops"
        )
        assert parked.returncode == 0, parked.stderr
        assert rows_of(pg_url, "SELECT state FROM outbox WHERE subject = 'WD-0'") == [("parked",)]
        assert rows_of(pg_url, "SELECT COUNT(*) FROM message_log WHERE kind = 'operator'") == [(1,)]
        verified = await asyncio.to_thread(cli, "audit", "verify", "--config", str(config))
        assert verified.returncode == 0, verified.stdout + verified.stderr

    def test_list_and_park_through_the_store_seam(
        self,
        node_store: Path,
        pg_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The same commands in process, given a config whose store is the
        database (until [node] store takes a URL in this branch)."""
        import argparse

        from gateway.cli import outbox
        from gateway.config import loading

        moved = cli("store", "migrate", "--from", str(node_store), "--to", pg_url)
        assert moved.returncode == 0, moved.stderr
        parse = loading.parse_province_file
        real = parse(Path(CONFIG))
        on_pg = real.model_copy(update={"node": real.node.model_copy(update={"store": pg_url})})
        monkeypatch.setattr(loading, "parse_province_file", lambda path: on_pg)
        listing = argparse.Namespace(config=CONFIG, parked=False, reconciliation=False)
        assert outbox.outbox_list(listing) == 0
        assert "WD-3" in capsys.readouterr().out
        park = argparse.Namespace(
            config=CONFIG, reference="WD-0", operator="ops", reason="", outbox_command="park"
        )
        assert outbox.outbox_steer(park) == 0
        assert rows_of(pg_url, "SELECT state FROM outbox WHERE subject = 'WD-0'") == [("parked",)]
        assert rows_of(pg_url, "SELECT COUNT(*) FROM message_log WHERE kind = 'operator'") == [(1,)]
        verified = cli("audit", "verify", pg_url, "--config", CONFIG)
        assert verified.returncode == 0, verified.stdout + verified.stderr
