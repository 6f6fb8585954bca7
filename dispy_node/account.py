"""The account jobs run as: never root.

A node started as root runs its zygotes (which run user code in `setup`) and
their jobs as `--run-as USER` (default `nobody`), with that user's primary
group and no supplementary groups. A node started as an ordinary user runs
them as itself; `--run-as` must then name that same user or be left out.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from typing import NamedTuple

DEFAULT_RUN_AS = "nobody"


class Account(NamedTuple):
    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.getuid()


def myself() -> Account:
    me = pwd.getpwuid(os.getuid())
    return Account(me.pw_name, me.pw_uid, me.pw_gid)


def resolve(run_as: str | None) -> Account:
    """The account jobs will run as.

    Raises:
        ValueError: the user does not exist, is root, or differs from ours while we are not root.
    """
    if os.getuid() != 0:
        me = myself()
        if run_as not in (None, me.name, str(me.uid)):
            raise ValueError(f"--run-as {run_as} needs a node started as root (it runs as {me.name})")
        return me
    name = run_as or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--run-as: no user {name!r} on this machine") from None
    if entry.pw_uid == 0:
        raise ValueError("--run-as: jobs never run as root; name an unprivileged account")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def cannot_run_python(acct: Account) -> str | None:
    """Why `acct` cannot start a zygote (this interpreter and dispy_node, as that user), or None.

    Checked once at start-up: an interpreter under a private home directory
    (pyenv under /root, say) would otherwise fail every cluster, one by one.
    """
    if acct.is_self:
        return None
    argv = [sys.executable, "-c", "import cloudpickle, dispy_node.zygote"]
    try:
        done = subprocess.run(
            argv, user=acct.uid, group=acct.gid, extra_groups=[], cwd="/", capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"account {acct.name} cannot run {sys.executable}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return f"account {acct.name} cannot run {sys.executable} with dispy_node: {last}"
    return None
