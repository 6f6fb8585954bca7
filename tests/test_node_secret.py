"""Where the node secret comes from (flags, config file, secret file, systemd credential, environment)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

import pytest

from dispy_wire.settings import ConfigError
from dispy_node import node_secret
from dispy_node.main import build_parser


class Refused(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise Refused(message)


def choose(argv: list[str], file: dict[str, str] | None = None) -> str:
    args: argparse.Namespace = build_parser().parse_args(argv)
    return node_secret.choose(args, file or {}, fail)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    path.chmod(0o600)
    return path


def test_each_source_in_its_order(secret_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_secret, "_env_handed_over", None)
    monkeypatch.setenv("DISPY_NODE_SECRET", "from-env")
    assert choose([]) == "from-env"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "node-secret").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert choose([]) == "from-credential"
    assert choose([], {"secret_file": str(secret_file)}) == "from-file"  # one line; its newline is not part of it
    assert choose([], {"node_secret": "from-config"}) == "from-config"
    assert choose(["--secret-file", str(secret_file)], {"node_secret": "from-config"}) == "from-file"  # flags first
    assert choose(["--node-secret", "from-flag"], {"secret_file": str(secret_file)}) == "from-flag"


def test_a_secret_given_twice_at_one_level_is_refused(secret_file: Path) -> None:
    with pytest.raises(Refused, match="flags: give the node secret once"):
        choose(["--node-secret", "x", "--secret-file", str(secret_file)])
    with pytest.raises(Refused, match="the config file: give the node secret once"):
        choose([], {"node_secret": "x", "secret_file": str(secret_file)})


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_secret_file_others_may_read_or_change_is_refused(secret_file: Path, mode: int) -> None:
    secret_file.chmod(mode)
    with pytest.raises(Refused, match=f"has mode {mode:04o}: others than its owner.*chmod 600"):
        choose(["--secret-file", str(secret_file)])


def test_an_empty_or_missing_secret_file_is_refused(secret_file: Path, tmp_path: Path) -> None:
    secret_file.write_text("\n")
    with pytest.raises(Refused, match="is empty"):
        choose(["--secret-file", str(secret_file)])
    with pytest.raises(Refused, match="cannot read secret file"):
        choose(["--secret-file", str(tmp_path / "none")])


def test_the_secret_flag_is_taken_off_the_command_line_and_may_not_be_abbreviated() -> None:
    argv = ["-m", "dispy_node.main", "--node-secret", "s", "--name", "n", "--node-secret=t", "--cpus", "1"]
    assert node_secret._without_secret_flag(argv) == ["-m", "dispy_node.main", "--name", "n", "--cpus", "1"]
    with pytest.raises(ConfigError, match="unrecognized arguments: --node-sec"):  # not taken as --node-secret
        build_parser().parse_args(["--node-sec", "s"])
