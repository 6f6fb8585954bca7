"""dispy 4.15.2's own example programs, run as its users would run them, on our client.

The programs are not in this repository: `make test` downloads dispy
4.15.2's sdist from PyPI once into .venv/dispy-sdist (Makefile,
`dispy-examples`), and each test copies one program into its own directory,
changing it only

- by its import line (`import dispy` -> `import dispy_client as dispy`),
- for the shared variant, `dispy.JobCluster(` -> `dispy.SharedJobCluster(`,
  with the scheduler's address and the user's credentials in the environment
  ($DISPY_SCHEDULER, $DISPY_USER, $DISPY_SECRET), and
- where the program would spend minutes sleeping or computing, by the
  constants named in `REDUCED` (each replacement is checked to apply, so a
  changed example fails here instead of silently running long).

Then the test checks what the program printed: its real results (job ids,
checksums of the files it hashed, provisional results, ...), not only its
exit status. Without the sdist (PyPI unreachable) the tests are skipped,
saying so.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from procs import ROOT, Cluster, Proc, in_timed_sleep, write_users_file
from waiting import wait_until

EXAMPLES = Path(os.environ.get("DISPY_EXAMPLES_DIR", ROOT / ".venv" / "dispy-sdist" / "dispy-4.15.2" / "py3" / "examples"))

pytestmark = pytest.mark.skipif(
    not EXAMPLES.is_dir(),
    reason=f"dispy 4.15.2's examples are not at {EXAMPLES}: `make dispy-examples` downloads them from PyPI "
    "(it could not, or was not run)",
)

#: per example, (old, new) text replacements that cut its run time; each must apply
REDUCED: dict[str, list[tuple[str, str]]] = {
    "sample.py": [("random.randint(5,20)", "random.randint(1,2)")],  # 10 jobs of 5-20 s
    "obj_instances.py": [("random.uniform(1, 3)", "random.uniform(0.1, 0.3)")],
    "node_setup.py": [("time.sleep(2)", "time.sleep(0.2)")],
    "replace_inmem.py": [("random.uniform(2, 5)", "random.uniform(0.1, 0.3)")],
    "provisional_results.py": [("random.randint(50,100)", "random.randint(10,20)")],  # n steps of 0.1 s
    "delegate.py": [("random.randint(5, 10)", "random.randint(1, 2)")],
    "job_scheduler.py": [("time.sleep(5)", "time.sleep(0.5)")],
    # each step sleeps 2 s and a provisional result goes out every 10 s
    "longrun.py": [("time.sleep(1)", "time.sleep(0.1)"), ("> 10:", "> 1:")],
    "node_update_script.py": [("random.uniform(2, 4)", "random.uniform(0.1, 0.3)")],
    # 1000 jobs of 3-7 s; still over `upper_bound` (100), so the bounded wait is exercised
    "bounded_submit.py": [("range(1000)", "range(200)"), ("random.uniform(3, 7)", "random.uniform(0.02, 0.05)")],
    "httpd_example.py": [("random.randint(5, 20)", "random.randint(1, 2)")],
}

SECRET = "example secret"
VARIANTS = ["JobCluster", "SharedJobCluster"]


def _import_line(match: re.Match[str]) -> str:
    names = []
    for name in match.group(2).split(","):
        bare = name.strip()
        if bare == "dispy":
            bare = "dispy_client as dispy"
        elif bare.startswith("dispy."):
            bare = "dispy_client" + bare[len("dispy") :]
        names.append(bare)
    return match.group(1) + ", ".join(names)


def adapt(name: str, variant: str, dest: Path) -> Path:
    """Writes dispy's example `name` into `dest`, adapted as the module says; returns its path."""
    text = (EXAMPLES / name).read_text()
    text, n = re.subn(r"^(\s*import )(.*\bdispy\b.*)$", _import_line, text, flags=re.M)
    for old, new in REDUCED.get(name, []):
        assert old in text, f"{name} no longer has {old!r}: update REDUCED"
        text = text.replace(old, new)
    if variant == "SharedJobCluster" and name != "node_update_script.py":
        assert "dispy.JobCluster(" in text, name
        text = text.replace("dispy.JobCluster(", "dispy.SharedJobCluster(")
    path = dest / name
    path.write_text(text)
    return path


