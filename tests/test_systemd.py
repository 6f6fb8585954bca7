"""Both daemons as systemd services: `Type=notify` with a watchdog (systemd played by a test socket), and the shipped units.

systemd hands a service $NOTIFY_SOCKET (a path or, with a leading @, an
abstract name) and $WATCHDOG_USEC; the service sends READY=1 once it
serves, WATCHDOG=1 at least every half of that interval, STOPPING=1 when it
stops. Here the test binds that socket itself and reads what the real
`dispyscheduler` and `dispynode` send.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from dispy_sched import tls_init
from dispy_wire.sdnotify import Notifier
from dispy_wire.settings import EX_CONFIG
from procs import ROOT, SHARES_JOB_UIDS, Cluster, write_users_file
from test_node_runas import readable_python  # noqa: F401 (a fixture)
from waiting import wait_until

pytestmark = SHARES_JOB_UIDS

WATCHDOG_USEC = 400_000  # a ping every 0.2 s


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        self.got: list[str] = []

    def wait_for(self, field: str, timeout: float = 60.0) -> list[str]:
        """Messages until one with `field` (each a newline-separated list of KEY=VALUE)."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                text = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.got.append(text)
            seen.append(text)
            if field in text.split("\n"):
                return seen
        raise AssertionError(f"no {field} within {timeout} s; got {seen}")


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    address = str(tmp_path / "notify") if request.param == "path" else f"@dispy-test-notify-{os.getpid()}-{id(tmp_path)}"
    fake = FakeSystemd(address)
    yield fake
    fake.sock.close()


def test_scheduler_tells_systemd_it_is_ready_alive_and_stopping(cluster: Cluster, systemd: FakeSystemd) -> None:
    scheduler = cluster.scheduler(env=systemd.env)
    (ready,) = [m for m in systemd.wait_for("READY=1") if "READY=1" in m]
    assert f"STATUS=listening on {cluster.address}; policy fair" in ready.split("\n")
    for _ in range(5):  # again and again while it runs
        systemd.wait_for("WATCHDOG=1")
    scheduler.popen.send_signal(signal.SIGTERM)
    systemd.wait_for("STOPPING=1")
    assert scheduler.wait(20) == 0


def test_node_tells_systemd_it_is_ready_alive_and_draining(cluster: Cluster, systemd: FakeSystemd) -> None:
    cluster.scheduler()
    node = cluster.node(env=systemd.env, name="n1")
    (ready,) = [m for m in systemd.wait_for("READY=1") if "READY=1" in m]
    assert f"STATUS=node 'n1' offers 2 cpus to {cluster.address}" in ready.split("\n")
    # then what it is doing, kept current
    assert status_lines(systemd, rf"^STATUS=0 of 2 offered cpus busy, 0 clusters loaded; connected to {cluster.address}$")
    node.popen.send_signal(signal.SIGUSR1)
    (draining,) = [m for m in systemd.wait_for("STOPPING=1") if "STOPPING=1" in m]
    assert "STATUS=draining: running jobs finish, no new ones" in draining.split("\n")
    assert node.wait(20) == 0


def test_watchdog_meant_for_another_process_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    def systemd_says(pid: int) -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", "@x")
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        monkeypatch.setenv("WATCHDOG_PID", str(pid))

    systemd_says(os.getpid() + 1)
    assert Notifier.from_env().watchdog_interval is None
    systemd_says(os.getpid())
    assert Notifier.from_env().watchdog_interval == 0.5
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)  # not for our children
    Notifier.from_env().ready("outside systemd: nothing is sent, nothing fails")


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian's systemd package)")
DEPLOY = ROOT / "deploy" / "systemd"
#: where the shipped units expect the virtualenv (`python3 -m venv /opt/dispy`)
VENV_BIN = "/opt/dispy/bin"
#: what `systemd-analyze security` may rate each unit at most: the scheduler's aim, and the node's
#: score as shipped (root, with the capabilities that start jobs as other uids: see its comments)
EXPOSURE = {"dispyscheduler": 2.0, "dispynode": 3.1}


def unit_text(unit: str) -> str:
    """The shipped unit, its ExecStart= pointed at this virtualenv's script instead of /opt/dispy's."""
    text = (DEPLOY / f"{unit}.service").read_text()
    assert f"ExecStart={VENV_BIN}/{unit} " in text
    return text.replace(f"{VENV_BIN}/{unit} ", f"{Path(sys.executable).with_name(unit)} ")


def unit_setting(unit: str, key: str) -> list[str]:
    """Every value of `key=` in the shipped unit."""
    text = (DEPLOY / f"{unit}.service").read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


