"""Real processes for integration tests: scheduler, nodes and client programs.

Each process is started with its output going to files (so a full pipe can
never block it), waited for by a readiness line with a deadline, and ended by
its PID (SIGTERM, then SIGKILL) when the test is over, pass or fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the fewest PBKDF2 rounds SCRAM allows: tests log in often, and their secrets guard nothing
TEST_ITERATIONS = 4096
EXPECT_CGROUP = "DISPY_TEST_CGROUP"  # "v1" or "v2": the per-job cgroups a run must get (test_node_cgroup2.py sets it)
#: Root nodes that hand out per-cluster uids (the default range, or a fixed --job-uids) share this machine's
#: uids and sweep what those uids left in /tmp: two such nodes at once could give one uid to two clusters or
#: remove each other's files. Modules that start them run on one pytest-xdist worker, one test at a time.
SHARES_JOB_UIDS = pytest.mark.xdist_group("job-uids")


def write_users_file(path: Path, text: str) -> Path:
    """Writes a users file as an operator would keep it: each `secret = "S"` in `text` stored as
    its verifier (what `dispyadmin user add` writes), mode 600. The tests keep the secrets."""
    from dispy_wire.verifier import Verifier

    def verifier(match: re.Match[str]) -> str:
        return f'verifier = "{Verifier.from_secret(match.group(1), TEST_ITERATIONS)}"'

    path.write_text(re.sub(r'^secret = "([^"]*)"$', verifier, text, flags=re.MULTILINE))
    path.chmod(0o600)
    return path


class Proc:
    """A started process whose stdout/stderr go to files in `workdir`."""

    def __init__(
        self, argv: list[str], workdir: Path, name: str, env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL
    ) -> None:
        """`stdin=subprocess.PIPE` lets a test type into the program (`popen.stdin`)."""
        self.name = name
        self.argv = argv
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=err, stdin=stdin, env=full_env, cwd=workdir)
        self.pid = self.popen.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 60.0, stream: str = "stdout") -> re.Match[str]:
        """Waits until `pattern` appears in the process's output (the deadline only bounds a hang)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        delay = 0.005
        while True:
            exited = self.popen.poll() is not None  # looked at first: a line printed just before exiting is read below
            text = self.stdout if stream == "stdout" else self.stderr
            match = rx.search(text)
            if match:
                return match
            if exited:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before {pattern!r}:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.describe()}")
            time.sleep(delay)  # polling a file the process writes; no event to wait on
            delay = min(delay * 2, 0.1)

    def count(self, pattern: str, stream: str = "stdout") -> int:
        return len(re.findall(pattern, self.stdout if stream == "stdout" else self.stderr))

    def wait(self, timeout: float = 60.0) -> int:
        return self.popen.wait(timeout)

    def describe(self) -> str:
        return f"--- {self.name} stdout ---\n{self.stdout[-4000:]}\n--- {self.name} stderr ---\n{self.stderr[-6000:]}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Ends the process (and anything it left behind) by PID."""
        if self.popen.poll() is None:
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
            _, alive = psutil.wait_procs(children, timeout=timeout)
            for child in alive:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass

    def kill9(self) -> None:
        """SIGKILL, as a crash would: its job processes are left to their own fate."""
        self.popen.kill()
        self.popen.wait(10)


def in_cgroup_v2(argv: list[str], group: str) -> list[str]:
    """argv started as systemd starts a unit with Delegate=yes: in a cgroup v2 group of its own.

    Only where a run owns the whole v2 hierarchy (test_node_cgroup2.py's
    kernel): `group` is made under /sys/fs/cgroup if it is not there. A group
    a node has used takes no process any more (it passes controllers on, as
    the node set it): each node needs a fresh one, as systemd gives each start.
    """
    path = Path("/sys/fs/cgroup") / group
    path.mkdir(parents=True, exist_ok=True)
    return ["sh", "-c", f'echo $$ > {path}/cgroup.procs && exec "$@"', "sh", *argv]


class Cluster:
    """Starts and tracks the processes of one test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.address = ""
        self.node_secret = ""

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL) -> Proc:
        proc = Proc(argv, self.workdir, name, env, stdin)
        self.procs.append(proc)
        return proc

    def scheduler(self, *args: str, name: str = "scheduler", env: dict[str, str] | None = None) -> Proc:
        argv = [sys.executable, "-m", "dispy_sched.main", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--state-dir", str(self.workdir / f"{name}-state"), *args]
        if "--node-secret" in args:
            self.node_secret = args[args.index("--node-secret") + 1]
        proc = self.start(argv, name, env)
        match = proc.wait_for_line(r"listening on (\S+):(\d+)")
        self.address = f"{match.group(1)}:{match.group(2)}"
        return proc

    def node(
        self, *args: str, cpus: int = 2, name: str = "node", wait: bool = True, env: dict[str, str] | None = None,
        heartbeat: float = 2.0,
    ) -> Proc:
        """A `dispynode`; `heartbeat` is dispynode's default: the scheduler drops a node after three missed
        beats, and on a busy machine a node among misbehaving jobs can be silent for longer than 1.5 s."""
        argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", self.address, "--cpus", str(cpus)]
        argv += ["--name", name, "--work-dir", str(self.workdir / f"{name}-work"), "--heartbeat", str(heartbeat)]
        if os.geteuid() == 0:  # this machine's Python lives under /root: `nobody` cannot run it
            argv.append("--jobs-as-self")
        if self.node_secret and "--node-secret" not in args:
            argv += ["--node-secret", self.node_secret]
        proc = self.start([*argv, *args], name, env)
        if wait:
            proc.wait_for_line(r"connected to ")
        return proc

    def client(self, code: str, name: str = "client", env: dict[str, str] | None = None, args: list[str] | None = None) -> Proc:
        """Runs a client program (the text of a Python script) as its own process."""
        script = self.workdir / f"{name}.py"
        script.write_text(textwrap.dedent(code))
        env = {"DISPY_SCHEDULER": self.address, **(env or {})}
        return self.start([sys.executable, str(script), *(args or [])], name, env)

    def run_client(self, code: str, name: str = "client", timeout: float = 60.0, env: dict[str, str] | None = None) -> Proc:
        """Runs a client program to its end; fails the test if it did not exit 0."""
        proc = self.client(code, name, env)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish within {timeout} s:\n{self.describe()}") from None
        assert rc == 0, f"{name} exited {rc}:\n{self.describe()}"
        return proc

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.procs)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def in_timed_sleep(pid: int) -> bool:
    """Whether the process waits in a timed sleep (`time.sleep`), not on a pipe, a socket or the CPU: a job's
    own code has begun once its process sleeps there (the kernel's wchan says where a process waits)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "nanosleep" in f.read()
    except OSError:  # it ended
        return False


def waits_to_write(pid: int) -> bool:
    """Whether the process is blocked writing to a socket whose buffer is full (its peer does not read)."""
    with open(f"/proc/{pid}/wchan") as f:
        return f.read() == "sock_alloc_send_pskb"


def embedded_nodes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "dispy_client.lifeline" in " ".join(p.cmdline())]


@pytest.fixture(autouse=True)
def no_node_outlives_its_test() -> Iterator[None]:
    """A test that fails before a JobCluster's close() leaves its node running: end it, so the next test starts
    clean (autouse in the modules that import it)."""
    yield
    for proc in embedded_nodes():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
