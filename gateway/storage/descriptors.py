"""The directory's files: the last good descriptor of each peer, and this node's own.

``<store>/directory/<code>.descriptor`` holds the last signed descriptor of a
peer that this node verified (a ``SignedDescriptor``, as received); a node
starts from these when a peer is down. ``<store>/directory/own.descriptor``
holds the descriptor this node publishes, so that its serial only grows and
every worker of the node serves the same one (``own.lock`` serialises those
that issue it); the replicas of a province on one database keep it there
instead (:mod:`gateway.storage.shared_descriptor`). Each write goes to a
temporary file renamed over the old one; every copy is verified when it is
read, so a damaged one is only refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

_PEER_FILE = re.compile(r"([1-9][0-9]0000)\.descriptor")
OWN = "own.descriptor"


class OwnDescriptor(Protocol):
    """Where the node's own published descriptor is kept: a file of the node
    (:class:`OwnFile`), or a row of the province's database that every replica
    reads (:class:`gateway.storage.shared_descriptor.SharedDescriptor`)."""

    #: Where it is, for messages.
    location: str

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while the descriptor is read and maybe issued again (one issuer)."""
        ...

    def read(self) -> bytes | None:
        """The descriptor as kept now (under :meth:`lock` when it may be replaced)."""
        ...

    def write(self, data: bytes, serial: int) -> None:
        """Replace it (under :meth:`lock`); ``serial`` is the descriptor's."""
        ...

    def stamp(self) -> object | None:
        """Something that changes when another process writes it; cheap, no I/O
        on a database (:meth:`poll` refreshes what it answers)."""
        ...

    def latest(self) -> bytes | None:
        """The descriptor as of :meth:`stamp` (cheap, as stamp)."""
        ...

    def poll(self) -> None:
        """Look again for another process's write (blocking: run it in a thread)."""
        ...


class OwnFile:
    """The own descriptor as ``<folder>/own.descriptor`` (``own.lock`` beside it)."""

    def __init__(self, cache: DescriptorCache) -> None:
        self.cache = cache
        self.location = str(cache.own_path)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return self.cache.own_lock()

    def read(self) -> bytes | None:
        return self.cache.read(self.cache.own_path)

    def write(self, data: bytes, serial: int) -> None:
        del serial  # the file is the descriptor itself
        self.cache.write(self.cache.own_path, data)

    def stamp(self) -> object | None:
        return self.cache.stamp(self.cache.own_path)

    def latest(self) -> bytes | None:
        return self.read()

    def poll(self) -> None:
        return None


class DescriptorCache:
    """Descriptor files in one folder (created on first write); the own descriptor
    in that folder too, unless ``own`` keeps it elsewhere (a database)."""

    def __init__(self, folder: Path, own: OwnDescriptor | None = None) -> None:
        self.folder = folder
        self.own: OwnDescriptor = own if own is not None else OwnFile(self)

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
