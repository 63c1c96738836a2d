"""The stores' own threads, named where the operating system shows them.

Each store does its SQL in threads of its own: one writer (the group commit's
thread), and on PostgreSQL a few readers. Python's thread names live inside
Python only; the kernel's name of a thread (``/proc/<pid>/task/<tid>/comm``,
what ``top -H``, ``ps -L``, ``perf`` and ``py-spy`` show, and what ``bench``
adds CPU up by) stays the process's own. So each thread of a store's executor
gives itself a kernel name when it starts: ``yrd-log-w`` for the message log's
writer, ``yrd-state-w`` for the state store's, ``-r`` for readers. Every such
name starts with :data:`PREFIX`.
"""

from __future__ import annotations

import ctypes
import sys
from concurrent.futures import ThreadPoolExecutor

#: The start of the kernel name of every store thread.
PREFIX = "yrd-"
#: Linux keeps 15 bytes of a thread's name (16 with the terminating NUL).
NAME_BYTES = 15
#: prctl(2) option that names the calling thread.
_PR_SET_NAME = 15
#: Short names of the stores, for the kernel's 15 bytes.
_SHORT = {"message log": "log", "state store": "state"}


def kernel_name(store: str, role: str) -> str:
    """The kernel name of a thread of ``store`` (its ``what``: "message log",
    "state store") in ``role`` ("w" writer, "r" reader), at most
    :data:`NAME_BYTES` bytes."""
    short = _SHORT.get(store, store.replace(" ", "-"))
    return f"{PREFIX}{short}"[: NAME_BYTES - len(role) - 1] + f"-{role}"


def store_executor(store: str, role: str, workers: int = 1) -> ThreadPoolExecutor:
    """An executor whose threads carry the kernel name :func:`kernel_name` gives
    (and the Python name ``<store>-<role>``)."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=f"{store.replace(' ', '-')}-{role}",
        initializer=name_this_thread,
        initargs=(kernel_name(store, role),),
    )


def name_this_thread(name: str) -> None:
    """Set the calling thread's kernel name (Linux; elsewhere, or if the call
    fails, nothing: the name only helps whoever looks at the threads)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return
