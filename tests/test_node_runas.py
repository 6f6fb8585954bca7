"""A node run as root runs strangers' jobs as uids of their own (or, if told so, one shared account), never as root.

The project's own interpreter may sit where `nobody` cannot read it (pyenv
under /root on this project's machines). So the test builds an interpreter
tree `nobody` can read: a virtual environment of the system's Python 3.11
(same ABI) holding copies of the packages the node needs, and runs the real
`dispynode` from it, as root, against the real scheduler.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispy_wire.settings import EX_CONFIG

from dispy_client import DispyJob
from dispy_node.account import DEFAULT_JOB_UIDS, AccountPool, PoolExhausted
from procs import EXPECT_CGROUP, Cluster, in_cgroup_v2
from test_node_runner import Harness, double, run
from waiting import wait_until

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
# dispy_node's imports, dependencies included (cryptography, and cffi's backend under it, for dispy_wire.tls)
NEEDED = ("dispy_wire", "dispy_node", "msgpack", "msgspec", "cloudpickle", "psutil", "scramp", "asn1crypto", "cryptography", "_cffi_backend")


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
            source = Path(importlib.import_module(name).__file__ or "")
            if source.name == "__init__.py":
                shutil.copytree(source.parent, site / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:  # an extension module of one file
                shutil.copy2(source, site / source.name)
            for info in source.parent.parent.glob(f"{name}-*.dist-info") if source.name == "__init__.py" else ():
                shutil.copytree(info, site / info.name)  # scramp reads its own version at import
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True, timeout=60)
        yield venv / "bin" / "python"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_root_node_told_to_share_one_account_runs_jobs_as_it_and_warns(cluster: Cluster, readable_python: Path) -> None:
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-runas-work-"))
    try:
        work.chmod(0o711)  # nobody passes through to its clusters' directories, lists nothing
        node = cluster.start(
            [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
             "--name", "sandbox", "--work-dir", str(work / "node"), "--shared-run-as", "nobody"],
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
        assert "every cluster's jobs run as the one account nobody: users' jobs can signal" in node.stderr
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
                "--name", "sandbox", "--work-dir", str(work / "node"), "--shared-run-as", "nobody", "--max-memory", "1G"]  # fmt: skip
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
                up = lambda path, n: path if n == 0 else up(os.path.dirname(path), n - 1)
                if "memory" in own:  # v1: <node>/<cluster>/<job> in each hierarchy
                    group = "/sys/fs/cgroup/memory" + own["memory"]
                    limit, node = group + "/memory.limit_in_bytes", up(group, 2)
                else:  # v2: <node>/jobs/<cluster>/<job>, the daemon in <node>/daemon
                    group = "/sys/fs/cgroup" + own[""]
                    limit, node = group + "/memory.max", up(group, 3) + "/daemon"
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


JOB_UIDS = (3_900_000, 3_900_009)  # no account on this machine has these


@pytest.mark.cgroup
def test_clusters_with_uids_of_their_own_cannot_touch_one_another(cluster: Cluster, readable_python: Path) -> None:
    """--job-uids: a job of mallory's cluster signals every process it may, peeks into others' working
    directories and tries to move into their control groups; alice's jobs beside it finish regardless."""
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-uids-work-"))
    try:
        work.chmod(0o711)
        argv = [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "3",
                "--name", "pool", "--work-dir", str(work / "node"), "--job-uids", "%d-%d" % JOB_UIDS,
                "--max-memory", "1G", "--serve", "2"]  # fmt: skip
        if os.environ.get(EXPECT_CGROUP) == "v2":
            argv = in_cgroup_v2(argv, "dispynode-uids.service")  # a fresh one, as systemd gives each start
        node = cluster.start(argv, "node", {"PYTHONPATH": ""})
        node.wait_for_line(r"connected to ")
        has_groups = "per-job cgroups under" in node.stderr
        assert has_groups or not os.environ.get(EXPECT_CGROUP), node.stderr
        client = cluster.run_client(
            """
            import json, time
            from dispy_client import SharedJobCluster, DispyJob

            RELEASE = %r  # alice's jobs run until mallory's probe has looked at them, however long that takes

            def work(x, release):
                import os, tempfile, time
                dispy_provisional_result("started")  # its process runs (Running may come before that)
                deadline = time.monotonic() + 60
                while not os.path.exists(release) and time.monotonic() < deadline:
                    time.sleep(0.05)
                return [os.getuid(), os.getgid(), 2 * x, tempfile.gettempdir()]

            def attack(first, last, kill):
                import os, signal
                if kill:
                    os.kill(-1, signal.SIGKILL)  # all it may signal (on Linux, not itself): its zygote dies too
                    return "sent"
                others = []
                for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
                    try:
                        uid = os.stat(f"/proc/{pid}").st_uid
                    except OSError:
                        continue
                    if first <= uid <= last and uid != os.getuid():
                        others.append(pid)
                with open(f"/dev/shm/left-by-{os.getuid()}", "w") as f:  # for the uid's next holder
                    f.write("secret")
                out = {"uid": os.getuid(), "others": len(others), "peek": set(), "move": set()}
                for pid in others:
                    try:
                        os.listdir(f"/proc/{pid}/cwd")
                        out["peek"].add("done")
                    except OSError as exc:
                        out["peek"].add(type(exc).__name__)
                    try:
                        with open(f"/proc/{pid}/cgroup") as f:
                            line = next(l for l in f if ":memory:" in l or l.startswith("0::"))
                        root = "/sys/fs/cgroup/memory" if ":memory:" in line else "/sys/fs/cgroup"
                        with open(root + line.split(":", 2)[2].strip() + "/cgroup.procs", "w") as f:
                            f.write(str(os.getpid()))
                        out["move"].add("done")
                    except (OSError, StopIteration) as exc:
                        out["move"].add(type(exc).__name__)
                return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}

            started = set()

            def started_now(job):
                if job.status == DispyJob.ProvisionalResult:
                    started.add(job.id)

            with SharedJobCluster(work, user="alice", cleanup=False, job_status=started_now) as alice, \\
                    SharedJobCluster(attack, user="mallory") as mallory:
                jobs = [alice.submit_job_id(i, i, RELEASE) for i in range(2)]
                while len(started) < 2:
                    time.sleep(0.05)
                probe = mallory.submit(%d, %d, False)
                probe()
                mallory.submit(0, 0, True)()
                open(RELEASE, "w").close()
                print(json.dumps({"alice": [j() for j in jobs], "statuses": [j.status for j in jobs],
                                  "mallory": probe.result, "mallory_status": probe.status}))
            """ % (str(work / "release"), *JOB_UIDS)
        )
        out = json.loads(client.stdout)
        assert out["statuses"] == [DispyJob.Finished] * 2, out
        (uid_a, gid_a, _, tmp), _ = out["alice"]
        assert [r[2] for r in out["alice"]] == [0, 2] and all(r[:2] == [uid_a, gid_a] for r in out["alice"])
        assert tmp.startswith(str(work / "node")) and tmp.endswith("/tmp"), tmp  # its own, not the machine's
        mallory = out["mallory"]
        assert out["mallory_status"] == DispyJob.Finished, out
        assert JOB_UIDS[0] <= uid_a <= JOB_UIDS[1] and JOB_UIDS[0] <= mallory["uid"] <= JOB_UIDS[1]
        assert uid_a == gid_a and mallory["uid"] != uid_a, out
        assert mallory["others"] >= 2 and mallory["peek"] == ["PermissionError"], out
        if has_groups:
            assert mallory["move"] == ["PermissionError"], out
        assert node.wait(120) == 0, cluster.describe()  # --serve 2: both clusters gone (120 s only bounds a hang)
        assert not Path(f"/dev/shm/left-by-{mallory['uid']}").exists()  # gone with its uid
        (kept,) = [d for d in (work / "node").iterdir() if d.is_dir()]  # alice's (cleanup=False)
        st = kept.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), "a kept directory must not stay its uid's"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_uid_pool_hands_out_free_uids_least_recently_used_first() -> None:
    first, last = JOB_UIDS
    pool = AccountPool(first, last)
    a, b = pool.acquire(set()), pool.acquire(set())
    assert (a.uid, a.gid, a.name, b.uid) == (first, first, f"uid{first}", first + 1)
    pool.release(a)
    assert pool.acquire(set()).uid == first + 2  # the one just given back waits its turn
    squatter = subprocess.Popen(["sleep", "30"], user=first + 3, group=first + 3, extra_groups=[])
    try:  # a process of a uid (a crashed node's job, say) keeps it out of use
        assert first + 3 in AccountPool.uids_in_use()
        assert pool.acquire(AccountPool.uids_in_use()).uid == first + 4
    finally:
        squatter.kill()
        squatter.wait()
    taken = [pool.acquire(set()).uid for _ in range(len(pool) - 3)]  # b, first + 2 and first + 4 are out
    assert taken == [*range(first + 5, last + 1), first, first + 3], taken
    with pytest.raises(PoolExhausted, match=f"all 10 uids of --job-uids {first}-{last} are in use"):
        pool.acquire(set())


