"""One DNS name for a leader and its standby: nodes and clients try each address the name stands for.

No real DNS: the name is resolved through a hosts file that the test
bind-mounts over /etc/hosts in a mount namespace of their own (`unshare -m`,
as root), where the node and the clients run; the host's /etc/hosts is never
touched. The two schedulers listen on one port at two loopback addresses
(127.X.0.2 and 127.X.0.3, X from the pid, so parallel runs do not meet),
on a real PostgreSQL. The leader is the address the resolver lists first,
and it is stopped (SIGSTOP): it still accepts TCP and says nothing. The node
connected to it asks the other address who leads once it misses a sign of
life; a client started afterwards must give it a short deadline and go on
to the next address.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from procs import Cluster, Proc
from waiting import wait_until

#: jobs, each printed by the client as it ends
CLIENT = """
import logging
from dispy_client import SharedJobCluster

logging.basicConfig(level=logging.INFO)

def compute(i):
    return i * 2

cluster = SharedJobCluster(compute, user="alice", insecure_plaintext=True)
jobs = [cluster.submit_job_id(i, i) for i in range(3)]
for job in jobs:
    job()
    print("done", job.id, job.status, job.result, flush=True)
cluster.close()
"""


def in_namespace(argv: list[str], hosts: Path) -> list[str]:
    """`argv` run where `hosts` is /etc/hosts (a private mount namespace: the host's file is untouched)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh", *argv]


def resolved(name: str, hosts: Path) -> list[str]:
    """The addresses `name` resolves to in the namespace, in the resolver's order."""
    code = f"import socket; print(*dict.fromkeys(a[4][0] for a in socket.getaddrinfo({name!r}, 1, type=socket.SOCK_STREAM)))"
    done = subprocess.run(in_namespace([sys.executable, "-c", code], hosts), capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"a mount namespace needs root here: {done.stderr.strip()}")
    assert done.returncode == 0, done
    return done.stdout.split()


@pytest.mark.soak  # a lease, a stopped leader's silence and three client programs: 20 s and more when busy
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is not installed")
def test_a_name_with_both_addresses_finds_the_new_leader_past_a_stopped_one(pg_dsn: str, cluster: Cluster) -> None:
    x = 10 + os.getpid() % 200
    name = f"schedulers-{os.getpid()}.dispy.test"
    hosts = cluster.workdir / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.{x}.0.2 {name}\n127.{x}.0.3 {name}\n")
    first_ip, second_ip = resolved(name, hosts)
    common = ("--state", pg_dsn, "--lease", "2")
    first = cluster.scheduler("--host", first_ip, *common, name="first")
    first.wait_for_line("leading on")
    port = cluster.address.rsplit(":", 1)[1]
    second = cluster.scheduler("--host", second_ip, "--port", port, *common, name="second")
    wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
    spec = f"{name}:{port}"

    node_argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", spec, "--cpus", "1", "--name", "node",
                 "--work-dir", str(cluster.workdir / "node-work"), "--insecure-plaintext", "--jobs-as-self"]  # fmt: skip
    node = cluster.start(in_namespace(node_argv, hosts), "node")
    node.wait_for_line("connected to ")
    client(cluster, spec, hosts, "before")

    first.popen.send_signal(signal.SIGSTOP)
    try:
        second.wait_for_line("leading on", timeout=60)
        # the node hears nothing from the stopped leader, asks the other address who leads, and goes there
        wait_until(lambda: node.count("connected to ") == 2, timeout=90, what="the node to reach the new leader")
        assert f"and {second_ip}:{port} leads now" in node.stderr, node.stderr
        # a new client: the stopped leader first would eat its whole timeout (10 s) and fail it
        after = client(cluster, spec, hosts, "after")
        assert "trying the next address of" in after.stderr, after.stderr
    finally:
        first.popen.send_signal(signal.SIGCONT)
    assert first.wait(60) == 4, first.describe()  # the old leader learns it was replaced, and steps down


def client(cluster: Cluster, spec: str, hosts: Path, name: str) -> Proc:
    script = cluster.workdir / f"{name}.py"
    script.write_text(CLIENT)
    proc = cluster.start(in_namespace([sys.executable, str(script)], hosts), name, env={"DISPY_SCHEDULER": spec})
    assert proc.wait(90) == 0, cluster.describe()
    ends = Counter(int(m) for m in re.findall(r"^done (\d+) 11 \d+$", proc.stdout, re.M))
    assert ends == Counter(range(3)), proc.stdout
    return proc
