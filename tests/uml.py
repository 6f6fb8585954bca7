"""User-Mode Linux for the tests that need a kernel of their own: Debian's `user-mode-linux`.

`linux.uml` is a Linux kernel that runs as an ordinary process; its root
filesystem here is this machine's own (hostfs), so the guest runs the same
Python, virtualenv and project as the host. `boot` runs one kernel to its
power-off and returns what its console printed; the kernel and its helper
processes (one process group) are ended whatever happens.

`OVERLAY_ROOT` is the start of an init script for a guest that must not
change the host: the host's root is mounted read-only, and the guest runs
on an overlay of it whose writable layer is the guest's memory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

UML = shutil.which("linux.uml")
needs_uml = pytest.mark.skipif(
    UML is None or shutil.which("mkfs.ext4") is None,
    reason="needs Debian's user-mode-linux and e2fsprogs (make test installs them when run as root)",
)

#: kernel arguments: the host's / as the guest's root, through hostfs, read-only unless `rw` follows
HOST_ROOT = ["root=/dev/root", "rootfstype=hostfs", "rootflags=/"]

#: Shell lines (for an init script's PID 1) that build the guest's root in /run/root: the read-only
#: host root below, a tmpfs above (every write stays in the guest's memory), an empty /tmp and
#: /var/tmp (else the guest's systemd-tmpfiles would clear the host's /tmp in its overlay: slow),
#: and {share} mounted from the host's {host_share}: the one host directory the guest writes. Without
#: the host's /.dockerenv (in the overlay only) the guest's systemd knows it is no container, and so,
#: for one, makes its mounts shared as LoadCredential= needs.
#: The kernel's overlay module is loaded with finit_module(2) (313 on x86-64): the host has no kmod.
OVERLAY_ROOT = """\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /run
{python} -c 'import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
sys.exit(ctypes.CDLL(None, use_errno=True).syscall(313, fd, b"", 0) and ctypes.get_errno())' \\
    /usr/lib/uml/modules/$(uname -r)/kernel/fs/overlayfs/overlay.ko || echo "guest-init: no overlay module"
mkdir /run/upper /run/work /run/root
mount -t overlay overlay -o lowerdir=/,upperdir=/run/upper,workdir=/run/work /run/root || {{
    echo "guest-init: no overlay root"; poweroff -f; }}
mount -t tmpfs -o mode=1777 tmpfs /run/root/tmp && mount -t tmpfs -o mode=1777 tmpfs /run/root/var/tmp
mkdir -p /run/root{share} && mount -t hostfs none /run/root{share} -o {host_share}
rm -f /run/root/.dockerenv  # the host's mark of a container: systemd would take the guest for one
umount /proc
"""


def boot(args: list[str], console: Path, timeout: float) -> str:
    """Runs a UML kernel with `args` to its power-off; returns its console (also kept in `console`).

    Raises:
        AssertionError: it was still running after `timeout` seconds (with the end of its console).
    """
    assert UML is not None
    with open(console, "wb") as out:
        kernel = subprocess.Popen(
            [UML, *args, "con=null", "con0=fd:0,fd:1"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            kernel.wait(timeout)
        except subprocess.TimeoutExpired:
            text = console.read_text(errors="replace")
            raise AssertionError(f"the UML kernel ran over {timeout} s; its console ends:\n{text[-20000:]}") from None
        finally:  # the kernel's helper processes share its new process group
            _end_group(kernel)
    return console.read_text(errors="replace")


def _end_group(kernel: subprocess.Popen[bytes]) -> None:
    """SIGKILL to what is left of the kernel's process group, and wait until it is gone."""
    try:
        os.killpg(kernel.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kernel.wait(30)
    left = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == kernel.pid]
    psutil.wait_procs(left, timeout=30)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1
