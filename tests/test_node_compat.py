"""dispy's job semantics on a node, driven through the runner (see test_node_runner.py's harness):
the names dispynode gives a computation's globals, `setup(*setup_args)`, and a cancel that
interrupts (KeyboardInterrupt) before it terminates."""

from __future__ import annotations

import sys
import time
from typing import Any

import cloudpickle

from dispy_wire.messages import JobRef
from dispy_wire.status import JobStatus
from test_node_runner import (  # noqa: F401  (the autouse fixture works by being imported)
    Harness,
    no_leftover_processes,
    run,
    value,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# what the job code below uses without importing it comes from dispynode's globals, as in dispy
_NODE_NAMES = ("os", "sys", "time", "socket", "pickle", "hashlib", "subprocess", "signal")


def uses_node_modules() -> list[str]:
    return [g.__name__ for g in (os, sys, time, socket, pickle, hashlib, subprocess, signal)]  # type: ignore[name-defined]  # noqa: F821


def setup_with(path: str, n: int) -> int:
    global loaded
    loaded = (path, n, os.getcwd() != "")  # type: ignore[name-defined]  # noqa: F821  (os: a node global)
    return 0


def get_loaded() -> Any:
    return loaded  # type: ignore[name-defined]  # noqa: F821


def cleanup_with(path: str, n: int) -> None:
    with open(path, "w") as f:
        f.write(f"cleaned {n}")


def best_estimate(sock_path: str) -> float:
    """dispy's longrun example: runs until interrupted, then returns its best estimate."""
    import socket as sk

    best = 0.75
    try:  # from before it says it runs: the interrupt may come at once
        with sk.socket(sk.AF_UNIX) as s:
            s.connect(sock_path)
            s.sendall(b"1\n")
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("interrupted")
        return best


def ignores_interrupt(sock_path: str) -> None:
    import signal as sg
    import socket as sk

    sg.signal(sg.SIGINT, sg.SIG_IGN)
    with sk.socket(sk.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(b"1\n")
    time.sleep(60)


def test_job_code_sees_dispynodes_module_globals() -> None:
    async def body(h: Harness) -> None:
        h.load(func=uses_node_modules)
        assert value(await h.call("c1")) == list(_NODE_NAMES)

    run(body)


def test_setup_is_called_with_setup_args_and_cleanup_too() -> None:
    async def body(h: Harness) -> None:
        mark = h.root / "cleanup-mark"
        h.root.chmod(0o777)  # the job account writes the mark
        h.load(func=get_loaded, setup=setup_with, cleanup=cleanup_with, setup_args=(str(mark), 7))
        assert value(await h.call("c1")) == (str(mark), 7, True)
        await h.runner.unload("c1")
        assert mark.read_text() == "cleaned 7"

    run(body)


def test_cancel_interrupts_first_and_a_returned_value_is_the_result() -> None:
    from test_node_runner import pid_server

    async def body(h: Harness) -> None:
        sock_path, started, server = await pid_server(h)
        try:
            h.load(func=best_estimate)
            (job_id,) = h.run("c1", (sock_path,))
            await started
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert r.status == JobStatus.FINISHED, r.exception
            assert value(r) == 0.75
            assert r.stdout == b"interrupted\n"
        finally:
            server.close()

    run(body)


def test_cancel_of_a_job_that_ignores_the_interrupt_terminates_it() -> None:
    from test_node_runner import pid_server

    async def body(h: Harness) -> None:
        sock_path, started, server = await pid_server(h)
        try:
            h.load(func=ignores_interrupt)
            (job_id,) = h.run("c1", (sock_path,))
            await started
            asked = time.monotonic()
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert (r.status, r.exception) == (JobStatus.CANCELLED, "cancelled")
            assert time.monotonic() - asked < 30  # SIGTERM after the interrupt's grace, not the job's 60 s
        finally:
            server.close()

    run(body, kill_grace=2.0)
