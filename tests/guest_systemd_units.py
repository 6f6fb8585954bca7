"""The shipped units under a real systemd: run inside the kernel tests/test_systemd_guest.py boots.

Its name is no test_*.py, so the host's pytest does not collect it: the host
test boots User-Mode Linux with systemd as PID 1 over a throw-away copy of
this machine's files, and the guest's dispy-guest.service runs this file
with pytest. Here, as root of that guest, the fixtures install the units of
deploy/systemd as docs/operations.md tells an operator to (as shipped, in a
/opt/dispy virtualenv; secrets and users file root's, mode 0600) and start them with
systemctl; each test checks one thing an operator relies on, from outside
the services, as systemctl and /proc show it. What the host reports (the
statuses seen, the security ratings) goes to $DISPY_GUEST_SHARE/figures.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispy_sched import tls_init
from dispy_wire.settings import EX_CONFIG
from dispy_wire.verifier import Verifier
from procs import write_users_file
from test_systemd import DEPLOY, EXPOSURE, VENV_BIN, unit_setting
from waiting import wait_until

pytestmark = pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or "DISPY_GUEST_SHARE" not in os.environ,
    reason="runs only in the systemd guest tests/test_systemd_guest.py boots",
)

ETC = Path("/etc/dispy")
UNITS = Path("/etc/systemd/system")
#: the guest's own kernel and loopback: no other test can hold this port, so the units' default stands
ADDRESS = "127.0.0.1:9702"
NODE_SECRET = "guest-node-secret"
SECRETS = {"alice": "alice-secret", "bob": "bob-secret"}
CPUS = 2
#: what the host test reads back (the guest's pytest output goes there too)
FIGURES: dict[str, Any] = {}


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"systemctl {' '.join(args)}: {done.returncode} {done.stdout}{done.stderr}{journal(args)}")
    return done


def show(unit: str, *props: str) -> dict[str, str]:
    """`systemctl show` of `props` for `unit`."""
    out = systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(args: tuple[str, ...] | list[str], lines: int = 60) -> str:
    """The end of the journal of the units named in `args`, for an assertion's message."""
    units = [a for a in args if a.startswith("dispy")]
    argv = ["journalctl", "--no-pager", "-n", str(lines), "-o", "cat", *(f"--unit={u}" for u in units)]
    return "\n" + subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False).stdout


def status(unit: str) -> str:
    return show(unit, "StatusText")["StatusText"]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def main_pid(unit: str) -> int:
    pid = int(show(unit, "MainPID")["MainPID"])
    assert pid > 0, f"{unit} has no main process{journal([unit])}"
    return pid


@pytest.fixture(scope="module")
def installed() -> Iterator[None]:
    """Both units installed and started as docs/operations.md says, on this guest's loopback."""
    tls_init.init(ETC / "tls", ["127.0.0.1"], [], [], 30)
    config = (DEPLOY / "scheduler.toml.example").read_text()
    config = re.sub(r"^host = .*$", 'host = "127.0.0.1"', config, flags=re.M)
    verifier = Verifier.from_secret(NODE_SECRET, 4096)
    (ETC / "scheduler.toml").write_text(re.sub(r"^node_verifier = .*$", f'node_verifier = "{verifier}"', config, flags=re.M))
    write_users_file(ETC / "users.toml", f'[users.alice]\nsecret = "{SECRETS["alice"]}"\nshare = 2\n')
    node = (DEPLOY / "node.toml.example").read_text()
    node = re.sub(r"^scheduler = .*$", f'scheduler = "{ADDRESS}"', node, flags=re.M)
    (ETC / "node.toml").write_text(re.sub(r"^cpus = .*$", f"cpus = {CPUS}", node, flags=re.M))
    (ETC / "node-secret").write_text(NODE_SECRET + "\n")
    (ETC / "node-secret").chmod(0o600)
    virtualenv()
    for unit in ("dispyscheduler", "dispynode"):
        shutil.copy(DEPLOY / f"{unit}.service", UNITS)  # as shipped: ExecStart= /opt/dispy's
    systemctl("daemon-reload")
    systemctl("enable", "--now", "dispyscheduler")
    systemctl("enable", "--now", "dispynode")
    yield
    share = Path(os.environ["DISPY_GUEST_SHARE"])
    (share / "figures.json").write_text(json.dumps(FIGURES, indent=1))
    (share / "journal.txt").write_text(journal(["dispyscheduler", "dispynode"], lines=100000))


