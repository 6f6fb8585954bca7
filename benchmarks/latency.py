"""Where one trivial job's round trip goes, hop by hop.

Starts `dispyscheduler` and one `dispynode` on 127.0.0.1 as
benchmarks/throughput.py does, then, for each isolation (`worker`, `fork`),
one client runs N sequential jobs of `def f(x): return 2*x`
(SharedJobCluster) and prints the median µs of each hop and the round trip's
p50 / p95 line as throughput.py prints it.

Untraced (always): the client process times its own hops with
time.perf_counter, wrapping (in this benchmark's client program, not in
dispy_client) the functions a submit and a result pass through: submit(),
the loop thread's send and write, the read and decode of the results, the
hand-over to the dispatcher thread, its wake-up, MAC check, unpickling, and
the user's thread waking in job(). What lies between the client's write and
its read (scheduler, node, wire) is one figure here.

`--trace` runs a second pass with the scheduler, the node (its zygote and job
processes too) and the client each under `strace -f -ttt -T -yy`, the client
marking each job's start and end with a write to /dev/null, and lines up one
job's syscalls across the three traces by their timestamps: client submit →
bytes written; scheduler read → journal commit (fsync/fdatasync, or the last
write of the journal file if it does not sync) → dispatch written; node read →
job start → result written; scheduler result read → forwarded (then its
commit, which the result does not wait for: dispy_sched/ahead.py); client
read → job() returns. strace makes every traced syscall slower (tens
of µs each), so read these hops as proportions of a slowed run: the untraced
figures are the real ones.

Scheduler flags go after `--`, e.g. `-- --no-journal` or `-- --journal-sync
normal`. Every process started here is ended by PID on leaving, error or not,
and a pass that overruns `--timeout` seconds is ended.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from dispy_wire import messages as M
from throughput import Service, client_env, program_pid, rtt_line, scheduler_and_node, stop

CLIENT = r"""
import json, os, sys, time
from dispy_client import SharedJobCluster, connection, tracker
from dispy_wire import batching, messages

def f(x):
    return 2 * x

n, isolation, traced = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "trace"
clock = time.perf_counter
marks = {}  # this job's: where it is -> when it first got there

def wrap(cls, name, before=None, after=None):
    # `before(*args)` / `after(*args)` on each call of cls.name
    inner = getattr(cls, name)
    def wrapper(*args):
        if before:
            before(*args)
        out = inner(*args)
        if after:
            after(out, *args)
        return out
    setattr(cls, name, wrapper)

def once(name, *after):
    # `name` marked now, the first time, once all of `after` are
    if name not in marks and all(a in marks for a in after):
        marks[name] = clock()

entry = [0.0]
def decoded(msg, *_):
    if isinstance(msg, messages.JobResults) and "written" in marks and "read" not in marks:
        marks["read"] = entry[0]
        marks["decoded"] = clock()

if not traced:
    wrap(connection.SchedulerLink, "send", lambda _, msg: isinstance(msg, messages.SubmitJobs) and once("sent"))
    wrap(batching.BatchedWriter, "flush", after=lambda *_: once("written", "sent"))
    wrap(connection.SchedulerLink, "data_received", lambda *_: entry.__setitem__(0, clock()))
    wrap(messages, "next_message", after=decoded)
    wrap(tracker.JobTracker, "_hand_over", after=lambda *_: once("handed", "decoded"))
    wrap(tracker.JobTracker, "_on_results", lambda *_: once("awake", "handed"))
    wrap(tracker, "fill_job", lambda *_: once("fill", "awake"), lambda *_: once("filled", "fill"))
    wrap(tracker.JobTracker, "_mark_ended", after=lambda *_: once("ended", "filled"))

null = os.open(os.devnull, os.O_WRONLY)
with SharedJobCluster(f, user="latency", isolation=isolation) as cluster:
    for i in range(5):  # warm: the node has loaded the computation, the worker is forked
        assert cluster.submit(i)() == 2 * i
    jobs = []
    for i in range(n):
        marks = {}
        if traced:
            os.write(null, b"@job %d" % i)
        marks["submit"] = clock()
        job = cluster.submit(i)
        marks["submitted"] = clock()
        assert job() == 2 * i
        marks["returned"] = clock()
        if traced:
            os.write(null, b"@end %d" % i)
        jobs.append(marks)