@pytest.mark.parametrize("text", ["100", "5-2", "0-3", "a-b"])
def test_uid_pool_refuses_what_is_no_range_of_unprivileged_uids(text: str) -> None:
    with pytest.raises(ValueError, match="--job-uids"):
        AccountPool.parse(text)


def test_job_uids_with_a_shared_account_is_refused(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", "127.0.0.1:9", "--work-dir", str(tmp_path / "w"),
            "--job-uids", "%d-%d" % JOB_UIDS, "--shared-run-as", "nobody"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EX_CONFIG and "--job-uids needs a node run as root, and neither --shared-run-as" in done.stderr


@pytest.mark.parametrize("how", ["flag", "config"])
def test_the_old_run_as_is_refused_saying_what_replaces_it(tmp_path: Path, how: str) -> None:
    """`--run-as nobody` used to put every user's jobs in one account, silently: now that needs saying so."""
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", "127.0.0.1:9", "--work-dir", str(tmp_path / "w")]
    if how == "flag":
        argv += ["--run-as", "nobody"]
    else:
        (tmp_path / "node.toml").write_text('run_as = "nobody"\n')
        argv += ["--config", str(tmp_path / "node.toml")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EX_CONFIG and "--run-as is gone" in done.stderr and "--shared-run-as USER" in done.stderr


def test_a_cluster_cannot_turn_the_root_node_onto_another_process(cluster: Cluster, readable_python: Path) -> None:
    """A cluster's setup (it runs in the zygote, as the jobs' account) leaves a thread that, once a job
    runs, writes on the zygote's pipe that a root process is that job's, then kills the zygote: the node,
    cleaning up after a dead zygote, must not kill that process for it."""
    cluster.scheduler()
    victim = subprocess.Popen(["sleep", "120"], start_new_session=True)  # root's, a group leader
    work = Path(tempfile.mkdtemp(prefix="dispy-lure-work-"))
    try:
        work.chmod(0o711)
        argv = [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
                "--name", "lured", "--work-dir", str(work / "node"), "--shared-run-as", "nobody"]  # fmt: skip
        node = cluster.start(argv, "node", {"PYTHONPATH": ""})
        node.wait_for_line(r"connected to ")
        client = cluster.run_client(
            """
            import functools
            from dispy_client import SharedJobCluster

            def lure_later(victim):
                import fcntl, os, signal, stat, threading, time
                from dispy_node import zygote_protocol as zp

                def lure():
                    children = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
                    deadline = time.monotonic() + 60
                    while not open(children).read().strip() and time.monotonic() < deadline:
                        time.sleep(0.05)  # until this zygote has forked the job
                    time.sleep(0.5)  # and its main thread has told the node so, a few lines after the fork
                    for fd in range(3, 64):
                        try:
                            mode, flags = os.fstat(fd).st_mode, fcntl.fcntl(fd, fcntl.F_GETFL)
                        except OSError:
                            continue
                        if stat.S_ISFIFO(mode) and flags & os.O_ACCMODE == os.O_WRONLY:  # to the node
                            os.write(fd, b"".join(zp.encode(zp.Started(i, victim)) for i in range(100)))
                    os.kill(os.getpid(), signal.SIGKILL)

                threading.Thread(target=lure, daemon=True).start()
                return 0

            def work():
                import time
                time.sleep(30)

            with SharedJobCluster(work, setup=functools.partial(lure_later, %d)) as c:
                job = c.submit()
                job()
                print(job.status, job.exception)
            """ % victim.pid
        )
        assert "zygote process died" in client.stdout, client.stdout
        assert victim.poll() is None, "the node killed a process that was not its job's"
        assert "is no job of it; not killed" in node.stderr
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(work, ignore_errors=True)


class SlowToLook(AccountPool):
    """A pool whose look at the machine's processes takes a while (as on a busy host)."""

    @staticmethod
    def uids_in_use() -> set[int]:
        time.sleep(0.3)
        return set()


def test_a_cluster_unloaded_while_its_uid_is_being_chosen_takes_none() -> None:
    pool = SlowToLook(*JOB_UIDS)

    async def body(h: Harness) -> None:
        h.load(func=double)
        await asyncio.sleep(0.05)  # the node is looking at processes for it
        await h.runner.unload("c1")
        await asyncio.sleep(0.5)

    run(body, accounts=pool)
    assert len([pool.acquire(set()) for _ in range(len(pool))]) == len(pool)  # every uid still free


# -- the node secret: out of a job's reach on a node run as an ordinary account ----------------

@pytest.mark.parametrize("given", ["environment", "flag", "file"])
def test_a_job_of_a_node_run_as_an_ordinary_user_finds_no_node_secret(
    cluster: Cluster, readable_python: Path, given: str
) -> None:
    """The node runs as `nobody`, and so do its jobs: a job reads the environment and command line of
    every process above it (its zygote, the node, what started the node) and tries the node's memory."""
    secret = "node-secret-" + os.urandom(8).hex()
    cluster.scheduler("--node-secret", secret)
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="dispy-secret-work-"))
    try:
        work.chmod(0o755)
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        argv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                "env", "-C", "/", str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address,
                "--cpus", "1", "--name", "plain", "--work-dir", str(work / "node")]  # fmt: skip
        env = {"PYTHONPATH": ""}
        if given == "environment":
            env["DISPY_NODE_SECRET"] = secret
        elif given == "flag":
            argv += ["--node-secret", secret]
        else:
            (work / "secret").write_text(secret + "\n")
            os.chown(work / "secret", nobody.pw_uid, nobody.pw_gid)
            (work / "secret").chmod(0o600)
            argv += ["--secret-file", str(work / "secret")]
        node = cluster.start(argv, "node", env)
        node.wait_for_line(r"connected to ")  # so the secret it proved is the scheduler's
        client = cluster.run_client(
            """
            import json
            from dispy_client import SharedJobCluster

            def look(secret, node_pid):
                import os
                found, pid = {}, os.getpid()
                while pid > 1:
                    with open(f"/proc/{pid}/stat") as f:
                        pid = int(f.read().rsplit(")", 1)[1].split()[1])
                    for page in ("environ", "cmdline"):
                        try:
                            with open(f"/proc/{pid}/{page}", "rb") as f:
                                found[f"{pid} {page}"] = "FOUND" if secret.encode() in f.read() else "clean"
                        except OSError as exc:
                            found[f"{pid} {page}"] = type(exc).__name__
                try:
                    with open(f"/proc/{node_pid}/mem", "rb") as f:
                        found["node mem"] = "readable"
                except OSError as exc:
                    found["node mem"] = type(exc).__name__
                return os.getuid(), found

            with SharedJobCluster(look) as c:
                job = c.submit(%r, %d)
                result = job()
                assert job.status == job.Finished, job.exception
                print(json.dumps(result))
            """ % (secret, node.pid)
        )
        uid, found = json.loads(client.stdout)
        assert uid == nobody.pw_uid
        assert f"{node.pid} environ" in found and f"{node.pid} cmdline" in found, found
        assert found[f"{node.pid} environ"] != "FOUND" and not [k for k, v in found.items() if v == "FOUND"], found
        assert found[f"{node.pid} cmdline"] == "clean" and found["node mem"] == "PermissionError", found
        assert found[f"{node.pid} environ"] == "PermissionError", found  # non-dumpable: not even that
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_secret_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o640)
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", "127.0.0.1:9", "--work-dir", str(tmp_path / "w"),
            "--secret-file", str(path), "--jobs-as-self"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EX_CONFIG and f"secret file {path} has mode 0640" in done.stderr, done.stderr
    assert f"chmod 600 {path}" in done.stderr


