"""One write per loop turn: outgoing frames are collected and joined (Dask's BatchedSend idea);
and batches of results or files cut to a size that fits in a frame.

Free of asyncio: the owner hands in its loop's `call_soon` and a `write` for
the bytes, so the same batching serves the scheduler's and the client's
connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

#: a batch is cut once its records hold this much: far below the wire's 64 MiB
#: frames, which one record alone (a result, its output) always fits in
BATCH_BUDGET = 16 * 1024 * 1024

_T = TypeVar("_T", bound=tuple[Any, ...])


def by_size(records: Iterable[_T], budget: int = BATCH_BUDGET) -> Iterator[list[_T]]:
    """Consecutive runs of `records` (NamedTuples) whose bytes and strings stay within `budget`."""
    batch: list[_T] = []
    size = 0
    for record in records:
        weight = 256 + sum(_size(f) for f in record)
        if batch and size + weight > budget:
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += weight
    if batch:
        yield batch


def _size(field: object) -> int:
    """Bytes a record's field takes in its frame: a string is measured without encoding it.

    `isascii` costs O(1) (CPython keeps the flag), and an ASCII string's
    length is its UTF-8 size; any other string is at most 4 bytes a character.
    This runs for every result on the node and the scheduler: encoding each
    output just to measure it cost as much as sending it.
    """
    if isinstance(field, bytes):
        return len(field)
    if isinstance(field, str):
        return len(field) if field.isascii() else 4 * len(field)
    return 0


class BatchedWriter:
    """Args:
    call_soon: schedules a callback for the end of this loop turn.
    write: takes the joined bytes (e.g. a transport's `write`); not called when closed.
    is_closed: whether the destination is gone (then queued frames are dropped).
    """

    def __init__(
        self,
        call_soon: Callable[[Callable[[], None]], Any],
        write: Callable[[bytes], None],
        is_closed: Callable[[], bool],
    ) -> None:
        self._call_soon = call_soon
        self._write = write
        self._is_closed = is_closed
        self._frames: list[bytes] = []
        self._pending = False
        #: bytes queued for the next write (what backpressure counts before the transport sees it)
        self.queued = 0

    def send(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.queued += len(frame)
        if not self._pending:
            self._pending = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        self._pending = False
        if self._frames and not self._is_closed():
            self._write(b"".join(self._frames))
        self._frames.clear()
        self.queued = 0
