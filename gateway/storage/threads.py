"""The stores' own threads, named where the operating system shows them.

Each store does its SQL in threads of its own (:class:`StoreThreads`): one
writer (the group commit's thread), and on PostgreSQL a few readers. Python's
thread names live inside Python only; the kernel's name of a thread
(``/proc/<pid>/task/<tid>/comm``, what ``top -H``, ``ps -L``, ``perf`` and
``py-spy`` show, and what ``bench`` adds CPU up by) stays the process's own.
So each store thread gives itself a kernel name when it starts: ``yrd-log-w``
for the message log's writer, ``yrd-state-w`` for the state store's, ``-r``
for readers. Every such name starts with :data:`PREFIX`.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

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


class StoreThreads:
    """A store's threads: ``workers`` threads, started at the first call, that
    name themselves for the kernel (:func:`kernel_name`; Python name
    ``<store>-<role>_<n>``) and take work from one queue in order.

    :meth:`call` is the event loop's hand-off to them: the function and a
    loop future go on the queue, and the thread that ran it wakes the loop
    with its outcome by one ``call_soon_threadsafe``. ``run_in_executor``
    does the same through a ``concurrent.futures`` future (with its lock,
    condition and callbacks) wrapped in an asyncio one, about a third more
    CPU per round trip (90 against 60 µs on uvloop on the development
    machine); every group a store commits is one such round trip."""

    def __init__(self, store: str, role: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("StoreThreads: expected at least one worker")
        self._kernel_name = kernel_name(store, role)
        self._name = f"{store.replace(' ', '-')}-{role}"
        self._workers = workers
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the threads; its result, or its exception
        raised here. A call cancelled before a thread takes it is not run; once
        taken it runs to its end (its outcome then goes nowhere)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(functools.partial(_run_for, loop, future, fn, args))
        return await future

    def _put(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._shut:
                raise RuntimeError(f"{self._name}: the store's threads are shut down")
            while len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._queue.put(work)

    def _work(self) -> None:
        name_this_thread(self._kernel_name)
        while (work := self._queue.get()) is not None:
            work()

    def shutdown(self, wait: bool = True) -> None:
        """No more calls; the threads end once the work queued before is done
        (``wait``: this returns when they have ended). Idempotent."""
        with self._lock:
            if not self._shut:
                self._shut = True
                for _ in self._threads:
                    self._queue.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def __enter__(self) -> StoreThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


def _run_for(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """In a store thread: run ``fn`` unless its caller gave up before, and hand
    the outcome to the caller's loop (a closed loop has nobody waiting)."""
    if future.done():  # cancelled while queued (a read of its state, not a change)
        return
    try:
        outcome = functools.partial(_settle, future, fn(*args), None)
    except BaseException as exc:  # handed to the caller, as an executor's future would
        outcome = functools.partial(_settle, future, None, exc)
    try:
        loop.call_soon_threadsafe(outcome)
    except RuntimeError:  # the loop is closed
        return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: the call's outcome, unless its caller was cancelled meanwhile."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):  # a future cannot carry one
        future.set_exception(RuntimeError(f"StopIteration raised in a store thread: {error!r}"))
    else:
        future.set_exception(error)


def store_threads(store: str, role: str, workers: int = 1) -> StoreThreads:
    """The threads of ``store`` in ``role`` ("w" writer, "r" readers)."""
    return StoreThreads(store, role, workers)


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