# -- a uid of its own for each cluster, by default; and nothing of it left for the next ------------

def test_a_root_node_gives_each_cluster_a_uid_of_its_own_by_default(cluster: Cluster, readable_python: Path) -> None:
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-default-uids-"))
    try:
        work.chmod(0o711)
        node = cluster.start(
            [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "2",
             "--name", "default", "--work-dir", str(work / "node")],
            "node", {"PYTHONPATH": ""},
        )  # fmt: skip
        node.wait_for_line(r"connected to ")
        first, last = map(int, DEFAULT_JOB_UIDS.split("-"))
        assert f"jobs run as uids {first}-{last}, one per cluster" in node.stderr
        assert "WARNING" not in node.stderr, node.stderr
        client = cluster.run_client(
            """
            import json
            from dispy_client import SharedJobCluster

            def whoami():
                import os, time
                time.sleep(0.5)
                return os.getuid()

            with SharedJobCluster(whoami, user="alice") as a, SharedJobCluster(whoami, user="bob") as b:
                ja, jb = a.submit(), b.submit()
                print(json.dumps([ja(), jb()]))
            """
        )
        uid_a, uid_b = json.loads(client.stdout)
        assert first <= uid_a <= last and first <= uid_b <= last and uid_a != uid_b
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_what_a_cluster_left_anywhere_in_tmp_is_gone_before_its_uid_serves_another(
    cluster: Cluster, readable_python: Path
) -> None:
    """A pool of one uid, so the second cluster gets the first's. The first leaves files at depth in a
    sticky directory root made, in a directory of its own there, in /dev/shm and /var/tmp; the second
    finds none of them."""
    uid = JOB_UIDS[1] + 7
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-reclaim-work-"))
    shared = Path(tempfile.mkdtemp(prefix="dispy-sticky-"))  # root's, as /tmp itself
    try:
        work.chmod(0o711)
        shared.chmod(0o1777)
        (shared / "deeper").mkdir(mode=0o1777)
        (shared / "deeper").chmod(0o1777)
        node = cluster.start(
            [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
             "--name", "one-uid", "--work-dir", str(work / "node"), "--job-uids", f"{uid}-{uid}", "--loglevel", "DEBUG"],
            "node", {"PYTHONPATH": ""},
        )  # fmt: skip
        node.wait_for_line(r"connected to ")
        places = [f"{shared}/deeper/x", f"{shared}/own/y", f"/dev/shm/left-{uid}", f"/var/tmp/left-{uid}"]
        program = """
            import json, sys
            from dispy_client import SharedJobCluster

            def leave(places):
                import os
                os.makedirs(os.path.dirname(places[1]), mode=0o755)
                for p in places:
                    with open(p, "w") as f:
                        f.write("secret")
                    os.chmod(p, 0o644)
                return os.getuid()

            def find(places):
                import os
                seen = {}
                for p in places:
                    try:
                        with open(p) as f:
                            seen[p] = f.read()
                    except OSError as exc:
                        seen[p] = type(exc).__name__
                return os.getuid(), seen

            with SharedJobCluster(leave if sys.argv[1] == "leave" else find) as c:
                job = c.submit(%r)
                print(json.dumps(job()), flush=True)
            """ % places  # fmt: skip
        leaver = cluster.client(program, "leaver", args=["leave"])
        assert leaver.wait(60) == 0, cluster.describe()
        assert json.loads(leaver.stdout) == uid
        wait_until(lambda: f"uid {uid} is free again" in node.stderr, 30, "the uid back in the pool")
        for removed in (places[0], f"{shared}/own", places[2], places[3]):
            assert f"removing {removed}, left by uid {uid}" in node.stderr, node.stderr
        finder = cluster.client(program, "finder", args=["find"])
        assert finder.wait(60) == 0, cluster.describe()
        found_uid, seen = json.loads(finder.stdout)
        assert found_uid == uid and set(seen.values()) == {"FileNotFoundError"}, seen
        assert (shared / "deeper").is_dir(), "root's directory stays; only what the uid owned goes"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
        for p in (f"/dev/shm/left-{uid}", f"/var/tmp/left-{uid}"):
            Path(p).unlink(missing_ok=True)


