"""A co-tenant's job against another user's jobs, under a root node's default settings.

The node is started as root with no isolation option at all (no --job-uids,
no --shared-run-as, no --jobs-as-self: `Cluster.node` adds the last as root,
so this test starts the node itself). Each cluster then runs as a uid of its
own from the default range. Mallory's job is told where alice's running jobs
are (their pids and the descriptor of each one's channel to its zygote; an
attacker could find both by listing /proc and guessing small numbers) and
tries everything a process of another uid might: reading their environment,
working directory, memory and descriptors, signalling them one by one and
all at once, moving into their control groups, and writing a record on
their channel. Every try must fail, and alice's jobs finish with their
results.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from dispy_client import DispyJob
from dispy_node.account import DEFAULT_JOB_UIDS
from procs import EXPECT_CGROUP, SHARES_JOB_UIDS, Cluster, in_cgroup_v2
from test_node_runas import readable_python  # noqa: F401  (the fixture)

pytestmark = SHARES_JOB_UIDS

#: errors that mean "not allowed" or "no such process": what every try must end in
REFUSED = {"EACCES", "EPERM", "ESRCH"}


def test_a_cotenant_job_cannot_reach_another_users_jobs_under_default_settings(
    cluster: Cluster, readable_python: Path  # noqa: F811
) -> None:
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-cotenant-"))
    token = secrets.token_hex(6)
    shm = Path("/dev/shm")
    try:
        work.chmod(0o711)
        argv = [str(readable_python), "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "3",
                "--name", "cotenant", "--work-dir", str(work / "node")]  # fmt: skip
        assert not {"--job-uids", "--shared-run-as", "--jobs-as-self"} & set(argv)
        if os.environ.get(EXPECT_CGROUP) == "v2":
            argv = in_cgroup_v2(argv, "dispynode-cotenant.service")
        node = cluster.start(argv, "node", {"PYTHONPATH": ""})
        node.wait_for_line(r"connected to ")
        first, last = map(int, DEFAULT_JOB_UIDS.split("-"))
        assert f"jobs run as uids {first}-{last}, one per cluster" in node.stderr, node.stderr
        has_groups = "per-job cgroups under" in node.stderr
        assert has_groups or not os.environ.get(EXPECT_CGROUP), node.stderr
        client = cluster.run_client(
            """
            import json, os, time
            from dispy_client import SharedJobCluster, DispyJob

            TOKEN = %r

            def work(x, token):
                import json, os, time
                from dispy_node import channel
                me = {"pid": os.getpid(), "channel": channel._fd, "uid": os.getuid()}
                path = f"/dev/shm/dispy-cotenant-{token}-alice-{x}"
                with open(path + ".tmp", "w") as f:
                    json.dump(me, f)
                os.chmod(path + ".tmp", 0o644)
                os.rename(path + ".tmp", path)
                deadline = time.monotonic() + 120
                while not os.path.exists(f"/dev/shm/dispy-cotenant-{token}-go") and time.monotonic() < deadline:
                    time.sleep(0.05)
                return [2 * x, os.getpid(), os.getuid()]

            def attack(targets, kill_all):
                import errno, os, signal
                import msgpack
                from dispy_wire.framing import encode_frame
                if kill_all:
                    os.kill(-1, signal.SIGKILL)  # every process it may signal (on Linux, not itself)
                    return "sent"

                def attempt(what, fn):
                    try:
                        fn()
                        tries[what] = "done"
                    except OSError as exc:
                        tries[what] = errno.errorcode.get(exc.errno, str(exc.errno))

                def read(path):
                    with open(path, "rb") as f:
                        f.read(1)

                def join_group(pid):
                    with open(f"/proc/{pid}/cgroup") as f:
                        lines = f.read().splitlines()
                    line = next((l for l in lines if ":memory:" in l), None) or next(l for l in lines if l.startswith("0::"))
                    root = "/sys/fs/cgroup/memory" if ":memory:" in line else "/sys/fs/cgroup"
                    with open(root + line.split(":", 2)[2].strip() + "/cgroup.procs", "w") as f:
                        f.write(str(os.getpid()))

                def write_record(pid, fd):
                    record = msgpack.packb({"kind": "provisional", "result": b"forged", "mac": b""})
                    with open(f"/proc/{pid}/fd/{fd}", "wb", buffering=0) as f:
                        f.write(encode_frame(record))

                tries = {}
                for t in targets:
                    pid, fd = t["pid"], t["channel"]
                    attempt(f"{pid} environ", lambda: read(f"/proc/{pid}/environ"))
                    attempt(f"{pid} cwd", lambda: os.listdir(f"/proc/{pid}/cwd"))
                    attempt(f"{pid} mem", lambda: read(f"/proc/{pid}/mem"))
                    attempt(f"{pid} fd", lambda: os.listdir(f"/proc/{pid}/fd"))
                    attempt(f"{pid} channel", lambda: write_record(pid, fd))
                    attempt(f"{pid} cgroup", lambda: join_group(pid))
                    attempt(f"{pid} kill", lambda: os.kill(pid, signal.SIGKILL))
                return {"uid": os.getuid(), "tries": tries}

            with SharedJobCluster(work, user="alice") as alice, SharedJobCluster(attack, user="mallory") as mallory:
                jobs = [alice.submit(i, TOKEN) for i in range(2)]
                paths = [f"/dev/shm/dispy-cotenant-{TOKEN}-alice-{i}" for i in range(2)]
                deadline = time.monotonic() + 60
                while not all(map(os.path.exists, paths)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                targets = []
                for path in paths:
                    with open(path) as f:
                        targets.append(json.load(f))
                probe = mallory.submit(targets, False)
                probe()
                killer = mallory.submit([], True)
                killer()
                open(f"/dev/shm/dispy-cotenant-{TOKEN}-go", "w").close()
                print(json.dumps({"targets": targets, "alice": [j() for j in jobs], "statuses": [j.status for j in jobs],
                                  "mallory": probe.result, "mallory_status": probe.status,
                                  "exception": probe.exception}))
            """
            % token,
            timeout=180,
        )
        out = json.loads(client.stdout)
        assert out["mallory_status"] == DispyJob.Finished, out
        mallory, targets = out["mallory"], out["targets"]
        # alice's jobs were untouched: both finished, with their results, in the processes mallory aimed at
        assert out["statuses"] == [DispyJob.Finished] * 2, out
        assert [r[0] for r in out["alice"]] == [0, 2], out
        assert [r[1] for r in out["alice"]] == [t["pid"] for t in targets], out
        uid_a = targets[0]["uid"]
        assert first <= uid_a <= last and first <= mallory["uid"] <= last and uid_a != mallory["uid"], out
        assert all(t["channel"] >= 0 for t in targets), out  # each job had its channel open
        tries = mallory["tries"]
        assert len(tries) == 7 * len(targets), tries
        for what, outcome in tries.items():
            if what.endswith("cgroup") and not has_groups:
                # no per-job groups: alice's job is in the node's group, which only root may write to
                assert outcome in REFUSED | {"EROFS"}, tries
            else:
                assert outcome in REFUSED, tries
        assert {tries[f"{t['pid']} environ"] for t in targets} == {"EACCES"}, tries
        assert {tries[f"{t['pid']} kill"] for t in targets} == {"EPERM"}, tries
    finally:
        for path in shm.glob(f"dispy-cotenant-{token}-*"):
            path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)