def run(cluster: Cluster, name: str, variant: str, stdin: int = subprocess.DEVNULL) -> Proc:
    """Starts the adapted example in the test's directory; for the shared variant, a scheduler and a node first."""
    env = {"DISPY_SECRET": SECRET}
    if variant == "SharedJobCluster":
        users = write_users_file(cluster.workdir / "users.toml", f'[users.alice]\nsecret = "{SECRET}"\n')
        cluster.scheduler("--users-file", str(users))
        cluster.node(cpus=2)
        env |= {"DISPY_SCHEDULER": cluster.address, "DISPY_USER": "alice"}
    script = adapt(name, variant, cluster.workdir)
    return cluster.start([sys.executable, str(script)], name.removesuffix(".py"), env, stdin)


def finish(cluster: Cluster, proc: Proc, timeout: float = 90.0, its_own_error: str = "") -> str:
    """Waits for the example's end; returns its output. It must exit 0 and log no traceback
    (but `its_own_error`: the last line of one the example's own code raises, in dispy too)."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.name} did not finish within {timeout} s:\n{cluster.describe()}") from None
    assert rc == 0, f"{proc.name} exited {rc}:\n{cluster.describe()}"
    tracebacks = re.findall(r"(?ms)^Traceback .*?^(\S[^\n]*)$", proc.stderr)
    assert all(last == its_own_error for last in tracebacks), cluster.describe()
    return proc.stdout


def node_name(variant: str) -> str:
    """The node's name as jobs see it (`dispy_node_name`): JobCluster's local node is this host."""
    return "node" if variant == "SharedJobCluster" else __import__("socket").gethostname()


def total_jobs(out: str) -> int:
    """The job count of `print_status`'s last line."""
    match = re.search(r"Total job time: [\d.]+ sec, wall time: [\d.]+ sec, jobs: (\d+)", out)
    assert match, out
    return int(match.group(1))


def digest(path: Path, alg: str) -> str:
    return getattr(hashlib, alg)(path.read_bytes()).hexdigest()  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_numbers_its_jobs(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "sample.py", variant))
    lines = re.findall(r"^(\S+) \((\S+)\) executed job (\S+) at [\d.]+ with (\d+)$", out, re.M)
    assert [int(job_id) for _, _, job_id, _ in lines] == list(range(1, 11)), out
    assert all(host == node_name(variant) and ip == "127.0.0.1" and n in ("1", "2") for host, ip, _, n in lines), out
    assert total_jobs(out) == 10


@pytest.mark.parametrize("variant", VARIANTS)
def test_obj_instances_sends_objects_and_gets_their_output(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "obj_instances.py", variant))
    lines = re.findall(r"^(\d+): ([\d.]+) / (\d+): ([\d.]+)$", out, re.M)  # job.id.i: result / job.stdout
    assert [int(i) for i, *_ in lines] == list(range(10)), out
    assert all(i == j and n == m and 0.1 <= float(n) <= 0.3 for i, n, j, m in lines), out


@pytest.mark.parametrize("variant", VARIANTS)
def test_node_shvars_jobs_share_setup_state(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "node_shvars.py", variant))
    assert "failed" not in out, out
    values = {int(job_id): int(v) for job_id, v in re.findall(r"^(\d+): (\d+)$", out, re.M)}
    assert sorted(values) == list(range(1, 11)), out
    # one shared counter from 1, each job adding 1-10 under its lock, then reading it outside: two jobs at once may
    # read the same total, but the last total is 1 + ten additions; counters of their own would each stay <= 11
    assert max(values.values()) >= 12, out  # 11 only if all ten drew 1 (1e-10)