print(json.dumps(jobs), flush=True)
"""

#: the client's own hops, untraced: (name, from mark, to mark)
CLIENT_HOPS = [
    ("client: submit() call", "submit", "submitted"),
    ("client: submitted -> loop thread sends", "submitted", "sent"),
    ("client: encode + write", "sent", "written"),
    ("scheduler + node + wire (write -> read)", "written", "read"),
    ("client: decode results", "read", "decoded"),
    ("client: hand over to dispatcher", "decoded", "handed"),
    ("client: dispatcher wakes", "handed", "awake"),
    ("client: MAC check, pre-fill", "awake", "fill"),
    ("client: unpickle, fill job", "fill", "filled"),
    ("client: mark ended, wake user", "filled", "ended"),
    ("client: user thread wakes", "ended", "returned"),
]
CLIENT_SUMS = [
    ("client: submit -> bytes written", "submit", "written"),
    ("client: read -> job() returns", "read", "returned"),
]

STRACE_CALLS = "read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg,pwrite64,fsync,fdatasync,exit_group"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s [options] [-- scheduler flags]")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=200, help="sequential jobs measured (after 5 to warm up)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--only", choices=("worker", "fork"), help="measure one isolation")
    ap.add_argument("--trace", action="store_true", help="also a pass under strace: the hops inside scheduler and node")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a pass may take before it is ended")
    ap.add_argument("scheduler_args", nargs="*", help="after `--`: the scheduler's flags")
    args = ap.parse_args()
    strace = shutil.which("strace")
    if args.trace and strace is None:
        print("--trace: strace is not installed (Debian: apt-get install -y strace); tracing skipped", flush=True)
    for isolation in [args.only] if args.only else ["worker", "fork"]:
        flags = " ".join(args.scheduler_args) or "defaults"
        print(f"-- isolation {isolation}: scheduler ({flags}) + 1 node ({args.cpus} CPUs), {args.jobs} sequential jobs")
        marks = run_pass(args, isolation, None)
        print_table(client_hops(marks), "median us, untraced, as the client sees it")
        print(rtt_line([m["returned"] - m["submit"] for m in marks]), flush=True)
        if args.trace and strace is not None:
            traces = Path(tempfile.mkdtemp(prefix="dispy-latency-trace-"))
            run_pass(args, isolation, Tracer(strace, traces))
            rows, lined_up = traced_hops(traces)
            print_table(rows, f"median us under strace (each syscall slowed; {lined_up}; traces in {traces})")


class Tracer(NamedTuple):
    """Runs programs under strace, each writing its trace to `directory`/NAME."""

    strace: str
    directory: Path

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        # -yy names each descriptor (TCP ports, pipes, files); -s 512 shows every frame of a small batched write
        return [self.strace, "-f", "-ttt", "-T", "-yy", "-s", "512", "-e", f"trace={STRACE_CALLS}",
                "-o", str(self.directory / name), "--", *argv]  # fmt: skip


def run_pass(args: argparse.Namespace, isolation: str, tracer: Tracer | None) -> list[dict[str, float]]:
    """Runs the client's sequential jobs against a fresh scheduler and node; returns each job's marks. The whole pass,
    start-up included, is bounded by `--timeout` (SIGALRM): its processes are ended on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="dispy-latency-"))
    script = tmp / "client.py"
    script.write_text(CLIENT)
    wrap = tracer.wrap if tracer else None
    signal.signal(signal.SIGALRM, _overrun)
    signal.alarm(max(1, round(args.timeout)))
    try:
        with scheduler_and_node(tmp, args.cpus, args.scheduler_args, wrap) as (address, _, _):
            argv = [sys.executable, str(script), str(args.jobs), isolation, "trace" if tracer else "time"]
            proc = subprocess.Popen(wrap("client", argv) if wrap else argv, env=client_env(address),
                                    stdout=subprocess.PIPE, stderr=open(tmp / "client.log", "w"), text=True)  # fmt: skip
            try:
                out, _ = proc.communicate()
            finally:
                stop(Service(proc, program_pid(proc)))  # under strace: the client itself
    except Overrun:
        sys.exit(f"the pass did not finish within --timeout {args.timeout:g} s; see {tmp}")
    finally:
        signal.alarm(0)
    if proc.returncode != 0:
        sys.exit(f"the client failed; see {tmp / 'client.log'}")
    marks: list[dict[str, float]] = json.loads(out)
    return marks


class Overrun(Exception):
    """A pass ran past `--timeout`."""


def _overrun(signum: int, frame: object) -> None:
    raise Overrun


def median_us(spans: list[float]) -> float:
    return statistics.median(spans) * 1e6 if spans else float("nan")


def client_hops(marks: list[dict[str, float]]) -> list[tuple[str, float]]:
    """Median µs of each of the client's hops (a hop a job did not pass through, e.g. no separate write, is left
    out of that hop's median)."""
    rows = []
    for name, a, b in CLIENT_HOPS + CLIENT_SUMS:
        rows.append((name, median_us([m[b] - m[a] for m in marks if a in m and b in m])))
    return rows


def print_table(rows: list[tuple[str, float]], title: str) -> None:
    print(f"  {title}:")
    for name, us in rows:
        print(f"    {name:<48} {'-' if math.isnan(us) else f'{us:.0f}':>8}")



