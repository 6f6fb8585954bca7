"""Files the client writes: what jobs send (`dest_path`) and the recover file, readable by the user alone
and never written through a symbolic link someone planted."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dispy_client.private_files import UnsafeName, open_private, save_sent_file
from procs import Cluster


def test_a_sent_file_is_saved_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = save_sent_file(str(tmp_path / "made"), "out.txt", b"data")
    finally:
        os.umask(old)
    assert Path(path).read_bytes() == b"data" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "made") == ["out.txt"], "no temporary file is left"


def test_a_planted_symlink_is_not_followed_and_a_planted_hard_link_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out.txt").symlink_to(victim)
    with pytest.raises(UnsafeName, match="is a symbolic link"):
        save_sent_file(str(dest), "out.txt", b"overwritten")
    assert victim.read_text() == "precious" and (dest / "out.txt").is_symlink()
    os.link(victim, dest / "hard.txt")
    save_sent_file(str(dest), "hard.txt", b"new")
    assert victim.read_text() == "precious" and (dest / "hard.txt").read_bytes() == b"new"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_a_name_that_is_not_one_plain_component_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeName):
        save_sent_file(str(tmp_path), name, b"x")


def test_the_recover_file_is_0600_and_not_opened_through_a_symlink(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with open_private(str(tmp_path / "r.jsonl"), append=False) as f:
            f.write("x\n")
        (tmp_path / "wide").write_text("")
        (tmp_path / "wide").chmod(0o644)
        with open_private(str(tmp_path / "wide"), append=True):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "wide").stat().st_mode) == 0o600
    (tmp_path / "link").symlink_to(tmp_path / "r.jsonl")
    with pytest.raises(OSError):
        open_private(str(tmp_path / "link"), append=False)
    assert (tmp_path / "r.jsonl").read_text() == "x\n"


def test_a_job_cannot_make_the_client_write_through_a_planted_link(cluster: Cluster) -> None:
    """Real processes: a job sends `report.txt` and `plain.txt`; `report.txt` in dest_path is a planted
    link to another of the user's files, which keeps its contents; the recover file is 0600."""
    cluster.scheduler()
    cluster.node(cpus=1)
    dest = cluster.workdir / "received"
    dest.mkdir()
    victim = cluster.workdir / "victim.txt"
    victim.write_text("precious")
    (dest / "report.txt").symlink_to(victim)
    recover = cluster.workdir / "recover.jsonl"
    client = cluster.run_client(
        f"""
        import os, stat
        from dispy_client import SharedJobCluster

        def compute():
            for name in ("report.txt", "plain.txt"):
                with open(name, "w") as f:
                    f.write("sent by the job")
                os.chmod(name, 0o666)
                assert dispy_send_file(name) == 0
            return 0

        os.umask(0o022)
        with SharedJobCluster(compute, dest_path={str(dest)!r}, recover_file={str(recover)!r}) as c:
            print(oct(stat.S_IMODE(os.stat({str(recover)!r}).st_mode)))
            job = c.submit()
            assert job() == 0, (job.status, job.exception)
        """
    )
    assert client.stdout.split() == ["0o600"], client.stdout
    assert victim.read_text() == "precious" and (dest / "report.txt").is_symlink()
    assert "is a symbolic link: not followed" in client.stderr, client.stderr
    plain = dest / "plain.txt"
    assert plain.read_text() == "sent by the job" and stat.S_IMODE(plain.stat().st_mode) == 0o600
