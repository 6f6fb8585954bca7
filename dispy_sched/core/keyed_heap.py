"""A min-heap of items whose keys change: the core's O(log n) building block.

Theory of operation
-------------------
`heapq` cannot re-key an entry in place, so every `set` pushes a fresh (key,
tick, item) entry and records (key, tick) as the item's current one; older
entries of that item become stale and are skipped (and dropped) when they reach
the top. The exception is the top item's own entry (the core re-keys the
cluster and user it just gave a CPU): `heapreplace` moves it. `discard` only
forgets the current entry. When stale entries outnumber live ones, the heap is
rebuilt from the live ones, so its size stays within a constant factor of the
live items and every operation is O(log n) amortized.

`ordered()` walks the live items in key order without popping anything (a
second small heap over the positions of the first), for the rare searches
that must look past the top.

Invariants (`check()`): each live item has exactly one entry whose tick is
its current tick, with its current key; the list is a heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Hashable)

_SLACK = 64  # stale entries tolerated before a rebuild, beyond one per live item


class KeyedHeap(Generic[T]):
    """Items ordered by a key; `set`, `discard` and `peek` cost O(log n) amortized.

    Keys of different items must be mutually comparable. Equal keys keep the
    order in which they were set.
    """

    __slots__ = ("_heap", "_current", "_tick")

    def __init__(self) -> None:
        self._heap: list[tuple[Any, int, T]] = []
        self._current: dict[T, tuple[Any, int]] = {}
        self._tick = 0

    def __len__(self) -> int:
        return len(self._current)

    def __bool__(self) -> bool:
        return bool(self._current)

    def __contains__(self, item: object) -> bool:
        return item in self._current

    def key(self, item: T) -> Any:
        """The current key of a live item (KeyError if it is not in the heap)."""
        return self._current[item][0]

    def set(self, item: T, key: Any) -> None:
        """Adds `item`, or moves it to `key`; a no-op if that is its key already."""
        current = self._current.get(item)
        if current is not None and current[0] == key:
            return
        self._tick += 1
        self._current[item] = (key, self._tick)
        heap = self._heap
        if current is not None and heap[0][1] == current[1]:
            # the top re-keyed (the core's pick, just given a CPU): moved in place, no stale entry left behind
            heapq.heapreplace(heap, (key, self._tick, item))
            return
        heapq.heappush(heap, (key, self._tick, item))
        if len(heap) > 2 * len(self._current) + _SLACK:
            self._rebuild()

    def discard(self, item: T) -> None:
        self._current.pop(item, None)

    def peek(self) -> T | None:
        """The item with the smallest key, or None if empty."""
        heap, current = self._heap, self._current
        while heap:
            _, tick, item = heap[0]
            live = current.get(item)
            if live is not None and live[1] == tick:
                return item
            heapq.heappop(heap)
        return None

    def ordered(self) -> Iterator[T]:
        """Live items in key order, lazily; the heap must not change meanwhile."""
        heap, current = self._heap, self._current
        frontier: list[tuple[Any, int, int]] = [(heap[0][0], heap[0][1], 0)] if heap else []
        while frontier:
            _, _, i = heapq.heappop(frontier)
            _, tick, item = heap[i]
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))
            live = current.get(item)
            if live is not None and live[1] == tick:
                yield item

    def _rebuild(self) -> None:
        self._heap = [(key, tick, item) for item, (key, tick) in self._current.items()]
        heapq.heapify(self._heap)

    def check(self) -> None:
        """Raises AssertionError if the heap and the current keys disagree."""
        live = [(item, key, tick) for key, tick, item in self._heap if self._current.get(item, (None, -1))[1] == tick]
        assert len(live) == len(self._current), "a live item has no entry, or two"
        assert all(self._current[item][0] == key for item, key, _ in live), "an entry's key is not its item's"
        heap = self._heap
        assert all(heap[(i - 1) // 2][:2] <= heap[i][:2] for i in range(1, len(heap))), "heap order is broken"
