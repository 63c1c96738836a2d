"""Measure a node's start-up check of its message log on a long log.

Builds a message log of ``--rows`` rows quickly (direct SQLite inserts, chained
exactly as the node chains them, a signed chain head every ``--head-every``
rows, envelopes of ``--envelope-bytes`` random bytes), then times what
``Node.start`` does before serving: open the log and run
``MessageLog.check_at_start`` with the node's key. ``--full`` also times the
whole-log check that ``yrd-gateway audit verify`` makes.

    .venv/bin/python scripts/bench_log_start.py --rows 1000000 --full

The log is built in a temporary folder (``--keep DIR`` to build it there and
reuse it on the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core import crypto
from gateway.storage.messagelog import (
    GENESIS,
    LogEntry,
    MessageLog,
    head_statement,
    row_hash,
)
from gateway.storage.migrations import MESSAGE_LOG_MIGRATIONS, open_writer

PROVINCE = "310000"
KEY_ID = "310000-sig-bench"


def build(path: Path, rows: int, head_every: int, envelope_bytes: int) -> Ed25519PublicKey:
    key = crypto.generate_private_key()
    conn = open_writer(path, MESSAGE_LOG_MIGRATIONS, what="message log")  # the node's schema
    conn.execute("PRAGMA synchronous=OFF")  # building only; the node writes with FULL
    started = datetime(2026, 1, 1, tzinfo=UTC)
    head, batch, heads = GENESIS, [], []
    conn.execute("BEGIN")
    for seq in range(1, rows + 1):
        logged_at = (started + timedelta(milliseconds=seq)).isoformat()
        entry = LogEntry(
            "in" if seq % 2 else "out",
            "request" if seq % 2 else "response",
            str(uuid.UUID(int=seq)),
            str(uuid.UUID(int=seq // 2)),
            "330000",
            "identity.CheckCredential",
            os.urandom(envelope_bytes),
        )
        digest = row_hash(head, seq, logged_at, entry)
        batch.append(
            (
                seq,
                logged_at,
                entry.direction,
                entry.kind,
                entry.message_id,
                entry.correlation_id,
                entry.peer,
                entry.service,
                entry.envelope,
                head,
                digest,
            )
        )
        head = digest
        if seq % head_every == 0 or seq == rows:
            statement = head_statement(PROVINCE, seq, head, logged_at)
            heads.append((PROVINCE, seq, head, logged_at, KEY_ID, key.sign(statement)))
        if len(batch) >= 10_000 or seq == rows:
            conn.executemany(
                "INSERT INTO message_log (seq, logged_at, direction, kind, message_id,"
                " correlation_id, peer, service, envelope, prev_hash, row_hash)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                batch,
            )
            conn.executemany(
                "INSERT INTO chain_heads (province, head_seq, head_hash, signed_at, key_id,"
                " signature) VALUES (?,?,?,?,?,?)",
                heads,
            )
            batch, heads = [], []
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return key.public_key()


async def measure(path: Path, public: Ed25519PublicKey, full: bool) -> None:
    def keys(province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        return public if (province, key_id) == (PROVINCE, KEY_ID) else None

    began = time.perf_counter()
    log = await MessageLog(path, province=PROVINCE).open()
    opened = time.perf_counter()
    report = await log.check_at_start(keys)
    checked = time.perf_counter()
    print(
        f"start-up check: {'intact' if report.intact else 'BROKEN'}, "
        f"{report.rows_checked} rows re-hashed; open {1000 * (opened - began):.0f} ms, "
        f"check {1000 * (checked - opened):.0f} ms, total {1000 * (checked - began):.0f} ms"
    )
    if full:
        report = await log.verify(keys)
        done = time.perf_counter()
        print(
            f"full check (audit verify): {'intact' if report.intact else 'BROKEN'}, "
            f"{report.rows_checked} rows; {done - checked:.1f} s"
        )
    await log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--head-every", type=int, default=1000, metavar="N")
    parser.add_argument("--envelope-bytes", type=int, default=1024, metavar="B")
    parser.add_argument("--full", action="store_true", help="also time the whole-log check")
    parser.add_argument("--keep", metavar="DIR", help="build the log in DIR (reused if present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "messages.db"
        key_file = folder / "bench-head.pub.pem"
        if path.exists() and key_file.exists():
            public = crypto.load_public_key(key_file.read_bytes())
            print(f"reusing {path}")
        else:
            began = time.perf_counter()
            public = build(path, args.rows, args.head_every, args.envelope_bytes)
            key_file.write_bytes(crypto.public_key_pem(public))
            print(
                f"built {args.rows} rows ({path.stat().st_size / 2**20:.0f} MiB, a signed head "
                f"every {args.head_every} rows) in {time.perf_counter() - began:.0f} s"
            )
        asyncio.run(measure(path, public, args.full))


if __name__ == "__main__":
    main()
