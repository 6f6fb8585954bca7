"""`DispyJob.finish`: a threading.Event's behaviour at a fraction of its memory."""

from __future__ import annotations

import sys
import threading

from dispy_client.finish import Finish
from waiting import wait_until


def test_wait_returns_at_once_when_set_and_false_after_a_timeout_when_not() -> None:
    finish = Finish()
    assert not finish.is_set() and finish.wait(0.01) is False
    finish.set()
    assert finish.is_set() and finish.isSet() and finish.wait() is True and finish.wait(0) is True
    finish.clear()
    assert not finish.is_set() and finish.wait(0.01) is False


def test_a_waiting_thread_wakes_when_another_sets_it() -> None:
    finish = Finish()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(finish.wait(60)))
    waiter.start()
    wait_until(lambda: finish._event is not None, what="the waiter to block")
    finish.set()
    waiter.join(60)
    assert woke == [True]


def test_an_unwaited_finish_is_small() -> None:
    assert sys.getsizeof(Finish()) <= 64  # a threading.Event and its Condition, deque and lock: over 1 KiB
