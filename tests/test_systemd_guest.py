"""The shipped units as they run under a real systemd, as PID 1 of a User-Mode Linux kernel.

tests/test_systemd.py checks the units with systemd-analyze and plays
systemd's notification socket itself; this machine's PID 1 is no systemd.
Here Debian's `linux.uml` boots with this machine's root read-only (hostfs)
under a memory overlay (tests/uml.py's OVERLAY_ROOT: nothing the guest
writes reaches the host, but one scratch directory under tmp_path), and
execs /lib/systemd/systemd. Its one job, dispy-guest.service, runs
tests/guest_systemd_units.py with pytest: install and start both units,
then check them as an operator would (systemctl, /proc, the journal), and
power the kernel off. Nothing leaves the guest's loopback: it has no
network device.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from procs import ROOT
from uml import HOST_ROOT, OVERLAY_ROOT, boot, needs_uml

BOOT_TIMEOUT = 600  # systemd boots in ~50 s here and the checks take ~2 min; a hung kernel must not hang CI
GUEST_CHECKS = "tests/guest_systemd_units.py"
#: where the guest sees the host's scratch directory
SHARE = "/dispy-share"

GUEST_UNIT = """\
[Unit]
Description=checks of the shipped dispy-shared units ({checks})
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
WorkingDirectory={root}
Environment=DISPY_GUEST_SHARE={share}
ExecStart=/bin/sh -c '{python} -m pytest -v -p no:cacheprovider -p no:randomly -o timeout=300 {checks} >{share}/pytest.txt 2>&1; \\
    echo $$? >{share}/exit'
StandardOutput=journal+console
"""

INIT = """#!/bin/sh
# PID 1 of the test kernel until systemd: its root an overlay of the host's, then systemd in it.
{overlay_root}
cp /run/root{share}/dispy-guest.service /run/root/etc/systemd/system/
: >/run/root/etc/fstab  # the host's mounts are not the guest's
cd /run/root && mkdir -p oldroot && pivot_root . oldroot
exec chroot . /bin/sh -c 'umount -l /oldroot && exec /lib/systemd/systemd --unit=dispy-guest.service'
echo "guest-init: no systemd"
poweroff -f
"""

#: host paths the guest writes in its overlay (units, configuration, state): never on the host
HOST_PATHS = ["/etc/dispy", "/etc/systemd/system/dispyscheduler.service", "/etc/systemd/system/dispynode.service",
              "/var/lib/dispynode", "/var/lib/private/dispyscheduler", "/dispy-share"]  # fmt: skip


@needs_uml
@pytest.mark.soak  # two to three minutes of a second kernel
@pytest.mark.timeout(BOOT_TIMEOUT + 120)
def test_shipped_units_work_under_a_real_systemd(tmp_path: Path) -> None:
    before = {p: Path(p).exists() for p in HOST_PATHS}
    share = tmp_path / "share"
    share.mkdir()
    (share / "dispy-guest.service").write_text(GUEST_UNIT.format(checks=GUEST_CHECKS, root=ROOT, share=SHARE,
                                                                 python=sys.executable))  # fmt: skip
    init = tmp_path / "init.sh"
    overlay_root = OVERLAY_ROOT.format(python=sys.executable, share=SHARE, host_share=share)
    init.write_text(INIT.format(overlay_root=overlay_root, share=SHARE))
    init.chmod(0o755)
    console = boot(["mem=1G", "quiet", *HOST_ROOT, "ro", f"init={init}"], tmp_path / "console.txt", BOOT_TIMEOUT)
    assert {p: Path(p).exists() for p in HOST_PATHS} == before, "the guest wrote to the host"
    assert (share / "exit").exists(), f"the guest's checks did not run; its console ends:\n{console[-20000:]}"
    report = (share / "pytest.txt").read_text()
    print(report)
    assert (share / "exit").read_text().strip() == "0", report[-20000:]
    summary = re.findall(r"^=+ (.*(?:passed|failed|error|skipped).*) in [\d.]+s.* =+$", report, re.MULTILINE)
    assert summary and not re.search(r"skipped|failed|error", summary[-1]), report[-20000:]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", GUEST_CHECKS],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    expected = re.search(r"^(\d+) tests? collected", collected, re.MULTILINE)
    assert expected is not None, collected
    assert summary[-1].startswith(f"{expected.group(1)} passed"), (summary[-1], collected[-2000:])
    print(json.dumps(json.loads((share / "figures.json").read_text()), indent=1))
