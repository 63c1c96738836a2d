"""A throw-away PostgreSQL server for tests, the bench and the soak.

    with PostgresServer() as server:
        url = server.create_database("t_orders")   # postgresql://yrd@127.0.0.1:<port>/t_orders

It runs Debian's server binaries (``initdb``, ``postgres``; found on PATH or in
``/usr/lib/postgresql/<newest>/bin``) on a data folder in a new temporary folder,
listening on 127.0.0.1 only, on a free port, without a unix socket, with trust
authentication for the user ``yrd``. As root (CI), the server runs as ``nobody``:
initdb refuses root. Nothing of the machine's own PostgreSQL service is used.
``stop()`` (also run at exit) ends the server and removes the folder.

The databases are made with the ``psql`` client that comes with the server
binaries: this layer speaks no SQL driver itself (only gateway.storage does).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

USER = "yrd"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
DEBIAN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install it with `apt-get install postgresql` (scripts/ensure_postgres.sh does)"
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_UNPRIVILEGED = "nobody"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not on this machine."""


class PostgresError(RuntimeError):
    """The server could not be set up, started or queried (with the tail of its log)."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_binaries(bin_dir: Path | None = None) -> Path:
    """The folder holding initdb, pg_ctl and postgres (and psql), or PostgresUnavailable."""
    candidates: list[Path] = []
    if bin_dir is not None:
        candidates.append(bin_dir)
    else:
        found = shutil.which("postgres")
        if found:
            candidates.append(Path(found).resolve().parent)
            candidates.append(Path(found).parent)
        if DEBIAN_ROOT.is_dir():
            versions = sorted(
                (p for p in DEBIAN_ROOT.iterdir() if (p / "bin").is_dir()),
                key=_version_key,
                reverse=True,
            )
            candidates.extend(p / "bin" for p in versions)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in SERVER_PROGRAMS):
            return folder
    where = str(bin_dir) if bin_dir is not None else f"on PATH or in {DEBIAN_ROOT}/<version>/bin"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(SERVER_PROGRAMS)}) not found {where}: "
        + INSTALL_HINT
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PostgresServer:
    """One PostgreSQL server on loopback in its own temporary folder (see the module's doc)."""

    def __init__(
        self,
        *,
        fsync: bool = True,
        max_connections: int = 300,
        bin_dir: Path | None = None,
        start_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.fsync = fsync
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.extra_settings = dict(settings or {})
        self._bin_dir = bin_dir
        self.bin: Path | None = None
        self.folder: Path | None = None
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner: tuple[int, int] | None = None  # (uid, gid) the server runs as, when root
        self._registered = False

    # ------------------------------------------------------------------ paths
    @property
    def data_dir(self) -> Path:
        return self._require_folder() / "data"

    @property
    def log_file(self) -> Path:
        return self._require_folder() / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _require_folder(self) -> Path:
        if self.folder is None:
            raise PostgresError("the PostgreSQL server is not started")
        return self.folder

    # -------------------------------------------------------------- lifecycle
    def start(self) -> PostgresServer:
        if self.folder is not None:
            raise PostgresError("the PostgreSQL server is already started")
        self.bin = find_binaries(self._bin_dir)
        self._owner = self._unprivileged_owner()
        self.folder = Path(tempfile.mkdtemp(prefix="yrd-pg-"))
        if not self._registered:
            atexit.register(self.stop)
            self._registered = True
        try:
            if self._owner is not None:
                os.chown(self.folder, *self._owner)
            self._initdb()
            self.port = free_port()
            self._write_settings()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends then exit on their
        own, and this returns once they have (up to 10 s), so that a connection
        used right after finds the server gone."""
        process = self._process
        if process is None or process.poll() is not None:
            raise PostgresError("the PostgreSQL server is not running")
        backends = children_of(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            Path(f"/proc/{pid}").exists() for pid in backends
        ):
            time.sleep(0.02)

    def restart(self) -> None:
        """Start the server again on the same folder and port (after kill() or not)."""
        self._require_folder()
        if self.pid is not None:
            self._shutdown()
        self._launch()

    def stop(self) -> None:
        """End the server (an immediate shutdown) and remove its folder. Idempotent."""
        if self._registered:
            atexit.unregister(self.stop)
            self._registered = False
        if self._process is not None:
            self._shutdown()
        folder, self.folder = self.folder, None
        if folder is not None:
            self._remove(folder)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- databases
    def url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise PostgresError("the PostgreSQL server is not started")
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._sql(f'CREATE DATABASE "{self._checked_name(name)}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions first."""
        self._sql(f'DROP DATABASE IF EXISTS "{self._checked_name(name)}" WITH (FORCE)')

    @staticmethod
    def _checked_name(name: str) -> str:
        if not _DATABASE_NAME.match(name):
            raise ValueError(
                "database name: expected lower-case letters, digits and _ "
                "(at most 63, not starting with a digit)"
            )
        return name

    def _sql(self, statement: str) -> None:
        psql = self._program("psql")
        result = subprocess.run(  # noqa: S603 - our own binary, a fixed statement
            [
                str(psql),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                f"--dbname={self.url()}",
                f"--command={statement}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise PostgresError(f"psql: {result.stderr.strip() or result.stdout.strip()}")

    # -------------------------------------------------------------- internals
    def _program(self, name: str) -> Path:
        if self.bin is None:
            raise PostgresError("the PostgreSQL server is not started")
        program = self.bin / name
        if os.access(program, os.X_OK):
            return program
        found = shutil.which(name)
        if found is None:
            raise PostgresUnavailable(f"PostgreSQL's {name} not found: {INSTALL_HINT}")
        return Path(found)

    @staticmethod
    def _unprivileged_owner() -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(_UNPRIVILEGED)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, but there is no user {_UNPRIVILEGED!r} to run PostgreSQL as "
                "(initdb refuses root)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _as_owner(self) -> dict[str, Any]:
        """Popen arguments that run a program as the server's owner, in its folder."""
        arguments: dict[str, Any] = {"cwd": self.folder}
        if self._owner is not None:
            uid, gid = self._owner
            arguments.update(user=uid, group=gid, extra_groups=[])
        return arguments

    def _initdb(self) -> None:
        command = [
            str(self._program("initdb")),
            f"--pgdata={self.data_dir}",
            "--auth=trust",
            f"--username={USER}",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        result = subprocess.run(  # noqa: S603 - our own binary and arguments
            command,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._as_owner(),
        )
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise PostgresError(f"initdb failed ({result.returncode}): {tail}")

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "shared_buffers": "64MB",
            # As docs/operations.md recommends for replicas: two replicas' group
            # commits that deadlock are told in 0.1 s, not the default 1 s.
            "deadlock_timeout": "'100ms'",
            "timezone": "'UTC'",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
        }
        settings.update(self.extra_settings)
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# gateway.testing.postgres\n" + lines)

    def _launch(self) -> None:
        """Start the postmaster and wait until it accepts connections.

        Right after a kill() the old server's processes may still hold its shared
        memory for a moment; the new postmaster then exits at once and is retried."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            log = self.log_file.open("ab")
            try:
                self._process = subprocess.Popen(  # noqa: S603 - our own binary
                    [str(self._program("postgres")), "-D", str(self.data_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C to the tests is not a fast shutdown
                    **self._as_owner(),
                )
            finally:
                log.close()
            status = self._wait_ready(deadline)
            if status == "ready":
                return
            if status == "exited" and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            self._shutdown()
            raise PostgresError(f"PostgreSQL did not start ({status}): {self._log_tail()}")

    def _wait_ready(self, deadline: float) -> str:
        process = self._process
        assert process is not None
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return "exited"
            with contextlib.suppress(OSError):
                lines = pid_file.read_text(encoding="utf-8").splitlines()
                # line 1: the postmaster's pid; line 8: its status ("ready" once it serves)
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(process.pid)
                    and lines[7].strip() == "ready"
                    and self._accepts()
                ):
                    return "ready"
            time.sleep(0.05)
        return "timed out"

    def _accepts(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _shutdown(self) -> None:
        """SIGQUIT (pg_ctl's immediate mode): the postmaster ends its backends and exits."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _remove(self, folder: Path) -> None:
        # After a kill(), orphaned backends may still be exiting (and writing) briefly.
        for _ in range(50):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                return
            time.sleep(0.1)
        shutil.rmtree(folder)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends), from /proc."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError):
            for line in status.read_text().splitlines():
                if line.startswith("PPid:"):
                    if int(line.split()[1]) == pid:
                        found.append(int(status.parent.name))
                    break
    return found
