"""Per-job control groups under cgroup v2, in a real cgroup v2 kernel.

This project's machines mount cgroup v1 `memory` and `pids`, which leaves
their v2 hierarchy without those controllers. So this test boots User-Mode
Linux (Debian's `user-mode-linux`: a Linux kernel that runs as an ordinary
process) with this machine's own filesystem as its root (hostfs), mounts a
pure v2 hierarchy there, gives pytest a group of its own as systemd gives a
unit with `Delegate=yes`, and runs every test marked `cgroup` in it: each
must pass on v2, none may skip or fall back to v1 or to no cgroups.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from procs import EXPECT_CGROUP, ROOT
from uml import HOST_ROOT, boot, needs_uml

DISK_SIZE = 4 << 30
BOOT_TIMEOUT = 300  # the inner run takes ~45 s here; a hung kernel must not hang CI

INIT = """#!/bin/sh
# PID 1 of the test kernel: a bare system over the host's files.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc && mount -t sysfs sys /sys && mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
# a disk for temporary files, as on the host (tmpfs pages are no page cache the
# kernel may drop at a group's limit), not at /tmp: the project may be there
mount -t tmpfs -o mode=755 tmpfs /run && mkdir /run/scratch && mount /dev/ubda /run/scratch
chmod 1777 /run/scratch && export TMPDIR=/run/scratch
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
ip link set lo up
mkdir /sys/fs/cgroup/init.scope && echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs
cd {root}
sh -c 'mkdir /sys/fs/cgroup/pytest.service && echo $$ > /sys/fs/cgroup/pytest.service/cgroup.procs &&
       exec env {env}=v2 {python} -m pytest -q -p no:cacheprovider -m cgroup -W error::pytest.PytestUnknownMarkWarning tests'
echo "inner-pytest-exit=$?"
poweroff -f
"""


@needs_uml
@pytest.mark.soak  # a minute or more of a second kernel: make soak, to keep make test under 10 minutes
@pytest.mark.timeout(BOOT_TIMEOUT + 240)  # the guest's whole run, on a busy host: pytest's 120 s per test is too short
def test_every_cgroup_test_passes_under_cgroup_v2(tmp_path: Path) -> None:
    init = tmp_path / "init.sh"
    init.write_text(INIT.format(root=ROOT, python=sys.executable, env=EXPECT_CGROUP))
    disk = tmp_path / "tmp.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)  # sparse: only what the run writes takes space
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True, timeout=60)
    init.chmod(0o755)
    argv = ["mem=1G", f"ubd0={disk}", "quiet", *HOST_ROOT, "rw", f"init={init}"]
    text = boot(argv, tmp_path / "console.txt", BOOT_TIMEOUT)
    rc = re.search(r"inner-pytest-exit=(\d+)", text)
    summary = re.findall(r"^.*\b(?:passed|failed|error|skipped|deselected)\b.* in [\d.]+s.*$", text, re.MULTILINE)
    assert rc is not None and rc.group(1) == "0", text[-20000:]
    assert summary and "passed" in summary[-1], text[-20000:]
    assert not re.search(r"skipped|failed|error", summary[-1]), summary[-1]
    marked = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "cgroup", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    expected = re.search(r"(\d+)/\d+ tests collected", marked)
    assert expected is not None, marked
    assert f"{expected.group(1)} passed" in summary[-1], (summary[-1], marked[-2000:])
