"""The directory's files: the last good descriptor of each peer, and this node's own.

``<store>/directory/<code>.descriptor`` holds the last signed descriptor of a
peer that this node verified (a ``SignedDescriptor``, as received); a node
starts from these when a peer is down. ``<store>/directory/own.descriptor``
holds the descriptor this node publishes, so that its serial only grows and
every worker of the node serves the same one (``own.lock`` serialises those
that issue it). Each write goes to a temporary file renamed over the old one;
every copy is verified when it is read, so a damaged one is only refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

_PEER_FILE = re.compile(r"([1-9][0-9]0000)\.descriptor")
OWN = "own.descriptor"


class DescriptorCache:
    """Descriptor files in one folder (created on first write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, code: str) -> Path:
        return self.folder / f"{code}.descriptor"

    @property
    def own_path(self) -> Path:
        return self.folder / OWN

    def peers(self) -> dict[str, Path]:
        """The peer files present, by province code."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for path in self.folder.iterdir():
            match = _PEER_FILE.fullmatch(path.name)
            if match:
                found[match.group(1)] = path
        return found

    @staticmethod
    def stamp(path: Path) -> tuple[int, int] | None:
        """(mtime ns, size) of a file, None when absent: to notice another process's write."""
        try:
            status = path.stat()
        except OSError:
            return None
        return (status.st_mtime_ns, status.st_size)

    @staticmethod
    def read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` by a rename (raises OSError on a failing disk).

        Not flushed to disk: every copy is verified when read, so one a crash
        damaged is refused like any bad descriptor and fetched again, and the
        own descriptor's serial never goes back (it is at least the time of
        issue in milliseconds). Skipping the flushes keeps a node's start fast."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    @contextlib.contextmanager
    def own_lock(self) -> Iterator[None]:
        """Held while this node's own descriptor is read and maybe issued again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "own.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
