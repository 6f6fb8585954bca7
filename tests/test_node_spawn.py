"""Spawn mode (`dispynode --spawn-jobs`): each job a new interpreter instead of a fork.

The same job life as a forked job (output, exceptions, exit codes, setup
globals, depends files, killing the tree), bought with an interpreter start
and a `setup` per job: what hosts where fork is unsafe need.
"""

from __future__ import annotations

import sys

import cloudpickle
import psutil
import pytest

from dispy_node.loading import LOAD_FILE
from dispy_wire import result_mac
from dispy_wire.messages import JobRef
from dispy_wire.status import JobStatus
from test_node_runner import (  # noqa: F401  (the autouse fixture works by being imported)
    DEADLINE,
    Harness,
    _gone,
    chatty,
    double,
    exits,
    fails,
    get_data,
    no_leftover_processes,
    pid_server,
    read_depends,
    run,
    setup_sets_global,
    spawn_and_sleep,
    value,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_spawned_jobs_return_results_output_and_failures() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=double)
        ids = h.run("c1", *[(i,) for i in range(6)])
        assert [value(await h.result(i)) for i in ids] == [0, 2, 4, 6, 8, 10]
        h.load("c2", func=chatty)
        r = await h.call("c2", 7)
        assert (value(r), r.stdout, r.stderr) == (7, b"to stdout 7\n", b"to stderr 7\n")
        h.load("c3", func=fails)
        r = await h.call("c3", 3)
        assert r.status == JobStatus.TERMINATED and "ValueError: bad value 3" in r.exception
        h.load("c4", func=exits)
        r = await h.call("c4", 3)
        assert r.status == JobStatus.TERMINATED and "code 3" in r.exception

    run(body, spawn=True)


def test_spawned_jobs_see_setup_globals_and_depends_files() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=get_data, setup=setup_sets_global)
        assert value(await h.call("c1")) == 42  # setup ran again in the job's own interpreter
        h.load("c2", func=read_depends, files=[("data.txt", b"payload", 0o644)])
        text, cwd = value(await h.call("c2", "data.txt"))
        assert text == "payload" and "/jobs/" in cwd

    run(body, spawn=True)


def test_killing_a_spawned_job_kills_its_tree() -> None:
    async def body(h: Harness) -> None:
        sock, got, server = await pid_server(h)
        try:
            h.load("c1", func=spawn_and_sleep)
            (job_id,) = h.run("c1", (sock,))
            pids = await got
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert r.status == JobStatus.CANCELLED
            assert _gone(pids, DEADLINE) == [], [psutil.Process(p).cmdline() for p in pids if psutil.pid_exists(p)]
        finally:
            server.close()

    run(body, spawn=True, kill_grace=0.5)


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_jobs_see_a_file_sent_to_the_cluster_after_it_loaded(spawn: bool) -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=read_depends)
        answers: list[tuple[bool, str]] = []
        h.runner.put_file("c1", "added.txt", b"sent later", 0o644, lambda ok, why: answers.append((ok, why)))
        text, _ = value(await h.call("c1", "added.txt"))  # the zygote takes the file before the job
        assert text == "sent later"
        assert answers == [(True, "")]

    run(body, spawn=spawn)


def setup_notes_its_world() -> int:
    import os
    import resource

    global seen
    print("setup says hello")
    seen = [os.umask(0o077), resource.getrlimit(resource.RLIMIT_AS)[0]]
    return 0


def get_seen() -> list[int]:
    return seen  # noqa: F821  (a global that setup declares)


def test_setup_in_a_spawned_job_runs_under_the_jobs_limits_umask_and_capture() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=get_seen, setup=setup_notes_its_world, options={"memory": 256 << 20})
        r = await h.call("c1")
        assert value(r) == [0o077, 256 << 20], r.exception
        assert r.stdout == b"setup says hello\n"

    run(body, spawn=True)


def reports_and_returns(n: int) -> int:
    with open("report.txt", "w") as f:
        f.write(f"report {n}")
    assert dispy_provisional_result(n) == 0  # type: ignore[name-defined]  # noqa: F821  (a job's global)
    assert dispy_send_file("report.txt") == 0  # type: ignore[name-defined]  # noqa: F821
    return 2 * n


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_what_a_job_sends_carries_a_mac_under_its_clusters_key_and_no_file_holds_the_key(spawn: bool) -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=reports_and_returns)
        job_id = h.run("c1", (5,))[0]
        await h.until(lambda: any(r.job_id == job_id and r.status == JobStatus.FINISHED for r in h.results))
        provisional, final = (r for r in h.results if r.job_id == job_id)
        assert (provisional.status, final.status, value(final)) == (JobStatus.PROVISIONAL_RESULT, JobStatus.FINISHED, 10)
        (file,) = h.files
        assert file.data == b"report 5"
        for r in (provisional, final):
            assert len(r.mac) == result_mac.MAC_SIZE and result_mac.result_ok(h.key, "c1", r)
        assert result_mac.file_ok(h.key, "c1", file)
        assert not result_mac.result_ok(result_mac.new_key(), "c1", final)  # a MAC under the key, not any MAC
        files = [p for p in h.runner.work_dir.rglob("*") if p.is_file()]
        assert any(p.name == LOAD_FILE for p in files) == spawn  # spawned jobs load the cluster from it
        for path in files:
            assert h.key not in path.read_bytes(), path

    run(body, spawn=spawn)
