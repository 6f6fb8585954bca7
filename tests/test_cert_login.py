"""Login by certificate, with real processes: a user and a node that hold a certificate from the
scheduler's CA (made by `dispyscheduler tls init`) and no secret run jobs; a certificate logs in
only as the name and role it names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from dispy_sched.config import ConfigError, config_from_args
from dispy_wire.handshake import Role
from dispy_wire.tls import NODE_UNIT, USER_UNIT, file_identity
from dispy_wire.verifier import Verifier
from procs import TEST_ITERATIONS, Cluster, Proc, write_users_file
from waiting import wait_until

# alice and bob may log in by certificate (alice has no secret at all); carol only by her secret
USERS = """
[users.alice]
certificate = true

[users.bob]
certificate = true
secret = "bob-secret"

[users.carol]
secret = "carol-secret"
"""

CLIENT = """
    import json, sys
    import dispy_client as dispy
    try:
        with dispy.SharedJobCluster(lambda x: x * x, timeout=10, **json.loads(sys.argv[1])) as cluster:
            print("USER", cluster.user)
            print("RESULTS", [cluster.submit(i)() for i in range(4)])
    except dispy.DispyError as exc:
        print(type(exc).__name__ + ":", exc)
"""


def tls_init(directory: Path) -> Path:
    made = subprocess.run(
        [sys.executable, "-m", "dispy_sched.main", "tls", "init", str(directory),
         "--node", "n1", "--user", "alice", "--user", "bob", "--user", "carol"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "(CN=n1, OU=dispy-node)" in made.stdout and "(CN=alice, OU=dispy-user)" in made.stdout
    return directory


@pytest.fixture
def pki(cluster: Cluster) -> Path:
    """`tls init`'s files, and a scheduler requiring client certificates, whose node secret no node here knows."""
    d = tls_init(cluster.workdir / "tls")
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    node_verifier = str(Verifier.from_secret("node-secret-nobody-here-has", TEST_ITERATIONS))
    cluster.scheduler(
        "--users-file", str(users), "--node-verifier", node_verifier,
        "--tls-cert", str(d / "scheduler.pem"), "--tls-key", str(d / "scheduler.key"),
        "--tls-ca", str(d / "ca.pem"), "--tls-require-client-cert",
    )  # fmt: skip
    return d


def client(cluster: Cluster, d: Path, cert: str, **kwargs: Any) -> Proc:
    options = {"tls_ca": str(d / "ca.pem"), "certfile": str(d / f"{cert}.pem"), "keyfile": str(d / f"{cert}.key"), **kwargs}
    proc = cluster.client(CLIENT, cert, args=[json.dumps(options)])
    assert proc.wait(90) == 0, cluster.describe()
    return proc


def node_flags(d: Path, cert: str) -> list[str]:
    return ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / f"{cert}.pem"), "--tls-key", str(d / f"{cert}.key")]


def test_the_users_file_says_who_may_log_in_by_certificate(tmp_path: Path) -> None:
    cfg = config_from_args(["--users-file", str(write_users_file(tmp_path / "users.toml", USERS))])
    assert [cfg.certificate_allowed(Role.CLIENT, n) for n in ("alice", "bob", "carol", "dave")] == [True, True, False, False]
    assert cfg.certificate_allowed(Role.NODE, "any-node")  # any node certificate from the CA, as any node knowing the secret
    assert cfg.verifier_for(Role.CLIENT, "alice") is None  # certificate only: no secret logs her in
    assert config_from_args([]).certificate_allowed(Role.CLIENT, "dave")  # no users file: every name, as with --secret
    for table, error in [
        ('certificate = "yes"', "certificate: expected bool, got 'yes'"),
        ("share = 2", "needs verifier = \"SCRAM-SHA-256$...\" (dispyadmin user add writes it), or certificate = true"),
    ]:
        path = write_users_file(tmp_path / "bad.toml", f"[users.erin]\n{table}\n")
        with pytest.raises(ConfigError, match=re.escape(error)):
            config_from_args(["--users-file", str(path)])