def virtualenv() -> None:
    """/opt/dispy as docs/operations.md makes it (`python3 -m venv`, the system's Python: ProtectHome= hides
    /root, where this venv's may live), its packages this project's virtualenv's (the guest has no network
    for pip), its scripts what pip wrote there."""
    bin_dir = Path(VENV_BIN)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bin_dir.parent)], check=True, timeout=120)
    (python,) = (bin_dir.parent / "lib").glob(f"python{sys.version_info[0]}.{sys.version_info[1]}/site-packages")
    (python / "dispy-project.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    for script in ("dispyscheduler", "dispynode", "dispyadmin"):
        text = Path(sys.executable).with_name(script).read_text()
        (bin_dir / script).write_text(f"#!{bin_dir / 'python'}\n" + text.split("\n", 1)[1])
        (bin_dir / script).chmod(0o755)


def finish(program: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Waits for a client program; (returncode, stdout, stderr); one that hangs is killed, and that is a failure."""
    try:
        out, err = program.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        program.kill()
        out, err = program.communicate()
        ps = subprocess.run(["ps", "-eo", "pid,ppid,uid,stat,etime,wchan:24,args"], capture_output=True, text=True,
                            timeout=60, check=False).stdout  # fmt: skip
        raise AssertionError(f"the client ran over {timeout} s: {out}{err}\n{ps}{journal(['dispyscheduler', 'dispynode'])}")
    return program.returncode, out, err


def client(user: str, seconds: float, jobs: int) -> subprocess.Popen[str]:
    """A user's program: `jobs` jobs of `seconds` each, printing (uid, cgroup, its limits) of each as JSON."""
    code = textwrap.dedent(
        """
        import json, sys
        from dispy_client import SharedJobCluster

        def work(seconds):
            import os, time
            time.sleep(seconds)
            group = open("/proc/self/cgroup").read().strip().split("::", 1)[1]
            limits = {f: open(f"/sys/fs/cgroup{group}/{f}").read().strip() for f in ("memory.max", "pids.max")}
            return os.getuid(), group, limits

        with SharedJobCluster(work) as cluster:
            jobs = [cluster.submit(float(sys.argv[1])) for _ in range(int(sys.argv[2]))]
            print(json.dumps([[job(), str(job.exception)] for job in jobs]))
        """
    )
    env = {**os.environ, "DISPY_SCHEDULER": ADDRESS, "DISPY_USER": user, "DISPY_SECRET": SECRETS[user],
           "DISPY_TLS_CA": str(ETC / "tls" / "ca.pem")}  # fmt: skip
    argv = [sys.executable, "-c", code, str(seconds), str(jobs)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def busy_run(installed: None) -> dict[str, Any]:
    """alice runs twice as many jobs as the node has CPUs; the units' statuses are read every 0.2 s meanwhile."""
    wait_until(lambda: status("dispyscheduler").startswith(f"1 nodes, 0/{CPUS} CPUs busy"), 60, "the node in the status")
    seen: dict[str, list[str]] = {"dispyscheduler": [], "dispynode": []}
    program = client("alice", 8, 2 * CPUS)  # 8 s: the scheduler tells systemd every 5 s
    started = time.monotonic()
    while program.poll() is None and time.monotonic() - started < 90:
        for unit, statuses in seen.items():
            text = status(unit)
            if not statuses or statuses[-1] != text:
                statuses.append(text)
        time.sleep(0.2)
    rc, out, err = finish(program, 5)
    assert rc == 0, f"the client exited {rc}: {err}{journal(list(seen))}"
    FIGURES["statuses"] = seen
    return {"seen": seen, "results": json.loads(out)}


def test_both_units_start_ready_and_as_their_hardening_says(installed: None) -> None:
    scheduler, node = main_pid("dispyscheduler"), main_pid("dispynode")
    for unit in ("dispyscheduler", "dispynode"):
        state = show(unit, "ActiveState", "SubState", "NRestarts")
        assert state == {"ActiveState": "active", "SubState": "running", "NRestarts": "0"}, (state, journal([unit]))
    sched = proc_status(scheduler)
    assert sched["Uid"].split()[0] != "0", "DynamicUser= gives the scheduler a uid of its own"
    assert (sched["NoNewPrivs"], sched["Seccomp"], sched["CapEff"]) == ("1", "2", "0000000000000000"), sched
    # the TLS key and the users file reach it as credentials, in systemd's directory for the unit
    argv = Path(f"/proc/{scheduler}/cmdline").read_text().split("\0")
    assert "/run/credentials/dispyscheduler.service/scheduler.key" in argv, argv
    own = proc_status(node)
    assert own["Uid"].split()[0] == "0" and (own["NoNewPrivs"], own["Seccomp"]) == ("1", "2"), own
    caps = unit_setting("dispynode", "CapabilityBoundingSet")[0].split()
    assert int(own["CapBnd"], 16) == sum(1 << CAP_NUMBERS[c] for c in caps), (own["CapBnd"], caps)
    assert NODE_SECRET.encode() not in Path(f"/proc/{node}/environ").read_bytes()
    assert NODE_SECRET not in Path(f"/proc/{node}/cmdline").read_text()


#: the capabilities the node unit keeps (linux/capability.h)
CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}


def test_status_text_names_nodes_busy_cpus_and_queued_jobs_and_keeps_current(busy_run: dict[str, Any]) -> None:
    statuses = busy_run["seen"]["dispyscheduler"]
    assert any(re.match(rf"^1 nodes, {CPUS}/{CPUS} CPUs busy, [1-9]\d* jobs queued, 1 users active", s) for s in statuses), statuses
    assert any(re.match(rf"^1 nodes, {CPUS}/{CPUS} CPUs busy, 0 jobs queued", s) for s in statuses), statuses
    node = busy_run["seen"]["dispynode"]
    assert any(s.startswith(f"{CPUS} of {CPUS} offered cpus busy") for s in node), node
    # and back to idle once the jobs are done, without anyone asking
    wait_until(lambda: status("dispyscheduler").startswith(f"1 nodes, 0/{CPUS} CPUs busy, 0 jobs queued"), 30,
               "the scheduler's status back to idle")  # fmt: skip
    wait_until(lambda: status("dispynode").startswith(f"0 of {CPUS} offered cpus busy"), 30, "the node's status idle")


def test_jobs_run_as_uids_of_their_own_in_the_node_s_delegated_cgroup(busy_run: dict[str, Any]) -> None:
    assert show("dispynode", "Delegate")["Delegate"] == "yes"
    FIGURES["job_groups"] = busy_run["results"]
    for (uid, group, limits), exception in busy_run["results"]:
        assert 2000000000 <= uid <= 2000000999, (uid, exception)
        assert re.fullmatch(r"/system\.slice/dispynode\.service/dispynode-\d+/jobs/[^/]+/job-\d+", group), group
        assert limits["memory.max"] == str(2 << 30), limits  # node.toml's max_memory = "2G", on the job's tree


def test_reload_reads_the_users_file_again(installed: None) -> None:
    def bob_runs_a_job() -> tuple[int, str]:
        rc, out, err = finish(client("bob", 0, 1), 60)
        return rc, out + err

    rc, out = bob_runs_a_job()
    assert rc != 0, f"bob is not in the users file yet: {out}"
    pid = main_pid("dispyscheduler")
    users = "".join(f'[users.{u}]\nsecret = "{s}"\n' for u, s in SECRETS.items())
    write_users_file(ETC / "users.toml", users)  # as `dispyadmin user add bob` would: root's, 0600
    systemctl("reload", "dispyscheduler")
    rc, out = bob_runs_a_job()
    assert rc == 0, f"after systemctl reload bob's job should run: {out}{journal(['dispyscheduler'])}"
    assert main_pid("dispyscheduler") == pid, "reloaded, not restarted"


@pytest.mark.parametrize(
    ("unit", "config", "bad"), [("dispyscheduler", "users.toml", "max_cpu = 3"), ("dispynode", "node.toml", "cpu = 3")]
)
def test_a_refused_configuration_stops_the_unit_without_a_restart_loop(installed: None, unit: str, config: str, bad: str) -> None:
    path = ETC / config
    good = path.read_text()
    systemctl("stop", unit)
    try:
        path.write_text(good + bad + "\n")
        started = systemctl("start", unit, check=False)
        assert started.returncode != 0
        # failed, and stays so: with a restart pending it would be "activating" (auto-restart) instead
        wait_until(lambda: show(unit, "ActiveState")["ActiveState"] == "failed", 60, f"{unit} failed")
        state = show(unit, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        expected = {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                    "ExecMainStatus": str(EX_CONFIG), "NRestarts": "0"}  # fmt: skip
        assert state == expected, (state, journal([unit]))
        key = bad.split()[0]
        assert key in journal([unit]), journal([unit])
    finally:
        path.write_text(good)
        systemctl("reset-failed", unit, check=False)
        systemctl("start", unit)
    wait_until(lambda: status("dispyscheduler").startswith("1 nodes, "), 90, "the node back in the scheduler's status")


@pytest.mark.parametrize("unit", ["dispyscheduler", "dispynode"])
def test_live_units_are_rated_as_the_offline_check_rates_them(installed: None, unit: str) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--no-pager", f"{unit}.service"], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    FIGURES[f"security {unit}"] = float(match.group(1))
    assert float(match.group(1)) <= EXPOSURE[unit], done.stdout


def test_sigusr1_drains_the_node_and_the_unit_stays_stopped(installed: None) -> None:
    systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", "dispynode")
    wait_until(lambda: show("dispynode", "ActiveState")["ActiveState"] == "inactive", 60, "the node drained")
    state = show("dispynode", "Result", "ExecMainStatus", "NRestarts")
    assert state == {"Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, (state, journal(["dispynode"]))
