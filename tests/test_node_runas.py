"""A node run as root runs strangers' jobs as `--run-as` (default nobody), never as root.

The project's own interpreter may sit where `nobody` cannot read it (pyenv
under /root on this project's machines). So the test builds an interpreter
tree `nobody` can read: a virtual environment of the system's Python 3.11
(same ABI) holding copies of the packages the node needs, and runs the real
`dispynode` from it, as root, against the real scheduler.
"""

from __future__ import annotations

import importlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import EXPECT_CGROUP, Cluster, in_cgroup_v2

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
NEEDED = ("dispy_wire", "dispy_node", "msgpack", "cloudpickle", "psutil")


@pytest.fixture(scope="module")
def readable_python() -> Iterator[Path]:
    """A Python with dispy_node that `nobody` can read and run."""
    if os.geteuid() != 0:
        pytest.skip("a node picks the jobs' account only when it runs as root")
    if not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11):
        pytest.skip(f"needs {SYSTEM_PYTHON} matching this interpreter's 3.11 ABI to copy packages into")
    root = Path(tempfile.mkdtemp(prefix="dispy-runas-"))
    try:
        root.chmod(0o755)
        venv = root / "venv"
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        site = next((venv / "lib").glob("python3.11/site-packages"))
        for name in NEEDED:
            source = Path(importlib.import_module(name).__file__ or "").parent
            shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True, timeout=60)
        yield venv / "bin" / "python"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_root_node_runs_jobs_as_nobody_in_a_directory_of_their_own(cluster: Cluster, readable_python: Path) -> None:
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-runas-work-"))
    try:
        work.chmod(0o711)  # nobody passes through to its clusters' directories, lists nothing
        node = cluster.start(
            [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
             "--name", "sandbox", "--work-dir", str(work / "node"), "--run-as", "nobody"],
            "node",
            {"PYTHONPATH": ""},  # its own copies, not the project tree
        )  # fmt: skip
        node.wait_for_line(r"connected to ")
        client = cluster.run_client(
            """
            import json
            from dispy_client import SharedJobCluster

            def whoami():
                import os
                st = os.stat(".")
                return [os.getuid(), os.getgid(), st.st_uid, st.st_mode & 0o777, os.getcwd()]

            with SharedJobCluster(whoami) as c:
                job = c.submit()
                result = job()
                assert job.status == job.Finished, job.exception
                print(json.dumps(result))
            """
        )
        nobody = pwd.getpwnam("nobody")
        uid, gid, dir_uid, mode, cwd = json.loads(client.stdout)
        assert (uid, gid, dir_uid) == (nobody.pw_uid, nobody.pw_gid, nobody.pw_uid)
        assert mode == 0o700 and cwd.startswith(str(work / "node"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.cgroup
def test_a_job_can_neither_raise_its_memory_limit_nor_leave_its_group(cluster: Cluster, readable_python: Path) -> None:
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-runas-work-"))
    try:
        work.chmod(0o711)
        argv = [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
                "--name", "sandbox", "--work-dir", str(work / "node"), "--run-as", "nobody", "--max-memory", "1G"]  # fmt: skip
        if os.environ.get(EXPECT_CGROUP) == "v2":
            argv = in_cgroup_v2(argv, "dispynode.service")
        node = cluster.start(argv, "node", {"PYTHONPATH": ""})
        node.wait_for_line(r"connected to ")
        if "per-job cgroups under" not in node.stderr:
            assert not os.environ.get(EXPECT_CGROUP), node.stderr
            pytest.skip("this host gives the node no cgroups (see its log)")
        client = cluster.run_client(
            """
            import json
            from dispy_client import SharedJobCluster

            def probe():
                import os
                with open("/proc/self/cgroup") as f:
                    own = dict(line.rstrip("\\n").split(":", 2)[1:] for line in f)
                if "memory" in own:  # v1: <node>/<job> in each hierarchy
                    group = "/sys/fs/cgroup/memory" + own["memory"]
                    limit, node = group + "/memory.limit_in_bytes", os.path.dirname(group)
                else:  # v2: <node>/jobs/<job>, the daemon in <node>/daemon, zygotes in <node>/jobs/zygotes
                    group = "/sys/fs/cgroup" + own[""]
                    limit, node = group + "/memory.max", os.path.dirname(os.path.dirname(group)) + "/daemon"
                tries = {"raise own limit": (limit, "max"),
                         "move to the node's group": (node + "/cgroup.procs", str(os.getpid())),
                         "make a group of its own": (group + "/escape", "")}
                with open(limit) as f:
                    out = {"group": os.path.basename(group), "limit": f.read().strip()}
                for what, (target, text) in tries.items():
                    try:
                        if text:
                            with open(target, "w") as f:
                                f.write(text)
                        else:
                            os.mkdir(target)
                        out[what] = "done"
                    except OSError as exc:
                        out[what] = type(exc).__name__
                return out

            with SharedJobCluster(probe) as c:
                job = c.submit()
                result = job()
                assert job.status == job.Finished, job.exception
                print(json.dumps(result))
            """
        )
        out = json.loads(client.stdout)
        assert out["group"].startswith("job-") and out["limit"] == str(1 << 30), out
        assert out["raise own limit"] == "PermissionError", out
        assert out["move to the node's group"] == "PermissionError", out
        assert out["make a group of its own"] == "PermissionError", out
    finally:
        shutil.rmtree(work, ignore_errors=True)
