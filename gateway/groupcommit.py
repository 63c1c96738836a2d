"""Group commit: many writers, one transaction, every caller answered after it.

Callers submit items and wait. One task takes every item waiting (up to
``batch_max``) and hands the whole group, in one hop, to the store's own
thread, where ``apply`` writes them in one transaction and commits; only then
is each caller answered, with its own outcome. Under load one commit (one
fsync) serves many callers; with no load a lone item is written at once.

The message log and the state store are both written this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - the item type

#: An item's outcome: (True, result) or (False, the exception to raise for it).
Outcome = tuple[bool, Any]


class GroupCommitClosed(RuntimeError):
    pass


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure was already handled by the writer


class GroupCommit(Generic[I]):
    def __init__(
        self,
        name: str,
        apply: Callable[[list[I]], list[Outcome]],
        executor: ThreadPoolExecutor,
        *,
        batch_max: int,
        after_group: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._name = name
        self._apply = apply
        self._executor = executor
        self._batch_max = batch_max
        self._after_group = after_group
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Commits made and items written, for metrics and the benchmark.
        self.commits = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def submit(self, item: I) -> Any:
        """Queue ``item``; return its result once its group is committed."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        # A caller that gives up (is cancelled) cancels only its own future: the
        # item is still written, and the writer skips answering it.
        return await future

    async def submit_all(self, items: list[I]) -> list[Any]:
        """Queue ``items`` together (they are committed in one group); return
        their results once it is committed."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        return [await future for future in futures]

    def enqueue(self, item: I) -> None:
        """Queue ``item`` without waiting for it (its commit is not reported;
        :meth:`close` still writes it)."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._queue.put_nowait((item, future))

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            group: list[tuple[I, asyncio.Future[Any]]] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < self._batch_max and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                else:
                    group.append(more)
            if group:
                await self._commit(group)
                if self._after_group is not None:
                    await self._after_group()

    async def _commit(self, group: list[tuple[I, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._apply, [item for item, _ in group]
            )
        except Exception as exc:  # the transaction failed: nothing of the group is durable
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.items += sum(ok for ok, _ in outcomes)
        for (_, future), (ok, value) in zip(group, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def close(self) -> None:
        """Write everything queued, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