class Call(NamedTuple):
    """One traced syscall. `at` is when it did what it is for: a write when it started (its reader may have the bytes
    before strace lets it return), anything else when it returned (a read: the data had come; a sync: done)."""

    pid: int
    start: float
    at: float
    name: str
    fd: str  # what the descriptor is (strace -yy): "TCP:[a->b]", "/dev/null", ...
    data: bytes  # the first bytes read or written (strace -s)


# `PID TIME name(args) = ret <secs>`, or its two halves `... <unfinished ...>` and `<... name resumed>...`
_LINE = re.compile(r"(\d+)\s+(\d+\.\d+) (?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)")
_RESULT = re.compile(r"\)\s+= (-?\d+|\?)[^<]*(?:<(\d+\.\d+)>)?$")
_FD = re.compile(r"(\d+)<((?:TCP|TCPv6|UNIX-STREAM):\[[^\]]*\]|[^<>]*)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{2})|(.))")
_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"v": b"\v", b"f": b"\f"}


def parse_trace(path: Path) -> list[Call]:
    """The calls of an `strace -f -ttt -T -yy` log that returned something (no errors), in order of `at`."""
    calls: list[Call] = []
    unfinished: dict[int, tuple[float, str, str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, when, rest = int(m.group(1)), float(m.group(2)), m.group(5)
        if m.group(4) and rest.endswith("<unfinished ...>"):
            unfinished[pid] = (when, m.group(4), rest)
            continue
        if m.group(3):  # resumed: started when its first half says, returned now
            if pid not in unfinished:
                continue
            start, name, head = unfinished.pop(pid)
            rest, end = head.removesuffix("<unfinished ...>") + rest, when
        else:
            start, name = when, m.group(4)
            end = start
        result = _RESULT.search(rest)
        if not result or result.group(1).startswith("-"):
            continue
        if not m.group(3) and result.group(2):
            end = start + float(result.group(2))
        fd = _FD.match(rest)
        text = _STRING.search(rest)
        at = start if name in _WRITES else end
        calls.append(Call(pid, start, at, name, fd.group(2) if fd else "", unescape(text.group(1)) if text else b""))
    calls.sort(key=lambda c: c.at)
    return calls


def unescape(text: str) -> bytes:
    """The bytes of a string as strace prints it (C escapes, octal for the rest)."""

    def one(m: re.Match[bytes]) -> bytes:
        if m.group(1):
            return bytes((int(m.group(1), 8) & 0xFF,))
        if m.group(2):
            return bytes((int(m.group(2), 16),))
        return _ESCAPES.get(m.group(3), m.group(3))

    return _ESCAPE.sub(one, text.encode("latin-1", "replace"))


def tags(data: bytes) -> set[int]:
    """The message tags of the frames in `data` (as far as strace showed it): each frame a 4-byte length, then a
    msgpack array whose first item is the tag."""
    found = set()
    while len(data) >= 6:
        found.add(data[5])
        data = data[4 + int.from_bytes(data[:4], "big"):]
    return found


_READS = {"read", "readv", "recvfrom", "recvmsg"}
_WRITES = {"write", "writev", "sendto", "sendmsg"}
_SYNCS = {"fsync", "fdatasync"}


def first(calls: list[Call], after: float, until: float, test: Callable[[Call], bool]) -> Call | None:
    """The first of `calls` whose `at` is within (after, until] that passes `test`."""
    return next((c for c in calls if after < c.at <= until and test(c)), None)


def sends(tag: int, of: set[str] = _WRITES) -> Callable[[Call], bool]:
    """Whether a call wrote (or, `of` _READS, read) a frame of message `tag`."""
    return lambda c: c.name in of and tag in tags(c.data)


#: the hops of the traced pass, (name, from point, to point); points are named in `points`
TRACED_HOPS = [
    ("client: submit -> bytes written", "submit", "written"),
    ("wire: client -> scheduler", "written", "s_read"),
    ("scheduler: read -> SQLite commit", "s_read", "s_commit"),
    ("scheduler: commit -> dispatch written", "s_commit", "s_dispatch"),
    ("  (scheduler: read -> dispatch written)", "s_read", "s_dispatch"),
    ("  (of which fsync)", "s_sync0", "s_commit"),
    ("wire: scheduler -> node", "s_dispatch", "n_read"),
    ("node: read -> job start", "n_read", "job_start"),
    ("node: job start -> job end", "job_start", "job_end"),
    ("node: job end -> result written", "job_end", "n_result"),
    ("wire: node -> scheduler", "n_result", "s_result"),
    ("scheduler: result read -> forwarded", "s_result", "s_forward"),
    ("  (then its SQLite commit: forwarded -> committed)", "s_forward", "s_commit2"),
    ("  (of which fsync)", "s_sync2", "s_commit2"),
    ("wire: scheduler -> client", "s_forward", "c_read"),
    ("client: read -> job() returns", "c_read", "returned"),
    ("round trip (p50)", "submit", "returned"),
]


def traced_hops(traces: Path) -> tuple[list[tuple[str, float]], str]:
    """Median µs of each hop of the traced pass, the jobs lined up by the client's marks; and how many were."""
    client, sched, node = (parse_trace(traces / name) for name in ("client", "scheduler", "node"))
    marks = {c.data: c.at for c in client if c.fd == "/dev/null"}
    jobs = [points(client, sched, node, marks[key], marks[b"@end" + key[4:]])
            for key in marks if key.startswith(b"@job") and b"@end" + key[4:] in marks]  # fmt: skip
    rows = [(name, median_us([j[b] - j[a] for j in jobs if a in j and b in j])) for name, a, b in TRACED_HOPS]
    complete = sum(all(p in j for _, a, b in TRACED_HOPS for p in (a, b) if "commit" not in p and "sync" not in p)
                   for j in jobs)  # fmt: skip
    return rows, f"{complete} of {len(jobs)} jobs lined up through every hop"


def points(client: list[Call], sched: list[Call], node: list[Call], submit: float, returned: float) -> dict[str, float]:
    """When one job (between the client's marks `submit` and `returned`) passed each point of TRACED_HOPS; a point
    not found is left out, and so are the points after it."""
    found = {"submit": submit, "returned": returned}
    steps: list[tuple[str, list[Call], Callable[[Call], bool]]] = [
        ("written", client, sends(M.SubmitJobs.TAG)),
        ("s_read", sched, sends(M.SubmitJobs.TAG, _READS)),
        ("s_dispatch", sched, sends(M.RunJobs.TAG)),
        ("n_read", node, sends(M.RunJobs.TAG, _READS)),
    ]
    at = submit
    for name, calls, test in steps:
        call = first(calls, at, returned, test)
        if call is None:
            return found
        found[name], at = call.at, call.at
    commit(sched, found, found["s_read"], found["s_dispatch"], "s_sync0", "s_commit")
    daemon = first(node, found["s_dispatch"], returned, sends(M.RunJobs.TAG, _READS))
    assert daemon is not None
    job = follow(node, follow(node, daemon, returned), returned)  # the run's bytes: daemon -> zygote -> job
    result = job and first(node, job.at, returned, lambda c: c.pid == daemon.pid and sends(M.NodeResults.TAG)(c))
    if not (job and result):
        return found
    found["job_start"], found["n_result"] = job.at, result.at
    found["job_end"] = max(c.at for c in node if c.pid == job.pid and job.at <= c.at <= result.at)
    at = result.at
    for name, calls, test in [("s_result", sched, sends(M.NodeResults.TAG, _READS)),
                              ("s_forward", sched, sends(M.JobResults.TAG)),
                              ("c_read", client, sends(M.JobResults.TAG, _READS))]:  # fmt: skip
        call = first(calls, at, returned, test)
        if call is None:
            return found
        found[name], at = call.at, call.at
    # the result left ahead of its commit, which ends before the scheduler reads anything again
    after = first(sched, found["s_forward"], math.inf, lambda c: c.name in _READS and c.fd.startswith("TCP"))
    commit(sched, found, found["s_forward"], after.at if after else math.inf, "s_sync2", "s_commit2")
    return found


def follow(calls: list[Call], read: Call | None, until: float) -> Call | None:
    """Where the process of `read` passes on what it read: the read, by another process, of its next write to a
    pipe or Unix socket (the job's start record, daemon to zygote to job process)."""
    if read is None:
        return None
    write = first(calls, read.at, until,
                  lambda c: c.pid == read.pid and c.name in _WRITES and c.fd.startswith(("UNIX", "pipe")))
    if write is None:
        return None
    peer = re.sub(r"\[(\d+)->(\d+)\]", r"[\2->\1]", write.fd)  # a Unix socket's other end; a pipe's is its own name
    return first(calls, write.at, until, lambda c: c.pid != read.pid and c.name in _READS and c.fd == peer)


def commit(sched: list[Call], found: dict[str, float], start: float, end: float, sync: str, done: str) -> None:
    """The scheduler's SQLite commit between `start` and `end` (the journal's; without one, the accounting records'
    in the state database, if any): the end of its fsync or fdatasync or, where it does not sync, its last write to
    a file; as `found[done]`, its sync's start as `found[sync]`."""
    between = [c for c in sched if start < c.at <= end]
    syncs = [c for c in between if c.name in _SYNCS]
    if syncs:
        found[sync], found[done] = syncs[-1].start, syncs[-1].at
        return
    files = [c for c in between if c.name == "pwrite64"]
    if files:  # committed without a sync: none of it was fsync's
        found[sync] = found[done] = files[-1].at


if __name__ == "__main__":
    main()