def test_tls_init_names_the_role_of_each_certificate(tmp_path: Path) -> None:
    d = tls_init(tmp_path / "tls")
    assert (file_identity(str(d / "node-n1.pem")).name, file_identity(str(d / "node-n1.pem")).units) == ("n1", (NODE_UNIT,))
    assert (file_identity(str(d / "user-alice.pem")).name, file_identity(str(d / "user-alice.pem")).units) == ("alice", (USER_UNIT,))
    scheduler = x509.load_pem_x509_certificate((d / "scheduler.pem").read_bytes())
    assert scheduler.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME) == []  # it logs in as nobody


def test_a_user_and_a_node_run_jobs_logging_in_by_certificate_only(cluster: Cluster, pki: Path) -> None:
    cluster.node(*node_flags(pki, "node-n1"), name="n1")  # no node secret: the certificate is its login
    proc = client(cluster, pki, "user-alice")  # no secret, no user: both come from the certificate
    assert "USER alice" in proc.stdout and "RESULTS [0, 1, 4, 9]" in proc.stdout, cluster.describe()
    sched = cluster.procs[0]
    assert "node n1 connected from" in sched.stderr and "(certificate CN=n1)" in sched.stderr
    assert "client alice connected from" in sched.stderr and "(certificate CN=alice)" in sched.stderr


def test_a_node_logging_in_by_certificate_takes_its_name_from_it(cluster: Cluster, pki: Path) -> None:
    # `cluster.node` passes --name; the daemon's own default is what an operator gets
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
            "--work-dir", str(cluster.workdir / "n1-work"), *node_flags(pki, "node-n1")]  # fmt: skip
    if os.geteuid() == 0:  # as in `cluster.node`: this machine's Python is not `nobody`'s to run
        argv.append("--jobs-as-self")
    node = cluster.start(argv, "bare-node")
    node.wait_for_line(r"connected to ")
    assert "node n1 connected from" in cluster.procs[0].stderr


def test_a_certificate_for_bob_cannot_log_in_as_alice(cluster: Cluster, pki: Path) -> None:
    proc = client(cluster, pki, "user-bob", user="alice")
    assert (
        "AuthenticationError: scheduler " + cluster.address + " refused the login of user 'alice' by certificate: "
        "certificate names user 'bob', not 'alice'"
    ) in proc.stdout, proc.stdout
    sched = cluster.procs[0]
    wait_until(lambda: "certificate from unauthenticated peer claiming 'alice'" in sched.stderr, what="the refusal logged")
    assert sched.count("certificate names user 'bob', not 'alice'", "stderr") == 1
    assert "client alice connected" not in sched.stderr


def test_a_user_certificate_cannot_log_in_as_a_node(cluster: Cluster, pki: Path) -> None:
    node = cluster.node(*node_flags(pki, "user-alice"), name="alice", wait=False)
    assert node.wait(60) == 2, cluster.describe()  # refused for good: redialing cannot change the certificate
    assert (
        "refused node 'alice': certificate CN=alice (OU=dispy-user) is not a node certificate: "
        "logging in as a node needs OU=dispy-node (certificate); giving up"
    ) in node.stderr, node.stderr
    assert "node alice connected" not in cluster.procs[0].stderr


def test_a_user_the_users_file_does_not_let_in_by_certificate_gets_the_one_login_failure(cluster: Cluster, pki: Path) -> None:
    carol = client(cluster, pki, "user-carol")
    assert f"AuthenticationError: scheduler {cluster.address} rejected user 'carol': unknown user" in carol.stdout, carol.stdout
    # bob has both: his secret works as before, on the connection his certificate opened
    cluster.node(*node_flags(pki, "node-n1"), name="n1")
    bob = client(cluster, pki, "user-bob", user="bob", secret="bob-secret")
    assert "USER bob" in bob.stdout and "RESULTS [0, 1, 4, 9]" in bob.stdout, cluster.describe()
