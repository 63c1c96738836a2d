"""The throw-away PostgreSQL server of the tests (gateway/testing/postgres.py) and its set-up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from gateway.testing.postgres import PostgresServer, PostgresUnavailable, port_is_free
from tests.paths import REPOSITORY

ENSURE = REPOSITORY / "scripts" / "ensure_postgres.sh"


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        return connection.execute(sql).fetchall()


def _write(url: str, *values: str) -> None:
    with psycopg.connect(url, connect_timeout=10) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT)")
        for value in values:
            connection.execute("INSERT INTO notes (body) VALUES (%s)", (value,))
        # leaving the block commits


def test_a_table_is_written_and_read_through_psycopg(pg_url: str, postgres: PostgresServer) -> None:
    assert pg_url.startswith(f"postgresql://yrd@127.0.0.1:{postgres.port}/t_")
    _write(pg_url, "上海", "second")
    assert _rows(pg_url, "SELECT body FROM notes ORDER BY id") == [("上海",), ("second",)]
    settings = dict(_rows(pg_url, "SELECT name, setting FROM pg_settings"))
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["unix_socket_directories"] == ""
    assert int(str(settings["max_connections"])) >= 200
    assert settings["server_encoding"] == "UTF8"


def test_the_server_runs_as_an_unprivileged_user(postgres: PostgresServer) -> None:
    assert postgres.pid is not None
    status = Path(f"/proc/{postgres.pid}/status").read_text(encoding="utf-8")
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    if os.geteuid() != 0:
        assert uid == os.geteuid()


def test_two_databases_are_independent(postgres: PostgresServer) -> None:
    first = postgres.create_database("t_harness_first")
    second = postgres.create_database("t_harness_second")
    try:
        _write(first, "only in the first")
        assert _rows(first, "SELECT count(*) FROM notes") == [(1,)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            _rows(second, "SELECT count(*) FROM notes")
        _write(second, "a", "b")
        assert _rows(first, "SELECT count(*) FROM notes") == [(1,)]
        assert _rows(second, "SELECT count(*) FROM notes") == [(2,)]
    finally:
        postgres.drop_database("t_harness_first")
        postgres.drop_database("t_harness_second")
    with pytest.raises(psycopg.OperationalError):
        _rows(first, "SELECT 1")


def test_a_database_name_is_checked(postgres: PostgresServer) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres.create_database('x"; DROP DATABASE postgres; --')


def test_kill_and_restart_keep_committed_data() -> None:
    with PostgresServer(fsync=False) as server:
        url = server.create_database("t_durable")
        port = server.port
        _write(url, "committed before the kill")
        idle = psycopg.connect(url, autocommit=True, connect_timeout=10)
        try:
            server.kill()
            assert server.pid is None
            with pytest.raises(psycopg.OperationalError):
                idle.execute("SELECT 1")
        finally:
            idle.close()
        with pytest.raises(psycopg.OperationalError):
            _rows(url, "SELECT 1")
        server.restart()
        assert server.port == port
        assert _rows(url, "SELECT body FROM notes") == [("committed before the kill",)]
        _write(url, "after the restart")
        server.restart()  # a running server: shut down, then started again
        assert _rows(url, "SELECT count(*) FROM notes") == [(2,)]


def test_stop_removes_the_folder_and_frees_the_port() -> None:
    server = PostgresServer(fsync=False).start()
    folder, port, pid = server.folder, server.port, server.pid
    assert folder is not None
    assert folder.is_dir()
    assert port is not None
    assert pid is not None
    assert not port_is_free(port)
    server.stop()
    assert not folder.exists()
    assert port_is_free(port)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(
        encoding="utf-8"
    )
    server.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://yrd@127.0.0.1:{port}/postgres", connect_timeout=3)


def test_missing_binaries_give_one_line_saying_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        PostgresServer(bin_dir=tmp_path).start()
    message = str(caught.value)
    assert "\n" not in message
    assert "initdb" in message
    assert "apt-get install postgresql" in message


# ---------------------------------------------------------------- the set-up script


def _ensure(
    tmp_path: Path, *, path: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "YRD_PG_ROOT": str(tmp_path / "no-postgresql"), "LC_ALL": "C"}
    extra: dict[str, object] = {}
    if as_nobody:
        extra = {"user": "nobody", "group": "nogroup", "extra_groups": []}
    # The script on stdin: as nobody the checkout may lie in a folder only root
    # can read (a clone in a mktemp -d folder, CI's workspace).
    return subprocess.run(
        ["/bin/sh", "-s"],
        input=ENSURE.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd="/",
        **extra,
    )


def test_ensure_postgres_does_nothing_when_the_binaries_are_here(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_apt_get(fake, fail_install_first=False)
    environment = f"{fake}:{os.environ['PATH']}"
    result = subprocess.run(
        ["/bin/sh", str(ENSURE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": environment},
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (fake / "calls").exists()


def _fake_apt_get(folder: Path, *, fail_install_first: bool) -> None:
    script = folder / "apt-get"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$DEBIAN_FRONTEND apt-get $*" >> {folder}/calls\n'
        + (
            f'if [ "$1" = install ] && [ ! -e {folder}/updated ]; then exit 100; fi\n'
            f'if [ "$1" = update ]; then touch {folder}/updated; fi\n'
            if fail_install_first
            else ""
        )
        + "exit 0\n",
        encoding="utf-8",
    )
    script.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch runs only as root")
def test_ensure_postgres_installs_the_package_when_missing(tmp_path: Path) -> None:
    # A fake apt-get whose first install fails (no package lists yet): then update, install.
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_apt_get(fake, fail_install_first=True)
    result = _ensure(tmp_path, path=f"{fake}:/usr/bin:/bin")
    calls = (fake / "calls").read_text(encoding="utf-8").splitlines()
    install = "noninteractive apt-get install -y --no-install-recommends postgresql"
    assert calls == [install, "noninteractive apt-get update", install]
    # the fake installed nothing: the script says so and fails
    assert result.returncode == 1
    assert "still not found" in result.stderr


def test_ensure_postgres_without_root_says_how_to_install(tmp_path: Path) -> None:
    result = _ensure(tmp_path, path="/usr/bin:/bin", as_nobody=os.geteuid() == 0)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "apt-get install postgresql" in result.stderr