def test_a_uid_with_a_process_or_an_unremovable_file_left_stays_out_of_use(tmp_path: Path) -> None:
    uid = JOB_UIDS[1] + 8
    pool = AccountPool(uid, uid)
    acct = pool.acquire(set())
    squatter = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
    try:
        pool.give_back(acct)
        with pytest.raises(PoolExhausted, match="1 kept out of use"):
            pool.acquire(pool.survey())
    finally:
        squatter.kill()
        squatter.wait()
    stuck = Path(tempfile.mkdtemp(prefix="dispy-stuck-")) / "x"
    try:
        stuck.write_text("left")
        os.chown(stuck, uid, uid)
        if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode != 0:
            pytest.skip("this file system has no immutable files to make one that cannot be removed")
        pool.reclaim({uid})  # no process now, but a file it cannot lose
        with pytest.raises(PoolExhausted):
            pool.acquire(pool.survey())
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
        assert pool.acquire(pool.survey()).uid == uid  # dry: the held uid is looked at again, and is clean
        assert not stuck.exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], capture_output=True, check=False)
        shutil.rmtree(stuck.parent, ignore_errors=True)


def test_removing_a_uids_files_follows_no_symbolic_link() -> None:
    """Its link to root's files goes, not what it points to; root's link into a place of the uid's files is
    not followed; a file of its deep in root's directories goes."""
    uid = JOB_UIDS[1] + 9
    top = Path(tempfile.mkdtemp(prefix="dispy-links-"))  # in /tmp: where the node looks
    elsewhere = Path(tempfile.mkdtemp(prefix="dispy-links-", dir=Path.home()))  # where it does not
    try:
        top.chmod(0o1777)
        (elsewhere / "precious").write_text("root's")
        (elsewhere / "theirs").write_text("the uid's, outside the shared directories")
        os.chown(elsewhere / "theirs", uid, uid)
        (top / "link").symlink_to(elsewhere)
        os.lchown(top / "link", uid, uid)
        (top / "roots-link").symlink_to(elsewhere)
        deep = top / "a" / "b" / "c"
        deep.mkdir(parents=True)
        (deep / "f").write_text("x")
        os.chown(deep / "f", uid, uid)
        from dispy_node.account import remove_files_of

        assert remove_files_of({uid}) == {}
        assert not (top / "link").is_symlink() and (top / "roots-link").is_symlink()
        assert (elsewhere / "precious").read_text() == "root's" and (elsewhere / "theirs").exists()
        assert not (deep / "f").exists() and deep.is_dir()
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
