"""The zygote's pipe readers (dispy_node/capture.py): a job's output whole, and a worker's cut at its markers,
whichever of the pipe and the worker's end the zygote reads first."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dispy_node.capture import Capture, Kept, Relay


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_capture_takes_what_comes_between_reads_then_sees_the_end(pipe: tuple[int, int]) -> None:
    r, w = pipe
    kept = Kept(1 << 20)
    reader = Capture(r, kept)
    assert reader.read()  # nothing yet: still open
    os.write(w, b"one ")
    assert reader.read()
    os.write(w, b"two")
    os.close(w)
    for _ in range(3):  # the last data and the end of file may take two reads: the loop calls again
        if not reader.read():
            break
    else:
        pytest.fail("the end of file was not seen")
    assert kept.text() == b"one two"


@pytest.mark.parametrize("pipe_first", [True, False], ids=["pipe-read-first", "end-told-first"])
def test_relay_cuts_jobs_outputs_at_markers(pipe: tuple[int, int], pipe_first: bool) -> None:
    r, w = pipe
    marker = b"\x00MARK\x01"
    relay = Relay(r, marker)
    first, second = Kept(1 << 20), Kept(1 << 20)
    relay.next_job(first)
    os.write(w, b"job one" + marker + b"job two, early")  # the worker went on with its next job at once
    if pipe_first:  # the zygote's loop reads the pipe before it handles the end (its order in a turn)
        assert relay.read()
    relay.end_job()
    relay.next_job(second)
    os.write(w, b"; later" + marker)
    assert relay.read()
    relay.end_job()
    assert (first.text(), second.text()) == (b"job one", b"job two, early; later")


def test_relay_gives_a_job_ended_without_a_marker_all_it_wrote(pipe: tuple[int, int]) -> None:
    r, w = pipe
    marker = b"\x00MARK\x01"
    relay = Relay(r, marker)
    first, second = Kept(1 << 20), Kept(1 << 20)
    relay.next_job(first)
    os.write(w, b"job one, its end like a marker's start \x00MA")  # held back: a marker may follow
    assert relay.read()
    relay.end_job(read=False)  # no marker (the worker started nothing at once), and the pipe holds nothing more
    relay.next_job(second)
    os.write(w, b"RK job two")
    relay.end_job()  # no marker: what the pipe holds
    assert (first.text(), second.text()) == (b"job one, its end like a marker's start \x00MA", b"RK job two")