def _hashes_match(out: str, dest: Path, pattern: str) -> list[tuple[str, ...]]:
    """The lines `pattern` matches (its groups), each checked: its groups `file`, `alg` and `hex` (by name: the
    examples print them in different orders) say a file's digest, which must be that of the file in `dest`."""
    found = list(re.finditer(pattern, out, re.M))
    for m in found:
        file_name, alg = m["file"], m["alg"]
        assert digest(dest / os.path.basename(file_name), alg) == m["hex"], (file_name, alg)
    return [m.groups() for m in found]


@pytest.mark.parametrize("variant", VARIANTS)
def test_node_setup_reads_per_node_data_with_setup_args(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "node_setup.py", variant))
    assert re.search(r'^Node 127\.0\.0\.1 \(\S+\) processes ".*\.py"$', out, re.M), out
    found = _hashes_match(out, cluster.workdir, r'^(127\.0\.0\.1): "(?P<file>\S+)" (?P<alg>\w+): (?P<hex>[0-9a-f]+)$')
    assert len(found) == 10, out


@pytest.mark.parametrize("variant", VARIANTS)
def test_replace_inmem_sets_nodes_up_again(cluster: Cluster, variant: str) -> None:
    (cluster.workdir / "data_a.py").write_text("# data a\n" * 100)
    (cluster.workdir / "data_b.py").write_text("# data b\n" * 200)
    out = finish(cluster, run(cluster, "replace_inmem.py", variant))
    # no `$`: wait() may return before the last job_status has printed its newline (in dispy too), and
    # resetup_node's allocate then prints "Node ..." right after that job's digest
    found = _hashes_match(out, cluster.workdir, r"^job (\d+) finished by (\S+), (?P<alg>\w+) of (?P<file>\S+) is (?P<hex>[0-9a-f]+)")
    assert sorted(int(f[0]) for f in found) == list(range(1, 13)), out
    first = {f[3] for f in found if int(f[0]) <= 6}
    second = {f[3] for f in found if int(f[0]) > 6}
    assert len(first) == 1 and len(second) == 1 and first != second, "resetup_node gave the node its next file"


@pytest.mark.parametrize("variant", VARIANTS)
def test_provisional_results_reach_job_status(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "provisional_results.py", variant))
    values = re.findall(r"^best value from (\S+)/(\d+): ([\d.e-]+)$", out, re.M)
    assert values and all(host == node_name(variant) for host, _, _ in values), out
    assert len({pid for _, pid, _ in values}) >= 2, "each job is a process of its own"
    assert total_jobs(out) >= 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_delegate_ships_functions_with_each_job(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "delegate.py", variant))
    lines = re.findall(r"^(\S+): (func\d) executed job (\d+) at [\d.]+ with (\d)$", out, re.M)
    assert [(func, int(job_id)) for _, func, job_id, _ in lines] == [
        ("func1", 1), ("func2", 2), ("func1", 3), ("func2", 4)
    ], out  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_job_scheduler_submits_from_cluster_status(cluster: Cluster, variant: str) -> None:
    data = {f"data{i:03d}": os.urandom(1000 + i) for i in range(4)}
    for name, blob in data.items():
        (cluster.workdir / name).write_bytes(blob)
    proc = run(cluster, "job_scheduler.py", variant, stdin=subprocess.PIPE)
    proc.wait_for_line(r"(?m)^node 127\.0\.0\.1 with \d+ CPUs available$")
    wait_until(lambda: proc.count(r"(?m)^sha1sum for data\d+: ") == 4, 60, "every data file checksummed")
    assert proc.popen.stdin is not None
    proc.popen.stdin.write(b"quit\n")
    proc.popen.stdin.close()
    out = finish(cluster, proc)
    sums = dict(re.findall(r"^sha1sum for (data\d+): ([0-9a-f]+)$", out, re.M))
    assert sums == {name: hashlib.sha1(blob).hexdigest() for name, blob in data.items()}, out
    assert out.count("CPUs available") == 1, "Initialized once for the one node"


