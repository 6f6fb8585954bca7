"""Both daemons' configuration as an operator meets it: the real commands, their exit status and stderr.

A bad value or an unknown key, in the TOML file or on the command line, is
one line naming the key and what it must be, and exit status 78 (EX_CONFIG,
which the systemd units do not restart on); `--check-config` says whether a
configuration is good without starting; `--print-config` shows what would
run, secrets redacted; `--version` on every command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dispy_wire.messages import PROTOCOL_VERSION
from dispy_wire.settings import EX_CONFIG, REDACTED, parse_duration
from dispy_wire.version import VERSION
from procs import ROOT, write_users_file

MODULES = {"dispyscheduler": "dispy_sched.main", "dispynode": "dispy_node.main", "dispyadmin": "dispy_sched.admin"}


def run(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", MODULES[program], *args]
    if program == "dispyscheduler":
        argv += ["--state-dir", str(cwd / "state")]
    elif program == "dispynode":
        argv += ["--jobs-as-self", "--work-dir", str(cwd / "work")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def refused(done: subprocess.CompletedProcess[str], program: str, *expected: str) -> None:
    """Exit 78 and exactly one line on stderr, naming what `expected` says."""
    assert done.returncode == EX_CONFIG, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('port = "9702"', ["config file", "port: expected int, got '9702'"]),
        ("port = 70000", ["port: expected int <= 65535, got 70000"]),
        ("users_file = 5", ["users_file: expected str, got 5"]),
        ('usage_half_life = "a fortnight"', ["usage_half_life", "is not a duration such as 90s, 30m, 1h, 7d"]),
        ("usage_half_life = -5", ["usage_half_life: expected seconds", ">= 0.0, got -5"]),
        ('journal_sync = "sometimes"', ["journal_sync: expected one of full, normal, got 'sometimes'"]),
        ("max_cpu = 3", ["unknown key max_cpu; known keys: host, port"]),
        ('user_max_clusters = "many"', ['user_max_clusters must be a non-negative integer or "unlimited"']),
        ("users = 1", ["unknown key users"]),
    ],
)
def test_scheduler_refuses_a_bad_config_file_value_in_one_line_naming_the_key(
    tmp_path: Path, toml: str, expected: list[str]
) -> None:
    (tmp_path / "scheduler.toml").write_text(toml + "\n")
    done = run("dispyscheduler", "--config", str(tmp_path / "scheduler.toml"), "--check-config", cwd=tmp_path)
    refused(done, "dispyscheduler", *expected)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--loglevel", "LOUD"], ["loglevel: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"]),
        (["--port", "97o2"], ["command line: port: expected int, got '97o2'"]),
        (["--heartbeat", "0"], ["heartbeat: expected seconds", ">= 0.05"]),
        (["--max-cpu", "3"], ["unrecognized arguments: --max-cpu"]),
        (["--accounting-retention", "forever"], ["accounting_retention: 'forever' is not a duration"]),
        (["--close-slice", "0"], ["command line: close_slice: expected int >= 1, got '0'"]),
    ],
)
def test_scheduler_refuses_a_bad_flag_in_one_line_naming_it(tmp_path: Path, flags: list[str], expected: list[str]) -> None:
    refused(run("dispyscheduler", *flags, "--check-config", cwd=tmp_path), "dispyscheduler", *expected)


def test_an_unknown_key_in_a_users_table_is_refused_not_ignored(tmp_path: Path) -> None:
    users = write_users_file(tmp_path / "users.toml", '[users.alice]\nsecret = "a"\nmax_cpu = 3\n')
    done = run("dispyscheduler", "--users-file", str(users), "--check-config", cwd=tmp_path)
    refused(done, "dispyscheduler", "[users.alice]: unknown key max_cpu; known keys:", "max_cpus")
    users = write_users_file(tmp_path / "users.toml", '[users.alice]\nsecret = "a"\nshare = "2"\n')
    done = run("dispyscheduler", "--users-file", str(users), "--check-config", cwd=tmp_path)
    refused(done, "dispyscheduler", "[users.alice]: share: expected number, got '2'")


def test_durations_take_units_and_print_config_shows_the_effective_settings_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "scheduler.toml").write_text('usage_half_life = "1h"\nresult_retention = "2d"\nport = 9800\n')
    argv = ["--config", str(tmp_path / "scheduler.toml"), "--port", "9801", "--secret", "hunter2-secret"]
    done = run("dispyscheduler", *argv, "--accounting-retention", "30d", "--close-slice", "500", "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "close_slice = 500" in lines
    assert "usage_half_life = 3600.0" in lines and "result_retention = 172800.0" in lines
    assert "port = 9801" in lines  # the flag over the file
    assert "accounting_retention = 2592000.0" in lines
    assert f'secret = "{REDACTED}"' in lines and "hunter2-secret" not in done.stdout
    good = run("dispyscheduler", *argv, "--check-config", cwd=tmp_path)
    assert good.returncode == 0 and "configuration is valid" in good.stdout, good.stderr
    assert not (tmp_path / "state").exists()  # checking starts nothing


@pytest.mark.parametrize(
    ("toml", "flags", "expected"),
    [
        ('cpus = "2"', [], ["config file", "cpus: expected int, got '2'"]),
        ("max_cpu = 3", [], ["unknown key max_cpu; known keys: scheduler"]),
        ("heartbeat = 0", [], ["heartbeat: expected seconds", "> 0.0, got 0"]),
        ("kill_grace = true", [], ["kill_grace: expected seconds", "got True"]),
        ("", ["--loglevel", "LOUD"], ["loglevel: expected one of DEBUG"]),
        ("", ["--max-memory", "lots"], ["max_memory: 'lots' is not a size"]),
        ("", ["--service-start", "25:99"], ["service_start:"]),
        ("", ["--serve", "0"], ["serve: expected int >= 1, got '0'"]),
    ],
)
def test_node_refuses_a_bad_setting_in_one_line_naming_it(
    tmp_path: Path, toml: str, flags: list[str], expected: list[str]
) -> None:
    (tmp_path / "node.toml").write_text(toml + "\n")
    done = run("dispynode", "--config", str(tmp_path / "node.toml"), *flags, "--check-config", cwd=tmp_path)
    refused(done, "dispynode", *expected)


def test_node_check_and_print_config(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text('max_job_time = "2h"\ncpus = 1\n')
    argv = ["--config", str(tmp_path / "node.toml"), "--node-secret", "node-hunter2", "--scheduler", "127.0.0.1:9"]
    done = run("dispynode", *argv, "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wall=7200.0" in done.stdout and "cpus = 1" in done.stdout
    assert f"node_secret = '{REDACTED}'" in done.stdout and "node-hunter2" not in done.stdout
    good = run("dispynode", *argv, "--check-config", cwd=tmp_path)
    assert good.returncode == 0 and "configuration is valid" in good.stdout, good.stderr


@pytest.mark.parametrize("program", sorted(MODULES))
def test_every_command_says_its_version_and_protocol(program: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULES[program], "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"{program} (dispy-shared) {VERSION}, protocol {PROTOCOL_VERSION}"


def test_the_client_version_is_the_package_version() -> None:
    import importlib.metadata

    import dispy_client

    assert dispy_client.__version__ == importlib.metadata.version("dispy-shared")
    assert f'version = "{VERSION}"' in (ROOT / "pyproject.toml").read_text()  # the one place it is written


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("7d", 604800), ("-1", -1), ("1e9", 1e9)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1y", "1h30m", "nan", "inf"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
