"""The SQLite journal's commits in a writer thread, so the loop's next turn runs while a commit goes to disk.

Each loop turn hands over its changes (`Persist`), its accounting records
and what it then does (`add`: the turn's acknowledgements, dispatches and
every other action, as one callable). The changes go to a single writer
thread, which applies them in one transaction and syncs (SQLite releases
the GIL for both); the turn's actions wait meanwhile and run, on the loop,
once that commit has returned. Turns that come while a commit is on its way
wait and go together into the next one, each turn's changes applied in turn
order: group commit, one fsync for them all. So nothing that depends on a
record leaves before the record is durable, and the messages of turn n go
out before those of turn n+1 (which wait for the same or a later commit).
Only the writer thread writes to the journal's file; the accounting's own
writes (`in_writer`) go through it too.

At most `MAX_WAITING` turns wait for one commit: one more makes the loop
wait for the commit in flight, as it does without the thread, so a peer
that floods the scheduler while the disk is slow cannot make the replies
held here grow without bound (TCP pushes back on it, as before).

A commit that fails hands its exception to `failed`, which must not return
(the scheduler exits: journal.py); the actions that waited for it never run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn, Protocol

from .core.actions import JobEnd, Persist

log = logging.getLogger(__name__)

#: turns that may wait for the commit in flight before the loop waits for it too
MAX_WAITING = 64

#: one turn: its changes, its accounting records (None: not in the journal's commit) and what runs after its commit
Turn = tuple[Persist, list[JobEnd] | None, Callable[[], None]]


class BatchWriter(Protocol):
    def write_many(self, turns: list[tuple[Persist, list[JobEnd] | None]]) -> None:
        """Applies several turns' changes and records, in order, in one transaction; durable when it returns."""


class CommitPipeline:
    """Commits turns in one writer thread; runs each turn's actions on the loop once its changes are durable.

    Args:
        store: what writes a group of turns.
        failed: called on the loop with a commit's exception; does not return.
    """

    def __init__(self, store: BatchWriter, failed: Callable[[BaseException], NoReturn]) -> None:
        self._store = store
        self._failed = failed
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
        #: turns waiting for the next commit
        self._waiting: list[Turn] = []
        #: the commit on its way to disk, and its turns
        self._in_flight: Future[None] | None = None
        self._in_flight_turns: list[Turn] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None or bool(self._waiting)

    def add(self, changes: Persist, ends: list[JobEnd] | None, then: Callable[[], None]) -> None:
        """One turn: `then` runs once `changes` and `ends` (and every earlier turn's) are durable."""
        if not self.busy and not ends and _empty(changes):  # nothing to wait for: as if committed
            then()
            return
        if len(self._waiting) >= MAX_WAITING and self._in_flight is not None:
            self._wait_in_flight()
        self._waiting.append((changes, ends, then))
        if self._in_flight is None:
            self._start()

    def in_writer(self, work: Callable[[], None]) -> None:
        """Runs `work` in the writer thread, after the commits started so far (other writes to the journal's file)."""
        self._writer.submit(work).add_done_callback(_log_failure)

    async def flush(self) -> None:
        """Returns once every turn added so far is committed and its actions have run."""
        while self.busy:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self) -> None:
        """Waits for the writer thread's last work (after `flush`)."""
        self._writer.shutdown(wait=True)

    def _start(self) -> None:
        turns, self._waiting = self._waiting, []
        self._loop = asyncio.get_running_loop()
        future = self._writer.submit(self._store.write_many, [(changes, ends) for changes, ends, _ in turns])
        self._in_flight, self._in_flight_turns = future, turns
        loop = self._loop
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._committed, done))

    def _wait_in_flight(self) -> None:
        """Blocks the loop until the commit in flight is done, then finishes it (its callback finds nothing to do)."""
        assert self._in_flight is not None
        done = self._in_flight
        try:
            done.result()
        except BaseException:  # noqa: BLE001 - `_committed` hands it to `failed`
            pass
        self._committed(done)

    def _committed(self, done: Future[None]) -> None:
        if done is not self._in_flight:  # finished already, by `_wait_in_flight`
            return
        turns = self._in_flight_turns
        self._in_flight, self._in_flight_turns = None, []
        exc = done.exception()
        if exc is not None:
            self._failed(exc)
        if self._waiting:  # the next commit goes to disk while this one's messages go out
            self._start()
        for _, _, then in turns:
            then()
        if not self.busy and self._idle is not None:
            self._idle.set()


def _log_failure(done: Future[None]) -> None:
    if (exc := done.exception()) is not None:  # nobody waits for this work: its failure is said here
        log.error("journal writer thread: %r", exc, exc_info=exc)


def _empty(changes: Persist) -> bool:
    return not (
        changes.clusters or changes.new_jobs or changes.changed_jobs or changes.gone_jobs or changes.gone_clusters
        or changes.usage or changes.settings is not None
    )  # fmt: skip