def _jobs_running(cluster: Cluster, proc: Proc, variant: str, count: int) -> Callable[[], bool]:
    """True once `count` job processes run the job's own code, asleep in its `time.sleep` (the kernel's
    wchan says so): a job process that exists is not enough, since a cancel before the job's `try` ends
    it without its estimate. Job processes are forks of the node's zygote, so the node's grandchildren
    (the shared variant's node is the test's second process; a JobCluster's is the program's child)."""

    def node() -> psutil.Process | None:
        if variant == "SharedJobCluster":
            return psutil.Process(cluster.procs[1].pid)
        kids = psutil.Process(proc.pid).children()
        return next((p for p in kids if "dispy_client.lifeline" in " ".join(p.cmdline())), None)

    def running() -> bool:
        try:
            daemon = node()
            if daemon is None:
                return False
            grandchildren = [g for zygote in daemon.children() for g in zygote.children()]
        except psutil.Error:
            return False
        return sum(in_timed_sleep(g.pid) for g in grandchildren) >= count

    return running


@pytest.mark.parametrize("variant", VARIANTS)
def test_longrun_collects_best_estimates_after_cancel(cluster: Cluster, variant: str) -> None:
    proc = run(cluster, "longrun.py", variant, stdin=subprocess.PIPE)
    # both may follow the input prompt on its line: allocation and callbacks wait for the constructor
    proc.wait_for_line(r"(?m)Allocate node for compute: 127\.0\.0\.1 / \S+ / 2$")
    proc.wait_for_line(r"(?m)node 127\.0\.0\.1 initialized with 2 cpus$")
    running = _jobs_running(cluster, proc, variant, 2)
    # an estimate within 1e-2 of 1 ends it by itself (SIGINT to itself, as the example does); else we type quit
    wait_until(lambda: running() or proc.popen.poll() is not None, 60, "both jobs running")
    assert proc.popen.stdin is not None
    try:
        proc.popen.stdin.write(b"quit\n")
        proc.popen.stdin.close()
    except BrokenPipeError:
        pass
    out = finish(cluster, proc)
    # not anchored: the first may follow the input prompt on its line (input() echoes no newline from a pipe)
    estimates = [float(v) for v in re.findall(r"job at 127\.0\.0\.1 computed ([\d.e-]+)$", out, re.M)]
    assert len(estimates) == 2 and all(0 < v <= 1 for v in estimates), out
    assert f"best estimate: {max(estimates)}" in out


@pytest.mark.parametrize("variant", VARIANTS)
def test_node_update_runs_a_program_per_node(cluster: Cluster, variant: str) -> None:
    adapt("node_update_script.py", variant, cluster.workdir)
    out = finish(cluster, run(cluster, "node_update.py", variant))
    assert re.search(r"^Node 127\.0\.0\.1 with \d+ CPUs available$", out, re.M), out
    assert re.search(r"^Node 127\.0\.0\.1 finished with \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$", out, re.M), out
    assert "failed" not in out.lower(), out


@pytest.mark.parametrize("variant", VARIANTS)
def test_bounded_submit_keeps_between_its_bounds(cluster: Cluster, variant: str) -> None:
    # its job_status pops key job.id from a dict keyed 0..N-1, and dispy numbers jobs from 1: the last
    # job's pop raises KeyError, logged (dispy logs it too) without stopping anything
    out = finish(cluster, run(cluster, "bounded_submit.py", variant), its_own_error="KeyError: 200")
    assert total_jobs(out) == 200, out


@pytest.mark.parametrize("variant", VARIANTS)
def test_httpd_example_serves_while_jobs_run(cluster: Cluster, variant: str) -> None:
    out = finish(cluster, run(cluster, "httpd_example.py", variant))
    assert out == "", out  # it prints nothing: it ran its 8 jobs, served, shut down and closed without error