@needs_analyze
@pytest.mark.parametrize("unit", ["dispyscheduler", "dispynode"])
def test_shipped_units_are_valid_systemd_units(unit: str, tmp_path: Path) -> None:
    """systemd accepts every line of the units in deploy/systemd (an unknown key is only a warning at start)."""
    (tmp_path / f"{unit}.service").write_text(unit_text(unit))
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(tmp_path / f"{unit}.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


@needs_analyze
@pytest.mark.parametrize("unit", ["dispyscheduler", "dispynode"])
def test_shipped_units_are_hardened_as_systemd_analyze_security_rates_them(unit: str, tmp_path: Path) -> None:
    (tmp_path / f"{unit}.service").write_text(unit_text(unit))
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(tmp_path / f"{unit}.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= EXPOSURE[unit], done.stdout


@pytest.mark.parametrize("unit", ["dispyscheduler", "dispynode"])
def test_units_do_not_restart_on_a_refused_configuration_and_allow_enough_descriptors(unit: str) -> None:
    assert unit_setting(unit, "RestartPreventExitStatus") == [str(EX_CONFIG)]
    assert unit_setting(unit, "Restart") == ["on-failure"]
    assert int(unit_setting(unit, "LimitNOFILE")[0]) >= 65536


@pytest.mark.skipif(os.geteuid() != 0, reason="the example node config gives each cluster a uid of its own: root only")
def test_shipped_example_configs_are_accepted_as_they_are(tmp_path: Path) -> None:
    from dispy_node.main import build_parser, load_config
    from dispy_sched.config import config_from_args

    deploy = ROOT / "deploy" / "systemd"

    def fail(message: str) -> NoReturn:
        raise AssertionError(message)

    tls = tmp_path / "tls"  # what `dispyscheduler tls init /etc/dispy/tls` makes there
    tls_init.init(tls, ["scheduler.example.lan"], [], [], 30)
    node_toml = (deploy / "node.toml.example").read_text().replace("/etc/dispy/tls", str(tls))
    (tmp_path / "node.toml").write_text(node_toml)
    node, _, _ = load_config(build_parser().parse_args(["--config", str(tmp_path / "node.toml")]), fail)
    assert node.accounts is not None and node.caps.memory == 2 << 30 and node.cpus >= 1
    assert node.tls is not None and node.tls.ca == str(tls / "ca.pem")
    users = (deploy / "users.toml.example").read_text()
    scheduler_toml = (deploy / "scheduler.toml.example").read_text()
    (tmp_path / "users.toml").write_text(users)
    (tmp_path / "users.toml").chmod(0o600)  # as the example's comment tells the operator
    scheduler_toml = scheduler_toml.replace("/etc/dispy/users.toml", str(tmp_path / "users.toml"))
    (tmp_path / "scheduler.toml").write_text(scheduler_toml.replace("/etc/dispy/tls", str(tls)))
    # the key as the unit passes it (LoadCredential=, then --tls-key %d/scheduler.key)
    argv = ["--config", str(tmp_path / "scheduler.toml"), "--tls-key", str(tls / "scheduler.key")]
    cfg = config_from_args([*argv, "--state-dir", str(tmp_path / "state")])
    assert cfg.users and cfg.node_verifier and cfg.policy == "fair"
    assert cfg.server_tls() is not None


def test_node_takes_its_secret_from_a_systemd_credential(cluster: Cluster, tmp_path: Path) -> None:
    """dispynode.service's LoadCredential=node-secret:...: the secret is a file in $CREDENTIALS_DIRECTORY."""
    cluster.scheduler(env={"DISPY_NODE_SECRET": "by-credential"})
    good, bad = tmp_path / "good", tmp_path / "bad"
    for directory, secret in ((good, "by-credential\n"), (bad, "wrong\n")):
        directory.mkdir(mode=0o700)
        (directory / "node-secret").write_text(secret)
        (directory / "node-secret").chmod(0o400)
    refused = cluster.node(name="wrong", wait=False, env={"CREDENTIALS_DIRECTORY": str(bad)})
    assert refused.wait(30) == 2, refused.describe()
    node = cluster.node(name="right", env={"CREDENTIALS_DIRECTORY": str(good)})
    assert "by-credential" not in " ".join(node.argv)


def status_lines(systemd: FakeSystemd, pattern: str, timeout: float = 60.0) -> str:
    """Reads notifications until a STATUS= matches `pattern`; returns that status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in systemd.wait_for("WATCHDOG=1", timeout=max(0.1, deadline - time.monotonic())):
            for line in message.split("\n"):
                if line.startswith("STATUS=") and re.search(pattern, line):
                    return line.removeprefix("STATUS=")
    raise AssertionError(f"no STATUS= matching {pattern!r} within {timeout} s; got {systemd.got[-5:]}")


def unit_command(unit: str, etc: Path, credentials: Path, runtime: Path) -> list[str]:
    """The unit's ExecStart= as systemd would run it: %d its credentials, /etc/dispy under `etc`,
    its RuntimeDirectory= `runtime`."""
    (command,) = [line.split("=", 1)[1] for line in unit_text(unit).splitlines() if line.startswith("ExecStart=")]
    paths = {"%d": credentials, "/etc/dispy": etc, f"/run/{unit}": runtime}
    return [re.sub("|".join(paths), lambda m: str(paths[m.group(0)]), arg) for arg in command.split()]


def test_the_scheduler_runs_as_its_unit_starts_it_and_keeps_its_status_current(
    cluster: Cluster, systemd: FakeSystemd, tmp_path: Path
) -> None:
    """The shipped ExecStart=, TLS files by LoadCredential= (0400 copies in %d), the users file as ExecStartPre=
    copies it, the example config; STATUS= updates."""
    from dispy_wire.verifier import Verifier

    etc, credentials, runtime = tmp_path / "etc", tmp_path / "credentials", tmp_path / "run"
    tls_init.init(etc / "tls", ["127.0.0.1"], [], [], 30)
    config = (DEPLOY / "scheduler.toml.example").read_text().replace("/etc/dispy", str(etc))
    config = re.sub(r'^host = .*$', 'host = "127.0.0.1"', config, flags=re.M)
    config = re.sub(r"^port = .*$", "port = 0", config, flags=re.M)
    config = re.sub(r"^node_verifier = .*$", f'node_verifier = "{Verifier.from_secret("node-s", 4096)}"', config, flags=re.M)
    (etc / "scheduler.toml").write_text(config)
    write_users_file(etc / "users.toml", '[users.alice]\nsecret = "a"\n')
    credentials.mkdir(mode=0o700)  # what LoadCredential= makes of root's files
    runtime.mkdir(mode=0o700)  # RuntimeDirectory=, and ExecStartPre='s copy of the users file
    copies = {credentials / "scheduler.key": etc / "tls" / "scheduler.key",
              credentials / "scheduler.pem": etc / "tls" / "scheduler.pem", runtime / "users.toml": etc / "users.toml"}
    for copy, source in copies.items():
        copy.write_bytes(source.read_bytes())
        copy.chmod(0o400)
    argv = unit_command("dispyscheduler", etc, credentials, runtime)
    env = {**systemd.env, "STATE_DIRECTORY": str(tmp_path / "state")}
    scheduler = cluster.start(argv, "scheduler", env)
    match = scheduler.wait_for_line(r"listening on (\S+):(\d+)")
    cluster.address = f"{match.group(1)}:{match.group(2)}"
    assert status_lines(systemd, r"^STATUS=0 nodes, 0/0 CPUs busy, 0 jobs queued, 0 users active")
    cluster.node("--tls-ca", str(etc / "tls" / "ca.pem"), "--node-secret", "node-s", name="n1", cpus=2)
    assert status_lines(systemd, r"^STATUS=1 nodes, 0/2 CPUs busy, 0 jobs queued")
    assert (tmp_path / "state" / "journal.sqlite3").exists()
    scheduler.popen.send_signal(signal.SIGTERM)
    assert scheduler.wait(30) == 0
    # a refused configuration ends with the status the unit does not restart on
    (runtime / "users.toml").chmod(0o600)
    write_users_file(runtime / "users.toml", '[users.alice]\nsecret = "a"\nmax_cpu = 3\n')
    refused = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == EX_CONFIG and "unknown key max_cpu" in refused.stderr, refused.stderr


def test_a_root_node_within_its_units_capabilities_runs_cancels_and_clears_jobs_of_their_own_uid(
    cluster: Cluster, readable_python: Path  # noqa: F811 (the fixture imported above)
) -> None:
    """The node unit's CapabilityBoundingSet= (and NoNewPrivileges=) are enough: setpriv applies them as systemd would."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to apply the unit's capability bounding set")
    caps = unit_setting("dispynode", "CapabilityBoundingSet")[0].split()
    bounding = ",".join(["-all", *(f"+{cap.removeprefix('CAP_').lower()}" for cap in caps)])
    cluster.scheduler()
    work = Path(tempfile.mkdtemp(prefix="dispy-unit-caps-"))
    try:
        work.chmod(0o711)
        argv = ["setpriv", f"--bounding-set={bounding}", "--no-new-privs", "--", str(readable_python), "-m",
                "dispy_node.main", "--scheduler", cluster.address, "--cpus", "2", "--name", "capped",
                "--work-dir", str(work / "node"), "--job-uids", "2100000000-2100000009"]  # fmt: skip
        node = cluster.start(argv, "node", {"PYTHONPATH": ""})
        node.wait_for_line(r"connected to ")
        client = cluster.run_client(
            """
            import json
            from dispy_client import SharedJobCluster, DispyJob

            def work(seconds):
                import os, time
                open("left-behind", "w").write("x")  # in the job's directory: the node clears it
                time.sleep(seconds)
                return os.getuid()

            with SharedJobCluster(work, user="alice") as cluster:
                slow, quick = cluster.submit(600), cluster.submit(0)
                uid = quick()
                cluster.cancel(slow)
                slow()
                print(json.dumps([uid, slow.status == DispyJob.Cancelled, quick.status == DispyJob.Finished]))
            """
        )
        uid, cancelled, finished = json.loads(client.stdout)
        assert 2100000000 <= uid <= 2100000009 and cancelled and finished, client.stdout
        clusters = work / "node"
        wait_until(lambda: not any(p.is_dir() for p in clusters.iterdir()), what="the cluster's files cleared")
        assert " ERROR " not in node.stderr and "Permission" not in node.stderr, node.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
